"""Is an ablation's difference from the baseline real? One table per registry group, Holm-corrected.

:func:`group_table` compares every member of a registry group with the baseline through
:func:`argbench.analysis.compare.compare` (paired by query; a multi-seed run's seeds pooled per query; each run at
its selected epoch, or its last with ``epoch="last"``) on one split and one metric, then Holm-corrects the raw
p-values over *all* comparisons the table shows (members × tasks): a row is ``significant`` when its adjusted p is
below :data:`ALPHA`, which keeps the chance of even one false positive in the table at 5 %. :func:`format_table`
renders the result as fixed-width text, :func:`table_figure` and :func:`figure` as plotly figures for the HTML
report, :func:`table_html` as a small HTML page (what a study logs on its parent run, which MLflow's artifact view
shows), and :func:`format_comparison` renders one ``compare`` result (``argbench compare A B``).

Not compared: the baseline itself and its aliases (the same config, so the difference would be seed noise only);
members with no FINISHED run are listed under ``missing``, each with the reason in ``not_compared`` (no run at
all, or runs trained over another base: "trained over baseline, not over R"). User errors are typed so the CLI
exits with status 2:
:class:`UnknownRun` (no FINISHED run of that name or id) and :class:`ComparisonError` (runs that cannot be
compared, or a task or metric they lack).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from argbench.analysis.compare import OFFICIAL, compare
from argbench.errors import UserError
from argbench.eval.stats import METRICS, holm
from argbench.experiments.registry import (
    DEFAULT_BASE,
    RegistryError,
    distinct_members,
    groups,
    list_ablations,
    run_name,
)
from argbench.model.epoch_names import SELECTED
from argbench.track.store import NotInStore, Store

ALPHA = 0.05


class UnknownRun(UserError, LookupError):
    """A system (run name or run id) with no FINISHED run in the experiment, or a missing experiment."""


class ComparisonError(UserError):
    """Two systems that cannot be compared (different data or queries), or a task / metric they did not log."""


# --- finding and comparing systems ---------------------------------------------------------------------------------

def find_runs(ref: str, *, experiment: str = "argbench", tracking_uri: str | None = None) -> list[str]:
    """Ids of the runs that make system `ref` (its FINISHED seeds, or the run itself); UnknownRun if none."""
    try:
        return [run.run_id for run in Store(tracking_uri).system(ref, experiment).seeds]
    except NotInStore as err:
        raise UnknownRun(str(err)) from err


def compare_systems(a: str, b: str, *, split: str = "test", tasks=None, experiment: str = "argbench",
                    tracking_uri: str | None = None, **stats_kw) -> dict:
    """:func:`argbench.analysis.compare.compare` of `b` against `a` (`stats_kw` may hold its ``view`` and
    ``epoch``), with its errors typed: UnknownRun when either has no FINISHED run, ComparisonError when the two
    cannot be compared (message prefixed with both names)."""
    for ref in (a, b):
        find_runs(ref, experiment=experiment, tracking_uri=tracking_uri)
    return _compare(a, b, split=split, tasks=tasks, experiment=experiment, tracking_uri=tracking_uri, **stats_kw)


def _compare(a, b, *, split: str, **kw) -> dict:
    """:func:`argbench.analysis.compare.compare` of two systems known to have runs; its ValueErrors as
    ComparisonError."""
    try:
        return compare(a, b, split=split, **kw)
    except ValueError as err:
        raise ComparisonError(f"comparing {b!r} with {a!r} on {split!r}: {err}") from err


def _members(group: str, baseline: str, aliases: bool = False) -> list[str]:
    """The entries of `group` to compare with `baseline`, in registry order (baseline and, unless `aliases`, its
    aliases left out)."""
    entries = [a for a in list_ablations() if a.group == group]
    if not entries:
        raise RegistryError(f"no ablation in group {group!r}: groups are {', '.join(groups())}")
    return [a.name for a in entries if a.name != baseline and (aliases or a.alias_of != baseline)]


# --- the group table -----------------------------------------------------------------------------------------------

def group_table(group: str, *, baseline: str = "baseline", base: str | None = None, split: str = "test", tasks=None,
                metric: str = "acc@1", experiment: str = "argbench", tracking_uri: str | None = None,
                view: str = OFFICIAL, epoch: str = SELECTED, **stats_kw) -> dict:
    """Every member of registry `group` against `baseline` on `split`, one row per (member, task), JSON-ready.

    With `base` R (runs made by ``ablation run --base R``): the baseline is R's own runs and each member's runs
    are those named ``MEMBER@R``; members whose config over R equals R's (or an earlier member's) are left out.

    `view` (official, dedup, unseen; see :func:`argbench.analysis.compare.compare`) picks the ranks that are paired,
    `epoch` ("selected" or "last") the epoch of each run they come from.
    Returns ``{"group", "baseline", "split", "view", "epoch", "metric", "rows", "missing"}``; each row is
    ``{"ablation", "task", "a", "b", "delta", "ci", "p_value", "p_holm", "significant", "seeds_a", "seeds_b",
    "n"}``: `metric` (``acc@1`` or ``mrr``, a mean over the ``n`` queries) of the baseline (a) and the member (b),
    delta = b − a, its 95 % bootstrap CI, the raw two-sided p, the Holm-adjusted p over all rows, significant =
    p_holm < ALPHA, and the number of seeds pooled on each side. ``missing``: members with no FINISHED run over
    the base, ``not_compared``: {member: why} for them. `tasks`
    defaults to every task logged; `stats_kw` (n_boot, n_perm, seed) goes to the statistics. UnknownRun if the
    baseline has no run.
    """
    if base is not None:
        baseline = base
        members = {m: run_name(m, base) for m in distinct_members(_members(group, base, aliases=True), base)}
        find_runs(base, experiment=experiment, tracking_uri=tracking_uri)  # UnknownRun if the base never ran
        reference = base
    else:
        members = {m: m for m in _members(group, baseline)}
        reference = _baseline_runs(baseline, experiment, tracking_uri)
    found = {}
    for name, ref in members.items():
        try:
            find_runs(ref, experiment=experiment, tracking_uri=tracking_uri)
            found[name] = ref
        except UnknownRun:
            pass
    rows = members_table(reference, found, split=split, tasks=tasks, metric=metric, experiment=experiment,
                         tracking_uri=tracking_uri, view=view, epoch=epoch, **stats_kw)
    missing = [m for m in members if m not in found]
    return {"group": group, "baseline": baseline, "baseline_run": reference, "split": split, "view": view,
            "epoch": epoch, "metric": metric, "rows": rows, "missing": missing,
            "not_compared": _not_compared(missing, base or DEFAULT_BASE, experiment, tracking_uri)}


def _not_compared(missing: list[str], base: str, experiment: str, tracking_uri: str | None) -> dict[str, str]:
    """{member: why it has no run to compare}: the bases its FINISHED runs were trained over (run names ``M`` and
    ``M@B``: over baseline and over B), or that it has none."""
    if not missing:
        return {}
    names = {r.name for r in Store(tracking_uri).runs(experiment) if r.status == "FINISHED"}
    why = {}
    for member in missing:
        over = sorted({DEFAULT_BASE if name == member else name.partition("@")[2] for name in names
                       if name == member or name.startswith(f"{member}@")} - {base})
        why[member] = f"trained over {', '.join(over)}, not over {base}" if over else "no FINISHED run"
    return why


def members_table(reference: str | list[str], members: dict[str, str | list[str]], *, split: str = "test",
                  tasks=None, metric: str = "acc@1", view: str = OFFICIAL, epoch: str = SELECTED,
                  experiment: str = "argbench", tracking_uri: str | None = None, **stats_kw) -> list[dict]:
    """Rows of every member ({name: run name, run id or list of run ids}) against `reference` on `split` in
    evaluation `view`, each run at `epoch`, one per (member, task), p-values Holm-corrected over all rows (see
    :func:`group_table`)."""
    if metric not in METRICS:
        raise ComparisonError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    rows = []
    for name, ref in members.items():
        result = _compare(reference, ref, split=split, tasks=tasks, experiment=experiment,
                          tracking_uri=tracking_uri, view=view, epoch=epoch, **stats_kw)
        rows += [_row(name, task, cells[metric], result["runs"]) for task, cells in result["tasks"].items()]
    for row, p_holm in zip(rows, holm([row["p_value"] for row in rows])):
        row["p_holm"], row["significant"] = p_holm, p_holm < ALPHA
    return rows


def _baseline_runs(baseline: str, experiment: str, tracking_uri: str | None) -> str:
    """The run name that stands for `baseline`: its own, else the first alias of it with a FINISHED run (an alias
    such as ``without_layernorm_relu`` runs the baseline's config, so ``make ablations GROUP=norm`` suffices)."""
    aliases = [a.name for a in list_ablations() if a.alias_of == baseline]
    errors = []
    for name in (baseline, *aliases):
        try:
            find_runs(name, experiment=experiment, tracking_uri=tracking_uri)
            return name
        except UnknownRun as err:
            errors.append(err)
    raise UnknownRun(f"{errors[0]} (nor for its aliases: {', '.join(aliases) or 'none'})")


def _row(name: str, task: str, cell: dict, runs: dict) -> dict:
    return {"ablation": name, "task": task, "a": cell["a"], "b": cell["b"], "delta": cell["delta"],
            "ci": list(cell["ci"]), "p_value": cell["p_value"], "p_holm": None, "significant": None,
            "seeds_a": len(runs["a"]), "seeds_b": len(runs["b"]), "n": cell["n"]}


def group_tables(**kw) -> list[dict]:
    """:func:`group_table` of every registry group with at least one compared member (keywords passed on)."""
    baseline = kw.get("base") or kw.get("baseline", "baseline")
    tables = [group_table(g, **kw) for g in groups() if _members(g, baseline)]
    return [t for t in tables if t["rows"]]


# --- text ----------------------------------------------------------------------------------------------------------

def _value(x: float) -> str:
    return f"{x:.3f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _p(p: float) -> str:
    """Three decimals; small p in scientific notation, so 1e-12 (exact McNemar) and 1e-4 stay distinguishable."""
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _render(header: list[str], rows: list[list[str]], left: int) -> str:
    """Fixed-width columns: the first `left` aligned left (names), the rest right (numbers)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join(line(cells).rstrip() for cells in [header, *rows])


def _table_cells(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of a group table, shared by the text and the HTML table."""
    header = ["ablation", "task", "baseline", "value", "Δ", "95% CI", "p", "p_holm"]
    rows = [[r["ablation"], r["task"], _value(r["a"]), _value(r["b"]), _signed(r["delta"]), _ci(r["ci"]),
             _p(r["p_value"]), _p(r["p_holm"]) + (" *" if r["significant"] else "")] for r in result["rows"]]
    return header, rows


def _seeds(result: dict) -> str:
    """'baseline 2, with_relu 1' — seeds pooled per system."""
    rows = result["rows"]
    per_member = dict.fromkeys(f"{r['ablation']} {r['seeds_b']}" for r in rows)
    return ", ".join([f"{result['baseline']} {rows[0]['seeds_a']}", *per_member]) if rows else "-"


def format_table(result: dict) -> str:
    """A :func:`group_table` result as fixed-width text: a title line, one line per row (``*`` = significant),
    then the queries and seeds behind the numbers and the members not compared."""
    rows = result["rows"]
    reference = result["baseline"]
    if result.get("baseline_run", reference) != reference:
        reference += f" (its alias {result['baseline_run']}'s runs)"
    title = (f"{result['group']}: {result['metric']} on {result['split']}{_where(result)}, each ablation vs "
             f"{reference} "
             f"(paired by query; * = p_holm < {ALPHA}, Holm over the {len(rows)} comparisons shown)")
    lines = [title, _render(*_table_cells(result), left=2) if rows else "(no ablation of this group has a run)"]
    if rows:
        queries = ", ".join(dict.fromkeys(f"{r['task']} {r['n']}" for r in rows))
        lines.append(f"queries per task: {queries}; seeds: {_seeds(result)}")
    if result["missing"]:
        lines.append(f"not compared: {_missing(result)}")
    return "\n".join(lines)


def _missing(result: dict) -> str:
    """'with_relu (trained over baseline, not over R), with_layernorm (no FINISHED run)'."""
    why = result.get("not_compared", {})
    return ", ".join(f"{m} ({why.get(m, 'no FINISHED run')})" for m in result["missing"])


def _where(result: dict) -> str:
    """The epoch and view in words: " at the selected epochs", " at the last epochs (dedup view)"."""
    view = "" if result.get("view", "official") == "official" else f" ({result['view']} view)"
    return f" at the {result.get('epoch', SELECTED)} epochs{view}"


def format_comparison(result: dict) -> str:
    """A :func:`argbench.analysis.compare.compare` result as fixed-width text, one line per (task, metric)."""
    header = ["task", "metric", result["a"], result["b"], "Δ", "95% CI", "p", "p_holm", "test"]
    rows = [[task, metric, _value(c["a"]), _value(c["b"]), _signed(c["delta"]), _ci(c["ci"]), _p(c["p_value"]),
             _p(c["p_holm"]), c["test"]] for task, cells in result["tasks"].items() for metric, c in cells.items()]
    seeds = {side: len(ids) for side, ids in result["runs"].items()}
    n = ", ".join(dict.fromkeys(str(c["n"]) for cells in result["tasks"].values() for c in cells.values()))
    return "\n".join([f"{result['b']} vs {result['a']} on {result['split']}{_where(result)}: "
                      f"Δ = {result['b']} − {result['a']}, "
                      f"paired by query (n = {n}); seeds {seeds['a']} vs {seeds['b']}; p_holm over the "
                      f"{len(rows)} lines", _render(header, rows, left=2)])


# --- figures -------------------------------------------------------------------------------------------------------

def figure(result: dict) -> go.Figure:
    """Δ per task for each member of a :func:`group_table` result: points with 95 % CI error bars, one colour per
    member, a line at zero; significant rows (p_holm < ALPHA) drawn as large stars, the others as circles."""
    fig = go.Figure()
    for name in dict.fromkeys(r["ablation"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["ablation"] == name]
        fig.add_trace(go.Scatter(
            x=[r["task"] for r in rows], y=[r["delta"] for r in rows], name=name, mode="markers",
            marker={"symbol": ["star" if r["significant"] else "circle" for r in rows],
                    "size": [16 if r["significant"] else 9 for r in rows]},
            error_y={"type": "data", "symmetric": False, "array": [r["ci"][1] - r["delta"] for r in rows],
                     "arrayminus": [r["delta"] - r["ci"][0] for r in rows]},
            customdata=[[r["p_value"], r["p_holm"]] for r in rows],
            hovertemplate="%{x}: Δ %{y:+.3f}<br>p %{customdata[0]:.3g}, p_holm %{customdata[1]:.3g}"))
    fig.add_hline(y=0, line_color="black", line_width=1)
    if not result["rows"]:
        fig.add_annotation(text="no ablation of this group has a run", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    return fig.update_layout(
        title=f"{result['group']}: Δ {result['metric']} vs {result['baseline']} on {result['split']}{_where(result)} "
              f"(95 % CI; ★ = p_holm < {ALPHA})",
        scattermode="group", showlegend=True, xaxis_title="task",
        yaxis_title=f"Δ {result['metric']} (ablation − baseline)")


def _title(result: dict) -> str:
    missing = f"; not compared: {_missing(result)}" if result["missing"] else ""
    return (f"{result['group']}: {result['metric']} on {result['split']}, {result.get('view', 'official')} view, "
            f"{result.get('epoch', SELECTED)} epochs, vs {result['baseline']} (* = p_holm < {ALPHA}){missing}")


def table_figure(result: dict) -> go.Figure:
    """The rows of :func:`format_table` as a plotly table (for the HTML report)."""
    header, rows = _table_cells(result)
    columns = [list(column) for column in zip(*rows)] if rows else [[] for _ in header]
    return go.Figure(go.Table(header={"values": header}, cells={"values": columns})).update_layout(
        title=_title(result), height=260 + 25 * len(rows))


def table_html(result: dict) -> str:
    """The rows of :func:`format_table` as one small self-contained HTML page (no script: it shows in MLflow's
    artifact preview and offline), names left-aligned, numbers right-aligned, significant rows in bold."""
    header, rows = _table_cells(result)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        ('<tr class="sig">' if r["significant"] else "<tr>")
        + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells, r in zip(rows, result["rows"]))
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
             "th{background:#f3f3f3}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}tr.sig{font-weight:bold}")
    title = html.escape(_title(result))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style>"
            f"</head><body>\n<h3>{title}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            "</tbody>\n</table>\n</body></html>\n")
