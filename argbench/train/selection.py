"""Which epoch is a run's result: the one with the best ``eval.primary`` on validation (never test).

A run keeps the checkpoint of its selected epoch beside its last one (:mod:`argbench.train.checkpoint`), and every
command that reports, compares or exports a run uses that epoch unless asked for the last. Ties keep the earlier
epoch (the same number with fewer steps); an epoch that did not evaluate ``primary`` cannot be selected. Early
stopping (``train.patience``) ends a run after that many evaluated epochs without a new best. The names of the two
epochs (``selected``, ``last``) are :mod:`argbench.model.epoch_names`.
"""

from __future__ import annotations

import math


def selected_epoch(history: list[dict], primary: str) -> int | None:
    """The epoch of ``history`` (the trainer's per-epoch metric dicts) with the highest ``primary``; the earliest on
    ties; None when no epoch evaluated it (or every value is NaN)."""
    best_epoch, best_value = None, -math.inf
    for metrics in history:
        value = metrics.get(primary)
        if value is not None and not math.isnan(value) and value > best_value:
            best_epoch, best_value = metrics["epoch"], value
    return best_epoch


def best(history: list[dict], primary: str) -> float:
    """Value of ``primary`` at the selected epoch; NaN if no epoch evaluated it."""
    epoch = selected_epoch(history, primary)
    if epoch is None:
        return math.nan
    return next(m[primary] for m in history if m["epoch"] == epoch)


def selected_metrics(history: list[dict], primary: str) -> dict:
    """The metric dict of the selected epoch (the last epoch's when none evaluated ``primary``); {} for no history."""
    epoch = selected_epoch(history, primary)
    if epoch is None:
        return dict(history[-1]) if history else {}
    return dict(next(m for m in history if m["epoch"] == epoch))


def patience_exhausted(history: list[dict], primary: str, patience: int | None) -> bool:
    """Whether ``patience`` evaluations of ``primary`` have passed since the selected epoch without a new best
    (None = never). Epochs that did not evaluate ``primary`` do not count."""
    if patience is None:
        return False
    epoch = selected_epoch(history, primary)
    if epoch is None:
        return False
    since = [m for m in history if m["epoch"] > epoch and primary in m]
    return len(since) >= patience
