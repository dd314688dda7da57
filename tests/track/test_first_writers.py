"""Four `argbench ablation run` commands started together on a brand-new SQLite MLflow store all finish: the
stale-run sweep, the tracker and every other door to the store go through one first-use lock. Real CLI processes,
released together once their imports are done, so that they reach the store at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("ARGBENCH_RACE_ROUNDS", "2"))
TINY = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16", "train.batch_size=16",
        "data.eval_splits=[validation]"]
# The real CLI entry point, called once the heavy imports are done and the common start time has come.
LAUNCH = """
import sys, time
import mlflow, torch, transformers  # noqa: F401 - imported before the start, so all start together
from argbench.cli.app import main
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_four_ablation_runs_on_a_new_store_all_finish(tmp_path):
    for round_ in range(ROUNDS):
        uri = f"sqlite:///{tmp_path / f'round{round_}' / 'mlruns' / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "ARGBENCH_PROJECT": str(tmp_path / f"round{round_}")}
        start = time.time() + 25  # past the imports of all four on a busy machine
        argv = ["ablation", "run", "baseline", "--data", "sample", "--epochs", "0", "--experiment", "race",
                *(a for s in TINY for a in ("--set", s))]
        procs = [subprocess.Popen([sys.executable, "-c", LAUNCH, str(start), *argv, "--out",
                                   str(tmp_path / f"round{round_}" / f"w{i}")], env=env, cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
        outcomes = [p.communicate(timeout=600) for p in procs]
        late = time.time() > start + 1 and any("Traceback" in err for _, err in outcomes)
        assert [p.returncode for p in procs] == [0] * 4, (late, [err[-2500:] for _, err in outcomes])
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}, f"round {round_}"
