"""Workers that share one study at the same moment: a dead worker's trial is failed and retried exactly once, a
retry carries no dead worker's pid, and concurrent `search` workers try distinct hyperparameters. Real processes
on real SQLite storages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from argbench.search.storage import open_storage, record_trial
from argbench.track.stale import HOST_TAG, PID_TAG

REPO = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("ARGBENCH_RACE_ROUNDS", "4"))

CLOSER = """
import sys, time
from argbench.search.storage import close_stale_trials, open_storage
import optuna
url, start = sys.argv[1], float(sys.argv[2])
storage = open_storage(url, tracking_uri=sys.argv[3])
study = optuna.load_study(study_name="s", storage=storage)
time.sleep(max(0, start - time.time()))
print(len(close_stale_trials(study, storage)))
"""


OPENER = """
import sys, time
from argbench.search.storage import open_storage
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0, start - time.time()))
open_storage(url)
"""


def test_workers_opening_a_new_sqlite_storage_together_all_open_it(tmp_path):
    # Optuna creates a new file's tables on first use, not atomically: unlocked, SQLite says "table studies already
    # exists" to all but one of four workers in most rounds
    for round_ in range(ROUNDS):
        url, start = f"sqlite:///{tmp_path / f'optuna{round_}.db'}", time.time() + 3
        openers = [subprocess.Popen([sys.executable, "-c", OPENER, url, str(start)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(4)]
        outcomes = [o.communicate(timeout=120) for o in openers]
        assert [o.returncode for o in openers] == [0] * 4, f"round {round_}: {[err[-500:] for _, err in outcomes]}"
        assert optuna.get_all_study_summaries(open_storage(url)) == []
        assert not list(tmp_path.glob("*.lock")), "the lock file beside the database is removed"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_two_workers_closing_a_dead_trial_together_fail_it_once_and_queue_one_retry(tmp_path):
    for round_ in range(ROUNDS):
        url, uri = f"sqlite:///{tmp_path / f'optuna{round_}.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
        storage = open_storage(url, tracking_uri=uri)
        study = optuna.create_study(study_name="s", storage=storage)
        trial = study.ask()
        trial.suggest_int("x", 0, 9)
        record_trial(trial)
        trial.set_user_attr(PID_TAG, dead_pid())  # the worker died mid-trial
        storage.engine.dispose()
        start = time.time() + 4
        closers = [subprocess.Popen([sys.executable, "-c", CLOSER, url, str(start), uri], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
        outcomes = [c.communicate(timeout=120) for c in closers]
        assert [c.returncode for c in closers] == [0, 0], [err[-2000:] for _, err in outcomes]
        assert sorted(int(out) for out, _ in outcomes) == [0, 1], f"round {round_}: {outcomes}"
        trials = optuna.load_study(study_name="s", storage=url).get_trials()
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], f"round {round_}"
        retry = trials[1]
        assert retry.params == trials[0].params and retry.system_attrs["failed_trial"] == 0
        assert HOST_TAG not in retry.user_attrs and PID_TAG not in retry.user_attrs


@pytest.mark.slow
def test_two_search_workers_on_one_study_try_distinct_hyperparameters(tmp_path):
    storage, store = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16",
            "train.batch_size=16", "data.eval_splits=[validation]"]
    command = [sys.executable, "-m", "argbench", "search", "--data", "sample", "--trials", "3", "--pruner", "none",
               "--epochs", "1", "--storage", storage, "--tracking-uri", store, "--study", "twins",
               *(a for s in tiny for a in ("--set", s))]
    # one store made first: two first writers on a new store are another test's subject
    subprocess.run([sys.executable, "-c", f"from argbench.track.store import Store; Store({store!r})"], check=True,
                   cwd=REPO)
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env={**os.environ, "ARGBENCH_PROJECT": str(tmp_path)}) for _ in range(2)]
    outcomes = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-3000:] for _, err in outcomes]
    trials = optuna.load_study(study_name="twins", storage=storage).get_trials()
    assert len(trials) == 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6


@pytest.mark.slow
def test_two_study_workers_restarting_after_a_killed_study_run_every_cell_once(tmp_path):
    """A study SIGKILLed mid-cell, restarted with --jobs 2: the dead cell is failed and queued once (not once per
    worker), every cell ends done exactly once, one table, the parent FINISHED."""
    from mlflow import MlflowClient

    from tests.search.test_study import killed_mid_cell, spec_for, study_trials, worker

    spec = spec_for(tmp_path, members=("with_relu",), seeds=1)
    running = killed_mid_cell(spec)
    restarted = worker(spec, "--jobs", "2")
    stdout, stderr = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    trials = study_trials(spec)
    assert [t.state.name for t in trials].count("WAITING") == 0
    # The dead cell is queued again exactly once: by the stale-trial callback of whichever process failed the trial
    # (system attr failed_trial) or, where that process had none, by the restart's queue_failed (fixed_params).
    dead = (running.params["entry"], running.params["seed"])
    again = [t for t in trials if t.number != running.number and (t.params.get("entry"), t.params.get("seed")) == dead]
    assert len([t for t in again if {"failed_trial", "fixed_params"} & set(t.system_attrs)]) == 1
    assert [t.state.name for t in again if "duplicate_of" not in t.user_attrs] == ["COMPLETE"]
    done = [t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert sorted((t.params["entry"], t.params["seed"]) for t in done) == sorted(spec.cells)
    assert (summary["complete"], summary["failed"], summary["running"]) == (2, 0, 0) and summary["table"]
    assert MlflowClient(spec.tracking_uri).get_run(summary["parent_run_id"]).info.status == "FINISHED"
