"""Run folders: one per run, never reused by another run, locked while their run lives.

An ablation's runs live under one *root* (``mlruns/runs/<name>``, or ``ablation run --out``). A run of one seed S
gets ``seed<S>``, the next run of that seed ``seed<S>-2``, then ``seed<S>-3``…; a run of several seeds gets
``seeds<first>-<last>`` (and ``-2``…), holding the parent's ``mlflow_run_id`` and one folder ``seed<S>`` per seed.
A folder is taken with an atomic ``mkdir``, so two runs started together get two folders, and ``<stem>-latest``
(a symbolic link) points at the newest one. ``--resume`` continues the newest folder of that name and seed that
holds a run and a checkpoint (a multi-seed folder: that holds its parent's run id), or the one whose run id it is
given.

While its run lives, a folder is locked: ``run.lock`` in it holds an exclusive ``flock`` of the process (the kernel
drops it when the process dies, also on SIGKILL) and says which process and host hold it. A second process that
wants the folder — a ``--resume`` of a run still training — is refused with :class:`FolderInUse`.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from argbench.errors import RunError
from argbench.track.tracker import RUN_ID_FILE, load_run_id
from argbench.train import checkpoint

LOCK_FILE = "run.lock"
LATEST = "latest"


class FolderInUse(RunError):
    """A run folder locked by a live process: one line naming it (pid, host), exit 1."""


def stem(seeds: list[int]) -> str:
    """The folder name of a run of ``seeds`` before its number: ``seed42``, or ``seeds42-44`` for several."""
    return f"seed{seeds[0]}" if len(seeds) == 1 else f"seeds{seeds[0]}-{seeds[-1]}"


def folders(root: Path, name: str) -> list[Path]:
    """The run folders of stem ``name`` under ``root``, oldest first (``name``, ``name-2``, ``name-3``…)."""
    pattern = re.compile(rf"{re.escape(name)}(?:-(\d+))?")
    found = []
    for path in root.glob(f"{name}*") if root.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append((int(match.group(1) or 1), path))
    return [path for _, path in sorted(found)]


def new_folder(root: Path, name: str) -> Path:
    """A new, empty run folder of stem ``name`` under ``root`` (created here; the first free number), and
    ``<name>-latest`` pointed at it."""
    root.mkdir(parents=True, exist_ok=True)
    taken = folders(root, name)
    number = 1 + max((_number(p, name) for p in taken), default=0)
    while True:
        path = root / (name if number == 1 else f"{name}-{number}")
        try:
            path.mkdir()
        except FileExistsError:  # taken meanwhile by a run started at the same moment
            number += 1
            continue
        _point_latest(root, name, path)
        return path


def _number(path: Path, name: str) -> int:
    suffix = path.name.removeprefix(name)
    return int(suffix[1:]) if suffix else 1


def _point_latest(root: Path, name: str, target: Path) -> None:
    """``<name>-latest`` -> ``target`` (relative), replaced atomically."""
    link = root / f"{name}-{LATEST}"
    scratch = root / f".{name}-{LATEST}.{os.getpid()}"
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(target.name)
    os.replace(scratch, link)


def resumable(root: Path, name: str, *, run_id: str | None = None, multi: bool = False) -> Path:
    """The folder ``--resume`` continues: the one holding MLflow run ``run_id``, else the newest of stem ``name``
    with a run (and, for one seed, a checkpoint). A newer folder still in use is :class:`FolderInUse` rather than
    passed over; FileNotFoundError (bad input) when there is none."""
    if run_id is not None:
        for path in sorted(p.parent for p in root.glob(f"*/{RUN_ID_FILE}") if not p.parent.is_symlink()):
            if load_run_id(path) == run_id:
                return path
        raise FileNotFoundError(f"--resume {run_id}: no run folder under {root} holds MLflow run {run_id}; "
                                f"expected the id in one of its */{RUN_ID_FILE} files (or --resume alone)")
    for path in reversed(folders(root, name)):
        holder = holder_of(path)
        if holder is not None:
            raise FolderInUse(f"--resume: run folder {path} is in use by {holder}; wait for it to end, or stop it "
                              "first")
        if load_run_id(path) is not None and (multi or checkpoint.exists(path)):
            return path
    raise FileNotFoundError(f"--resume: no run folder {root}/{name}[-N] with an MLflow run and a checkpoint: "
                            f"nothing to resume (run it once without --resume)")


def holder_of(path: Path) -> str | None:
    """"process P on host H" when a live process holds ``path``'s lock, else None (a dead holder's lock is gone)."""
    lock_path = path / LOCK_FILE
    if not lock_path.is_file():
        return None
    with open(lock_path, "a+") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(lock_path)
        fcntl.flock(probe, fcntl.LOCK_UN)
    return None


def _describe(lock_path: Path) -> str:
    pid, _, host = lock_path.read_text().strip().partition(" ")
    return f"process {pid} on {host}" if pid.isdigit() and host else "another process"


def _try_lock(handle: IO, attempts: int = 10) -> bool:
    """Take ``handle``'s exclusive lock; a few tries over a second, since :func:`holder_of` of another process may
    hold it for an instant while it looks."""
    for attempt in range(attempts):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.1)
    return False


@contextmanager
def locked(path: Path) -> Iterator[IO]:
    """Hold ``path``'s exclusive lock for the block (``path`` is created if missing); :class:`FolderInUse` naming
    the holder's pid and host when another process holds it."""
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_FILE, "a+")
    try:
        if not _try_lock(handle):
            raise FolderInUse(f"run folder {path} is in use by {_describe(path / LOCK_FILE)}; each run has its "
                              "own folder: wait for that run to end (or stop it) before resuming it")
        handle.truncate(0)
        handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()  # releases the lock (the kernel does the same if this process dies)
