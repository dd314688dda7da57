"""A group of ablations × seeds as one resumable Optuna study that many workers share: ``argbench study``.

The *grid* is a base recipe and the distinct members of a registry group (or of named entries) over that base
(:func:`argbench.experiments.registry.distinct_members`), times ``seeds`` seeds; each (entry, seed) pair is a
*cell*. The study is an Optuna study with a :class:`optuna.samplers.GridSampler` over the parameters ``entry`` and
``seed`` on any storage :mod:`argbench.search.storage` opens (SQLite, journal file, PostgreSQL for several
machines). Every worker — the ``--jobs`` processes of one command, or the same command on other machines — loops:
fail stale trials, then take the next open cell as an Optuna trial, train it and report its primary metric at its
selected epoch (:func:`argbench.train.selection.best`, the objective). So:

* a cell is claimed by exactly one trial: the first N trial numbers are the N cells (Optuna's GridSampler assigns
  grid id = trial number), retries are queued trials that one worker pops atomically; a trial that still finds its
  cell done or taken by a lower trial (two workers asking at the same moment) ends PRUNED with user attr
  ``duplicate_of`` without training, and is counted nowhere;
* a worker killed mid-cell stops sending heartbeats (RDB storages): the next worker fails that trial, closes its
  MLflow run as KILLED and queues the same cell again (:class:`argbench.search.storage._RetryStaleTrial`);
* running the command again resumes: done cells are never run twice; a cell that failed with an error is queued
  once more per invocation;
* a study's grid (entries, seeds, overrides, profile) is fixed when it is created (study user attr ``grid``); the
  same study name with another grid is refused.

MLflow: one parent run per study (created with the study; its id is the study user attr ``mlflow_parent_run_id``)
and one child run per cell, trained by :func:`argbench.experiments.runner.train_seed` like any ablation run (same
per-epoch metrics and per-query ranks), run name ``entry@base`` (the base's own cells: its name), tags ``entry``,
``base``, ``seed``, ``study``. When the last cell is done the significance table — every member against the base,
per task, paired by query with the seeds pooled, Holm over members × tasks, one table per evaluation view, each
cell's ranks those of its selected epoch (``GridSpec.epoch`` "last": its last epoch's) — is printed and logged on
the parent (``significance/<view>.csv`` and ``.html``; ``significance/last/...`` for the last epochs) and the parent
ends FINISHED; ``argbench study report NAME`` does the same at any time from the cells done so far."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.trial import TrialState

from argbench import config
from argbench.data.copies import VIEWS  # official, dedup, unseen: one table (one Holm family) each
from argbench.errors import UserError
from argbench.experiments import registry
from argbench.search.storage import close_stale_trials, open_storage, record_trial, storage_url
from argbench.train import trainer as train
from argbench.train.selection import SELECTED

CELL_PARAMS = ("entry", "seed")
PARENT_ATTR = "mlflow_parent_run_id"
GRID_ATTR = "grid"
PARENT_WAIT_S = 120  # how long a worker that did not create the study waits for its creator's parent run


class GridError(UserError):
    """A grid that cannot be run: no member left to compare, or a study name already holding another grid."""


@dataclass(frozen=True)
class GridSpec:
    """Everything a worker needs to run cells of one study (picklable: it travels to worker processes)."""

    study: str
    base: str
    members: list[str]
    seeds: list[int]
    group: str | None = None
    overrides: list[str] = field(default_factory=list)
    profile: str | None = None
    data: str | None = None
    storage: str | None = None
    experiment: str = "argbench"
    tracking_uri: str | None = None
    split: str = "test"
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    epoch: str = SELECTED  # the epoch of each cell whose ranks the table pairs: "selected" or "last"
    configs: dict = field(default_factory=dict)  # entry -> resolved config (to_dict), fixed when planned

    @property
    def entries(self) -> list[str]:
        return [self.base, *self.members]

    @property
    def cells(self) -> list[tuple[str, int]]:
        return [(e, s) for e in self.entries for s in self.seeds]

    def grid(self) -> dict:
        """What fixes the study's cells and their configs (stored with the study, compared on every start): the
        resolved config of every entry too, so that a registry edited mid-study cannot make later cells train
        something else under the same name."""
        return {"entries": self.entries, "seeds": self.seeds, "overrides": self.overrides, "profile": self.profile,
                "configs": self.configs}


def plan(names: Sequence[str] = (), *, group: str | None = None, base: str | None = None, seeds: int = 1,
         study: str | None = None, overrides: Sequence[str] = (), profile: str | None = None,
         data: str | None = None, **settings) -> GridSpec:
    """The grid of `names` (or of registry `group`) over `base` (default ``baseline``) × `seeds` seeds.

    Seeds are the base config's ``train.seed`` and the next ``seeds - 1``. Members that equal the base (or an earlier
    member) under it are left out (reported as aliases by ``ablation show --base``). GridError if none is left.
    The profile defaults to ``embedded`` on the generated sample corpus, as for ``ablation run``.
    """
    from argbench.data.corpus import resolve_data
    from argbench.experiments.runner import data_profile

    if bool(names) == bool(group):
        raise GridError("argbench study: give registry entry names or --group G (one of the two); "
                        f"groups are {', '.join(registry.groups())}")
    if seeds < 1:
        raise GridError(f"--seeds {seeds}: expected at least 1")
    base = base or registry.DEFAULT_BASE
    if group is not None and group not in registry.groups():
        raise GridError(f"--group {group!r}: no such group; groups are {', '.join(registry.groups())}")
    candidates = registry.groups()[group] if group else list(names)
    members = registry.distinct_members(candidates, base)
    if not members:
        raise GridError(f"{'group ' + group if group else ', '.join(names)}: every entry equals the base {base!r} "
                        "under it; nothing to compare")
    profile = data_profile(resolve_data(data), profile)
    configs = {e: registry.resolve(e, overrides, base=base, profile=profile)[0] for e in [base, *members]}
    first = configs[base].train.seed
    name = study or f"{group or '+'.join(members)}@{base}-{seeds}seeds"
    return GridSpec(study=name, base=base, members=members, seeds=[first + i for i in range(seeds)], group=group,
                    overrides=list(overrides), profile=profile, data=data,
                    configs={e: config.to_dict(cfg) for e, cfg in configs.items()}, **settings)


# --- cells and their states --------------------------------------------------------------------------------------

def _cell(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
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
        cell, state = _cell(trial), by_state.get(trial.state)
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
    grid = _grid_cells(spec)
    return grid[grid_id] if grid_id is not None and grid_id < len(grid) else None


def _grid_cells(spec: GridSpec) -> list[tuple[str, int]]:
    """The cells in GridSampler's grid-id order (sorted parameter names, values in the order given)."""
    sampler = _sampler(spec)
    names = sorted(sampler._search_space)  # the order is GridSampler's: read, not assumed
    return [(values[names.index("entry")], int(values[names.index("seed")])) for values in sampler._all_grids]


def _sampler(spec: GridSpec) -> optuna.samplers.GridSampler:
    return optuna.samplers.GridSampler({"entry": spec.entries, "seed": spec.seeds}, seed=0)


# --- the study and its parent run --------------------------------------------------------------------------------

def _storage(spec: GridSpec):
    return open_storage(spec.storage, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                        max_retry=spec.max_retry, tracking_uri=spec.tracking_uri)


def open_study(spec: GridSpec, storage) -> tuple[optuna.Study, str]:
    """The study of `spec` and its MLflow parent run id, both created by whichever worker comes first (creating
    an Optuna study is atomic, so exactly one does); the others check the grid and wait for the parent's id."""
    sampler = _sampler(spec)
    try:
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=sampler, direction="maximize")
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler)
        return study, _existing_parent(study, spec)
    study.set_user_attr(GRID_ATTR, spec.grid())
    parent = _create_parent_run(spec)
    study.set_user_attr(PARENT_ATTR, parent)
    return study, parent


def _existing_parent(study: optuna.Study, spec: GridSpec) -> str:
    deadline = time.monotonic() + PARENT_WAIT_S
    while PARENT_ATTR not in study.user_attrs:  # its creator is making the parent run right now
        if time.monotonic() > deadline:
            raise GridError(f"study {spec.study!r} has no MLflow parent run after {PARENT_WAIT_S} s (its creator "
                            "died before making it?); delete the study or pick another --study name")
        time.sleep(1)
    stored, mine = study.user_attrs.get(GRID_ATTR) or {}, spec.grid()
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
    return study.user_attrs[PARENT_ATTR]


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


def _create_parent_run(spec: GridSpec) -> str:
    """The study's MLflow parent run, left RUNNING until the last cell is done (workers come and go)."""
    from argbench.track.tracker import open_run

    tags = {"study": spec.study, "base": spec.base, "group": spec.group or "none", "grid": "parent",
            "profile": spec.profile or "research", "storage": storage_url(spec.storage)}
    params = {"study.entries": ",".join(spec.entries), "study.seeds": ",".join(map(str, spec.seeds)),
              "study.overrides": " ".join(spec.overrides) or "none", "study.split": spec.split}
    return open_run(run_name=f"study-{spec.study}", experiment=spec.experiment, tracking_uri=spec.tracking_uri,
                    tags=tags, params=params)


# --- one worker ----------------------------------------------------------------------------------------------------

@dataclass
class _CellObjective:
    """Train the trial's cell as a child run of the study's parent; its value is the cell's best primary metric."""

    spec: GridSpec
    configs: dict
    tags: dict  # entry -> its cell_tags, fixed when the worker starts
    corpus: object
    parent_run_id: str
    ran: list = field(default_factory=list)  # numbers of the trials this worker trained

    def __call__(self, trial: optuna.Trial) -> float:
        from argbench.experiments.runner import train_seed

        entry = trial.suggest_categorical("entry", self.spec.entries)
        seed = trial.suggest_categorical("seed", self.spec.seeds)
        taken = _taken_by(trial, (entry, int(seed)))
        if taken is not None:
            trial.set_user_attr("duplicate_of", taken)
            raise optuna.TrialPruned(f"cell {entry}/seed {seed} is trial {taken}'s")
        self.ran.append(trial.number)
        record_trial(trial)  # host and pid: a worker killed here is found dead at once by the next command
        cfg = config.replace(self.configs[entry], **{"train.seed": seed})
        tags = {**self.tags[entry], "entry": entry, "seed": seed,
                "study": self.spec.study, "trial.number": trial.number}
        result = train_seed(registry.run_name(entry, self.spec.base), cfg, self.corpus, tags, None,
                            experiment=self.spec.experiment, tracking_uri=self.spec.tracking_uri, hooks=(),
                            resume=False, log_model=False, progress=False, parent_run_id=self.parent_run_id,
                            on_open=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        return result.best


def _taken_by(trial: optuna.Trial, cell: tuple[str, int]) -> int | None:
    """The number of another trial that has done `cell` or runs it with a lower number, else None."""
    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or _cell(other) != cell or "duplicate_of" in other.user_attrs:
            continue
        if other.state == TrialState.COMPLETE or (other.state == TrialState.RUNNING and other.number < trial.number):
            return other.number
    return None


def work(spec: GridSpec, threads: int | None = None) -> list[int]:
    """Run open cells of the study until none is left to take; returns the trial numbers this worker trained.

    Loads the corpus and resolves the entries' configs once. A cell that fails with an error (not a dead worker)
    is queued again at most once per call, so a cell that always fails cannot loop forever."""
    from argbench.data.corpus import load_corpus, resolve_data
    from argbench.experiments.runner import cell_tags

    configs = {e: config.from_dict(spec.configs[e], f"study {spec.study} entry {e}") for e in spec.entries}
    if threads and not any(o.startswith("train.num_threads=") for o in spec.overrides):  # --set wins
        configs = {e: config.replace(cfg, **{"train.num_threads": threads}) for e, cfg in configs.items()}
    tags = {e: cell_tags(e, spec.base, spec.profile) for e in spec.entries}
    corpus = load_corpus(resolve_data(spec.data))
    storage = _storage(spec)
    try:
        study, parent = open_study(spec, storage)
        objective = _CellObjective(spec, configs, tags, corpus, parent)
        requeued: set = set()
        while True:
            _close_stale(spec, study, storage)  # a dead worker's cell: FAIL, its run KILLED, queued again below
            states = cell_states(spec, study.get_trials(deepcopy=False))
            for cell, state in states.items():
                if state == "failed" and cell not in requeued:
                    study.enqueue_trial(dict(zip(CELL_PARAMS, cell)))
                    requeued.add(cell)
                    states[cell] = "waiting"
            if not any(state in ("new", "waiting") for state in states.values()):
                return objective.ran
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.optimize(objective, n_trials=1, catch=(train.NonFiniteLoss, config.ConfigError))
    finally:
        _dispose(storage)


def _close_stale(spec: GridSpec, study: optuna.Study, storage) -> None:
    """Fail the trials of dead workers (pid gone on this host at once, else Optuna's heartbeat rule; their MLflow
    runs end KILLED), then close every other stale MLflow run of the store, one line each on stderr."""
    from argbench.paths import default_tracking_uri
    from argbench.track import stale

    for number in close_stale_trials(study, storage):
        print(f"argbench: failed stale trial {number} of study {study.study_name}: its process on this host is gone",
              file=sys.stderr)
    stale.sweep(spec.tracking_uri or default_tracking_uri())


def _dispose(storage) -> None:
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()  # close its database connections now, not at interpreter exit


def _worker_process(spec_fields: dict, threads: int | None, out) -> None:
    """Entry point of a ``--jobs`` worker process (spawned: a fresh interpreter, no forked torch state)."""
    try:
        out.put(("ok", work(GridSpec(**spec_fields), threads)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides the exit status
        out.put(("error", f"{type(err).__name__}: {err}"))


# --- the command ---------------------------------------------------------------------------------------------------

def run_study(spec: GridSpec, *, jobs: int = 1) -> dict:
    """Run the study's open cells with `jobs` worker processes here (1 = in this process), then, if every cell is
    done, log and return the significance table; returns :func:`summary`'s dict with ``ran_now``."""
    if jobs < 1:
        raise GridError(f"--jobs {jobs}: expected at least 1")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    storage = _storage(spec)
    try:
        open_study(spec, storage)  # study and parent exist before any worker starts: no race between them
    finally:
        _dispose(storage)
    if jobs == 1:
        ran = work(spec)
    else:
        ran = _run_processes(spec, jobs, threads)
    return {**report(spec), "ran_now": len(ran)}


def _run_processes(spec: GridSpec, jobs: int, threads: int) -> list[int]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_worker_process, args=(asdict(spec), threads, results)) for _ in range(jobs)]
    for w in workers:
        w.start()
    try:
        outcomes = [results.get() for _ in workers]
    finally:
        for w in workers:
            w.join()
    errors = [detail for kind, detail in outcomes if kind == "error"]
    if errors:
        raise RuntimeError(f"{len(errors)} of {jobs} study workers failed: {'; '.join(errors)}")
    return [number for _, ran in outcomes for number in ran]


def report(spec: GridSpec) -> dict:
    """The study's state and, once every cell is done, its significance tables (also logged on the parent run,
    which then ends FINISHED). JSON-ready: see :func:`summary`."""
    storage = _storage(spec)
    try:
        study, parent = open_study(spec, storage)
        _close_stale(spec, study, storage)
        trials = study.get_trials(deepcopy=False)
    finally:
        _dispose(storage)
    states = cell_states(spec, trials)
    complete = [c for c, s in states.items() if s == "done"]
    tables = {}
    if len(complete) == len(states):
        runs = _cell_runs(trials)
        tables = {view: _table(spec, runs, view) for view in VIEWS}
        _log_tables(spec, parent, tables)
    return summary(spec, states, parent, tables)


def _cell_runs(trials) -> dict[str, list[str]]:
    """{entry: MLflow run ids of its COMPLETE cells, by seed}."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs:
            entry, seed = _cell(t)
            runs.setdefault(entry, []).append((seed, t.user_attrs["mlflow_run_id"]))
    return {entry: [run for _, run in sorted(pairs)] for entry, pairs in runs.items()}


def _table(spec: GridSpec, runs: dict[str, list[str]], view: str) -> dict:
    """A :func:`argbench.analysis.significance.group_table`-shaped result of every member against the base in `view`."""
    from argbench.analysis import significance

    rows = significance.members_table(runs[spec.base], {m: runs[m] for m in spec.members}, split=spec.split,
                                      view=view, epoch=spec.epoch, experiment=spec.experiment,
                                      tracking_uri=spec.tracking_uri)
    return {"group": spec.study, "baseline": spec.base, "baseline_run": spec.base, "split": spec.split,
            "metric": "acc@1", "view": view, "epoch": spec.epoch, "rows": rows, "missing": []}


def _log_tables(spec: GridSpec, parent: str, tables: dict) -> None:
    """Each view's table on the parent run as CSV and HTML, the cell count as a metric; the parent FINISHED."""
    import pandas as pd

    from argbench.analysis import significance
    from argbench.track.store import Store

    store = Store(spec.tracking_uri)
    folder = "significance" if spec.epoch == SELECTED else f"significance/{spec.epoch}"
    for view, table in tables.items():
        store.log_text(parent, pd.DataFrame(table["rows"]).to_csv(index=False), f"{folder}/{view}.csv")
        html = significance.table_figure(table).to_html(include_plotlyjs="inline")
        store.log_text(parent, html, f"{folder}/{view}.html")
    store.log_metrics(parent, {"study/cells_complete": len(spec.cells)})
    store.end_if_running(parent, "FINISHED")


def summary(spec: GridSpec, states: dict, parent: str, tables: dict) -> dict:
    """``{"study", "cells", "complete", "failed", "running", "parent_run_id", "split", "epoch", "table": [{"view",
    "member", "task", "a", "b", "delta", "ci": [lo, hi], "p_value", "p_holm", "significant", "seeds_a", "seeds_b",
    "n"}]}``; the table is empty until every cell is done."""
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "failed", "running")}
    rows = [{"view": view, "member": r["ablation"], **{k: v for k, v in r.items() if k != "ablation"}}
            for view, table in tables.items() for r in table["rows"]]
    return {"study": spec.study, "base": spec.base, "members": spec.members, "seeds": spec.seeds,
            "cells": len(states), "complete": counts["done"], "failed": counts["failed"],
            "running": counts["running"], "parent_run_id": parent, "split": spec.split, "epoch": spec.epoch,
            "table": rows,
            "text": [significance_text(t) for t in tables.values()]}


def significance_text(table: dict) -> str:
    from argbench.analysis.significance import format_table

    return f"view {table['view']}\n{format_table(table)}"
def spec_of_study(name: str, *, storage: str | None = None, **settings) -> GridSpec:
    """The GridSpec of existing study `name`, read from its stored grid (for ``argbench study report NAME``)."""
    backend = _storage(GridSpec(study=name, base="", members=[], seeds=[], storage=storage))
    try:
        try:
            stored = optuna.load_study(study_name=name, storage=backend).user_attrs.get(GRID_ATTR)
        except KeyError:
            raise GridError(f"no study {name!r} in storage {storage_url(storage)}; expected the --study name "
                            "printed by `argbench study`") from None
    finally:
        _dispose(backend)
    if not stored:
        raise GridError(f"study {name!r} was not made by `argbench study` (it has no grid)")
    entries = stored["entries"]
    return GridSpec(study=name, base=entries[0], members=entries[1:], seeds=stored["seeds"],
                    overrides=stored["overrides"], profile=stored["profile"], storage=storage,
                    configs=stored.get("configs", {}), **settings)
