"""``argbench bench gpu`` (``make gpu-check``): the first command on a GPU machine, about five minutes, no MLflow or
Optuna needed.

1. **bf16 against fp32**: the recipe (:data:`RECIPE`) trains :data:`EPOCHS` epochs on the corpus (``--data``, else
   ``$ARGBENCH_DATA``; decontaminated, as every run) twice, under bf16 autocast and in fp32, same seed, same steps;
   with several local GPUs both runs are DDP over all of them (``torchrun``). Agreement: the untrained model's
   validation acc@1 and MRR of every task within :data:`UNTRAINED_TOLERANCE` (only the arithmetic differs), the
   last epoch's within :data:`TRAINED_TOLERANCE` (training paths drift apart), and every epoch's training loss
   within :data:`LOSS_REL_TOLERANCE` of fp32's.
2. **Throughput**: training sequences/s of argbench's step and of sentence-transformers' ``SentenceTransformerTrainer``
   with ``MultipleNegativesRankingLoss`` (the same all-MiniLM-L6-v2 weights, length, batch and triplets, bf16 on one
   GPU; :mod:`argbench.bench.train`'s steady-state timing), and each one's peak GPU memory.

Writes ``gpu_check.json`` (everything above) in ``--out`` and, beside it, the two runs' folders (``bf16/``,
``fp32/``), which ``argbench ablation import FOLDER --name NAME`` logs to MLflow. Exit status 1 when bf16 and fp32
disagree. ``--dry-run`` checks the command itself on a CPU: the tiny random BERT on the generated sample corpus, one
epoch of two steps, two timed steps per contender (its figures mean nothing).

    argbench bench gpu [--epochs 3] [--out DIR] [--data PATH] [--dry-run]
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from argbench.bench.train import (
    _argbench_trainer,
    _materialise,
    _quiet,
    _random_negatives,
    _sentence_transformers_run,
    _steady_seconds,
    _texts,
)
from argbench.config import Config
from argbench.data.corpus import load_corpus, resolve_data
from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.experiments import registry
from argbench.model.encoders import MINILM
from argbench.paths import runs_dir
from argbench.train.trainer import fit

RECIPE = "learning_recipe_in_batch"
EPOCHS = 3
UNTRAINED_TOLERANCE = 0.01  # one query in a hundred: the precision benchmark's bound for the same model
TRAINED_TOLERANCE = 0.03  # after a few hundred steps the two runs have taken different paths
LOSS_REL_TOLERANCE = 0.05
THROUGHPUT_STEPS = 30  # timed steps per contender (the first one not counted)
# The dry run: a tiny random BERT on the generated sample, a few steps, on the CPU.
DRY_RUN = ["model.encoder=tiny-random-bert", "model.max_length=64", "data.max_train_pairs=32",
           "train.batch_size=16", "train.embed_batch_size=64"]


def run_gpu_check(data: str | None = None, out: Path | None = None, epochs: int = EPOCHS,
                  dry_run: bool = False, nproc: int | None = None) -> dict:
    """Both parts of the check; returns (and writes to ``out/gpu_check.json``) the report. ``nproc``: processes
    (GPUs) of the training runs; default every local GPU (1 on a CPU)."""
    started = time.perf_counter()
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        raise UserError(f"bench gpu: torch {torch.__version__} sees no CUDA device; run it on a GPU machine "
                        "(or --dry-run to check the command on this CPU)")
    source = resolve_data("sample" if dry_run and data is None else data, announce=not dry_run)
    out = Path(out) if out else runs_dir() / "gpu-check" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    nproc = nproc or (max(1, torch.cuda.device_count()) if device == "cuda" else 1)
    overrides = [f"train.epochs={1 if dry_run else epochs}", f"train.device={device}",
                 "data.eval_splits=[validation]", *(DRY_RUN if dry_run else ["train.embed_batch_size=512"])]
    runs = {}
    for precision in ("bf16", "fp32"):
        folder = out / precision
        shutil.rmtree(folder, ignore_errors=True)
        runs[precision] = _train(source, [*overrides, f"train.precision={precision}"], folder, nproc)
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "devices": nproc, "torch": torch.__version__, "data": source.describe(), "recipe": RECIPE,
        "runs": runs,
        "agreement": agreement(_history(out / "bf16"), _history(out / "fp32")),
        "throughput": _throughput(source, device, dry_run, out),
    }
    report["wall_s"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    report["out"] = str(out)
    return report


def resolved_config(source, overrides: list[str]) -> Config:
    """The recipe entry with ``overrides``, under the profile of ``source``: the generated sample's (``embedded``),
    or none (the rule of ``argbench ablation run``, without importing the tracking side that module brings)."""
    return registry.resolve(RECIPE, overrides, embedded=source.kind == "sample")[0]


# ------------------------------------------------------------------------------------------------ bf16 vs fp32
def _train(source, overrides: list[str], folder: Path, nproc: int) -> dict:
    """Train the recipe into run folder ``folder`` (``nproc`` > 1: under torchrun, one process per GPU):
    wall seconds, peak GPU memory of the main process (MiB; None on a CPU) and the processes."""
    start = time.perf_counter()
    if nproc > 1:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node",
                   str(nproc), "-m", "argbench.bench.gpu",
                   "sample" if source.kind == "sample" else str(source.path), str(folder), *overrides]
        subprocess.run(command, check=True)
        peak = json.loads((folder / "peak_memory.json").read_text())["peak_mb"]
    else:
        peak = _fit(source, overrides, folder)
    return {"folder": str(folder), "wall_s": time.perf_counter() - start, "peak_gpu_mb": peak, "processes": nproc}


def _fit(source, overrides: list[str], folder: Path) -> float | None:
    """Train in this process; the peak GPU memory it allocated (MiB), None without CUDA."""
    cuda = torch.cuda.is_available() and "train.device=cpu" not in overrides
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _quiet():
        fit(resolved_config(source, overrides), load_corpus(source), out_dir=folder)
    return torch.cuda.max_memory_allocated() / 2**20 if cuda else None


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def agreement(bf16: list[dict], fp32: list[dict]) -> dict:
    """Whether the bf16 run's metrics agree with the fp32 run's (module docstring): ``{"agree", "checks": [{"what",
    "max_diff", "tolerance", "agree"}]}``; a check whose metrics are absent (no epoch 0) is left out."""
    def gap(a: dict, b: dict, names: list[str]) -> float:
        return max((abs(a[n] - b[n]) for n in names if n in a and n in b), default=0.0)

    evaluated = [f"val/{task}/{m}" for task in TASKS for m in ("acc_at_1", "mrr")]
    checks = []
    if bf16[0]["epoch"] == 0 and any(n in bf16[0] for n in evaluated):
        checks.append({"what": "untrained model (epoch 0): validation acc@1 and MRR of every task",
                       "max_diff": gap(bf16[0], fp32[0], evaluated), "tolerance": UNTRAINED_TOLERANCE})
    checks.append({"what": f"last epoch ({bf16[-1]['epoch']}): validation acc@1 and MRR of every task",
                   "max_diff": gap(bf16[-1], fp32[-1], evaluated), "tolerance": TRAINED_TOLERANCE})
    losses = [abs(a["train/loss"] - b["train/loss"]) / abs(b["train/loss"])
              for a, b in zip(bf16, fp32) if "train/loss" in a and "train/loss" in b]
    checks.append({"what": "training loss of every epoch, relative to fp32", "max_diff": max(losses, default=0.0),
                   "tolerance": LOSS_REL_TOLERANCE})
    for check in checks:
        check["agree"] = bool(check["max_diff"] <= check["tolerance"])
    return {"agree": all(c["agree"] for c in checks), "checks": checks,
            "bf16_last": {n: bf16[-1][n] for n in ("val/epa/acc_at_1", "val/epa/mrr", "train/loss") if n in bf16[-1]},
            "fp32_last": {n: fp32[-1][n] for n in ("val/epa/acc_at_1", "val/epa/mrr", "train/loss") if n in fp32[-1]}}


# ------------------------------------------------------------------------------------------------ throughput
def _throughput(source, device: str, dry_run: bool, out: Path) -> dict:
    """Steady-state training sequences/s and peak memory of argbench's step and of SentenceTransformerTrainer +
    MultipleNegativesRankingLoss: the same weights, triplets, batch and length, one device, bf16 on CUDA."""
    recipe = resolved_config(source, [])
    batch_size, max_length = (4, 32) if dry_run else (recipe.train.batch_size, recipe.model.max_length)
    steps = 3 if dry_run else THROUGHPUT_STEPS
    encoder = "tiny-random-bert" if dry_run else MINILM
    corpus = load_corpus(source)
    cuda = device == "cuda"
    with _quiet(), tempfile.TemporaryDirectory(prefix="argbench-gpu-") as tmp:
        folder = _materialise(encoder, Path(tmp) / "encoder")
        trainer = _argbench_trainer(folder, corpus, steps, batch_size, max_length, device, seed=0)
        negatives = _random_negatives(trainer.train_split, trainer.pairs, np.random.default_rng(0))
        triplets = _texts(trainer.train_split, trainer.pairs, negatives)
        reference = _sentence_transformers_run(folder, triplets, steps, batch_size, max_length, trainer.cfg.train.lr,
                                               device, 0, Path(tmp) / "st", loss="mnrl")
        contenders = {"argbench": lambda: trainer._train_epoch(1, negatives), "sentence_transformers": reference}
        row = {"encoder": encoder, "batch_size": batch_size, "max_length": max_length, "timed_steps": steps - 1,
               "precision": str(trainer.runtime.autocast_dtype or "fp32").replace("torch.", "")}
        for who, run in contenders.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = _steady_seconds(run, device)
            row[f"{who}_seq_per_s"] = 3 * batch_size * (steps - 1) / seconds
            row[f"{who}_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    row["ratio"] = row["argbench_seq_per_s"] / row["sentence_transformers_seq_per_s"]
    return row


# ------------------------------------------------------------------------------------------------ printing
def summary(report: dict) -> str:
    """A few lines for a person: where it ran, agreement, throughput, memory, where the files are."""
    t, a = report["throughput"], report["agreement"]
    lines = [f"gpu check {report['date']} on {report['device']} x{report['devices']}, torch {report['torch']}, "
             f"{report['data']}, {report['wall_s']:.0f} s"]
    for precision, run in report["runs"].items():
        memory = f", peak {run['peak_gpu_mb']:.0f} MiB" if run["peak_gpu_mb"] is not None else ""
        lines.append(f"  {RECIPE} {precision}: {run['wall_s']:.0f} s{memory} -> {run['folder']}")
    lines.append(f"  bf16 vs fp32: {'agree' if a['agree'] else 'DISAGREE'}  last epoch bf16 {a['bf16_last']}, "
                 f"fp32 {a['fp32_last']}")
    for c in a["checks"]:
        lines.append(f"    {'ok ' if c['agree'] else 'BAD'} {c['what']}: max diff {c['max_diff']:.4f} "
                     f"(tolerance {c['tolerance']})")
    memory = (f"; peak {t['argbench_peak_gpu_mb']:.0f} vs {t['sentence_transformers_peak_gpu_mb']:.0f} MiB"
              if t["argbench_peak_gpu_mb"] is not None else "")
    lines.append(f"  sequences/s ({t['encoder']}, batch {t['batch_size']}, {t['max_length']} tokens, "
                 f"{t['precision']}): argbench {t['argbench_seq_per_s']:.0f}, sentence-transformers MNRL "
                 f"{t['sentence_transformers_seq_per_s']:.0f} ({t['ratio']:.2f}x){memory}")
    lines.append(f"  report: {report['out']}/gpu_check.json")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """``torchrun ... -m argbench.bench.gpu SOURCE FOLDER OVERRIDES...``: one process of a multi-GPU run."""
    source, folder, overrides = resolve_data(argv[0], announce=False), Path(argv[1]), argv[2:]
    peak = _fit(source, overrides, folder)
    if int(os.environ.get("RANK", "0")) == 0:
        (folder / "peak_memory.json").write_text(json.dumps({"peak_mb": peak}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
