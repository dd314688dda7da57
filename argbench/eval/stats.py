"""Uncertainty for argbench results: bootstrap intervals over seeds, and paired tests between two systems.

Everything here is a pure function of numpy arrays (numpy and scipy only; no MLflow, no torch), so the maths is
tested on hand-made ranks with known answers.

Inputs are *ranks*: the 1-based rank of the true counter for each query of one task (``Evaluation.ranks[task]``),
shape ``[n]`` for one run or ``[seeds, n]`` for several seeds of one system. Two systems are compared *paired by
query*: row position i must be the same query in both. The per-query outcome is ``outcome(ranks, metric)``:
``acc@1`` → 1.0 if the counter is ranked first else 0.0; ``mrr`` → 1 / rank.

Intervals are percentile bootstraps (``scipy.stats.bootstrap``); the paired interval resamples *queries* (the same
indices for both systems), so it describes uncertainty from the choice of test queries, not from training randomness
(for that, compare several seeds per system: they are averaged per query before pairing). Paired tests are the exact
McNemar test (``scipy.stats.binomtest``) and a sign-flip permutation test (``scipy.stats.permutation_test``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap, permutation_test

METRICS = ("acc@1", "mrr")
# scipy draws resamples and sign flips this many at a time, so memory stays ~block x n floats however large n_boot or
# n_perm is (epa has n = 1,401).
_BLOCK = 1_000


def outcome(ranks, metric: str) -> np.ndarray:
    """Per-query outcome of `ranks` (any shape, 1-based) as floats: ``acc@1`` → (ranks == 1); ``mrr`` → 1/ranks."""
    ranks = np.asarray(ranks, dtype=float)
    if metric == "acc@1":
        return (ranks == 1).astype(float)
    if metric == "mrr":
        return 1.0 / ranks
    raise ValueError(f"metric {metric!r}: expected one of {METRICS}")


def bootstrap_ci(values, *, stat: Callable = np.mean, level: float = 0.95, n_boot: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lo, hi)`` for ``stat`` of a 1-D sample `values` (e.g. one metric per seed).

    ``scipy.stats.bootstrap`` with ``method="percentile"``: `n_boot` resamples of len(values) with replacement
    (seeded: same inputs → same interval), and the (1 − level)/2 and (1 + level)/2 quantiles of ``stat(resample)``.
    `stat` must reduce along ``axis=-1`` like the numpy reductions (np.mean, np.median). One value gives ``(v, v)``.
    With few values (3–5 seeds) the interval is narrow-biased: it cannot reach beyond the values observed.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap_ci: values must be a non-empty 1-D sample; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"bootstrap_ci: values must be finite; got {values[~np.isfinite(values)][:3]}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level {level}: expected 0 < level < 1")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot {n_boot}: expected >= 1")
    if values.size == 1:  # scipy wants two observations; every resample of one value is that value
        return float(values[0]), float(values[0])
    ci = bootstrap((values,), stat, n_resamples=n_boot, batch=_BLOCK, vectorized=True, confidence_level=level,
                   method="percentile", rng=seed).confidence_interval
    return float(ci.low), float(ci.high)


def seed_summary(values_per_seed, **bootstrap_kw) -> dict:
    """``{"mean", "std", "ci": [lo, hi], "n"}`` of one metric over seeds (1-D, one value per seed).

    ``std`` uses ddof=1 (0.0 for a single seed); ``ci`` is :func:`bootstrap_ci` of the mean (keywords passed on).
    """
    values = np.asarray(values_per_seed, dtype=float)
    lo, hi = bootstrap_ci(values, **bootstrap_kw)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "ci": [lo, hi], "n": int(values.size)}


def _as_ranks(ranks, name: str) -> np.ndarray:
    """`ranks` as a float array of shape [seeds, n] (a 1-D input is one seed); rejects what is not a rank."""
    arr = np.asarray(ranks, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: expected ranks of shape [n] or [seeds, n] with n >= 1; got shape "
                         f"{np.shape(ranks)}")
    bad = ~np.isfinite(arr) | (arr < 1) | (arr != np.round(arr))
    if bad.any():
        raise ValueError(f"{name}: ranks must be whole numbers >= 1 (1 = counter ranked first); got "
                         f"{arr[bad][:3].tolist()} at (seed, query) {np.argwhere(bad)[0].tolist()}")
    return arr


def mcnemar_exact(a_correct, b_correct) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes (1-D, aligned by query).

    Only discordant queries count: under H0 each is equally likely to favour A or B, so the number favouring B is
    Binomial(discordant, 0.5). No discordant pairs → 1.0.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    b_wins, a_wins = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    if a_wins + b_wins == 0:
        return 1.0
    return float(binomtest(b_wins, a_wins + b_wins, 0.5, alternative="two-sided").pvalue)


def sign_flip_p(differences, *, n_perm: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value for H0 "mean difference is 0", by sign flips of the per-query differences.

    The statistic is |sum of the differences|; p is the share of sign vectors whose |sum| reaches the observed one.
    With 2^n <= `n_perm` every sign vector is enumerated (an exact p); otherwise `n_perm` random ones are drawn (each
    sign +/- with probability 1/2) and p = (#{|perm sum| >= |observed sum|} + 1) / (n_perm + 1), so the smallest
    attainable p is 1 / (n_perm + 1). All differences zero, or a single one → 1.0.
    """
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or not d.any():
        return 1.0
    observed = abs(d.sum())
    # Sums that equal the observed one in exact arithmetic may differ from it by rounding; count them as ties. scipy's
    # own tolerance is relative to the observed sum only, too tight when the differences mostly cancel.
    tie = observed - 1e-9 * np.abs(d).sum()

    def abs_sum(x, axis=-1):
        sums = np.abs(x.sum(axis=axis))
        return np.where(sums >= tie, observed, sums)

    # Two-sided through |sum| and "greater": scipy's "two-sided" doubles the smaller one-sided p, whose floor would be
    # 2 / (n_perm + 1) instead of this test's 1 / (n_perm + 1).
    return float(permutation_test((d,), abs_sum, permutation_type="samples", n_resamples=n_perm, batch=_BLOCK,
                                  vectorized=True, alternative="greater", rng=seed).pvalue)


def paired_difference(a_ranks, b_ranks, *, metric: str = "acc@1", n_boot: int = 10_000, n_perm: int = 10_000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """Compare system B with system A on one task, paired by query.

    `a_ranks`, `b_ranks`: 1-based ranks of the true counter per query, shape [n] or [seeds, n], with query i in
    column i of both. Several seeds are pooled first: each system's per-query outcome is its mean over its own seeds
    (the two may have different numbers of seeds).

    Returns ``{"a", "b", "delta", "ci", "p_value", "test", "n"}``: the metric for A and for B (mean over queries),
    ``delta`` = b − a, ``ci`` = [lo, hi] the `level` percentile bootstrap interval of delta resampling query indices
    (the same indices for both systems), ``p_value`` two-sided for H0 "no difference", ``test`` naming the test,
    ``n`` the number of queries. The test is the exact McNemar test for acc@1 with one seed per system, else (acc@1
    pooled over seeds, or MRR) the sign-flip permutation test :func:`sign_flip_p` with `n_perm` permutations, whose
    p cannot go below 1 / (n_perm + 1) (exact, over every sign vector, when 2^n <= n_perm).
    """
    a = _as_ranks(a_ranks, "a_ranks")
    b = _as_ranks(b_ranks, "b_ranks")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a_ranks has {a.shape[1]} queries but b_ranks has {b.shape[1]}; they must be the same "
                         "queries, aligned by position")
    a_out, b_out = outcome(a, metric).mean(axis=0), outcome(b, metric).mean(axis=0)
    diff = b_out - a_out
    if metric == "acc@1" and a.shape[0] == 1 and b.shape[0] == 1:
        p_value, test = mcnemar_exact(a_out, b_out), "mcnemar-exact"
    else:
        p_value, test = sign_flip_p(diff, n_perm=n_perm, seed=seed), "sign-flip-permutation"
    lo, hi = bootstrap_ci(diff, level=level, n_boot=n_boot, seed=seed)
    return {"a": float(a_out.mean()), "b": float(b_out.mean()), "delta": float(diff.mean()), "ci": [lo, hi],
            "p_value": float(p_value), "test": test, "n": int(diff.size)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given (family-wise error control over all of them).

    The k-th smallest of m p-values is multiplied by (m − k + 1); adjusted values are made non-decreasing in that
    order and capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"holm: expected a flat sequence of p-values; got shape {p.shape}")
    if p.size and not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1]; got {p[~((p >= 0) & (p <= 1))].tolist()}")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    adjusted = np.empty_like(p)
    adjusted[order] = scaled
    return adjusted.tolist()


def compare_runs(a: Mapping[str, object], b: Mapping[str, object], tasks: Sequence[str] | None = None,
                 **kw) -> dict:
    """:func:`paired_difference` of B against A for every task in `tasks` and both metrics.

    `a`, `b`: {task: ranks [n] or [seeds, n]}. `tasks` defaults to a's tasks, in a's order; each must be in both.
    `kw` goes to :func:`paired_difference` (n_boot, n_perm, seed, level). Returns
    ``{"tasks": {task: {"acc@1": {...}, "mrr": {...}}}}``, each metric dict with an extra ``p_holm``: its p-value
    Holm-adjusted over all tasks × metrics returned.
    """
    tasks = list(a) if tasks is None else list(tasks)
    missing = {side: [t for t in tasks if t not in runs] for side, runs in (("a", a), ("b", b))}
    if missing["a"] or missing["b"]:
        raise ValueError(f"compare_runs: tasks missing from a: {missing['a']}, from b: {missing['b']}")
    out: dict[str, dict] = {}
    for task in tasks:
        try:
            out[task] = {m: paired_difference(a[task], b[task], metric=m, **kw) for m in METRICS}
        except ValueError as err:
            raise ValueError(f"task {task!r}: {err}") from err
    cells = [cell for per_task in out.values() for cell in per_task.values()]
    for cell, p_adj in zip(cells, holm([cell["p_value"] for cell in cells])):
        cell["p_holm"] = p_adj
    return {"tasks": out}
