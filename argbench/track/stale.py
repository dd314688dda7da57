"""Runs whose process is gone are closed, so that no MLflow run or Optuna trial stays RUNNING forever.

Every run opened by :func:`argbench.track.tracker.tracked_run` records where it runs, in tags set when it is created
(or reopened by ``--resume``): ``process.host``, ``process.pid`` and ``process.heartbeat`` (UTC, ISO 8601), which a
:class:`Heartbeat` daemon thread refreshes every ``$ARGBENCH_HEARTBEAT_SECONDS`` (default 60) and the tracker at the
end of every epoch. A RUNNING run is *stale* when

* it was started on this host and its process no longer exists (or is a zombie), or
* its heartbeat is older than ``$ARGBENCH_STALE_SECONDS`` (default 600): the rule for runs of another host, which
  also catches a pid that another process reused.

:func:`sweep` — called by every command that opens the store (``ablation run``/``import``, ``search``, ``report``,
``compare``, ``eval --track``; call it from any new one) — closes each stale run as KILLED with tags ``stale=true``
and ``stale.last_heartbeat``, end time = its last heartbeat, and says so in one line on stderr. Runs without
process tags (made by another tool or an older argbench) are left alone: nothing tells whether they are alive.
``--resume`` reopens a closed run as any KILLED run, and removes its stale tags.

Optuna trials are closed by the same process rule in :mod:`argbench.search.storage` (``close_stale_trials``), which
uses :func:`pid_alive` and the same host and pid names.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from argbench.errors import UserError

if TYPE_CHECKING:  # mlflow is imported where it is used: `argbench search --help` need not load it
    from mlflow import MlflowClient

HOST_TAG, PID_TAG, HEARTBEAT_TAG = "process.host", "process.pid", "process.heartbeat"
STALE_TAG, LAST_HEARTBEAT_TAG = "stale", "stale.last_heartbeat"
HEARTBEAT_ENV, TIMEOUT_ENV = "ARGBENCH_HEARTBEAT_SECONDS", "ARGBENCH_STALE_SECONDS"
DEFAULT_HEARTBEAT_SECONDS, DEFAULT_TIMEOUT_SECONDS = 60.0, 600.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# --- where a run runs --------------------------------------------------------------------------------------------

def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UserError(f"${variable}={text!r}: expected a number of seconds > 0 (default {default:g})")
    return value


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of a running run: ``$ARGBENCH_HEARTBEAT_SECONDS``, default 60."""
    return _seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS)


def stale_timeout() -> float:
    """Seconds without a heartbeat after which a run counts as dead: ``$ARGBENCH_STALE_SECONDS``, default 600."""
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS)


def timestamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default now) as a heartbeat tag value, e.g. ``2026-11-22T10:31:05Z``."""
    return datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc).strftime(TIME_FORMAT)


def process_tags() -> dict[str, str]:
    """The tags that say where a run runs: this host, this process, a heartbeat now."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: timestamp()}


class Heartbeat:
    """Refreshes ``process.heartbeat`` of run ``run_id`` every ``interval`` seconds from a daemon thread, and at
    once on :meth:`beat`. A store that cannot be reached for a moment is tried again at the next beat."""

    def __init__(self, client: "MlflowClient", run_id: str, interval: float | None = None):
        self.client, self.run_id = client, run_id
        self.interval = heartbeat_interval() if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"argbench-heartbeat-{run_id[:8]}", daemon=True)
        self._warned = False

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, timestamp())
        except Exception as err:  # noqa: BLE001 - a missed beat must not stop training; the next one may pass
            if not self._warned:
                self._warned = True
                warnings.warn(f"MLflow run {self.run_id}: heartbeat not recorded ({type(err).__name__}); "
                              "retrying every beat", stacklevel=2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or gone meanwhile: os.kill said it exists
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _parse(stamp: str | None) -> float | None:
    try:
        return datetime.strptime(stamp or "", TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def gone_reason(host: str | None, pid: str | int | None, heartbeat: str | None, *, timeout: float,
                now: float | None = None) -> str | None:
    """Why the process of a RUNNING run or trial is gone, or None when it may be alive (or nothing was recorded)."""
    last = _parse(heartbeat)
    if host == socket.gethostname() and str(pid or "").isdigit() and not pid_alive(int(pid)):
        return f"process {pid} on {host} is gone"
    if last is not None and (time.time() if now is None else now) - last > timeout:
        return f"no heartbeat from {host or 'its host'} for more than {timeout:g} s"
    return None


# --- MLflow runs -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaleRun:
    run_id: str
    name: str
    reason: str
    last_heartbeat: str

    def describe(self) -> str:
        return (f"closed stale MLflow run {self.name} ({self.run_id}) as KILLED: {self.reason}, last heartbeat "
                f"{self.last_heartbeat} (--resume continues it)")


def missing_store(tracking_uri: str) -> Path | None:
    """The SQLite file of ``tracking_uri`` when it does not exist (opening it would create it), else None."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])
    return None if path.is_file() else path


def close_stale_runs(client: "MlflowClient", *, timeout: float | None = None, now: float | None = None
                     ) -> list[StaleRun]:
    """Close every stale RUNNING run of every experiment of ``client``'s store (see the module docstring)."""
    timeout = stale_timeout() if timeout is None else timeout
    experiments = [e.experiment_id for e in client.search_experiments()]
    closed, token = [], None
    while experiments:
        page = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            reason = gone_reason(tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(HEARTBEAT_TAG), timeout=timeout,
                                 now=now)
            if reason is not None:
                closed.append(_close(client, run, reason))
        token = page.token
        if not token:
            break
    return closed


def _close(client: "MlflowClient", run, reason: str) -> StaleRun:
    from mlflow.entities import RunTag

    last = run.data.tags[HEARTBEAT_TAG]
    client.log_batch(run.info.run_id, tags=[RunTag(STALE_TAG, "true"), RunTag(LAST_HEARTBEAT_TAG, last)])
    end = _parse(last)
    client.set_terminated(run.info.run_id, "KILLED", end_time=None if end is None else int(end * 1000))
    return StaleRun(run.info.run_id, run.info.run_name, reason, last)


# --- what every command does when it opens the store -------------------------------------------------------------

def sweep(tracking_uri: str, *, must_exist: bool = False, stream=None) -> list[str]:
    """Close the stale runs of the MLflow store at ``tracking_uri``, one line each on ``stream`` (stderr); returns
    the closed runs' ids.

    A missing SQLite store is never created here: with ``must_exist`` (commands that only read: report, compare)
    it is a :class:`UserError` naming the file, otherwise there is nothing to sweep."""
    stream = stream or sys.stderr
    missing = missing_store(tracking_uri)
    if missing is not None and must_exist:
        raise UserError(f"no MLflow store at {missing}: nothing tracked there yet; run `argbench ablation run NAME` "
                        "first, or point MLFLOW_TRACKING_URI at the store to read")
    if missing is not None:
        return []
    from argbench.track.store import Store  # the store's door: its first-use lock and reachability check

    closed = close_stale_runs(Store(tracking_uri).client)
    for run in closed:
        print(f"argbench: {run.describe()}", file=stream)
    return [run.run_id for run in closed]
