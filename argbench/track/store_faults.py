"""A store that cannot be used, said in one line: opening it (a network store must answer, a new SQLite store gets
its tables safely, :mod:`argbench.track.store_init`), and a known fault of the store or of a run folder (read-only,
full, unreachable) raised anywhere inside a command turned into one :class:`StoreFault` line instead of a
traceback."""

from __future__ import annotations

import errno
from contextlib import contextmanager

from argbench.errors import RunError, UserError
from argbench.paths import default_tracking_uri
from argbench.track.redaction import redact
from argbench.track.store_init import ensure_store, is_store_fault, sqlite_path, unreachable


class StoreFault(RunError):
    """The MLflow store cannot be used (read-only, full, unreachable): one line naming the store, exit 1."""


def connect(tracking_uri: str) -> None:
    """What opening the store at ``tracking_uri`` does first: a network store must answer within seconds
    (:class:`StoreFault` naming the URI, password hidden, otherwise), a new SQLite store gets its tables under the
    first-use lock (:func:`argbench.track.store_init.ensure_store`)."""
    why = unreachable(tracking_uri)
    if why is not None:
        raise StoreFault(f"cannot reach the MLflow tracking store {redact(tracking_uri)}: {why}; start the server, "
                         "or point MLFLOW_TRACKING_URI (--tracking-uri) at a reachable store")
    ensure_store(tracking_uri)


_FAULTS = (("readonly database", "is read-only"), ("read-only", "is read-only"),
           ("database or disk is full", "is full (no space left on its device)"),
           ("unable to open database file", "cannot be opened"),
           ("connection refused", "does not answer"), ("could not connect", "does not answer"),
           ("max retries exceeded", "does not answer"), ("failed to establish", "does not answer"),
           ("timed out", "does not answer"))
_WRITE_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def fault_line(err: BaseException, tracking_uri: str) -> str | None:
    """One line for a known fault of the store or the run folders (read-only, full, unreachable), or None when
    ``err`` is none of those (a bug: it keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in _WRITE_DENIED:
        where = err.filename or "a file"
        return f"cannot write {where}: {err.strerror}; expected a writable folder (run folders: --out; MLflow " \
               "store: MLFLOW_TRACKING_URI)"
    chain, seen = [], err
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(is_store_fault(e) for e in chain):
        return None
    text = " ".join(" ".join(str(e).split()) for e in chain).lower()
    for needle, what in _FAULTS:
        if needle in text:
            db = sqlite_path(tracking_uri)
            where = f"{redact(tracking_uri)}" + (f" ({db})" if db else "")
            return f"the MLflow store {where} {what}; fix it, or point MLFLOW_TRACKING_URI at a usable store"
    return None


@contextmanager
def store_faults(tracking_uri: str | None = None):
    """Turn a known fault of the store (read-only, full, unreachable) or of a run folder that cannot be written,
    raised inside the block, into one :class:`StoreFault` line; anything else passes unchanged."""
    uri = tracking_uri or default_tracking_uri()
    try:
        yield
    except (UserError, RunError):
        raise
    except Exception as err:
        line = fault_line(err, uri)
        if line is None:
            raise
        raise StoreFault(line) from err
