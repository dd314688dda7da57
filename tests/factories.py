"""Small real objects shared by the tests: hand-made corpora in the counterargs-18 layout (every answer known by
construction), the tiny training config, a trainer-shaped metrics dict, and MLflow runs with planted per-query ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from argbench.config import load_config
from argbench.data.corpus import SPLITS
from argbench.data.tasks import TASKS
from argbench.track.store import RANKS as ARTIFACT


def write_argument(root: Path, split: str, theme: str, debate: str, stance: str, number: int, kind: str,
                   text: str) -> Path:
    letter = "a" if kind == "point" else "b"
    path = root / split / theme / debate / stance / f"{stance}{number:02d}{letter}-{kind}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_pairs(root: Path, split: str, layout: dict[tuple[str, str], dict[str, int]]) -> None:
    """``layout[(theme, debate)][stance] = n`` true pairs, texts unique and naming their place."""
    for (theme, debate), stances in layout.items():
        for stance, n in stances.items():
            for number in range(1, n + 1):
                tag = f"{split} {theme} {debate} {stance} {number}"
                write_argument(root, split, theme, debate, stance, number, "point", f"Title {tag}\n\npoint {tag}")
                write_argument(root, split, theme, debate, stance, number, "counter", f"counter {tag}")


# Two themes; debate d1 has 2 pro + 1 con pairs, d2 1 pro + 1 con, d3 (other theme) 1 pro pair.
SMALL_LAYOUT = {("t1", "d1"): {"pro": 2, "con": 1}, ("t1", "d2"): {"pro": 1, "con": 1}, ("t2", "d3"): {"pro": 1}}


def write_small_corpus(root: Path) -> Path:
    for split in SPLITS:
        write_pairs(root, split, SMALL_LAYOUT)
    return root


def tiny_config(epochs: int):
    return load_config(overrides=["model.encoder=tiny-random-bert", f"train.epochs={epochs}",
                                  "model.max_length=32", "train.batch_size=16", "data.max_train_pairs=32"])


def trainer_metrics(epoch: int, acc: float = 0.5) -> dict:
    """A flat metrics dict shaped like the trainer's (argbench.train.trainer docstring), values chosen by hand: no
    classifier (so no ``val/rerank/acc_at_1``), nothing trained at epoch 0."""
    trained = {"train/loss": 3.0, "train/loss_triplet": 1.0, "train/loss_ce_pos": 0.5, "train/loss_ce_neg": 1.5,
               "train/loss_in_batch": 0.0, "negatives/point_frac": 0.25, "negatives/counter_frac": 0.25,
               "negatives/random_frac": 0.5, "negatives/same_debate_frac": 0.1, "negatives/same_theme_frac": 0.2,
               "negatives/mean_distance": 1.25, "schedule/random_rate": 0.8, "perf/train_seq_per_s": 10.0}
    val = {f"val/{t}/{name}": value for t in TASKS
           for name, value in (("acc_at_1", acc), ("acc_at_3", 0.6), ("acc_at_5", 0.7), ("acc_at_10", 0.8),
                               ("mrr", 0.55))}
    return {"epoch": epoch, **(trained if epoch > 0 else {}), **val, "perf/epoch_seconds": 2.0}


_clock = iter(range(1_000_000_000_000, 2_000_000_000_000, 1_000))


def log_run(client, experiment, name, ranks, *, split="test", parent=None, status="FINISHED", data="h0", tmp_dir):
    """One run named `name` with ranks {task: [n]} logged as ARTIFACT (rows shuffled; query id = position);
    ranks None logs no artifact (a multi-seed parent)."""
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {"data.hash": data, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(exp_id, start_time=next(_clock), tags=tags, run_name=name).info.run_id
    if ranks is None:
        client.set_terminated(run_id, status)
        return run_id
    rows = [{"epoch": 5, "query": i, "task": task, "rank": int(r)} for task, rs in ranks.items()
            for i, r in enumerate(rs)]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # readers must not rely on row order
    path = tmp_dir / run_id / ARTIFACT.format(split=split)
    path.parent.mkdir(parents=True)
    frame.to_csv(path, index=False)
    client.log_artifact(run_id, str(path), artifact_path=str(path.parent.relative_to(tmp_dir / run_id)))
    client.set_terminated(run_id, status)
    return run_id


def run_torchrun(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --nproc_per_node 2 --standalone`` (gloo on CPU, one thread a process), offline.

    The processes get their own session, so a hang ends with torchrun's workers killed rather than orphaned."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--standalone", str(script),
               *args]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
