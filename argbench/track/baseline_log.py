"""A baseline's evaluation as a FINISHED MLflow run (group ``baselines``): the zero-shot baselines of
:mod:`argbench.eval.baselines`, or a trained baseline's selected epoch, so that ``argbench compare`` pairs it query by
query with any run on the same data."""

from __future__ import annotations

from collections.abc import Sequence

from argbench.eval.baselines import TFIDF
from argbench.eval.evaluate import Evaluation
from argbench.track.tracker import tracked_run


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
