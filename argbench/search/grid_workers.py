"""The workers of a grid study. Each loops until no cell is open: fail the trials of dead workers, take the next
open cell as an Optuna trial (:mod:`argbench.search.cell_queue`), train it and report its primary metric at its
selected epoch (:func:`argbench.train.selection.best`, the objective).

A cell is trained by :func:`argbench.experiments.runner.train_seed` like any ablation run (same per-epoch metrics and
per-query ranks), as a child run of the study's parent (:mod:`argbench.search.parent_run`): run name ``entry@base``
(the base's own cells: its name), tags ``entry``, ``base``, ``seed``, ``study``. ``--jobs N`` runs N worker
processes on this machine; the same command on other machines adds more."""

from __future__ import annotations

import multiprocessing
import warnings
from dataclasses import asdict, dataclass, field

import optuna
from optuna.exceptions import ExperimentalWarning

from argbench import config
from argbench.errors import RunError
from argbench.experiments import registry
from argbench.search.cell_queue import (
    cell_states,
    close_stale,
    dispose,
    grid_storage,
    queue_failed,
    requeue_if_failed,
    taken_by,
)
from argbench.search.grid_plan import GridSpec
from argbench.search.parent_run import open_study
from argbench.search.storage import quiet_interrupts, record_trial
from argbench.train.trainer import NonFiniteLoss


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
        taken = taken_by(trial, (entry, int(seed)))
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


def work(spec: GridSpec, threads: int | None = None, requeue_failed: bool = True) -> list[int]:
    """Run open cells of the study until none is left to take; returns the trial numbers this worker trained.

    Loads the corpus and resolves the entries' configs once. A cell that failed with an error (not a dead
    worker) is queued again once per call: with ``requeue_failed`` those that failed before the call (the parent
    of ``--jobs`` workers does that once for all of them, :func:`run_workers`), and each cell whose trial failed
    in this worker (it alone saw it fail), so a cell that always fails cannot loop forever and no cell is queued
    twice. A dead worker's cell is queued by whoever fails its trial
    (:func:`~argbench.search.cell_queue.close_stale`)."""
    from argbench.data.corpus import load_corpus, resolve_data
    from argbench.experiments.runner import cell_tags

    configs = {e: config.from_dict(spec.configs[e], f"study {spec.study} entry {e}") for e in spec.entries}
    if threads and not any(o.startswith("train.num_threads=") for o in spec.overrides):  # --set wins
        configs = {e: config.replace(cfg, **{"train.num_threads": threads}) for e, cfg in configs.items()}
    tags = {e: cell_tags(e, spec.base, spec.profile) for e in spec.entries}
    corpus = load_corpus(resolve_data(spec.data))
    storage = grid_storage(spec)
    try:
        study, parent = open_study(spec, storage)
        objective = _CellObjective(spec, configs, tags, corpus, parent)
        requeued: set = set()
        close_stale(spec, study, storage)  # a dead worker's cell: FAIL, its run KILLED, queued again
        if requeue_failed:
            requeued |= queue_failed(spec, study)
        while True:
            states = cell_states(spec, study.get_trials(deepcopy=False))
            if not any(state in ("new", "waiting") for state in states.values()):
                return objective.ran
            ran = len(objective.ran)
            with warnings.catch_warnings(), quiet_interrupts():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.optimize(objective, n_trials=1, catch=(NonFiniteLoss, config.ConfigError))
            for number in objective.ran[ran:]:  # the cell this worker just trained
                requeue_if_failed(study, number, requeued)
            close_stale(spec, study, storage)
    finally:
        dispose(storage)


def _worker_process(spec_fields: dict, threads: int | None, out) -> None:
    """Entry point of a ``--jobs`` worker process (spawned: a fresh interpreter, no forked torch state); failed
    cells from before the command were queued by the parent."""
    try:
        out.put(("ok", work(GridSpec(**spec_fields), threads, requeue_failed=False)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides the exit status
        out.put(("error", f"{type(err).__name__}: {' '.join(str(err).split())}"))


def run_workers(spec: GridSpec, jobs: int, threads: int) -> list[int]:
    """Run ``jobs`` worker processes until no cell is open. Before they start, this process alone fails the
    trials of dead workers and queues one retry per failed cell, so that workers starting together never queue
    a cell twice; a worker that fails is one line (RunError), never a traceback."""
    storage = grid_storage(spec)
    try:
        study = optuna.load_study(study_name=spec.study, storage=storage)
        close_stale(spec, study, storage)
        queue_failed(spec, study)
    finally:
        dispose(storage)
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
        raise RunError(f"{len(errors)} of {jobs} study workers failed: {'; '.join(errors)}; rerun the same command "
                       "to resume the study")
    return [number for _, ran in outcomes for number in ran]
