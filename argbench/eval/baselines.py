"""Zero-shot baselines: a lexical TF-IDF ranker and any encoder without training (cosine of pooled vectors), and
:func:`log_baseline`, which tracks any baseline's evaluation (these, or a trained one's selected epoch)."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer

from argbench.data.tasks import SplitData
from argbench.eval.evaluate import Evaluation, evaluate
from argbench.model.encoders import embed_texts, load_encoder

TFIDF = "tfidf"


def tfidf(split: SplitData) -> Evaluation:
    """TF-IDF cosine, fitted on the split's own paired arguments (sublinear tf, English stop words)."""
    matrix = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(split.texts)
    return evaluate(split, matrix[split.query_idx], matrix, metric="cosine")


def zero_shot(split: SplitData, encoder: str, *, pooling: str = "mean", max_length: int = 256,
              batch_size: int = 64, progress: bool = False) -> Evaluation:
    """Cosine retrieval with an untrained encoder: every argument embedded once, queries are their rows."""
    model, tokenizer = load_encoder(encoder)
    emb = embed_texts(model, tokenizer, split.texts, pooling=pooling, max_length=max_length,
                      batch_size=batch_size, progress=progress)
    return evaluate(split, emb[split.query_idx], emb, metric="cosine")


def run_baseline(split: SplitData, encoder: str, **kwargs) -> Evaluation:
    """``tfidf`` or an encoder name (see :mod:`argbench.model.encoders`)."""
    return tfidf(split) if encoder == TFIDF else zero_shot(split, encoder, **kwargs)


def run_name(encoder: str) -> str:
    """MLflow run name of a baseline: ``tfidf`` or ``zero_shot:<encoder>``."""
    return TFIDF if encoder == TFIDF else f"zero_shot:{encoder}"


def log_baseline(evaluation: Evaluation, *, name: str, split_key: str, params: dict, tags: dict | None = None,
                 experiment: str = "argbench", tracking_uri: str | None = None, history: Sequence[dict] = (),
                 epoch: int = 0) -> str:
    """Log a baseline's evaluation as a FINISHED MLflow run ``name`` in group ``baselines``: ``params``, the
    split's metrics at step ``epoch`` in every view (``<split_key>/<task>/acc_at_1``, ``<split_key>/dedup/<task>/...``,
    ``<split_key>/unseen/<task>/...``) and its per-query ranks, so that ``argbench compare NAME <ablation>`` tests a
    trained system against the baseline. A trained baseline also passes its ``history`` (one metrics dict per epoch,
    ``epoch`` included, each logged at that step) and the ``epoch`` it selected, whose row the evaluation joins.
    Returns the run id."""
    from argbench.track.tracker import tracked_run

    rows = {row["epoch"]: dict(row) for row in history}
    rows.setdefault(epoch, {"epoch": epoch}).update(evaluation.flat(split_key))
    rows = [rows[step] for step in sorted(rows)]
    with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri, system_metrics=False,
                     tags={"group": "baselines", **(tags or {})}) as tracker:
        tracker.log(params=params)
        for row in rows:
            if row["epoch"] == epoch:  # the ranks first: they belong to the epoch logged next
                tracker.on_evaluation(epoch, split_key, evaluation)
            tracker.on_epoch_end(row["epoch"], row)
        tracker.finish(rows)
    return tracker.run_id
