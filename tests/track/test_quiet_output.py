"""Off a terminal argbench's stderr is its own lines only: a tracked run with ``--log-model`` and ``retrieve`` from
that run's logged model, run as a user runs them (``python -m argbench``, stderr a pipe), print no ANSI codes, no
warnings about argbench's own objects (type hints, CloudPickle, experimental APIs) and no "Downloading artifacts"
bars; the run's line carries its MLflow UI link in model-training mode; no lock file is left beside the store; the
sentence-transformers baseline prints its epoch lines and no library bars."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOISE = re.compile(r"\x1b\[|warn|cloudpickle|experimental|downloading artifacts|\r", re.IGNORECASE)


def argbench(project: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m argbench ARGS`` in a fresh project folder with Python's default warning filters, as a user runs
    it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ARGBENCH_UI_URL",
                                                            "PYTHONWARNINGS")}
    env.update(ARGBENCH_PROJECT=str(project), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "argbench", *args], capture_output=True, text=True, env=env,
                          cwd=project, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_tracked_run_and_retrieve_are_quiet_off_a_terminal(tmp_path):
    run = argbench(tmp_path, "ablation", "run", "baseline", "--data", "sample", "--encoder", "tiny-random-bert",
                   "--epochs", "1", "--log-model")
    assert not NOISE.search(run.stderr), run.stderr
    assert [line.split()[0] for line in run.stderr.splitlines()] == ["epoch", "epoch"]  # one line per epoch
    (link,) = re.findall(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/([0-9a-f]{32})\?workflowType="
                         r"machine_learning", run.stdout)
    assert not list((tmp_path / "mlruns").glob("*.lock"))
    found = argbench(tmp_path, "retrieve", "--model", link, "--data", "sample", "--k", "2",
                     "School uniforms restrict students' freedom of expression.")
    assert not NOISE.search(found.stderr), found.stderr
    assert found.stderr.splitlines() == [line for line in found.stderr.splitlines() if line.startswith("argbench")]
    assert found.stdout.startswith("candidates: the ")


@pytest.mark.slow
def test_the_sentence_transformers_baseline_is_quiet_off_a_terminal(tmp_path):
    run = argbench(tmp_path, "baseline", "mnrl", "--data", "sample", "--encoder", "tiny-random-bert", "--epochs", "1",
                   "--batch-size", "16", "--max-length", "32", "--track")
    assert not NOISE.search(run.stderr) and "widget" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith(("epoch", "argbench")) for line in lines), run.stderr
