"""bf16 autocast against fp32 on the machine's CPU (or GPU): training and embedding speed, and what it does to the
metrics.

Both contenders are the same resolved recipe entry, corpus and seed, each in a fresh spawned process: one epoch of
mining and optimizer steps on a seeded sample of training pairs (training sequences/s), and the untrained model's
evaluation of the validation split (texts embedded per second, and its metrics). ``ratio`` is fp32 seconds over
bf16 seconds; ``agree`` is every validation acc@1 within ``TOLERANCE`` of fp32's (``max_diff`` the largest gap of
any acc@1 or MRR). ``native`` says whether the CPU computes bf16 in hardware (the rule of ``train.precision: auto``).
"""

from __future__ import annotations

import time

from argbench.bench.recipe import BASE, _one_epoch, budget, in_fresh_process
from argbench.bench.train import _quiet
from argbench.data.corpus import load_corpus
from argbench.experiments import registry
from argbench.train.distributed import native_cpu_bf16, setup
from argbench.train.trainer import Trainer

TOLERANCE = 0.01  # one query in a hundred


def run_precision_bench(data: str | None = None, base: str = BASE, pairs: int = 128, device: str = "cpu",
                        encoder: str | None = None) -> list[dict]:
    """Two rows, training and embedding: ``{"case", "argbench_s" (bf16), "reference_s" (fp32), "ratio", "agree",
    "max_diff", "native", "per_s", "reference_per_s"}``."""
    source, overrides, profile = budget(data, pairs, 1, device, encoder)
    train, embed = {}, {}
    for precision in ("bf16", "fp32"):
        cfg, _ = registry.resolve(base, [*overrides, f"train.precision={precision}"], profile=profile)
        train[precision] = in_fresh_process(_one_epoch, cfg, source, device)
        embed[precision] = in_fresh_process(_evaluate_validation, cfg, source, device)
    diffs = [abs(embed["bf16"]["metrics"][k] - v) for k, v in embed["fp32"]["metrics"].items()]
    agree = all(abs(embed["bf16"]["metrics"][k] - v) <= TOLERANCE
                for k, v in embed["fp32"]["metrics"].items() if k.endswith("acc_at_1"))
    native = native_cpu_bf16() if device == "cpu" else None
    return [{"case": f"{base}: training, {pairs} pairs", "argbench_s": train["bf16"]["train_s"],
             "reference_s": train["fp32"]["train_s"], "ratio": train["fp32"]["train_s"] / train["bf16"]["train_s"],
             "agree": None, "native": native, "per_s": train["bf16"]["seq_per_s"],
             "reference_per_s": train["fp32"]["seq_per_s"]},
            {"case": f"{base}: embedding + evaluating validation (untrained)", "argbench_s": embed["bf16"]["s"],
             "reference_s": embed["fp32"]["s"], "ratio": embed["fp32"]["s"] / embed["bf16"]["s"], "agree": agree,
             "max_diff": max(diffs), "native": native, "per_s": embed["bf16"]["texts"] / embed["bf16"]["s"],
             "reference_per_s": embed["fp32"]["texts"] / embed["fp32"]["s"]}]


def _evaluate_validation(cfg, source, device: str) -> dict:
    """The untrained model's validation evaluation in this (fresh) process: seconds, texts, acc@1 and MRR."""
    with _quiet():
        corpus = load_corpus(source)
        trainer = Trainer(cfg, corpus, (), setup(device, cfg.train.precision), None, False)
        split = corpus.split("validation")
        start = time.perf_counter()
        flat = trainer._evaluate("val", split).flat("val")
        seconds = time.perf_counter() - start
    return {"s": seconds, "texts": len(split.args),
            "metrics": {k: v for k, v in flat.items() if k.endswith(("acc_at_1", "/mrr"))}}
