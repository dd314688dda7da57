"""Run folders: every run gets its own folder, a folder in use is locked, and bad input makes neither a folder nor
a run. Real tiny trainings on the generated sample corpus, a real SQLite MLflow store, real processes and signals."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.experiments.runner import run_ablation
from argbench.track.store import Store
from argbench.track.tracker import load_run_id

TINY = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16", "train.batch_size=16",
        "data.eval_splits=[validation]"]
TINY_FLAGS = [arg for item in TINY for arg in ("--set", item)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, empty_mlflow_db, monkeypatch) -> str:
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.lock"}


class StopAt:
    """Hook: Ctrl-C at the end of epoch ``epoch`` of the seed ``seed`` (any seed when None)."""

    def __init__(self, epoch: int, seed: int | None = None):
        self.epoch, self.seed, self.seen_seed = epoch, seed, None

    def on_train_start(self, info):
        self.seen_seed = info["config"].train.seed

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch and self.seed in (None, self.seen_seed):
            raise KeyboardInterrupt


def test_a_second_run_gets_its_own_folder_and_the_first_stays_as_it_was(store, tmp_path):
    first = run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path / "r", progress=False)
    kept = digest(tmp_path / "r" / "seed42")
    second = run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path / "r", progress=False)
    assert digest(tmp_path / "r" / "seed42") == kept  # weights, metrics.jsonl, mlflow_run_id: untouched
    assert load_run_id(tmp_path / "r" / "seed42") == first["run_id"] != second["run_id"]
    assert load_run_id(tmp_path / "r" / "seed42-2") == second["run_id"]
    assert os.readlink(tmp_path / "r" / "seed42-latest") == "seed42-2"


def test_bad_input_makes_no_folder_and_no_run(store, tmp_path, capsys):
    out = tmp_path / "r"
    for flags in (["--encoder", "tiny-randm-bert"], ["--seeds", "0"], ["--set", "train.nosuch=1"]):
        sets = [a for item in TINY[1:] for a in ("--set", item)]
        assert cli.main(["ablation", "run", "baseline", "--data", "sample", "--out", str(out), *sets, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("argbench: error: "), err
    assert not out.exists() and runs(store) == []


def test_runs_started_together_get_distinct_folders(tmp_path):
    start = time.time() + 3
    code = ("import sys, time; from pathlib import Path; from argbench.experiments.run_folders import new_folder\n"
            f"time.sleep(max(0, {start} - time.time())); print(new_folder(Path(sys.argv[1]), 'seed42').name)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(4)]
    names = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert names == ["seed42", "seed42-2", "seed42-3", "seed42-4"]


def test_a_locked_folder_refuses_a_second_writer_naming_pid_and_host(tmp_path):
    from argbench.experiments import run_folders

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from argbench.experiments.run_folders import locked\n"
        "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"), str(tmp_path / "f")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_folders.FolderInUse, match=f"in use by process {holder.pid} on "
                                                          f"{socket.gethostname()}"):
            with run_folders.locked(tmp_path / "f"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_folders.locked(tmp_path / "f"):  # the kernel dropped the dead holder's lock
        pass


def test_multi_seed_resume_continues_the_same_parent_and_its_children(store, tmp_path):
    sets = [*TINY, "train.epochs=2"]
    with pytest.raises(KeyboardInterrupt):
        run_ablation("baseline", sets, data="sample", seeds=2, out=tmp_path, progress=False, hooks=[StopAt(1, 43)])
    group = tmp_path / "seeds42-43"
    parent = load_run_id(group)
    first_child = load_run_id(group / "seed42")
    assert MlflowClient(store).get_run(parent).info.status == "KILLED"
    result = run_ablation("baseline", sets, data="sample", seeds=2, out=tmp_path, resume=True, progress=False)
    assert result["run_id"] == parent and result["seeds"][0]["run_id"] == first_child
    everything = runs(store)
    assert len(everything) == 3 and {r.info.status for r in everything} == {"FINISHED"}
    assert {r.data.tags.get("mlflow.parentRunId") for r in everything if r.info.run_id != parent} == {parent}
    assert len(Store(store).system("baseline", "argbench").seeds) == 2


def test_a_resume_that_extends_the_epochs_updates_the_param(store, tmp_path):
    first = run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path, progress=False)
    again = run_ablation("baseline", [*TINY, "train.epochs=2"], data="sample", out=tmp_path, resume=True,
                         progress=False)
    assert again["run_id"] == first["run_id"] and again["last"]["epoch"] == 2
    assert MlflowClient(store).get_run(first["run_id"]).data.params["train.epochs"] == "2"


def test_resume_by_run_id_picks_that_folder(store, tmp_path):
    first = run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path, progress=False)
    run_ablation("baseline", [*TINY, "train.epochs=1"], data="sample", out=tmp_path, progress=False)
    again = run_ablation("baseline", [*TINY, "train.epochs=2"], data="sample", out=tmp_path, resume=first["run_id"],
                         progress=False)
    assert again["run_id"] == first["run_id"] and again["last"]["epoch"] == 2


def wait_for(predicate, process, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"ended before {what}: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.slow
def test_sigterm_stops_the_run_as_killed_and_a_resume_of_a_running_run_is_refused(store, tmp_path):
    """What `kill`, `docker stop` and `scancel` do: one line, exit 143, the run KILLED, its checkpoint kept; and
    while it trains, a `--resume` of it is refused with one line naming its process, exit 1."""
    import torch

    command = [sys.executable, "-m", "argbench", "ablation", "run", "baseline", "--data", "sample", "--out",
               str(tmp_path), *TINY_FLAGS]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    running = subprocess.Popen([*command, "--epochs", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    state = tmp_path / "seed42" / "checkpoint" / "state.pt"
    wait_for(state.is_file, running, "the first checkpoint")
    second = subprocess.run([*command, "--epochs", "60", "--resume"], capture_output=True, text=True, env=env,
                            timeout=240)
    assert second.returncode == 1, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith("argbench: error: ")
    assert f"in use by process {running.pid} on {socket.gethostname()}" in second.stderr
    running.send_signal(signal.SIGTERM)
    _, err = running.communicate(timeout=120)
    assert running.returncode == 143, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("argbench: ")][-1].startswith(
        "argbench: terminated (SIGTERM)")
    assert "Traceback" not in err
    run_id = load_run_id(tmp_path / "seed42")
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"
    saved = torch.load(state, weights_only=True)["epoch"]
    resumed = subprocess.run([*command, "--epochs", str(saved + 1), "--resume"], capture_output=True, text=True,
                             env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"
