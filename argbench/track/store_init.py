"""Open an MLflow store safely: a brand-new SQLite store created by many processes at once, and a network store
that does not answer.

MLflow builds a SQLite store's tables on first use by running its alembic migrations, and two processes doing that
on the same new file race: the losers die with ``Online migration expected to match one row…``,
``table _alembic_tmp_runs already exists`` or ``duplicate column name``. :func:`ensure_store` runs that first use
under an exclusive lock on a file beside the database (``<db>.init.lock``), so one process migrates and the others,
once it is done, find the tables made; a process that still meets one of those errors (another tool migrating
without the lock) tries again; the lock file is removed when the first use is done. Every argbench path that opens
an MLflow store goes through it (:class:`argbench.track.store.Store`, so the stale-run sweep, the tracker and a
study's stale-trial retry).

Other stores (a tracking server, PostgreSQL) create their schema themselves, or once per server; they are only
checked to answer (:func:`unreachable`) within ``$ARGBENCH_CONNECT_SECONDS`` (default 5), so that a server that is
down is one line in seconds instead of MLflow's retries for minutes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

_READY: set[str] = set()  # stores this process has already seen initialised
_ANSWERED: set[str] = set()  # network stores that accepted a connection in this process
CONNECT_ENV, DEFAULT_CONNECT_SECONDS = "ARGBENCH_CONNECT_SECONDS", 5.0
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
# What MLflow's first use says when another process is migrating the same new SQLite file.
_MIGRATION_RACE = ("already exists", "duplicate column", "expected to match one row", "database is locked")
_ATTEMPTS = 5


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, or None for any other store (or an in-memory one)."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])


def ensure_store(tracking_uri: str) -> None:
    """Make sure the MLflow store at ``tracking_uri`` exists with its tables, creating its folder and tables if
    needed; safe to call from many processes at once (SQLite: one migrates under a file lock, the rest wait)."""
    db = sqlite_path(tracking_uri)
    if db is None or tracking_uri in _READY:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with first_use_lock(db.parent / f"{db.name}.init.lock"):
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                MlflowClient(tracking_uri).search_experiments(max_results=1)  # first use: tables, migrations
                break
            except Exception as err:  # noqa: BLE001 - MlflowException or sqlalchemy's, by MLflow version
                if attempt == _ATTEMPTS or not any(text in str(err) for text in _MIGRATION_RACE):
                    raise
                time.sleep(0.2 * attempt)
    _READY.add(tracking_uri)


@contextmanager
def first_use_lock(path: Path):
    """Hold an exclusive lock on ``path`` inside the block, and remove the file before letting go, so that no empty
    lock file stays beside the database (also the first use of a new SQLite Optuna storage,
    :func:`argbench.search.storage.open_storage`). A process that was waiting on the removed file finds, once it
    holds it, that the path no longer names it, and locks the path afresh."""
    while True:
        lock = open(path, "a")
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(lock.fileno()).st_ino:
            break
        lock.close()  # the holder before us removed this file: lock the one the path names now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.close()


def connect_timeout() -> float:
    """Seconds to wait for a network store to accept a connection: ``$ARGBENCH_CONNECT_SECONDS``, default 5."""
    try:
        value = float(os.environ.get(CONNECT_ENV) or DEFAULT_CONNECT_SECONDS)
    except ValueError:
        value = DEFAULT_CONNECT_SECONDS
    return value if value > 0 else DEFAULT_CONNECT_SECONDS


def unreachable(tracking_uri: str, timeout: float | None = None) -> str | None:
    """Why the server of a network tracking URI (http, https, postgresql, mysql, mssql) does not accept a
    connection within ``timeout`` seconds, or None when it does (or the store is a file)."""
    if tracking_uri in _ANSWERED:
        return None
    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as err:
        return f"bad port ({err})"
    wait = connect_timeout() if timeout is None else timeout
    try:
        with socket.create_connection((parts.hostname, port), timeout=wait):
            pass
        if scheme in ("http", "https"):  # a server that takes the connection but never answers hangs MLflow
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            _http_answers(f"{scheme}://{host}:{port}{parts.path.rstrip('/')}/health", wait)
    except TimeoutError:
        return f"no answer from {parts.hostname}:{port} within {wait:g} s"
    except OSError as err:
        return f"{parts.hostname}:{port}: {err.strerror or err}"
    _ANSWERED.add(tracking_uri)
    return None


def _http_answers(url: str, timeout: float) -> None:
    """Returns once the server at ``url`` answers anything (any status); TimeoutError or OSError otherwise."""
    try:
        with urlopen(url, timeout=timeout):  # noqa: S310 - the tracking URI the user configured
            pass
    except HTTPError:  # an answer, if not a happy one: the server is there
        return
    except URLError as err:
        reason = err.reason
        raise reason if isinstance(reason, OSError) else OSError(str(reason)) from None


def is_store_fault(err: BaseException) -> bool:
    """Whether ``err`` is an error of the store's database (MLflow's or SQLAlchemy's), not of argbench's code."""
    if isinstance(err, MlflowException):
        return True
    return type(err).__module__.startswith("sqlalchemy")
