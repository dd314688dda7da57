"""``argbench study``: a group of ablations × seeds as one resumable Optuna study that many workers share.

The grid is planned from the registry (:mod:`argbench.search.grid_plan`); its cells are the trials of one Optuna
study (:mod:`argbench.search.cell_queue`: every cell exactly once, retries of failed cells and of dead workers'
cells), which has one MLflow parent run (:mod:`argbench.search.parent_run`) and one child run per cell, trained by
the workers (:mod:`argbench.search.grid_workers`: ``--jobs`` processes here, the same command on other machines).
Running the command again resumes: done cells are never run twice, a cell that failed with an error is queued once
more per invocation, and the same study name with another grid is refused. When the last cell is done the
significance tables (:mod:`argbench.search.study_table`) are printed and logged on the parent, which ends FINISHED;
``argbench study report NAME`` does the same at any time from the cells done so far."""

from __future__ import annotations

import os

import optuna

from argbench.data.copies import VIEWS  # official, dedup, unseen: one table (one Holm family) each
from argbench.search.cell_queue import cell_states, close_stale, dispose, grid_storage, stored_grid
from argbench.search.grid_plan import GridError, GridSpec
from argbench.search.grid_workers import run_workers, work
from argbench.search.parent_run import open_study
from argbench.search.storage import storage_url
from argbench.search.study_table import cell_runs, grid_table, log_tables, summary


def run_study(spec: GridSpec, *, jobs: int = 1) -> dict:
    """Run the study's open cells with `jobs` worker processes here (1 = in this process), then, if every cell is
    done, log and return the significance table; returns :func:`argbench.search.study_table.summary`'s dict with
    ``ran_now``."""
    if jobs < 1:
        raise GridError(f"--jobs {jobs}: expected at least 1")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    storage = grid_storage(spec)
    try:
        open_study(spec, storage)  # study and parent exist before any worker starts: no race between them
    finally:
        dispose(storage)
    if jobs == 1:
        ran = work(spec)
    else:
        ran = run_workers(spec, jobs, threads)
    return {**report(spec), "ran_now": len(ran)}


def report(spec: GridSpec) -> dict:
    """The study's state and, once every cell is done, its significance tables (also logged on the parent run,
    which then ends FINISHED). JSON-ready: see :func:`argbench.search.study_table.summary`."""
    storage = grid_storage(spec)
    try:
        study, parent = open_study(spec, storage)
        close_stale(spec, study, storage)
        trials = study.get_trials(deepcopy=False)
    finally:
        dispose(storage)
    states = cell_states(spec, trials)
    complete = [c for c, s in states.items() if s == "done"]
    tables = {}
    if len(complete) == len(states):
        runs = cell_runs(spec, parent)
        tables = {view: grid_table(spec, runs, view) for view in VIEWS}
        log_tables(spec, parent, tables)
    return summary(spec, states, parent, tables)


def spec_of_study(name: str, *, storage: str | None = None, **settings) -> GridSpec:
    """The GridSpec of existing study `name`, read from its stored grid (for ``argbench study report NAME``)."""
    backend = grid_storage(GridSpec(study=name, base="", members=[], seeds=[], storage=storage))
    try:
        try:
            stored = stored_grid(optuna.load_study(study_name=name, storage=backend), backend)
        except KeyError:
            raise GridError(f"no study {name!r} in storage {storage_url(storage)}; expected the --study name "
                            "printed by `argbench study`") from None
    finally:
        dispose(backend)
    if not stored:
        raise GridError(f"study {name!r} was not made by `argbench study` (it has no grid)")
    entries = stored["entries"]
    return GridSpec(study=name, base=entries[0], members=entries[1:], seeds=stored["seeds"],
                    overrides=stored["overrides"], profile=stored["profile"], storage=storage,
                    configs=stored.get("configs", {}), **settings)
