"""The significance tables of a grid study and its summary.

Every member against the base, per task, paired by query with the seeds pooled, Holm over members × tasks, one table
per evaluation view, each cell's ranks those of its selected epoch (``GridSpec.epoch`` "last": its last epoch's):
:func:`argbench.analysis.significance.members_table` over the cells' MLflow runs. Logged on the study's parent run
(``significance/<view>.csv`` and ``.html``; ``significance/last/...`` for the last epochs), which then ends
FINISHED; summarised as a JSON-ready dict with the tables' text for a terminal."""

from __future__ import annotations

from argbench.experiments import registry
from argbench.model.epoch_names import SELECTED
from argbench.search.grid_plan import GridSpec


def cell_runs(spec: GridSpec, parent: str) -> dict[str, list[str]]:
    """{entry: MLflow run ids of its FINISHED cells under the study's parent run, oldest first}: the store's rule
    for a name's seeds (:meth:`argbench.track.store.Store.system`), the one ``report --table`` and ``compare`` use,
    kept to this study's runs."""
    from argbench.track.store import Store

    store = Store(spec.tracking_uri)
    return {entry: [run.run_id for run in store.system(registry.run_name(entry, spec.base), spec.experiment,
                                                       within=parent).seeds] for entry in spec.entries}


def grid_table(spec: GridSpec, runs: dict[str, list[str]], view: str) -> dict:
    """A :func:`argbench.analysis.significance.group_table`-shaped result of every member against the base in `view`."""
    from argbench.analysis import significance

    rows = significance.members_table(runs[spec.base], {m: runs[m] for m in spec.members}, split=spec.split,
                                      view=view, epoch=spec.epoch, experiment=spec.experiment,
                                      tracking_uri=spec.tracking_uri)
    return {"group": spec.study, "baseline": spec.base, "baseline_run": spec.base, "split": spec.split,
            "metric": "acc@1", "view": view, "epoch": spec.epoch, "rows": rows, "missing": [], "not_compared": {}}


def log_tables(spec: GridSpec, parent: str, tables: dict) -> None:
    """Each view's table on the parent run as CSV and HTML, the cell count as a metric; the parent FINISHED."""
    import pandas as pd

    from argbench.analysis import significance
    from argbench.track.store import Store

    store = Store(spec.tracking_uri)
    folder = "significance" if spec.epoch == SELECTED else f"significance/{spec.epoch}"
    for view, table in tables.items():
        store.log_text(parent, pd.DataFrame(table["rows"]).to_csv(index=False), f"{folder}/{view}.csv")
        store.log_text(parent, significance.table_html(table), f"{folder}/{view}.html")
    store.log_metrics(parent, {"study/cells_complete": len(spec.cells)})
    store.end_if_running(parent, "FINISHED")


def summary(spec: GridSpec, states: dict, parent: str, tables: dict) -> dict:
    """``{"study", "cells", "complete", "failed", "running", "parent_run_id", "parent_url" (its MLflow UI page),
    "split", "epoch", "table": [{"view",
    "member", "task", "a", "b", "delta", "ci": [lo, hi], "p_value", "p_holm", "significant", "seeds_a", "seeds_b",
    "n"}]}``; the table is empty until every cell is done."""
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "failed", "running")}
    rows = [{"view": view, "member": r["ablation"], **{k: v for k, v in r.items() if k != "ablation"}}
            for view, table in tables.items() for r in table["rows"]]
    from argbench.track.ui import run_link

    return {"study": spec.study, "base": spec.base, "members": spec.members, "seeds": spec.seeds,
            "cells": len(states), "complete": counts["done"], "failed": counts["failed"],
            "running": counts["running"], "parent_run_id": parent,
            "parent_url": run_link(parent, spec.tracking_uri), "split": spec.split, "epoch": spec.epoch,
            "table": rows,
            "text": [significance_text(t) for t in tables.values()]}


def significance_text(table: dict) -> str:
    from argbench.analysis.significance import format_table

    return f"view {table['view']}\n{format_table(table)}"
