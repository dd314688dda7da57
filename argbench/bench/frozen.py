"""``frozen_encoder`` with its encoder outputs computed once (argbench) against computed at every use (before).

Both contenders are :func:`argbench.train.trainer.fit` on the same resolved ``frozen_encoder`` config, corpus and
seed in one process; only :attr:`argbench.train.trainer.Trainer.cache_frozen_encoder` differs. Times are the mean
seconds of the trained epochs after the first (the first also fills the cache of the training texts; epoch 0 that
of the evaluated splits), and the whole run. ``agree``: every metric of every epoch equal within 1e-5.
"""

from __future__ import annotations

import math
import time

from argbench.data.corpus import load_corpus, resolve_data
from argbench.experiments import registry
from argbench.experiments.runner import data_profile
from argbench.train.trainer import Trainer, fit

TOLERANCE = 1e-5


def run_frozen_bench(data: str | None = None, encoder: str = "all-MiniLM-L6-v2", epochs: int = 3,
                     max_train_pairs: int | None = 256, max_length: int = 128, pooling: str | None = None
                     ) -> list[dict]:
    """One row: seconds per steady epoch with the cache (argbench_s) and without (reference_s), and per run.
    `pooling` None keeps the entry's (pooler); a tiny random model needs ``mean`` for its ranks to be stable
    under float rounding (its pooler outputs are all within ~1e-3 of each other)."""
    source = resolve_data(data)
    # fp32: the equality check is to 1e-5, and under bf16 batches padded differently round differently
    overrides = [f"model.encoder={encoder}", f"train.epochs={epochs}", f"model.max_length={max_length}",
                 "train.device=cpu", "train.precision=fp32", *([f"model.pooling={pooling}"] if pooling else []),
                 *([f"data.max_train_pairs={max_train_pairs}"] if max_train_pairs else [])]
    cfg, _ = registry.resolve("frozen_encoder", overrides, profile=data_profile(source, None))
    corpus = load_corpus(source)
    runs = {}
    for cached in (True, False):
        Trainer.cache_frozen_encoder = cached
        start = time.perf_counter()
        try:
            history = fit(cfg, corpus)
        finally:
            Trainer.cache_frozen_encoder = True
        runs[cached] = (history, time.perf_counter() - start)
    steady = {k: _steady_epoch_seconds(h) for k, (h, _) in runs.items()}
    pairs = len(corpus.split("training").points_idx)
    pairs = min(pairs, max_train_pairs or pairs)
    return [{"case": f"frozen_encoder {encoder}, {pairs} pairs, len {max_length}, {epochs} epochs",
             "argbench_s": steady[True], "reference_s": steady[False], "ratio": steady[False] / steady[True],
             "agree": same_metrics(runs[True][0], runs[False][0]),
             "epochs_per_s": 1 / steady[True], "reference_epochs_per_s": 1 / steady[False],
             "run_s": runs[True][1], "reference_run_s": runs[False][1], "data": source.describe()}]


def _steady_epoch_seconds(history: list[dict]) -> float:
    times = [m["perf/epoch_seconds"] for m in history if m["epoch"] >= 2] \
        or [m["perf/epoch_seconds"] for m in history[1:]]
    return sum(times) / len(times)


def flat_metrics(row: dict) -> dict:
    """A history row (``{"val/epa/acc_at_1": value, "train/loss": value, ...}``), wall-clock timings left out."""
    return {key: value for key, value in row.items() if not key.startswith("perf/")}


def same_metrics(a: list[dict], b: list[dict]) -> bool:
    pairs = [(flat_metrics(x), flat_metrics(y)) for x, y in zip(a, b)]
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (isinstance(x[k], float) and math.isclose(
            x[k], y[k], abs_tol=TOLERANCE)) for k in x) for x, y in pairs)
