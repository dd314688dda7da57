"""Model selection on a planted history: the best validation epoch, never test; ties; early stopping."""

from __future__ import annotations

import math

from argbench.train.selection import best, patience_exhausted, selected_epoch, selected_metrics

PRIMARY = "val/epa/acc_at_1"


def history(val: list[float | None], test: list[float]) -> list[dict]:
    rows = []
    for epoch, (v, t) in enumerate(zip(val, test)):
        row = {"epoch": epoch, "test/epa/acc_at_1": t}
        if v is not None:
            row[PRIMARY] = v
        rows.append(row)
    return rows


def test_the_best_validation_epoch_is_selected_and_test_is_never_consulted():
    planted = history([0.20, 0.30, 0.40, 0.35, 0.33], [0.10, 0.20, 0.25, 0.50, 0.60])
    assert selected_epoch(planted, PRIMARY) == 2  # test peaks at 4
    assert best(planted, PRIMARY) == 0.40
    assert selected_metrics(planted, PRIMARY)["test/epa/acc_at_1"] == 0.25


def test_ties_keep_the_earlier_epoch():
    assert selected_epoch(history([0.2, 0.4, 0.4, 0.3], [0.0] * 4), PRIMARY) == 1


def test_epochs_without_the_primary_metric_or_with_nan_are_not_selected():
    planted = history([None, 0.3, math.nan, None], [0.9, 0.1, 0.9, 0.9])
    assert selected_epoch(planted, PRIMARY) == 1
    assert selected_epoch(history([None, None], [0.5, 0.6]), PRIMARY) is None
    assert math.isnan(best(history([None], [0.5]), PRIMARY))
    assert selected_metrics(history([None, None], [0.5, 0.6]), PRIMARY)["epoch"] == 1  # none evaluated: the last


def test_patience_counts_evaluations_since_the_best():
    planted = history([0.2, 0.4, 0.3, None, 0.35], [0.0] * 5)
    assert not patience_exhausted(planted[:3], PRIMARY, 2)  # one evaluation since epoch 1
    assert not patience_exhausted(planted[:4], PRIMARY, 2)  # epoch 3 did not evaluate
    assert patience_exhausted(planted, PRIMARY, 2)
    assert not patience_exhausted(planted, PRIMARY, None)
    assert not patience_exhausted(history([0.1, 0.2, 0.3], [0.0] * 3), PRIMARY, 1)  # still improving
