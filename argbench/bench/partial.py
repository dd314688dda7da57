"""Partial fine-tuning (``model.train_layers``, frozen bottom computed once) against full fine-tuning.

Both contenders are the same resolved recipe entry on the same seeded sample of training pairs, each trained in a
fresh spawned process for two epochs (mining + optimizer steps); the second epoch is timed, when the partial run's
cache of the frozen bottom's token states is filled (filling it costs about one forward pass of the bottom over the
texts, once per run). ``ratio`` is full over partial: the speed-up. Quality is the study's business.
"""

from __future__ import annotations

from argbench.bench.recipe import BASE, _one_epoch, budget, in_fresh_process
from argbench.experiments import registry


def run_partial_bench(data: str | None = None, base: str = BASE, layers: tuple[int, ...] = (2, 3), pairs: int = 128,
                      device: str = "cpu", encoder: str | None = None) -> list[dict]:
    """One row per ``train_layers`` value: ``{"case", "argbench_s" (its epoch seconds), "reference_s" (full
    fine-tuning's), "ratio", "agree": None, "seq_per_s", "reference_seq_per_s", "mine_s", "reference_mine_s",
    "peak_mb", "reference_peak_mb", "cache_mb", "precision"}``."""
    source, overrides, profile = budget(data, pairs, 2, device, encoder)
    measured = {}
    for n in (None, *layers):
        cfg, _ = registry.resolve(base, [*overrides, f"model.train_layers={'null' if n is None else n}"],
                                  profile=profile)
        measured[n] = in_fresh_process(_one_epoch, cfg, source, device, 2)
    full = measured[None]
    return [{"case": f"{base}: top {n} layers trained vs all, {pairs} pairs", "argbench_s": m["epoch_s"],
             "reference_s": full["epoch_s"], "ratio": full["epoch_s"] / m["epoch_s"], "agree": None,
             "seq_per_s": m["seq_per_s"], "reference_seq_per_s": full["seq_per_s"], "mine_s": m["mine_s"],
             "reference_mine_s": full["mine_s"], "peak_mb": m["peak_mb"], "reference_peak_mb": full["peak_mb"],
             "cache_mb": m["cache_mb"], "precision": cfg.train.precision}
            for n, m in measured.items() if n is not None]
