"""The learning curve of one run: the figure a tracked run logs as ``learning_curve.html`` when it ends."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from argbench.train.selection import selected_epoch


def learning_curve(rows: list[dict], primary: str = "val/epa/acc_at_1") -> go.Figure:
    """One run's curve from flat per-epoch rows ({"epoch", metric: value}, MLflow metric names): ``primary``,
    ``val/epa/acc_at_1`` and ``test/epa/acc_at_1`` (left axis) and ``train/loss`` (right axis), one trace per metric
    that some row holds, and a dashed line at the epoch selected on ``primary`` (the run's result)."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for key in dict.fromkeys([primary, "val/epa/acc_at_1", "test/epa/acc_at_1", "train/loss"]):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            figure.add_trace(go.Scatter(x=[e for e, _ in points], y=[v for _, v in points], name=key,
                                        mode="lines+markers"), secondary_y=key == "train/loss")
    figure.update_layout(title="Learning curve", xaxis_title="epoch")
    chosen = selected_epoch(rows, primary)
    if chosen is not None:
        figure.add_vline(x=chosen, line_dash="dash", line_color="grey",
                         annotation_text=f"selected on {primary}: epoch {chosen}")
    epoch_ticks(figure, [r["epoch"] for r in rows])
    figure.update_yaxes(title_text="accuracy", secondary_y=False)
    figure.update_yaxes(title_text="loss", secondary_y=True)
    return figure


def epoch_ticks(figure: go.Figure, epochs: list[int]) -> None:
    """Whole-epoch ticks, about ten of them at most (plotly would otherwise mark 0.5, 1.5, ...)."""
    figure.update_xaxes(tick0=0, dtick=max(1, math.ceil(max(epochs, default=0) / 10)))
