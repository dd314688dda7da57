"""The cells of a grid (:mod:`argbench.search.grid_plan`) as the trials of one Optuna study that many workers share.

The study has a :class:`optuna.samplers.GridSampler` over the parameters ``entry`` and ``seed``, on any storage
:mod:`argbench.search.storage` opens (SQLite, journal file, PostgreSQL for several machines). Every cell is trained
once:

* a cell is claimed by exactly one trial: the first N trial numbers are the N cells (GridSampler gives trial n the
  n-th cell of :func:`grid_cells`), retries are queued trials that one worker pops atomically; a trial that still
  finds its cell done or taken by a lower trial (two workers asking at the same moment) ends PRUNED with user attr
  ``duplicate_of`` without training (:func:`taken_by`), and is counted nowhere (:func:`cell_states`);
* a worker killed mid-cell stops sending heartbeats (RDB storages): the next worker fails that trial, closes its
  MLflow run as KILLED and queues the same cell again (:func:`close_stale`,
  :class:`argbench.search.storage._RetryStaleTrial`); a cell that failed with an error is queued once more per
  command (:func:`queue_failed`, :func:`requeue_if_failed`).

The study keeps the grid it was made with (study system attr ``argbench.grid``; studies made before kept it in user
attr ``grid``) and refuses another grid under its name (:func:`check_grid`). For people (optuna-dashboard) its user
attrs say the grid in words (``base``, ``entries``, ``seeds``, ``overrides``, ``profile``, ``split``,
``objective``), its objective is named (the entries' ``eval.primary`` at the selected epoch), and Optuna's "Trial N
finished ... Best is trial M" line, meaningless for a grid, is not logged."""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from argbench import config
from argbench.search.grid_plan import GridError, GridSpec
from argbench.search.storage import close_stale_trials, open_storage

CELL_PARAMS = ("entry", "seed")
GRID_ATTR = "grid"  # where studies made before the grid went to a system attr kept it
GRID_SYSTEM_ATTR = "argbench.grid"
SAMPLER_SEED = 0  # GridSampler's seed, which fixes the order it hands out the cells in


# --- the cells and their order -----------------------------------------------------------------------------------

def _space(spec: GridSpec) -> dict[str, list]:
    return {"entry": spec.entries, "seed": spec.seeds}


def sampler(spec: GridSpec) -> optuna.samplers.GridSampler:
    return optuna.samplers.GridSampler(_space(spec), seed=SAMPLER_SEED)


def grid_cells(spec: GridSpec) -> list[tuple[str, int]]:
    """The cells in the order :func:`sampler` hands them out: grid id n (trial n of a new study) is the n-th.

    Computed from the sampler's inputs as Optuna's GridSampler orders its grid: every combination of the values
    (parameter names sorted, each one's values in the order given), shuffled in place by a numpy ``RandomState``
    seeded with the sampler's ``seed``. A test checks it against the trials a sampler hands out."""
    space = _space(spec)
    names = sorted(space)
    grid = list(itertools.product(*(space[name] for name in names)))
    np.random.RandomState(SAMPLER_SEED).shuffle(grid)
    return [(values[names.index("entry")], int(values[names.index("seed")])) for values in grid]


def cell_of(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    """The (entry, seed) a trial suggested; None before it suggested both."""
    if not all(p in trial.params for p in CELL_PARAMS):
        return None
    return trial.params["entry"], int(trial.params["seed"])


def cell_states(spec: GridSpec, trials: Sequence[optuna.trial.FrozenTrial]) -> dict[tuple[str, int], str]:
    """{cell: "done" | "running" | "waiting" | "failed" | "new"} from the study's trials (duplicates ignored):
    done if a trial of it is COMPLETE, else running, waiting (queued retry), failed (only FAIL trials) or new."""
    order = ("done", "running", "waiting", "failed")
    by_state = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
                TrialState.FAIL: "failed"}
    states = {cell: "new" for cell in spec.cells}
    for trial in trials:
        cell, state = cell_of(trial), by_state.get(trial.state)
        if trial.state == TrialState.WAITING and cell is None:
            cell = _queued_cell(spec, trial)
        if cell in states and state and "duplicate_of" not in trial.user_attrs:
            current = states[cell]
            if current == "new" or order.index(state) < order.index(current):
                states[cell] = state
    return states


def _queued_cell(spec: GridSpec, trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    """The cell of a queued trial that has no params yet: from its fixed params or its grid id."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    if all(p in fixed for p in CELL_PARAMS):
        return fixed["entry"], int(fixed["seed"])
    grid_id = trial.system_attrs.get("grid_id")
    grid = grid_cells(spec)
    return grid[grid_id] if grid_id is not None and grid_id < len(grid) else None


# --- the study ---------------------------------------------------------------------------------------------------

def open_queue(spec: GridSpec, storage: BaseStorage) -> tuple[optuna.Study, bool]:
    """The study of `spec` and whether this call created it (creating an Optuna study is atomic, so exactly one
    worker does). Its creator stores the grid, names the objective and writes the readable attrs; the others load
    it and check its grid (:func:`check_grid`) once it is complete."""
    grid_sampler = sampler(spec)
    _quiet_cell_lines()
    try:
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=grid_sampler,
                                    direction="maximize")
    except DuplicatedStudyError:
        return optuna.load_study(study_name=spec.study, storage=storage, sampler=grid_sampler), False
    # where people do not read it: a study system attr, through the storage's public API
    storage.set_study_system_attr(storage.get_study_id_from_name(spec.study), GRID_SYSTEM_ATTR, spec.grid())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # set_metric_names: experimental since Optuna 3.2
        study.set_metric_names([_objective(spec)])
    for key, value in _readable_grid(spec).items():
        study.set_user_attr(key, value)
    return study, True


def stored_grid(study: optuna.Study, storage: BaseStorage) -> dict:
    """The grid the study was made with (module doc); {} for a study not made by ``argbench study``."""
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))
    return attrs.get(GRID_SYSTEM_ATTR) or study.user_attrs.get(GRID_ATTR) or {}


def check_grid(spec: GridSpec, study: optuna.Study, storage: BaseStorage) -> None:
    """GridError unless the study holds `spec`'s grid: its cells, and every entry's config (a study made before
    configs were stored: its cells only)."""
    stored, mine = stored_grid(study, storage), spec.grid()
    if "configs" not in stored:  # a study made before configs were stored: its cells, not their configs
        mine.pop("configs")
    cells = {k: v for k, v in stored.items() if k != "configs"}
    if cells != {k: v for k, v in mine.items() if k != "configs"}:
        grid = {k: v for k, v in mine.items() if k != "configs"}
        raise GridError(f"study {spec.study!r} holds another grid ({json.dumps(cells)}); expected "
                        f"{json.dumps(grid)}: pick another --study name for this grid")
    if stored.get("configs", {}) != mine.get("configs", {}):
        raise GridError(f"study {spec.study!r}: {_config_change(stored['configs'], mine['configs'])} since the study "
                        "was made (registry or --set edited?); its cells must share one config per entry: restore "
                        "it, or pick another --study name")


def _config_change(stored: dict, now: dict) -> str:
    """The first difference between two {entry: config dict} maps, as "entry E: section.key was A, now B"."""
    for entry in stored.keys() | now.keys():
        old, new = stored.get(entry, {}), now.get(entry, {})
        for section in sorted(old.keys() | new.keys()):
            for key in sorted(old.get(section, {}).keys() | new.get(section, {}).keys()):
                a, b = old.get(section, {}).get(key, "<absent>"), new.get(section, {}).get(key, "<absent>")
                if a != b:
                    return f"entry {entry}: {section}.{key} was {a!r}, now {b!r}"
    return "the entries' configs changed"


def _objective(spec: GridSpec) -> str:
    """The objective's name: the entries' ``eval.primary`` (one when they agree) at the selected epoch."""
    primaries = sorted({cfg.get("eval", {}).get("primary", config.PRIMARY) for cfg in spec.configs.values()})
    return f"{' / '.join(primaries) or config.PRIMARY} (selected epoch)"


def _readable_grid(spec: GridSpec) -> dict[str, str]:
    """The grid as short texts for optuna-dashboard's study attributes."""
    return {"base": spec.base, "entries": ", ".join(spec.entries), "seeds": ", ".join(map(str, spec.seeds)),
            "overrides": " ".join(spec.overrides) or "none", "profile": spec.profile or "none",
            "split": spec.split, "objective": _objective(spec),
            "cells": f"{len(spec.cells)} = {len(spec.entries)} entries x {len(spec.seeds)} seeds"}


class _CellLineFilter(logging.Filter):
    """Drops Optuna's "Trial N finished with value ... parameters: {'entry': ..., 'seed': ...}. Best is trial M"
    lines: a grid cell's value is no step towards a best trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _CELL_LINE.match(record.getMessage())


_CELL_LINE = re.compile(r"Trial \d+ finished with value: .* and parameters: \{'entry': .*'seed': \d+\}\.")
_CELL_FILTER = _CellLineFilter()


def _quiet_cell_lines() -> None:
    # on the logger that emits the line (a filter on "optuna" would not see records of its children)
    optuna.logging.get_logger("optuna.study.study").addFilter(_CELL_FILTER)  # adding it again is a no-op


# --- claims, retries, dead workers -------------------------------------------------------------------------------

def taken_by(trial: optuna.Trial, cell: tuple[str, int]) -> int | None:
    """The number of another trial that has done `cell` or runs it with a lower number, else None."""
    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or cell_of(other) != cell or "duplicate_of" in other.user_attrs:
            continue
        if other.state == TrialState.COMPLETE or (other.state == TrialState.RUNNING and other.number < trial.number):
            return other.number
    return None


def queue_failed(spec: GridSpec, study: optuna.Study) -> set:
    """Queue one more trial for each cell whose trials all failed (and none is queued or running); returns
    those cells. Called by one process per command, before its workers start."""
    queued = set()
    for cell, state in cell_states(spec, study.get_trials(deepcopy=False)).items():
        if state == "failed":
            study.enqueue_trial(dict(zip(CELL_PARAMS, cell)))
            queued.add(cell)
    return queued


def requeue_if_failed(study: optuna.Study, number: int, requeued: set) -> None:
    """Queue trial `number`'s cell again if that trial failed and the cell is not in `requeued` (then added)."""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and cell_of(trial) not in requeued:
        study.enqueue_trial(dict(zip(CELL_PARAMS, cell_of(trial))))
        requeued.add(cell_of(trial))


def close_stale(spec: GridSpec, study: optuna.Study, storage: BaseStorage) -> None:
    """Fail the trials of dead workers (pid gone on this host at once, else Optuna's heartbeat rule; their MLflow
    runs end KILLED), then close every other stale MLflow run of the store, one line each on stderr."""
    from argbench.paths import default_tracking_uri
    from argbench.track import stale

    for number in close_stale_trials(study, storage):
        print(f"argbench: failed stale trial {number} of study {study.study_name}: its process on this host is gone",
              file=sys.stderr)
    stale.sweep(spec.tracking_uri or default_tracking_uri())


# --- the storage -------------------------------------------------------------------------------------------------

def grid_storage(spec: GridSpec) -> BaseStorage:
    """The study's Optuna storage with `spec`'s heartbeat and retry settings (close it with :func:`dispose`)."""
    return open_storage(spec.storage, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                        max_retry=spec.max_retry, tracking_uri=spec.tracking_uri)


def dispose(storage: BaseStorage) -> None:
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()  # close its database connections now, not at interpreter exit
