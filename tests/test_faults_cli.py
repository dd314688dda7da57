"""Known faults are one line on stderr with the right exit status (2 bad input, 1 a fault outside argbench, 130/143
a stop asked for), no traceback, nothing left RUNNING and nothing created that was not asked for. Real stores,
real sockets, real processes and signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.experiments.runner import run_ablation

TINY = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16", "train.batch_size=16",
        "data.eval_splits=[validation]"]
TINY_FLAGS = [a for s in TINY for a in ("--set", s)]


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


@pytest.fixture
def silent_server():
    """A port that takes connections and never answers (a hung server): the kernel completes the handshake."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "no-answer", "postgresql"])
def test_an_unreachable_tracking_server_is_one_line_in_seconds_with_the_password_hidden(kind, request, tmp_path,
                                                                                        monkeypatch, capsys):
    port = request.getfixturevalue("silent_server") if kind == "no-answer" else closed_port()
    scheme = "postgresql" if kind == "postgresql" else "http"
    uri = f"{scheme}://user:s3cret@127.0.0.1:{port}" + ("/mlflow" if kind == "postgresql" else "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ARGBENCH_CONNECT_SECONDS", "2")
    started = time.monotonic()
    status = cli.main(["ablation", "run", "baseline", "--data", "sample", "--out", str(tmp_path / "r"), *TINY_FLAGS])
    line = one_error_line(capsys)
    assert status == 1 and time.monotonic() - started < 30
    assert f"cannot reach the MLflow tracking store {scheme}://user:***@" in line and "s3cret" not in line
    assert not (tmp_path / "r").exists()


def test_study_report_of_no_study_creates_no_storage(tmp_path, capsys):
    storage = tmp_path / "optuna.db"
    status = cli.main(["study", "report", "nosuch", "--storage", f"sqlite:///{storage}"])
    line = one_error_line(capsys)
    assert status == 2 and "no study 'nosuch'" in line and str(storage) in line
    assert not storage.exists()


def test_resume_against_another_store_is_one_line(tmp_path, empty_mlflow_db, monkeypatch, capsys):
    for name in ("a.db", "b.db"):
        shutil.copy(empty_mlflow_db, tmp_path / name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a.db'}")
    run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path / "r", progress=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'b.db'}")
    capsys.readouterr()
    status = cli.main(["ablation", "run", "baseline", "--data", "sample", "--out", str(tmp_path / "r"), "--resume",
                       "--epochs", "2", *TINY_FLAGS])
    line = one_error_line(capsys)
    assert status == 2 and "cannot resume MLflow run" in line and "b.db" in line
    client = MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.slow
def test_ctrl_c_during_search_is_one_line_and_leaves_nothing_running(tmp_path):
    store, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    search = subprocess.Popen([sys.executable, "-m", "argbench", "search", "--data", "sample", "--trials", "2",
                               "--epochs", "40", "--pruner", "none", "--storage", storage, "--tracking-uri", store,
                               *TINY_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "ARGBENCH_PROJECT": str(tmp_path)})
    deadline = time.monotonic() + 300

    def trial_training() -> bool:
        try:
            client = MlflowClient(store)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            return any(r.info.run_name.endswith("-t0") and client.get_metric_history(r.info.run_id, "train/loss")
                       for r in runs)
        except Exception:  # noqa: BLE001 - the store is being made by the search
            return False

    while not trial_training():
        assert search.poll() is None, search.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no trial trained in time"
        time.sleep(0.5)
    search.send_signal(signal.SIGINT)
    _, err = search.communicate(timeout=120)
    assert search.returncode == 130, err[-3000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 4, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("argbench: interrupted (running trials end FAIL")
    assert "--resume" not in err
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {r.info.status for r in runs} == {"KILLED"}


def test_a_search_on_an_unreachable_store_is_one_line_too(tmp_path):
    """The same one line from `search`, which takes --tracking-uri (its own process: Optuna's log handler keeps the
    stderr it first saw)."""
    uri = f"http://user:s3cret@127.0.0.1:{closed_port()}"
    done = subprocess.run([sys.executable, "-m", "argbench", "search", "--data", "sample", "--trials", "1",
                           "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", uri, *TINY_FLAGS],
                          capture_output=True, text=True, timeout=300)
    err = [line for line in done.stderr.strip().splitlines() if not line.startswith("[")]
    assert done.returncode == 1 and len(err) == 1, done.stderr[-3000:]
    assert "user:***@" in err[0] and "s3cret" not in err[0]


def store_fault_line(tmp_path, uri: str) -> str:
    """Run a tiny `ablation run` in a fresh process against the MLflow store `uri`; it must fail with exit 1 and one
    line on stderr, no traceback (also none from MLflow's own logger). Returns that line."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "argbench", "ablation", "run", "baseline", "--data", "sample",
                           "--out", str(tmp_path / "r"), *TINY_FLAGS], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_read_only_store_is_one_line_and_holds_no_run(tmp_path, empty_mlflow_db):
    """A store the process may not write (here SQLite's own read-only mode, the error a read-only file gives): one
    line naming the store, exit 1, no traceback from MLflow's logger, and no run in it."""
    db = tmp_path / "mlflow.db"
    shutil.copy(empty_mlflow_db, db)
    line = store_fault_line(tmp_path, f"sqlite:///file:{db}?mode=ro&uri=true")
    assert "is read-only" in line and str(db) in line
    assert MlflowClient(f"sqlite:///{db}").search_runs(["0"]) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs filled to the last byte (needs the right to mount: skipped where there is none)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_store_on_a_full_disk_is_one_line_and_exit_1(tmp_path, empty_mlflow_db, full_disk):
    db = full_disk / "mlflow.db"
    shutil.copy(empty_mlflow_db, db)
    with open(full_disk / "fill", "wb", buffering=0) as fill, pytest.raises(OSError):  # ENOSPC once it is full
        while True:
            fill.write(b"\0" * 4096)
    line = store_fault_line(tmp_path, f"sqlite:///{db}")
    assert "is full (no space left on its device)" in line and str(db) in line
