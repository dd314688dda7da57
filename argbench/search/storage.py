"""Where Optuna studies are stored, and how the trial of a worker that died is failed, closed and retried.

Storage URLs: an SQLAlchemy URL (default ``sqlite:///<repo>/mlruns/optuna.db``; ``postgresql://`` is read as
``postgresql+psycopg://``; use PostgreSQL for workers on several machines) or ``journal:///path.log`` (Optuna's
journal file, for several processes on one machine; it has no heartbeat, so a killed worker's trial stays RUNNING
there). With an RDB storage, trials send heartbeats: a trial whose worker died is failed by the next worker that
starts a trial, its MLflow runs (user attrs ``mlflow_run_id`` / ``mlflow_parent_run_id``) are closed as KILLED, and
it is retried (system attr ``failed_trial`` = the number of the trial it repeats).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from argbench.paths import default_storage

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # shown in help; resolved by argbench.paths.default_storage
JOURNAL_SCHEME = "journal://"


def storage_url(url: str | None) -> str:
    """``url`` as SQLAlchemy takes it (default: the repo's ``mlruns/optuna.db``); postgres uses psycopg 3."""
    url = url or default_storage()
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def open_storage(url: str | None, *, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2,
                 tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``: ``journal:///path`` -> journal file; else an RDB with heartbeats, whose
    stale trials are failed, their MLflow runs (at ``tracking_uri``) closed, and retried up to ``max_retry``."""
    url = storage_url(url)
    if url.startswith(JOURNAL_SCHEME):
        path = Path(url.removeprefix(JOURNAL_SCHEME))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats and the retry callback are "experimental" in Optuna
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _rdb_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                            heartbeat_stale_trial_callback=_RetryStaleTrial(max_retry, tracking_uri))


def _rdb_storage(url: str, attempts: int = 5, **kwargs) -> RDBStorage:
    """RDBStorage(url), tried again while another worker creates the same tables: Optuna's table creation is
    not atomic, so of two workers starting on an empty database one sees "already exists"."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * attempt)
    return RDBStorage(url, **kwargs)


class _RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died, which first closes that worker's MLflow runs as KILLED
    (nobody else can: the process that opened them is gone)."""

    def __init__(self, max_retry: int, tracking_uri: str | None):
        super().__init__(max_retry=max_retry)
        self.tracking_uri = tracking_uri

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from argbench.track.store import Store

        store = Store(self.tracking_uri)
        for attr in ("mlflow_run_id", "mlflow_parent_run_id"):
            run_id = trial.user_attrs.get(attr)
            if run_id:  # a run of another tracking store is not ours to close: end_if_running leaves it alone
                store.end_if_running(run_id, "KILLED", tags={"trial.state": "FAIL"} if attr == "mlflow_run_id" else {})
        super().__call__(study, trial)


def retried_trial_number(trial: optuna.Trial) -> int | None:
    """The number of the trial ``trial`` repeats (its worker died), or None; Optuna 5's Trial has no system
    attrs, so they are read from the study's frozen copy."""
    (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
