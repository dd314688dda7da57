"""A brand-new SQLite MLflow store survives many processes starting on it at once (MLflow's own first use races:
alembic migrations run twice). Each process opens a tracked run, as `make study JOBS=4` workers do."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from argbench.track.store_init import sqlite_path

WORKER = """
import sys, time
from argbench.track.tracker import tracked_run
uri, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:  # all processes reach MLflow's first use together
    time.sleep(0.001)
with tracked_run(run_name=f"worker-{sys.argv[3]}", experiment="race", tracking_uri=uri, system_metrics=False):
    pass
"""


@pytest.mark.slow
def test_four_processes_creating_one_new_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    start = time.time() + 8  # past the imports of all four
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(start), str(i)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    results = [(w.wait(timeout=180), w.stderr.read()) for w in workers]
    assert [code for code, _ in results] == [0] * 4, "\n".join(err[-1500:] for _, err in results)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"worker-{i}" for i in range(4)]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_only_sqlite_file_stores_are_locked():
    assert sqlite_path("sqlite:////data/m.db?timeout=5") == Path("/data/m.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://127.0.0.1:5000") is None
