"""Benchmark: argbench's `mine` against the original protocol (`mine_reference`, BallTree + Python loop).

Embeddings are synthetic: N standard-normal points in d dimensions, each counter its point plus noise of
std 0.5 (so a point's own counter is usually its nearest neighbour and must be skipped). Both miners run at
rate 0, so their negatives must agree exactly.

    python -m argbench.bench.mining --ns 4065 40000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch

from argbench.train.negatives import mine
from argbench.train.original_mining import mine_reference


def run_mining_bench(
    ns: tuple[int, ...] = (4065, 40000),
    d: int = 128,
    repeats: int = 3,
    seed: int = 0,
    reference_repeats: int | None = None,
    reference_queries: int = 4065,
) -> list[dict]:
    """One row per N: {"case", "argbench_s", "reference_s", "ratio", "agree"}; times are medians in seconds.

    The reference is timed `reference_repeats` times (default: `repeats`, 1 above N = 10,000). Above
    `reference_queries` points it mines only that many queries (its trees still hold all N) and the query part is
    extrapolated linearly — BallTree queries are independent, and the full run at N = 40,000 takes ~20 minutes on
    2 cores; the row then says so and `agree` compares those queries. ratio = reference_s / argbench_s.
    """
    rows = []
    for n in ns:
        point_emb, counter_emb = _embeddings(n, d, seed)
        ours_s, ours = _median_time(lambda: mine(point_emb, counter_emb, rate=0.0,
                                                 generator=torch.Generator().manual_seed(seed)), repeats)
        m = min(n, reference_queries)
        ref_repeats = reference_repeats or (1 if n > 10_000 else repeats)
        ref_s, ref = _median_time(lambda: mine_reference(point_emb, counter_emb, 0.0, np.random.default_rng(seed),
                                                         queries=m), ref_repeats)
        row = {"case": f"N={n} d={d} rate=0 threads={torch.get_num_threads()}", "argbench_s": ours_s}
        if m < n:
            build_s, _ = _median_time(lambda: mine_reference(point_emb, counter_emb, 0.0,
                                                             np.random.default_rng(seed), queries=1), 1)
            ref_s = build_s + (ref_s - build_s) * n / m
            row["reference_extrapolated_from"] = m
        agree = bool(np.array_equal(ours.neg_kind[:m], ref.neg_kind)
                     and np.array_equal(ours.neg_index[:m], ref.neg_index))
        rows.append({**row, "reference_s": ref_s, "ratio": ref_s / ours_s, "agree": agree})
    return rows


def _embeddings(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=generator)
    return points, points + 0.5 * torch.randn(n, d, generator=generator)


def _median_time(fn: Callable, repeats: int):
    """Median wall time of `repeats` calls (seconds) and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[4065, 40000], help="numbers of pairs N")
    parser.add_argument("--d", type=int, default=128, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of argbench's miner per N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for row in run_mining_bench(tuple(args.ns), args.d, args.repeats, args.seed):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
