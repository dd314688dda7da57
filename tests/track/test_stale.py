"""Stale runs: a run records where it runs and beats a heartbeat; a run or Optuna trial whose process is gone is
closed as KILLED (tag stale=true) by the next command that opens the store, and ``--resume`` reopens it.

Processes that are "gone" are real: a short child process that has exited (or been SIGKILLed) gives a pid that is
free on this host. The store is a real SQLite MLflow store in tmp; Optuna storages are real journal / SQLite ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from argbench import cli
from argbench.errors import UserError
from argbench.search.storage import close_stale_trials, record_trial
from argbench.track import stale
from argbench.track.tracker import tracked_run

TINY = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16", "train.batch_size=16",
        "data.eval_splits=[validation]"]


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store(tmp_path, empty_mlflow_db) -> str:
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def make_run(client: MlflowClient, name: str, tags: dict) -> str:
    experiment = client.get_experiment_by_name("stale") or client.get_experiment(client.create_experiment("stale"))
    return client.create_run(experiment.experiment_id, run_name=name, tags=tags).info.run_id


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


# --- which process is gone -------------------------------------------------------------------------------------

def test_a_dead_pid_of_this_host_is_gone_and_a_live_one_is_not():
    host, now = socket.gethostname(), stale.timestamp()
    assert stale.gone_reason(host, dead_pid(), now, timeout=600) is not None
    assert stale.gone_reason(host, os.getpid(), now, timeout=600) is None
    assert stale.pid_alive(os.getpid())


def test_a_killed_child_not_yet_reaped_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while stale.pid_alive(child.pid) and time.monotonic() < deadline:  # becomes a zombie: not reaped yet
            time.sleep(0.05)
        assert not stale.pid_alive(child.pid)
    finally:
        child.wait()


def test_another_hosts_run_is_gone_only_when_its_heartbeat_is_older_than_the_timeout():
    beat = time.time() - 100
    assert stale.gone_reason("elsewhere", 1, stale.timestamp(beat), timeout=600) is None
    reason = stale.gone_reason("elsewhere", 1, stale.timestamp(beat), timeout=60)
    assert reason == "no heartbeat from elsewhere for more than 60 s"
    # a live pid of this host that has not beaten for longer than the timeout was reused by another process
    assert stale.gone_reason(socket.gethostname(), os.getpid(), stale.timestamp(beat), timeout=60) is not None


def test_nothing_recorded_means_nothing_is_known():
    assert stale.gone_reason(None, None, None, timeout=1) is None


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_a_bad_heartbeat_setting_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(stale.HEARTBEAT_ENV, value)
    with pytest.raises(UserError, match=rf"\$ARGBENCH_HEARTBEAT_SECONDS={value!r}: expected a number of seconds"):
        stale.heartbeat_interval()


# --- MLflow runs -----------------------------------------------------------------------------------------------

def test_a_tracked_run_records_host_pid_and_a_heartbeat_that_a_thread_refreshes(store, monkeypatch):
    monkeypatch.setenv(stale.HEARTBEAT_ENV, "0.2")
    client = MlflowClient(store)
    with tracked_run(run_name="alive", experiment="stale", tracking_uri=store, system_metrics=False) as tracker:
        first = client.get_run(tracker.run_id).data.tags
        time.sleep(1.5)  # the tag holds whole seconds
        later = client.get_run(tracker.run_id).data.tags[stale.HEARTBEAT_TAG]
        assert stale.sweep(store) == []  # this very process is alive
    assert (first[stale.HOST_TAG], first[stale.PID_TAG]) == (socket.gethostname(), str(os.getpid()))
    assert later > first[stale.HEARTBEAT_TAG]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_sweep_closes_exactly_the_runs_whose_process_is_gone(store, capsys):
    client, host, old = MlflowClient(store), socket.gethostname(), time.time() - 3600
    dead = make_run(client, "dead", {stale.HOST_TAG: host, stale.PID_TAG: str(dead_pid()),
                                     stale.HEARTBEAT_TAG: stale.timestamp(old)})
    silent = make_run(client, "silent", {stale.HOST_TAG: "elsewhere", stale.PID_TAG: "7",
                                         stale.HEARTBEAT_TAG: stale.timestamp(old)})
    alive = make_run(client, "alive", {stale.HOST_TAG: host, stale.PID_TAG: str(os.getpid()),
                                       stale.HEARTBEAT_TAG: stale.timestamp()})
    untagged = make_run(client, "untagged", {})
    assert sorted(stale.sweep(store)) == sorted([dead, silent])
    for run_id in (dead, silent):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags[stale.STALE_TAG] == "true"
        assert run.data.tags[stale.LAST_HEARTBEAT_TAG] == stale.timestamp(old)
        assert run.info.end_time == int(old) * 1000  # ended at its last sign of life
    assert {client.get_run(r).info.status for r in (alive, untagged)} == {"RUNNING"}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("closed stale MLflow run" in line for line in lines)


def test_sweep_never_creates_a_store_and_refuses_a_missing_one_where_it_must_exist(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert stale.sweep(uri) == []
    with pytest.raises(UserError, match=r"no MLflow store at .*none/mlflow.db"):
        stale.sweep(uri, must_exist=True)
    assert list(tmp_path.iterdir()) == []


def test_resume_reopens_a_closed_run_without_its_stale_tags(store):
    client = MlflowClient(store)
    run_id = make_run(client, "dead", {stale.HOST_TAG: socket.gethostname(), stale.PID_TAG: str(dead_pid()),
                                       stale.HEARTBEAT_TAG: stale.timestamp()})
    stale.sweep(store)
    with tracked_run(run_name="dead", tracking_uri=store, resume_run_id=run_id, system_metrics=False):
        reopened = client.get_run(run_id)
    assert reopened.info.status == "RUNNING" and reopened.data.tags[stale.PID_TAG] == str(os.getpid())
    assert stale.STALE_TAG not in reopened.data.tags and stale.LAST_HEARTBEAT_TAG not in reopened.data.tags
    assert client.get_run(run_id).info.status == "FINISHED"


# --- Optuna trials ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_whose_process_is_gone_is_failed_at_once(tmp_path, kind):
    from argbench.search.storage import open_storage

    url = f"journal:///{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url, grace_period=3600, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    dead, alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), study.ask()
    record_trial(dead)
    record_trial(alive)
    dead.set_user_attr(stale.PID_TAG, dead_pid())  # as if its worker had been another, now dead, process
    assert close_stale_trials(study, storage) == [dead.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[dead.number] == "FAIL" and states[alive.number] == "RUNNING"
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == (1 if kind == "sqlite" else 0)  # the RDB storage's callback retries it; journal has none


# --- a real kill -----------------------------------------------------------------------------------------------

def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the process ended before {what}: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        try:
            found = predicate()
        except Exception:  # noqa: BLE001 - the store is being created or written by the other process
            found = None
        if found:
            return found
        time.sleep(0.3)


def artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, str(tmp_path)))


@pytest.mark.slow
def test_sigkill_of_an_ablation_run_leaves_no_running_run_and_keeps_the_finished_epochs(store, tmp_path,
                                                                                          monkeypatch, capsys):
    import torch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run_dir = tmp_path / "run"
    command = ["ablation", "run", "baseline", "--data", "sample", "--out", str(run_dir),
               *(arg for item in TINY for arg in ("--set", item))]
    doomed = subprocess.Popen([sys.executable, "-m", "argbench", *command, "--epochs", "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": store})
    client = MlflowClient(store)

    def two_epochs():
        runs = [r for r in all_runs(store) if r.info.run_name == "baseline"]
        return runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 2 and runs[0]

    run = wait_for(two_epochs, doomed, "two trained epochs")
    time.sleep(1.0)  # the artifacts of epoch 2 follow its metrics
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody could say otherwise

    # the next command closes the killed run first; then it has no FINISHED run to draw: one line, exit 2
    assert cli.main(["report", "-o", str(tmp_path / "report.html")]) == 2
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["stale"] == "true"
    err = capsys.readouterr().err
    assert "closed stale MLflow run baseline" in err and "no FINISHED run to report" in err
    assert [r for r in all_runs(store) if r.info.status == "RUNNING"] == []
    logged = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    # every logged epoch but perhaps the last, whose artifacts the kill may have interrupted
    assert set(artifact(client, run.info.run_id, "metrics.csv", tmp_path / "a")["epoch"]) >= {0, *logged} - {
        max(logged)}
    assert 1 in set(artifact(client, run.info.run_id, "negatives.csv", tmp_path / "b")["epoch"])

    saved = torch.load(run_dir / "seed42" / "checkpoint" / "state.pt", weights_only=True)["epoch"]
    assert cli.main([*command, "--resume", "--epochs", str(saved + 1)]) == 0  # reopens it, as today
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and "stale" not in resumed.data.tags
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, saved + 2))
