"""Partial fine-tuning (``model.train_layers``, frozen bottom computed once) against full fine-tuning.

Both contenders are the same resolved recipe entry on the same seeded sample of training pairs, each trained in a
fresh spawned process for two epochs (mining + optimizer steps); the second epoch is timed, when the partial run's
cache of the frozen bottom's token states is filled (filling it costs about one forward pass of the bottom over the
texts, once per run). ``ratio`` is full over partial: the speed-up. Quality is the study's business.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from argbench.bench.recipe import BASE, _one_epoch
from argbench.data.corpus import resolve_data
from argbench.experiments import registry
from argbench.experiments.runner import data_profile


def run_partial_bench(data: str | None = None, base: str = BASE, layers: tuple[int, ...] = (2, 3), pairs: int = 128,
                      device: str = "cpu", encoder: str | None = None) -> list[dict]:
    """One row per ``train_layers`` value: ``{"case", "argbench_s" (its epoch seconds), "reference_s" (full
    fine-tuning's), "ratio", "agree": None, "seq_per_s", "reference_seq_per_s", "mine_s", "reference_mine_s",
    "peak_mb", "reference_peak_mb", "cache_mb", "precision"}``."""
    source = resolve_data(data)
    overrides = [f"data.max_train_pairs={pairs}", "train.epochs=2", f"train.device={device}",
                 *([f"model.encoder={encoder}"] if encoder else [])]
    profile = data_profile(source, None)
    context = multiprocessing.get_context("spawn")
    measured = {}
    for n in (None, *layers):
        cfg, _ = registry.resolve(base, [*overrides, f"model.train_layers={'null' if n is None else n}"],
                                  profile=profile)
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            measured[n] = pool.submit(_one_epoch, cfg, source, device, 2).result()
    full = measured[None]
    return [{"case": f"{base}: top {n} layers trained vs all, {pairs} pairs", "argbench_s": m["epoch_s"],
             "reference_s": full["epoch_s"], "ratio": full["epoch_s"] / m["epoch_s"], "agree": None,
             "seq_per_s": m["seq_per_s"], "reference_seq_per_s": full["seq_per_s"], "mine_s": m["mine_s"],
             "reference_mine_s": full["mine_s"], "peak_mb": m["peak_mb"], "reference_peak_mb": full["peak_mb"],
             "cache_mb": m["cache_mb"], "precision": cfg.train.precision}
            for n, m in measured.items() if n is not None]
