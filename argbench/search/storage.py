"""Where Optuna studies are stored, and how the trial of a worker that died is failed, closed and retried.

Storage URLs: an SQLAlchemy URL (default ``sqlite:///<repo>/mlruns/optuna.db``; ``postgresql://`` is read as
``postgresql+psycopg://``; use PostgreSQL for workers on several machines) or ``journal:///path.log`` (Optuna's
journal file, for several processes on one machine; it has no heartbeat, so a killed worker's trial stays RUNNING
there). With an RDB storage, trials send heartbeats: a trial whose worker died is failed by the next worker that
starts a trial, its MLflow runs (user attrs ``mlflow_run_id`` / ``mlflow_parent_run_id``) are closed as KILLED, and
it is retried (system attr ``failed_trial`` = the number of the trial it repeats).

Workers that start together may look at the same dead trial: failing it is one conditional write (RUNNING ->
FAIL), so exactly one of them fails it, closes its runs and queues its retry; the others see it done. A retry
does not inherit the dead worker's host and pid: the worker that takes it records its own.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from argbench.errors import UserError
from argbench.paths import default_storage
from argbench.track.stale import HOST_TAG, PID_TAG, pid_alive
from argbench.track.store_init import first_use_lock

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # shown in help; resolved by argbench.paths.default_storage
JOURNAL_SCHEME = "journal://"


def storage_url(url: str | None) -> str:
    """``url`` as SQLAlchemy takes it (default: the repo's ``mlruns/optuna.db``); postgres uses psycopg 3."""
    url = url or default_storage()
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def missing_storage(url: str | None) -> Path | None:
    """The file of a SQLite or journal storage ``url`` (default: the project's) when it does not exist (opening it
    would create it), else None; None for a database server."""
    url = storage_url(url)
    for scheme in ("sqlite:///", JOURNAL_SCHEME):
        if url.startswith(scheme) and ":memory:" not in url:
            path = Path(url.removeprefix(scheme).split("?")[0])
            return None if path.exists() else path
    return None


def open_storage(url: str | None, *, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2,
                 tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``: ``journal:///path`` -> journal file; else an RDB with heartbeats, whose
    stale trials are failed, their MLflow runs (at ``tracking_uri``) closed, and retried up to ``max_retry``."""
    url = storage_url(url)
    if url.startswith(JOURNAL_SCHEME):
        path = Path(url.removeprefix(JOURNAL_SCHEME))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    from sqlalchemy.exc import ArgumentError, DBAPIError

    with warnings.catch_warnings(), _first_use(url):  # heartbeats and the retry callback are "experimental"
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return _rdb_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                heartbeat_stale_trial_callback=_RetryStaleTrial(max_retry, tracking_uri))
        except (DBAPIError, ArgumentError, ImportError) as err:  # unreachable server, bad URL, missing driver
            from argbench.track.redaction import redact

            reason = " ".join(str(getattr(err, "orig", None) or err).split())
            raise UserError(f"cannot open the Optuna storage {redact(url)}: {redact(reason)}; expected a "
                            "reachable database (--storage)") from err


@contextmanager
def _first_use(url: str):
    """For a SQLite storage, hold the lock beside its file (``<db>.init.lock``) while it is opened: Optuna creates
    its tables on first use, not atomically, and of several workers starting on a new file the losers would meet
    SQLite's "table studies already exists". Other databases need no lock (:func:`_rdb_storage`)."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        yield
        return
    db = Path(url.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with first_use_lock(db.parent / f"{db.name}.init.lock"):
        yield


def _rdb_storage(url: str, attempts: int = 5, **kwargs) -> RDBStorage:
    """RDBStorage(url), tried again while another worker creates the same tables on a database server: Optuna's
    table creation is not atomic, so of two workers starting on an empty database one sees "already exists"."""
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
        retry = copy.copy(trial)  # the retry is queued with these user attrs: not the dead worker's host and pid
        retry.user_attrs = {k: v for k, v in trial.user_attrs.items()
                            if k not in (HOST_TAG, PID_TAG, "mlflow_run_id")}
        super().__call__(study, retry)


class _NoInterruptTraceback(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt" warning and its traceback: a stop asked for by the
    user (Ctrl-C, SIGTERM) is said once, in one line, by the command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextmanager
def quiet_interrupts():
    """Within the block, a trial stopped by Ctrl-C or SIGTERM adds no traceback to the command's output."""
    logger, quiet = logging.getLogger("optuna.study._optimize"), _NoInterruptTraceback()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def retried_trial_number(trial: optuna.Trial) -> int | None:
    """The number of the trial ``trial`` repeats (its worker died), or None; Optuna 5's Trial has no system
    attrs, so they are read from the study's frozen copy."""
    (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def label_study(study: optuna.Study, metric: str, attrs: dict[str, str]) -> None:
    """Name the study's objective ``metric`` (optuna-dashboard then shows ``val/epa/acc_at_1``, not "Objective 0")
    and record ``attrs`` (ablation, base, data hash, space) as study user attributes."""
    if study.metric_names != [metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # experimental since Optuna 3.2; argbench's own call
            study.set_metric_names([metric])
    for key, value in attrs.items():
        study.set_user_attr(key, value)


# --- stale trials (the process rule of argbench.track.stale, for Optuna trials) ------------------------------------

def record_trial(trial) -> None:
    """Store where ``trial`` (an ``optuna.Trial``) runs, so that a dead worker's trial is found on this host."""
    trial.set_user_attr(HOST_TAG, socket.gethostname())
    trial.set_user_attr(PID_TAG, os.getpid())


def close_stale_trials(study, storage) -> list[int]:
    """Fail the RUNNING trials of ``study`` whose worker is gone: its process on this host no longer exists, or
    (RDB storages) its heartbeat stopped. Each is failed by one caller only (:func:`_claim`), which then runs
    ``storage``'s stale-trial callback for it (RDB storages: MLflow runs KILLED, one retry queued). Returns the
    numbers of the trials this caller failed by the process rule."""
    gone: dict[int, int | None] = {}  # trial id -> its number when its process is gone
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get(HOST_TAG), trial.user_attrs.get(PID_TAG)
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            gone[trial._trial_id] = trial.number
    if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval():
        for trial_id in storage._get_stale_trial_ids(study._study_id):  # Optuna's heartbeat rule
            gone.setdefault(trial_id, None)
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    failed = []
    for trial_id, number in gone.items():
        if not _claim(storage, trial_id):
            continue  # another worker failed it first, and queued its retry
        if number is not None:
            failed.append(number)
        if callback is not None:
            with warnings.catch_warnings():  # "experimental" in Optuna
                warnings.simplefilter("ignore", ExperimentalWarning)
                callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed


def _claim(storage, trial_id: int) -> bool:
    """Fail trial ``trial_id`` if it is still RUNNING, as one atomic step; True if this call failed it. An RDB
    storage's own update reads, then writes (two workers can both "win" on SQLite), so it is one conditional
    UPDATE here; a journal storage orders its writes and says when another came first."""
    if not isinstance(storage, RDBStorage):
        try:
            return storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores UTC without a zone
    with storage.engine.begin() as connection:
        changed = connection.execute(table.update()
                                     .where(table.c.trial_id == trial_id, table.c.state == TrialState.RUNNING)
                                     .values(state=TrialState.FAIL, datetime_complete=now)).rowcount
    return changed == 1
