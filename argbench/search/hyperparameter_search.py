"""``argbench search``: hyperparameter search over one registry ablation, an Optuna study whose trials are tracked
MLflow runs.

The space searched is a YAML file of config keys and ranges (:mod:`argbench.search.space`, checked before any trial
runs); the study lives in an Optuna storage (:mod:`argbench.search.storage`: SQLite by default, PostgreSQL for workers
on several machines, heartbeats and retries of trials whose worker died). :func:`run_search` resolves the ablation,
loads the corpus once, then per trial: suggest values -> ``config.replace`` -> ``trainer.fit`` with two hooks, the
MLflow tracker (so a trial is logged like any ablation run, as a child of the search's parent run) and a pruning hook
that reports the primary metric from epoch 1 on (epoch 0 is the untrained model, the same for every trial) and stops
pruned trials. Re-running with the same study name continues the study.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from argbench import config
from argbench.errors import Terminated, raise_if_stopped
from argbench.experiments import registry
from argbench.search.space import SearchSpace, load_space  # also search's API
from argbench.search.storage import (
    close_stale_trials,
    label_study,
    open_storage,
    quiet_interrupts,
    record_trial,
    retried_trial_number,
    storage_url,
)
from argbench.track import stale
from argbench.train import trainer
from argbench.train.selection import best

PRUNERS = ("median", "hyperband", "none")
FIGURES = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")


# --- trials --------------------------------------------------------------------------------------------------------

def make_pruner(pruner: str | optuna.pruners.BasePruner, epochs: int) -> optuna.pruners.BasePruner:
    """"median" (after 5 complete trials, from epoch 1), "hyperband" (resources = epochs), "none", or a pruner."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=1)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner {pruner!r} is unknown; expected one of {', '.join(PRUNERS)}")

class _TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for a trial are seeded by ``seed`` + the trial's number. Trial numbers are handed
    out by the storage, one per trial, so workers sharing a study draw different values (one seed for all would
    draw the same ones), a continued study does not replay earlier draws, and the same study run again draws the
    same. The constant liar counts running trials as bad, so that TPE does not propose what another worker runs."""

    def __init__(self, seed: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(seed=seed, constant_liar=True)
        self._seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        for state in (self._rng, self._random_sampler._rng):
            state.rng.seed((self._seed + trial.number) % 2**32)


def trial_seeded_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of a search: TPE seeded per trial (:class:`_TrialSeededTPE`)."""
    return _TrialSeededTPE(seed)


class _PruningHook:
    """Trainer hook: reports the primary metric to the trial each evaluated epoch >= 1 and stops the run when
    the pruner says so, or when a Ctrl-C asked the threads to stop (``interrupted``)."""

    def __init__(self, trial: optuna.Trial, primary: str, interrupted: threading.Event):
        self.trial, self.primary, self.interrupted = trial, primary, interrupted
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool | None:
        if self.interrupted.is_set():
            return True
        value = metrics.get(self.primary)
        if epoch < 1 or value is None:  # epoch 0: untrained model; None: epoch not evaluated (eval.every)
            return None
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            return True
        return None


@dataclass
class _Objective:
    """One trial: suggest, train with tracker and pruning hook, return the best primary value over the trained
    epochs (>= 1)."""

    cfg: config.Config
    space: SearchSpace
    corpus: Any
    study_name: str
    parent_run_id: str
    tags: dict
    experiment: str
    tracking_uri: str | None
    interrupted: threading.Event
    started: list  # numbers of the trials this process ran

    def __call__(self, trial: optuna.Trial) -> float:
        from argbench.track.tracker import tracked_run

        self.started.append(trial.number)
        record_trial(trial)
        cfg = config.replace(self.cfg, **self.space.suggest(trial))
        retry_of = retried_trial_number(trial)
        tags = {**self.tags, "study": self.study_name, "trial.number": trial.number,
                **({"trial.retry_of": retry_of} if retry_of is not None else {})}
        hook = _PruningHook(trial, cfg.eval.primary, self.interrupted)
        with tracked_run(run_name=f"{self.study_name}-t{trial.number}", experiment=self.experiment,
                         tracking_uri=self.tracking_uri, tags=tags, parent_run_id=self.parent_run_id,
                         system_metrics=False, config=cfg) as tracker:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
            trial.set_user_attr("mlflow_parent_run_id", self.parent_run_id)
            state = "FAIL"  # until fit returns: an exception or Ctrl-C leaves this tag
            try:
                if self.interrupted.is_set():
                    raise KeyboardInterrupt
                raise_if_stopped()
                history = trainer.fit(cfg, self.corpus, [tracker, hook])
                tracker.finish(history)
                if self.interrupted.is_set():
                    raise KeyboardInterrupt  # inside the run: MLflow KILLED, Optuna FAIL
                state = "PRUNED" if hook.pruned_at is not None else "COMPLETE"
            finally:
                tracker.store.log(tracker.run_id, tags={"trial.state": state})
                if self.interrupted.is_set():
                    trial.study.stop()  # start no further trial (worker threads)
        if hook.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {hook.pruned_at}")
        # Trained epochs only: epoch 0 is the same untrained model in every trial, and counting it would give
        # every trial that never beats the start the same value, which tells the sampler nothing.
        trained = [m for m in history if m["epoch"] > 0]
        return best(trained or history, cfg.eval.primary)


# --- the search ----------------------------------------------------------------------------------------------------

def run_search(*, ablation: str = "baseline", space: str | os.PathLike = "default", trials: int = 8,
               timeout: float | None = None, study_name: str | None = None, storage: str | None = None,
               jobs: int = 1, pruner: str | optuna.pruners.BasePruner = "median", seed: int = 0,
               data: str | None = None, overrides: Sequence[str] = (), experiment: str = "argbench",
               tracking_uri: str | None = None, heartbeat_interval: int = 10, grace_period: int = 30,
               max_retry: int = 2, profile: str | None = None) -> dict:
    """Run ``trials`` more trials (or until ``timeout`` seconds) of study ``study_name`` (default
    ``<ablation>-<space>``, created or continued), maximising ``eval.primary``; returns the summary (see
    :func:`summary`). ``profile`` overlays ``ablations/profiles/<profile>.yaml`` as for ``ablation run`` (default:
    embedded on the generated sample, none on a real corpus); the space's values come on top of it. ``jobs`` > 1
    runs trials in threads sharing the CPU cores (torch threads split between them). Ctrl-C: running trials end
    FAIL, their MLflow runs and the parent KILLED, then KeyboardInterrupt."""
    from argbench.data.corpus import load_corpus, resolve_data

    search_space = load_space(space)  # before anything slow
    source = resolve_data(data)
    cfg, entry = registry.resolve(ablation, overrides, embedded=source.kind == "sample", profile=profile)
    chosen_pruner = make_pruner(pruner, cfg.train.epochs)
    if jobs > 1 and cfg.train.num_threads is None:
        cfg = config.replace(cfg, **{"train.num_threads": max(1, (os.cpu_count() or 1) // jobs)})
    corpus = load_corpus(source)  # once per process; every trial closes over it
    name = study_name or f"{ablation}-{search_space.name}"
    profiled = {"profile": profile} if profile else {}
    tags = {"ablation": ablation, "group": entry.group, "study": name, "space": search_space.name, **profiled}
    objective = _Objective(cfg, search_space, corpus, name, "", tags, experiment, tracking_uri, threading.Event(),
                           started=[])
    backend = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                           max_retry=max_retry, tracking_uri=tracking_uri)
    try:
        study = optuna.create_study(storage=backend, study_name=name, direction="maximize", load_if_exists=True,
                                    pruner=chosen_pruner)
        from argbench.track.tracker import default_tracking_uri

        # first the trials: their callback closes the trials' MLflow runs with the trial's state
        for number in close_stale_trials(study, backend):
            print(f"argbench: failed stale Optuna trial {number} of study {study.study_name}: its process on this "
                  "host is gone", file=sys.stderr)
        stale.sweep(tracking_uri or default_tracking_uri())
        label_study(study, cfg.eval.primary, {"ablation": ablation, "base": entry.parent or "base.yaml",
                                              "data.hash": corpus.hash, "space": search_space.name,
                                              "space.file": str(search_space.path), **profiled})
        study.sampler = trial_seeded_sampler(seed)
        settings = {"trials": trials, "timeout": timeout, "jobs": jobs, "seed": seed,
                    "pruner": pruner if isinstance(pruner, str) else type(pruner).__name__}
        return _optimize_tracked(study, objective, storage_url(storage), settings)
    finally:
        if isinstance(backend, RDBStorage):
            backend.engine.dispose()  # close its database connections now, not at interpreter exit


def _optimize_tracked(study: optuna.Study, objective: _Objective, storage: str, settings: dict) -> dict:
    """``study.optimize`` inside the parent MLflow run, which ends with the study's best values and figures."""
    from argbench.track.redaction import redact
    from argbench.track.tracker import tracked_run

    storage = redact(storage)
    with tracked_run(run_name=f"search-{study.study_name}", experiment=objective.experiment,
                     tracking_uri=objective.tracking_uri, config=objective.cfg,
                     tags={**objective.tags, "storage": storage, "search": "parent"}) as parent:
        objective.parent_run_id = parent.run_id
        parent.store.log(parent.run_id, params={
            "search.study": study.study_name, "search.storage": storage,
            "search.space": str(objective.space.path), **{f"search.{k}": v for k, v in settings.items()}})
        parent.store.log_text(parent.run_id, objective.space.path.read_text(), "search_space.yaml")
        with _stop_on_ctrl_c(objective.interrupted, threads=settings["jobs"] > 1) as stopped_by, \
                quiet_interrupts():
            try:  # a trial that raises (a bug, not a NaN loss or an invalid combination) stops the search
                study.optimize(objective, n_trials=settings["trials"], timeout=settings["timeout"],
                               n_jobs=settings["jobs"], catch=(trainer.NonFiniteLoss, config.ConfigError))
                if objective.interrupted.is_set():
                    raise Terminated() if signal.SIGTERM in stopped_by else KeyboardInterrupt()
                raise_if_stopped()  # a Ctrl-C swallowed between two trials still stops the search
            except BaseException:
                _fail_running(study, objective.started)
                raise
        result = summary(study, objective.started, storage=storage, parent_run_id=parent.run_id)
        _log_results(parent, study, result)
    return result


@contextmanager
def _stop_on_ctrl_c(event: threading.Event, threads: bool):
    """With worker threads, the first Ctrl-C (or SIGTERM) only sets ``event``: each running trial stops after its
    current epoch and ends FAIL (a signal reaches only the main thread, which is waiting on the workers); a second
    one interrupts as usual. Without threads, Ctrl-C raises KeyboardInterrupt inside the trial at once (SIGTERM:
    :class:`argbench.errors.Terminated`). Yields the list of signals received."""
    received: list[int] = []
    if not threads or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum, frame):
        if event.is_set():
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        event.set()
        received.append(signum)
        print("argbench search: stopping each running trial after its current epoch (Ctrl-C again to force)",
              file=sys.stderr)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail_running(study: optuna.Study, numbers: list[int]) -> None:
    """Mark FAIL every trial of ``numbers`` still RUNNING (interrupted between Optuna's ask and tell)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number in numbers:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def summary(study: optuna.Study, numbers: list[int], *, storage: str, parent_run_id: str) -> dict:
    """study, storage (redacted), n_trials {state: count} over the whole study, best_value / best_params /
    best_trial (None while no trial completed), parent_run_id, trials_run (by this call) and
    seconds_per_trial (mean wall time of this call's finished trials)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    mine = [t for t in trials if t.number in numbers and t.datetime_complete and t.datetime_start]
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in mine]
    return {"study": study.study_name, "storage": storage,
            "n_trials": dict(sorted(Counter(t.state.name for t in trials).items())),
            "best_value": best.value if best else None, "best_params": dict(best.params) if best else None,
            "best_trial": best.number if best else None, "parent_run_id": parent_run_id,
            "trials_run": len(numbers), "seconds_per_trial": sum(seconds) / len(seconds) if seconds else None}


def _log_results(parent, study: optuna.Study, result: dict) -> None:
    """Best value, ``best.<key>`` params and the study's plotly figures (HTML artifacts) on the parent run."""
    store, run_id = parent.store, parent.run_id
    counts = {f"search.n_{state.lower()}": n for state, n in result["n_trials"].items()}
    store.log(run_id, params={f"best.{k}": v for k, v in (result["best_params"] or {}).items()},
              tags={"best_trial": result["best_trial"]})
    metrics = {**counts, **({"best_value": result["best_value"]} if result["best_value"] is not None else {})}
    store.log_metrics(run_id, metrics)
    for name, figure in study_figures(study).items():
        store.log_text(run_id, figure.to_html(include_plotlyjs="cdn"), f"figures/{name}.html")


def study_figures(study: optuna.Study) -> dict:
    """{name: plotly figure} of :data:`FIGURES`; none without a complete trial, no importances below two."""
    import optuna.visualization as vis

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = {"optimization_history": vis.plot_optimization_history,
             "intermediate_values": vis.plot_intermediate_values,
             "param_importances": vis.plot_param_importances,
             "parallel_coordinate": vis.plot_parallel_coordinate}
    wanted = [] if n_complete == 0 else [n for n in FIGURES if n != "param_importances" or n_complete >= 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return {name: plots[name](study) for name in wanted}
