"""Plotly comparisons of runs, read back from MLflow (never from log files), as one self-contained HTML page.

``load_runs`` fetches the systems named (:mod:`argbench.track.store` decides which runs a name stands for, as for
``argbench compare`` and the significance tables) with their per-epoch metric histories; without names, what was
trained (:meth:`argbench.track.store.Store.trained`): the top-level runs, then each grid study's or search's runs
under their parent's name as a heading, a study's entry as one system of its seeds (the parent itself is no run on
the page). A multi-seed system is its seeds: its history is their mean per epoch, and :meth:`RunData.band` their
95 % bootstrap interval, drawn as a band around the mean curve. A
run's result is taken at its selected epoch (:mod:`argbench.train.selection`: the best of its ``eval.primary`` on
validation, found in its history), or with ``epoch="last"`` at its last; the final-metrics table and the per-task
bars show those values and say which epoch. The figure functions each take those runs and return a
``go.Figure``; the final-metrics table is a plain HTML table (it wraps and scrolls; names are never cut);
``write_report`` puts them on one page with plotly.js inlined once, so it opens on a machine without internet.
Metric names are MLflow's
(``val/epa/acc_at_1``); the old spelling (``val/epa/acc@1``) is read as MLflow's.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from argbench.config import PRIMARY, metric_name
from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.eval.stats import seed_summary
from argbench.model.epoch_names import LAST, SELECTED
from argbench.paths import project_dir
from argbench.track.curve import epoch_ticks
from argbench.track.redaction import redact
from argbench.track.store import Store, System, check_epoch
from argbench.track.tracker import BEST_PREFIX, result_metrics
from argbench.train.selection import selected_metrics

SOURCES = {"point": "negatives/point_frac", "counter": "negatives/counter_frac", "random": "negatives/random_frac"}
COLOURS = qualitative.Plotly


@dataclass
class RunData:
    """One system as reported: ``history[key]`` is [(step, value)] sorted by step (step = epoch), the mean over
    its seeds at the steps every seed logged; ``final[key]`` the value at the last step; ``selected[key]`` the
    value at each seed's selected epoch (``selected_epochs``, by its ``eval.primary``), the mean over the seeds.
    ``seeds`` are the run ids behind it (``[run_id]`` for a single run) and ``seed_histories`` their own histories,
    in the same order; ``duplicates`` counts other runs of the same name that were passed over. ``heading`` names
    the study or search whose runs these are (its parent run's name; "" for a top-level run), ``parent_id`` that
    parent run's id."""

    run_id: str
    name: str
    status: str
    start_time: int  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    selected: dict[str, float] = field(default_factory=dict)
    selected_epochs: list[int | None] = field(default_factory=list)
    duplicates: int = 0
    seeds: list[str] = field(default_factory=list)
    seed_histories: list[dict[str, list[tuple[int, float]]]] = field(default_factory=list)
    heading: str = ""
    parent_id: str | None = None
    qualified: bool = False  # the name is on the page more than once: say whose it is

    @property
    def display(self) -> str:
        """The name, with its heading when the page shows the name twice."""
        return f"{self.name} · {self.heading}" if self.qualified and self.heading else self.name

    @property
    def label(self) -> str:
        """:attr:`display`, with the number of seeds when the values are a mean over several."""
        return self.display if len(self.seeds) < 2 else f"{self.display} (mean of {len(self.seeds)} seeds)"

    def at(self, epoch: str) -> dict[str, float]:
        """The values at ``epoch``: :attr:`selected` ("selected") or :attr:`final` ("last")."""
        check_epoch(epoch)
        return self.selected if epoch == SELECTED else self.final

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of metric ``key``; empty lists if the run never logged it."""
        points = self.history.get(key, [])
        return [s for s, _ in points], [v for _, v in points]

    def band(self, key: str) -> tuple[list[int], list[float], list[float]]:
        """(steps, lo, hi): the 95 % bootstrap interval of the mean of ``key`` over the seeds at each step of
        :meth:`series` (:func:`argbench.eval.stats.seed_summary`); empty lists with fewer than two seeds."""
        if len(self.seed_histories) < 2 or key not in self.history:
            return [], [], []
        per_seed = [dict(h[key]) for h in self.seed_histories]
        steps = self.series(key)[0]
        cis = [seed_summary([values[step] for values in per_seed])["ci"] for step in steps]
        return steps, [lo for lo, _ in cis], [hi for _, hi in cis]


def load_runs(experiment: str, run_names: list[str] | None = None, tracking_uri: str | None = None,
              ) -> list[RunData]:
    """The systems ``run_names`` (names or run ids) of ``experiment`` stand for, in that order (what was trained,
    :meth:`argbench.track.store.Store.trained`, when None): see :mod:`argbench.track.store`. ``system/*`` metrics
    are left out. Raises ValueError naming a missing experiment or run name."""
    return _load(Store(tracking_uri), experiment, run_names)


def _load(store: Store, experiment: str, run_names: list[str] | None) -> list[RunData]:
    systems = store.systems(experiment, run_names)
    headings = {pid: store.run(pid).name for pid in dict.fromkeys(s.parent for s in systems if s.parent)}
    runs = [_run_data(store, system, headings.get(system.parent, "")) for system in systems]
    names = [r.name for r in runs]
    for run in runs:
        run.qualified = names.count(run.name) > 1
    return runs


def _run_data(store: Store, system: System, heading: str = "") -> RunData:
    seed_histories = [store.histories(seed) for seed in system.seeds]
    history = seed_histories[0] if len(seed_histories) == 1 else _mean_history(seed_histories)
    run = system.run
    picks = [_selected(h, seed.params.get("eval.primary", PRIMARY)) for seed, h in zip(system.seeds, seed_histories)]
    return RunData(run_id=run.run_id, name=run.name, status=run.status, start_time=run.start_time,
                   tags=dict(run.tags), params=dict(run.params), history=history,
                   final={k: v[-1][1] for k, v in history.items() if v},
                   selected=_mean_values(picks), selected_epochs=[p.get("epoch") for p in picks],
                   duplicates=system.passed_over,
                   seeds=[seed.run_id for seed in system.seeds], seed_histories=seed_histories,
                   heading=heading, parent_id=system.parent)


def _selected(history: dict[str, list[tuple[int, float]]], primary: str) -> dict:
    """The metrics of one run at its selected epoch (``epoch`` included), from its ``history`` (``best/`` metrics
    left out): that epoch's row and the second stage's metrics (:func:`argbench.track.tracker.result_metrics`)."""
    rows: dict[int, dict] = {}
    for key, points in history.items():
        if not key.startswith(BEST_PREFIX):
            for step, value in points:
                rows.setdefault(step, {"epoch": step})[key] = value
    ordered = [rows[step] for step in sorted(rows)]
    chosen = selected_metrics(ordered, primary)
    return {**chosen, **result_metrics(ordered, chosen["epoch"])} if chosen else {}


def _mean_values(values: list[dict]) -> dict[str, float]:
    """{key: mean over ``values``} for the keys that every dict holds, ``epoch`` left out."""
    keys = set.intersection(*(set(v) for v in values)) - {"epoch"}
    return {key: float(np.mean([v[key] for v in values])) for key in sorted(keys)}


def _mean_history(histories: list[dict[str, list[tuple[int, float]]]]) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, mean over the histories)]} over the keys and steps that every history holds."""
    keys = set.intersection(*(set(h) for h in histories))
    out = {}
    for key in sorted(keys):
        per_seed = [dict(h[key]) for h in histories]
        steps = sorted(set.intersection(*(set(values) for values in per_seed)))
        out[key] = [(step, float(np.mean([values[step] for values in per_seed]))) for step in steps]
    return out


# --- figures -----------------------------------------------------------------------------------------------------

def metric_per_epoch(runs: list[RunData], metric: str) -> go.Figure:
    """``metric`` against epoch, one line per run; a multi-seed run's line is the mean over its seeds, drawn over
    a band of the same colour: the 95 % interval of that mean (:meth:`RunData.band`)."""
    key = metric_name(metric)
    figure = go.Figure()
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        steps, lo, hi = run.band(key)
        if steps:
            figure.add_trace(go.Scatter(x=steps + steps[::-1], y=hi + lo[::-1], name=f"{run.display} 95% CI",
                                        fill="toself", fillcolor=colour, opacity=0.2, line_width=0,
                                        hoverinfo="skip", showlegend=False, legendgroup=run.label))
        figure.add_trace(go.Scatter(x=run.series(key)[0], y=run.series(key)[1], name=run.label,
                                    mode="lines+markers", line_color=colour, legendgroup=run.label))
    epoch_ticks(figure, [s for run in runs for s in run.series(key)[0]])
    return figure.update_layout(title=f"{key} per epoch", xaxis_title="epoch", yaxis_title=key)


def final_task_bars(runs: list[RunData], split: str = "val", epoch: str = SELECTED) -> go.Figure:
    """acc@1 per task (sdoc ... epa) on ``split`` at each run's ``epoch``, bars grouped by task, one colour per
    run."""
    bars = [go.Bar(x=list(TASKS), y=[run.at(epoch).get(f"{split}/{task}/acc_at_1") for task in TASKS],
                   name=run.label) for run in runs]
    return go.Figure(bars).update_layout(title=f"{split} acc@1 per task at the {_epoch_words(epoch)}",
                                         barmode="group", yaxis_title="acc@1", yaxis_range=[0, 1])


def negative_sources(runs: list[RunData]) -> go.Figure:
    """Stacked fractions of the negatives trained on (point / counter / random) per epoch, one subplot per run."""
    figure = make_subplots(rows=len(runs), cols=1, shared_xaxes=True, subplot_titles=[r.label for r in runs])
    for i, run in enumerate(runs, start=1):
        for j, (source, key) in enumerate(SOURCES.items()):
            steps, values = run.series(key)
            figure.add_trace(go.Scatter(x=steps, y=values, name=source, stackgroup=f"run{i}", mode="lines",
                                        legendgroup=source, showlegend=i == 1,
                                        line_color=("#1f77b4", "#ff7f0e", "#2ca02c")[j]), row=i, col=1)
    figure.update_layout(title="Sources of the mined negatives", height=max(300, 220 * len(runs)))
    figure.update_xaxes(title_text="epoch", row=len(runs), col=1)
    epoch_ticks(figure, [s for run in runs for s in run.series(SOURCES["random"])[0]])
    return figure


def final_table(runs: list[RunData], metrics: list[str] | None = None, epoch: str = SELECTED
                ) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the runs' metrics at their ``epoch``: ``metrics``, then val acc@1 per task, rerank acc@1
    and epa acc@1 in the dedup and unseen views (argbench.data.copies); before them each run's label, its study or
    search, run id, status, last and selected epoch (one per seed)."""
    keys = list(dict.fromkeys(metric_name(m) for m in (metrics or [])))
    keys += [k for k in [f"val/{t}/acc_at_1" for t in TASKS] + ["val/rerank/acc_at_1"] if k not in keys]
    keys += [k for k in [f"val/{view}/epa/acc_at_1" for view in ("dedup", "unseen")] if k not in keys]
    header = ["run", "study / search", "run id", "status", "last epoch", "selected epoch", *keys]
    rows = [[r.label, r.heading or "-", r.run_id, r.status,
             str(max((s for h in r.history.values() for s, _ in h), default="-")),
             ", ".join("-" if e is None else str(e) for e in r.selected_epochs) or "-",
             *(_number(r.at(epoch).get(k)) for k in keys)] for r in runs]
    return header, rows


def table_html(runs: list[RunData], metrics: list[str] | None = None, epoch: str = SELECTED,
               div_id: str = "fig-table") -> str:
    """:func:`final_table` as an HTML table in a box that scrolls sideways when it is wider than the page; metric
    names may break after each "/", names and numbers never break."""
    header, rows = final_table(runs, metrics, epoch)
    head = "".join(f"<th>{html.escape(h).replace('/', '/<wbr>')}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div id="{div_id}" class="table"><h2>Metrics at the {html.escape(_epoch_words(epoch))}</h2>\n'
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _epoch_words(epoch: str) -> str:
    check_epoch(epoch)
    return ("selected epoch (each run's best eval.primary on validation)" if epoch == SELECTED
            else f"{LAST} epoch")


# --- the page ----------------------------------------------------------------------------------------------------

def figures(runs: list[RunData], metric: str, epoch: str = SELECTED) -> dict[str, go.Figure]:
    """The report's figures by div id, in page order; results at each run's ``epoch`` (the metrics table,
    :func:`table_html`, follows them)."""
    split = metric_name(metric).split("/")[0] if "/" in metric else "val"
    return {"fig-metric": metric_per_epoch(runs, metric), "fig-loss": metric_per_epoch(runs, "train/loss"),
            "fig-tasks": final_task_bars(runs, split, epoch), "fig-negatives": negative_sources(runs)}


def write_report(runs: list[RunData], metric: str, path: Path, *, source: str = "",
                 extra_figures: dict[str, go.Figure] | None = None, epoch: str = SELECTED) -> Path:
    """Write one self-contained HTML page comparing ``runs`` on ``metric`` to ``path`` (plotly.js inlined once),
    results at each run's ``epoch`` ("selected" or "last"); ``extra_figures`` (div id -> figure, e.g.
    argbench.analysis.significance's) follow the standard ones."""
    check_epoch(epoch)
    if not runs:
        raise UserError("no FINISHED run to report; train one (`argbench ablation run NAME`) or name runs with --runs")
    key = metric_name(metric)
    if not any(key in r.history for r in runs):
        known = sorted({k for r in runs for k in r.history})
        raise ValueError(f"no run logged metric {key!r}; logged metrics include: {', '.join(known[:20])}")
    standard = figures(runs, metric, epoch)
    clash = sorted(set([*standard, "fig-table"]) & set(extra_figures or {}))
    if clash:
        raise ValueError(f"extra_figures: div ids {clash} are taken by the standard figures {list(standard)}")
    divs = [figure.to_html(full_html=False, include_plotlyjs=i == 0, div_id=div_id)
            for i, (div_id, figure) in enumerate(standard.items())]
    divs.append(table_html(runs, [metric], epoch))
    divs += [figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
             for div_id, figure in (extra_figures or {}).items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(runs, key, source, divs), encoding="utf-8")
    return path


STYLE = ("body{font-family:sans-serif;margin:2em}"
         ".table{overflow-x:auto;max-width:100%}"
         ".table table{border-collapse:collapse;font-size:13px}"
         ".table th,.table td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}"
         ".table th{background:#f3f3f3;max-width:11em}"
         ".table td{white-space:nowrap}"
         ".table td:nth-child(-n+4),.table th:nth-child(-n+4){text-align:left}")


def _page(runs: list[RunData], key: str, source: str, divs: list[str]) -> str:
    sections: dict[tuple[str, str | None], list[str]] = {}
    for r in runs:
        note = f" — {r.duplicates + 1} runs have this name; showing the latest FINISHED one" if r.duplicates \
            else ""
        if len(r.seeds) > 1:
            note += f" — the mean of {len(r.seeds)} seeds: {', '.join(r.seeds)}"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time / 1000))
        sections.setdefault((r.heading, r.parent_id), []).append(
            f"<li><b>{html.escape(r.name)}</b> <code>{r.run_id}</code> {r.status}, started "
            f"{started}{html.escape(note)}</li>")
    listing = "\n".join(
        (f"<h3>{html.escape(heading)} <small>(parent run <code>{parent}</code>)</small></h3>" if parent
         else "<h3>Runs</h3>") + "\n<ul>\n" + "\n".join(items) + "\n</ul>"
        for (heading, parent), items in sections.items())
    title = f"argbench report: {key}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Data: {html.escape(source or 'MLflow')}; generated "
            f"{time.strftime('%Y-%m-%d %H:%M')}.</p>\n{listing}\n"
            + "\n".join(divs) + "\n</body></html>\n")


def report(experiment: str, runs: list[str] | None = None, metric: str = PRIMARY,
           out: Path | None = None, tracking_uri: str | None = None,
           extra_figures: dict[str, go.Figure] | None = None, epoch: str = SELECTED) -> Path:
    """Load ``runs`` (names; all when None) of ``experiment`` from MLflow and write the page to ``out``
    (default ``reports/<experiment>.html`` in the repo), results at each run's ``epoch``, with ``extra_figures`` at
    the end. Returns its path."""
    check_epoch(epoch)
    store = Store(tracking_uri)
    data = _load(store, experiment, runs)
    out = Path(out) if out is not None else project_dir() / "reports" / f"{experiment}.html"
    return write_report(data, metric, out, source=f"MLflow experiment {experiment!r} at {redact(store.uri)}",
                        extra_figures=extra_figures, epoch=epoch)
