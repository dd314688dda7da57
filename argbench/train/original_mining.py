"""The original protocol's mining as the research code ran it: the slow baseline of `argbench bench mining` and the
cross-check of :func:`argbench.train.negatives.mine` (same negatives at rate 0, barring exact float ties)."""

from __future__ import annotations

import numpy as np
import torch

from argbench.train.negatives import COUNTER, POINT, RANDOM, MiningResult, check_pairs


def mine_reference(point_emb, counter_emb, rate: float, rng: np.random.Generator,
                   queries: int | None = None) -> MiningResult:
    """The original protocol as the research code ran it — slow baseline for benchmarks and cross-checks.

    One sklearn BallTree(leaf_size=2) per array, k=3 neighbours for each point, then a Python loop per query.
    With rate=0 it picks the same negatives as `mine(..., rate=0)` (barring exact float ties). ``queries`` mines
    only the first that many points (trees still over all N): queries are independent, so a benchmark can time a
    subset and extrapolate.
    """
    from sklearn.neighbors import BallTree

    points, counters = _as_float64(point_emb), _as_float64(counter_emb)
    n = check_pairs(torch.from_numpy(points), torch.from_numpy(counters))
    asked = points[:queries] if queries else points
    p_dist, p_idx = BallTree(points, leaf_size=2).query(asked, k=3)
    c_dist, c_idx = BallTree(counters, leaf_size=2).query(asked, k=3)
    kinds, indices, sources, distances = [], [], [], []
    for i in range(len(asked)):
        p_col = next(c for c in range(3) if p_idx[i, c] != i)
        c_col = next(c for c in range(3) if c_idx[i, c] != i)
        if rng.random() < rate:
            arg = i
            while arg in (i, n + i):
                arg = int(rng.integers(2 * n))
            kind, j = (POINT, arg) if arg < n else (COUNTER, arg - n)
            other = points[j] if kind == POINT else counters[j]
            kinds.append(kind), indices.append(j), sources.append(RANDOM)
            distances.append(float(np.linalg.norm(points[i] - other)))
        elif p_dist[i, p_col] <= c_dist[i, c_col]:
            kinds.append(POINT), indices.append(p_idx[i, p_col]), sources.append(POINT)
            distances.append(p_dist[i, p_col])
        else:
            kinds.append(COUNTER), indices.append(c_idx[i, c_col]), sources.append(COUNTER)
            distances.append(c_dist[i, c_col])
    return MiningResult(np.array(kinds), np.array(indices, dtype=np.int64), np.array(sources),
                        np.array(distances, dtype=np.float64), float(rate))


def _as_float64(emb) -> np.ndarray:
    return emb.detach().cpu().double().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb, np.float64)
