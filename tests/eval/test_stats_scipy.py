"""The scipy-backed bootstrap and sign-flip test give the numbers of the hand-written code they replaced.

``hand_bootstrap_ci`` and ``hand_sign_flip_p`` are that code, kept here as the reference (block size 1,000, as in
:data:`argbench.eval.stats._BLOCK`; the sign-flip one can also take a fixed set of sign vectors). The bootstrap
must agree to rounding: scipy draws the same resample indices from the same seed, and only its quantile
interpolation rounds the last digit differently (``ROUNDING``; resamples that differed would move the interval by
~1e-3). The sign-flip test must agree exactly wherever scipy enumerates every sign vector (2^n <= n_perm), against
the hand-written rule applied to every sign vector; with random sign vectors the two draw different ones, so there
they agree within the Monte Carlo error of two independent estimates, and exactly where every sign vector ties
(p = 1) or none but the two all-same ones does (the floor).
"""

import itertools

import numpy as np
import pytest

from argbench.eval.stats import bootstrap_ci, paired_difference, sign_flip_p

BLOCK = 1_000
ROUNDING = dict(rel=1e-12, abs=1e-15)


def _blocks(total):
    for start in range(0, total, BLOCK):
        yield min(BLOCK, total - start)


def hand_bootstrap_ci(values, *, stat=np.mean, level=0.95, n_boot=10_000, seed=0):
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    stats = []
    for size in _blocks(n_boot):
        resamples = values[rng.integers(0, values.size, size=(size, values.size), dtype=np.int32)]
        stats.append(np.asarray(stat(resamples, axis=-1), dtype=float))
    lo, hi = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def hand_sign_flip_p(differences, *, n_perm=10_000, seed=0, signs=None):
    """The hand-written test; ``signs`` [m, n] of ±1 replaces the random sign vectors (then p = hits / m)."""
    d = np.asarray(differences, dtype=float)
    if not d.any():
        return 1.0
    observed = abs(d.sum())
    threshold = observed - 1e-9 * np.abs(d).sum()
    if signs is not None:
        return int(np.sum(np.abs(signs @ d) >= threshold)) / len(signs)
    rng = np.random.default_rng(seed)
    hits = 0
    for size in _blocks(n_perm):
        bits = np.unpackbits(rng.integers(0, 256, size=(size, -(-d.size // 8)), dtype=np.uint8), axis=1,
                             count=d.size)
        signs = bits.astype(float) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= threshold))
    return (hits + 1) / (n_perm + 1)


def every_sign_vector(n):
    return np.array(list(itertools.product([-1.0, 1.0], repeat=n)))


def mrr_differences(n, seed):
    """Per-query MRR differences of two made-up systems: fractions, so sums that tie exactly differ by rounding."""
    rng = np.random.default_rng(seed)
    return 1 / rng.integers(1, 7, n) - 1 / rng.integers(1, 7, n)


SAMPLES = {
    "three seeds": [0.31, 0.34, 0.29],
    "two values": [0.0, 1.0],
    "constant": [0.4] * 7,
    "acc@1 differences": np.random.default_rng(3).integers(-1, 2, 1_401).astype(float),
    "mrr differences": mrr_differences(500, 4),
    "normal": np.random.default_rng(5).normal(size=50),
}


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize(("n_boot", "level", "stat", "seed"), [
    (10_000, 0.95, np.mean, 0),
    (2_500, 0.90, np.mean, 7),
    (999, 0.99, np.median, 1),
    (3, 0.95, np.mean, 2),
])
def test_bootstrap_equals_the_hand_written_one(name, n_boot, level, stat, seed):
    values = SAMPLES[name]
    kw = dict(n_boot=n_boot, level=level, stat=stat, seed=seed)
    assert bootstrap_ci(values, **kw) == pytest.approx(hand_bootstrap_ci(values, **kw), **ROUNDING)


# MRR differences that sum to 0 in exact arithmetic but not in floating point: every sign vector ties with the
# observed |sum| (p = 1), which scipy's own tolerance, relative to the tiny observed sum, would not see.
ZERO_SUMS = [
    [-0.75, 2 / 3, -5 / 6, 1 / 12, 5 / 6],
    [0.0, -2 / 15, -1 / 6, 1 / 6, 2 / 15],
    [-1 / 6, -1 / 3, 1 / 3, 0.3, -5 / 6, 1 / 30, 2 / 3],
]
TIES = ZERO_SUMS + [
    [0.1, 0.2, 0.3],  # only the all-same sign vectors reach 0.6; 0.1 + 0.2 != 0.3 in floating point
    [1 / 2 - 1 / 3, 1 / 6, 1 / 3 - 1 / 6, 1 / 6, -1 / 6],
    [0.0, 0.0, 0.5, -0.25, 0.25, 1 / 3],
    [1e-3, -1e-3, 2e-3],
]


@pytest.mark.parametrize("d", TIES + [mrr_differences(n, seed=n) for n in (2, 5, 9, 12, 13)])
def test_exhaustive_sign_flip_equals_the_hand_written_rule(d):
    # 2^n <= 10,000: scipy enumerates every sign vector, and so does the reference here.
    assert sign_flip_p(d, n_perm=10_000) == hand_sign_flip_p(d, signs=every_sign_vector(len(d)))


def test_exhaustive_sign_flip_by_hand():
    assert sign_flip_p([0.1, 0.2, 0.3]) == 2 / 8
    assert sign_flip_p([1.0, 1.0]) == 2 / 4  # (+,+) and (-,-) reach |2|
    assert sign_flip_p([0.5]) == hand_sign_flip_p([0.5]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sign_flip_agrees_within_monte_carlo_error(seed):
    # n = 200: 2^200 sign vectors, so both draw 10,000 at random, different ones. Each p has standard error
    # sqrt(p (1 - p) / 10,000); their difference sqrt(2) times that: 4 of those is a tolerance one run in ~16,000 fails
    # by chance, and both are seeded, so the test is deterministic.
    d = mrr_differences(200, seed)
    d[:10] += 0.15  # a small planted effect puts p in the informative middle
    old, new = hand_sign_flip_p(d, seed=seed), sign_flip_p(d, seed=seed)
    tolerance = 4 * np.sqrt(2 * new * (1 - new) / 10_000)
    assert 0.001 < new < 0.999 and abs(new - old) <= tolerance


@pytest.mark.parametrize("d", ZERO_SUMS)
def test_random_sign_flip_counts_rounding_ties_as_the_hand_written_one(d):
    d = np.concatenate([d, np.zeros(200)])  # 2^205 sign vectors: random ones; each still ties, so p = 1 in both
    assert sign_flip_p(d) == hand_sign_flip_p(d) == 1.0


def test_random_sign_flip_floor_equals_the_hand_written_one():
    # Every sign vector but the two all-same ones misses the observed |sum| by far: both give 1 / (n_perm + 1).
    d = np.full(300, 0.5)
    assert sign_flip_p(d, n_perm=5_000) == hand_sign_flip_p(d, n_perm=5_000) == 1 / 5_001


def test_paired_difference_keeps_its_numbers():
    # paired_difference resamples the per-query differences: its interval is the hand-written bootstrap's.
    rng = np.random.default_rng(11)
    a, b = rng.integers(1, 9, 400), rng.integers(1, 9, 400)
    res = paired_difference(a, b, metric="mrr", n_boot=3_000, n_perm=2_000, seed=4)
    assert res["ci"] == pytest.approx(list(hand_bootstrap_ci(1 / b - 1 / a, n_boot=3_000, seed=4)), **ROUNDING)
