"""Zero-shot baselines: a lexical TF-IDF ranker and any encoder without training (cosine of pooled vectors).
Computing only: :mod:`argbench.track.baseline_log` logs a baseline's evaluation as an MLflow run."""

from __future__ import annotations

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

