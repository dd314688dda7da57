"""Create a brand-new SQLite MLflow store safely when many processes start on it at once.

MLflow builds a SQLite store's tables on first use by running its alembic migrations, and two processes doing that
on the same new file race: the losers die with ``Online migration expected to match one row…``,
``table _alembic_tmp_runs already exists`` or ``duplicate column name``. :func:`ensure_store` runs that first use
under an exclusive lock on a file beside the database (``<db>.init.lock``), so one process migrates and the others,
once it is done, find the tables made. Other stores (a tracking server, PostgreSQL) create their schema themselves,
or once per server, and are left alone.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from mlflow import MlflowClient

_READY: set[str] = set()  # stores this process has already seen initialised


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
    with open(db.parent / f"{db.name}.init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)  # first use: tables and migrations
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY.add(tracking_uri)
