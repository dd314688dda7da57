"""Plotly comparisons of runs, read back from MLflow (never from log files), as one self-contained HTML page.

``load_runs`` fetches runs by name with their per-epoch metric histories; the figure functions each take those
runs (or, for :func:`learning_curve`, plain rows as logged by argbench.track.tracker) and return a ``go.Figure``;
``write_report`` puts them on one page with plotly.js inlined once, so it opens on a machine without internet.
Metric names are MLflow's (``val/epa/acc_at_1``); argbench names (``val/epa/acc@1``) are converted.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from mlflow import MlflowClient
from plotly.subplots import make_subplots

from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.paths import default_tracking_uri, project_dir
from argbench.track.tracker import metric_key, redact

SOURCES = {"point": "negatives/point_frac", "counter": "negatives/counter_frac", "random": "negatives/random_frac"}


@dataclass
class RunData:
    """One MLflow run: ``history[key]`` is [(step, value)] sorted by step (step = epoch), ``final[key]`` the value
    at the last step; ``duplicates`` counts other runs of the same name that were passed over."""

    run_id: str
    name: str
    status: str
    start_time: int  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of metric ``key``; empty lists if the run never logged it."""
        points = self.history.get(key, [])
        return [s for s, _ in points], [v for _, v in points]


def load_runs(experiment: str, run_names: list[str] | None = None, tracking_uri: str | None = None,
              ) -> list[RunData]:
    """Runs of ``experiment`` named ``run_names`` (in that order; all, oldest first, when None).

    Where several runs share a name, the latest FINISHED one is taken (the latest of any status if none
    finished). ``system/*`` metrics are left out. Raises UserError (a ValueError) naming a missing experiment or run.
    """
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise UserError(f"no MLflow experiment {experiment!r} at {redact(uri)}; experiments there: {known} "
                        "(--experiment names another)")
    by_name: dict[str, list] = {}
    for run in _all_runs(client, found.experiment_id):
        by_name.setdefault(run.info.run_name, []).append(run)
    if run_names is None:
        run_names = sorted(by_name, key=lambda n: min(r.info.start_time for r in by_name[n]))
    missing = [n for n in run_names if n not in by_name]
    if missing:
        raise UserError(f"experiment {experiment!r} at {redact(uri)} has no run named {', '.join(missing)}; "
                         f"its runs: {', '.join(sorted(by_name)) or 'none'}")
    return [_run_data(client, _pick(by_name[n]), len(by_name[n]) - 1) for n in run_names]


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _pick(runs: list):
    """The latest FINISHED run, else the latest run."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return max(finished or runs, key=lambda r: r.info.start_time)


def _run_data(client: MlflowClient, run, duplicates: int) -> RunData:
    history = {}
    for key in run.data.metrics:
        if key.startswith("system/"):
            continue
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                    key=lambda m: m.timestamp)}
        history[key] = sorted(by_step.items())
    return RunData(run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
                   start_time=run.info.start_time, tags=dict(run.data.tags), params=dict(run.data.params),
                   history=history, final={k: v[-1][1] for k, v in history.items() if v}, duplicates=duplicates)


# --- figures -----------------------------------------------------------------------------------------------------

def learning_curve(rows: list[dict], primary: str = "val/epa/acc_at_1") -> go.Figure:
    """One run's curve from flat per-epoch rows ({"epoch", metric: value}): ``primary`` and ``val/epa/acc_at_1``
    (left axis) and ``train/loss`` (right axis), one trace per metric that some row holds."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for key in dict.fromkeys([metric_key(primary), "val/epa/acc_at_1", "train/loss"]):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            figure.add_trace(go.Scatter(x=[e for e, _ in points], y=[v for _, v in points], name=key,
                                        mode="lines+markers"), secondary_y=key == "train/loss")
    figure.update_layout(title="Learning curve", xaxis_title="epoch")
    _epoch_ticks(figure, [r["epoch"] for r in rows])
    figure.update_yaxes(title_text="accuracy", secondary_y=False)
    figure.update_yaxes(title_text="loss", secondary_y=True)
    return figure


def metric_per_epoch(runs: list[RunData], metric: str) -> go.Figure:
    """``metric`` against epoch, one line per run."""
    key = metric_key(metric)
    figure = go.Figure([go.Scatter(x=run.series(key)[0], y=run.series(key)[1], name=run.name,
                                   mode="lines+markers") for run in runs])
    _epoch_ticks(figure, [s for run in runs for s in run.series(key)[0]])
    return figure.update_layout(title=f"{key} per epoch", xaxis_title="epoch", yaxis_title=key)


def final_task_bars(runs: list[RunData], split: str = "val") -> go.Figure:
    """Final acc@1 per task (sdoc ... epa) on ``split``, bars grouped by task, one colour per run."""
    bars = [go.Bar(x=list(TASKS), y=[run.final.get(f"{split}/{task}/acc_at_1") for task in TASKS], name=run.name)
            for run in runs]
    return go.Figure(bars).update_layout(title=f"Final {split} acc@1 per task", barmode="group",
                                         yaxis_title="acc@1", yaxis_range=[0, 1])


def negative_sources(runs: list[RunData]) -> go.Figure:
    """Stacked fractions of the negatives trained on (point / counter / random) per epoch, one subplot per run."""
    figure = make_subplots(rows=len(runs), cols=1, shared_xaxes=True, subplot_titles=[r.name for r in runs])
    for i, run in enumerate(runs, start=1):
        for j, (source, key) in enumerate(SOURCES.items()):
            steps, values = run.series(key)
            figure.add_trace(go.Scatter(x=steps, y=values, name=source, stackgroup=f"run{i}", mode="lines",
                                        legendgroup=source, showlegend=i == 1,
                                        line_color=("#1f77b4", "#ff7f0e", "#2ca02c")[j]), row=i, col=1)
    figure.update_layout(title="Sources of the mined negatives", height=max(300, 220 * len(runs)))
    figure.update_xaxes(title_text="epoch", row=len(runs), col=1)
    _epoch_ticks(figure, [s for run in runs for s in run.series(SOURCES["random"])[0]])
    return figure


def _epoch_ticks(figure: go.Figure, epochs: list[int]) -> None:
    """Whole-epoch ticks, about ten of them at most (plotly would otherwise mark 0.5, 1.5, ...)."""
    figure.update_xaxes(tick0=0, dtick=max(1, math.ceil(max(epochs, default=0) / 10)))


def final_table(runs: list[RunData], metrics: list[str] | None = None) -> go.Figure:
    """A table of the runs' final metrics: ``metrics``, then val acc@1 per task, rerank acc@1 and epa acc@1 in the
    dedup and unseen views (argbench.data.copies)."""
    keys = list(dict.fromkeys(metric_key(m) for m in (metrics or [])))
    keys += [k for k in [f"val/{t}/acc_at_1" for t in TASKS] + ["val/rerank/acc_at_1"] if k not in keys]
    keys += [k for k in [f"val/{view}/epa/acc_at_1" for view in ("dedup", "unseen")] if k not in keys]
    cells = [[r.name for r in runs], [r.run_id for r in runs], [r.status for r in runs],
             [max((s for h in r.history.values() for s, _ in h), default="-") for r in runs]]
    cells += [[_number(r.final.get(k)) for r in runs] for k in keys]
    header = ["run", "run id", "status", "last epoch", *keys]
    # plotly cuts a cell's text at the column's edge and breaks lines only at spaces or <br>: metric names break
    # after each "/" and every column is as wide as its longest line (about 7.5 px a character at 12 px).
    lines = [h.replace("/", "/<br>") for h in header]
    widths = [max(len(part) for column in (str(h).split("/<br>"), map(str, c)) for part in column) + 2
              for h, c in zip(lines, cells)]
    table = go.Table(columnwidth=widths, header={"values": lines, "height": 50}, cells={"values": cells})
    return go.Figure(table).update_layout(title="Final metrics", height=260 + 30 * len(runs),
                                          width=max(700, int(7.5 * sum(widths)) + 80))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# --- the page ----------------------------------------------------------------------------------------------------

def figures(runs: list[RunData], metric: str) -> dict[str, go.Figure]:
    """The report's figures by div id, in page order."""
    split = metric_key(metric).split("/")[0] if "/" in metric else "val"
    return {"fig-metric": metric_per_epoch(runs, metric), "fig-loss": metric_per_epoch(runs, "train/loss"),
            "fig-tasks": final_task_bars(runs, split), "fig-negatives": negative_sources(runs),
            "fig-table": final_table(runs, [metric])}


def write_report(runs: list[RunData], metric: str, path: Path, *, source: str = "",
                 extra_figures: dict[str, go.Figure] | None = None) -> Path:
    """Write one self-contained HTML page comparing ``runs`` on ``metric`` to ``path`` (plotly.js inlined once);
    ``extra_figures`` (div id -> figure, e.g. argbench.analysis.significance's) follow the standard ones."""
    if not runs:
        raise ValueError("no runs to report; expected at least one run")
    key = metric_key(metric)
    if not any(key in r.history for r in runs):
        known = sorted({k for r in runs for k in r.history})
        raise ValueError(f"no run logged metric {key!r}; logged metrics include: {', '.join(known[:20])}")
    standard = figures(runs, metric)
    clash = sorted(set(standard) & set(extra_figures or {}))
    if clash:
        raise ValueError(f"extra_figures: div ids {clash} are taken by the standard figures {list(standard)}")
    divs = [figure.to_html(full_html=False, include_plotlyjs=i == 0, div_id=div_id)
            for i, (div_id, figure) in enumerate({**standard, **(extra_figures or {})}.items())]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(runs, key, source, divs), encoding="utf-8")
    return path


def _page(runs: list[RunData], key: str, source: str, divs: list[str]) -> str:
    items = []
    for r in runs:
        note = (f" — {r.duplicates + 1} runs have this name; showing the latest "
                f"{'FINISHED one' if r.status == 'FINISHED' else 'one (none FINISHED)'}") if r.duplicates else ""
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time / 1000))
        items.append(f"<li><b>{html.escape(r.name)}</b> <code>{r.run_id}</code> {r.status}, started "
                     f"{started}{html.escape(note)}</li>")
    title = f"argbench report: {key}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Data: {html.escape(source or 'MLflow')}; generated "
            f"{time.strftime('%Y-%m-%d %H:%M')}.</p>\n<ul>\n{chr(10).join(items)}\n</ul>\n"
            + "\n".join(divs) + "\n</body></html>\n")


def report(experiment: str, runs: list[str] | None = None, metric: str = "val/epa/acc@1",
           out: Path | None = None, tracking_uri: str | None = None,
           extra_figures: dict[str, go.Figure] | None = None) -> Path:
    """Load ``runs`` (names; all when None) of ``experiment`` from MLflow and write the page to ``out``
    (default ``reports/<experiment>.html`` in the repo), with ``extra_figures`` at the end. Returns its path."""
    uri = tracking_uri or default_tracking_uri()
    data = load_runs(experiment, runs, uri)
    out = Path(out) if out is not None else project_dir() / "reports" / f"{experiment}.html"
    return write_report(data, metric, out, source=f"MLflow experiment {experiment!r} at {redact(uri)}",
                        extra_figures=extra_figures)
