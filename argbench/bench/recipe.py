"""What each ``recipe`` switch costs: seconds per training epoch and peak memory, beside its base.

Every contender is a registry entry resolved over ``base`` (``argbench ablation show NAME --base BASE``) with the
same budget overrides, trained for one epoch in a fresh spawned process on the same seeded sample of training pairs:
one mining round (embedding every sampled point and counter, nearest-neighbour search) and one pass of optimizer
steps. The process's peak RSS (CUDA: peak allocated GPU memory) is its memory. ``ratio`` is the entry's epoch time
over the base's, so a switch that costs twice the time reads 2.0 (unlike the other benchmarks, where the ratio is the
speed-up of argbench over a reference). Quality is the study's business (``make study GROUP=recipe``), not this one.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from argbench.bench.train import _peak_rss_mb, _quiet
from argbench.data.corpus import load_corpus, resolve_data
from argbench.experiments import registry
from argbench.experiments.runner import data_profile
from argbench.train.distributed import setup
from argbench.train.trainer import Trainer

BASE = "learning_recipe_in_batch"
ENTRIES = ("length_256", "symmetric_in_batch", "positive_aware_mining", "gradient_cache")


def run_recipe_bench(data: str | None = None, entries: tuple[str, ...] = ENTRIES, base: str = BASE,
                     pairs: int = 128, device: str = "cpu", encoder: str | None = None) -> list[dict]:
    """One row per entry (the base first, ratio 1): ``{"case", "argbench_s" (the entry's epoch seconds),
    "reference_s" (the base's), "ratio", "agree": None, "mine_s", "train_s", "peak_mb", "base_peak_mb",
    "seq_per_s", "max_length", "batch_size"}``. ``encoder`` replaces the entries' encoder (tests: the tiny BERT)."""
    source, overrides, profile = budget(data, pairs, 1, device, encoder)
    measured = {}
    for name in (base, *entries):
        cfg, _ = registry.resolve(name, overrides, base=base, profile=profile)
        measured[name] = in_fresh_process(_one_epoch, cfg, source, device)
        measured[name].update(max_length=cfg.model.max_length, batch_size=cfg.train.batch_size)
    reference = measured[base]
    return [{"case": name, "argbench_s": m["epoch_s"], "reference_s": reference["epoch_s"],
             "ratio": m["epoch_s"] / reference["epoch_s"], "agree": None, "peak_mb": m["peak_mb"],
             "base_peak_mb": reference["peak_mb"], **{k: m[k] for k in ("mine_s", "train_s", "seq_per_s",
                                                                          "max_length", "batch_size")}}
            for name, m in measured.items()]


def budget(data: str | None, pairs: int, epochs: int, device: str, encoder: str | None) -> tuple:
    """(data source, the overrides every contender shares, the profile of that source) of a benchmark that trains
    ``epochs`` epochs on ``pairs`` seeded training pairs; ``encoder`` replaces the entries' (tests: the tiny BERT)."""
    source = resolve_data(data)
    overrides = [f"data.max_train_pairs={pairs}", f"train.epochs={epochs}", f"train.device={device}",
                 *([f"model.encoder={encoder}"] if encoder else [])]
    return source, overrides, data_profile(source, None)


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a freshly spawned process: its own peak memory, no state left by an earlier contender."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _one_epoch(cfg, source, device: str, rounds: int = 1) -> dict:
    """Mine and train ``rounds`` epochs of ``cfg`` in this (fresh) process: seconds of each part of the last one
    (later rounds find the caches of frozen parts filled), peak memory, and the bytes of those caches."""
    import torch

    with _quiet():
        corpus = load_corpus(source)
        trainer = Trainer(cfg, corpus, (), setup(device, cfg.train.precision), None, False)
        for epoch in range(1, rounds + 1):
            start = time.perf_counter()
            negatives, _ = trainer._mine(epoch, trainer.schedule.rate(epoch - 1))
            mined = time.perf_counter()
            trainer._train_epoch(epoch, negatives)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            done = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_rss_mb()
    return {"epoch_s": done - start, "mine_s": mined - start, "train_s": done - mined,
            "seq_per_s": 3 * len(trainer.pairs) / (done - mined), "peak_mb": peak,
            "cache_mb": sum(s.nbytes for s in trainer.frozen_states.values()) / 2**20}
