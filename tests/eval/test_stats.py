"""argbench.eval.stats on hand-made ranks whose answers are known by construction (every random draw is seeded)."""

import numpy as np
import pytest

from argbench.eval.stats import (
    bootstrap_ci,
    compare_runs,
    holm,
    mcnemar_exact,
    outcome,
    paired_difference,
    seed_summary,
    sign_flip_p,
)

N_PERM = 10_000


def planted(n=500, a_correct=100, extra=60):
    """Ranks for n queries: A ranks the counter first on the first `a_correct`, B on `extra` more; else rank 2.

    By construction: acc@1 delta = extra/n, MRR delta = extra·(1 − 1/2)/n, and all `extra` discordant pairs favour B.
    """
    a = np.full(n, 2)
    b = np.full(n, 2)
    a[:a_correct] = 1
    b[:a_correct + extra] = 1
    return a, b


def test_outcome_per_metric():
    ranks = np.array([1, 2, 4])
    assert outcome(ranks, "acc@1").tolist() == [1.0, 0.0, 0.0]
    assert outcome(ranks, "mrr").tolist() == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="acc@5"):
        outcome(ranks, "acc@5")


@pytest.mark.parametrize("metric", ["acc@1", "mrr"])
@pytest.mark.parametrize("shape", [(200,), (3, 200)])
def test_identical_runs_have_no_difference(metric, shape):
    ranks = np.random.default_rng(1).integers(1, 20, size=shape)
    res = paired_difference(ranks, ranks.copy(), metric=metric, n_boot=500)
    assert res["delta"] == 0.0 and res["ci"] == [0.0, 0.0] and res["p_value"] == 1.0
    assert res["a"] == res["b"] and res["n"] == 200


def test_planted_accuracy_difference_is_detected():
    a, b = planted()
    res = paired_difference(a, b, metric="acc@1", n_boot=2_000)
    assert res["a"] == pytest.approx(0.2) and res["b"] == pytest.approx(0.32)
    assert res["delta"] == pytest.approx(60 / 500)
    assert res["test"] == "mcnemar-exact"
    assert res["p_value"] == pytest.approx(2 * 0.5 ** 60) and res["p_value"] < 1e-6
    assert 0 < res["ci"][0] < res["delta"] < res["ci"][1]


def test_planted_mrr_difference_reaches_the_permutation_floor():
    a, b = planted()
    res = paired_difference(a, b, metric="mrr", n_boot=2_000, n_perm=N_PERM)
    assert res["delta"] == pytest.approx(60 * 0.5 / 500)
    assert res["test"] == "sign-flip-permutation"
    # Only the all-positive / all-negative sign vectors reach |observed|: none among 10,000 random draws.
    assert res["p_value"] == pytest.approx(1 / (N_PERM + 1))
    assert 0 < res["ci"][0] < res["delta"] < res["ci"][1]


def test_swapping_the_systems_mirrors_the_result():
    a, b = planted(n=300, a_correct=50, extra=20)
    ab = paired_difference(a, b, n_boot=1_000)
    ba = paired_difference(b, a, n_boot=1_000)
    assert ba["delta"] == pytest.approx(-ab["delta"])
    assert ba["p_value"] == pytest.approx(ab["p_value"])
    assert ba["ci"] == pytest.approx([-ab["ci"][1], -ab["ci"][0]], abs=1 / 300)


def test_exact_mcnemar_by_hand():
    # 10 discordant, all for B: P(X = 10 or X = 0), X ~ Bin(10, 1/2).
    a = np.array([0] * 10 + [1] * 5 + [0] * 5)
    b = np.array([1] * 10 + [1] * 5 + [0] * 5)
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5 ** 10)
    # 8 for B, 2 for A: 2 · P(X <= 2) = 2 · (1 + 10 + 45) / 1024.
    a = np.array([0] * 8 + [1] * 2)
    b = np.array([1] * 8 + [0] * 2)
    assert mcnemar_exact(a, b) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(np.ones(5), np.ones(5)) == 1.0


def test_sign_flip_matches_exact_enumeration():
    # Of the 8 sign vectors over (0.1, 0.2, 0.3) only the two all-same ones reach |sum| = 0.6: exact p = 1/4.
    # Fractions make the observed and permuted sums differ by rounding: this also checks that ties still count.
    p = sign_flip_p([0.1, 0.2, 0.3], n_perm=N_PERM, seed=3)
    assert p == pytest.approx(0.25, abs=0.02)
    assert sign_flip_p(np.zeros(10)) == 1.0


def test_holm_textbook_example():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.04]) == [0.04]
    assert holm([]) == []
    with pytest.raises(ValueError, match="1.5"):
        holm([0.01, 1.5])


def test_bootstrap_ci_known_cases():
    assert bootstrap_ci([0.4] * 7) == pytest.approx((0.4, 0.4))
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    # Resampled means of (0, 1) are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 95 % interval is [0, 1].
    assert bootstrap_ci([0.0, 1.0], n_boot=2_000) == (0.0, 1.0)
    values = np.random.default_rng(0).normal(size=50)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    lo90, hi90 = bootstrap_ci(values, level=0.90)
    lo99, hi99 = bootstrap_ci(values, level=0.99)
    assert lo99 < lo90 < values.mean() < hi90 < hi99
    median_lo, median_hi = bootstrap_ci(values, stat=np.median)
    assert median_lo < np.median(values) < median_hi


def test_bootstrap_coverage_of_a_bernoulli_mean():
    rng = np.random.default_rng(2024)
    samples = rng.random((300, 100)) < 0.3
    covered = [lo <= 0.3 <= hi for lo, hi in (bootstrap_ci(s, n_boot=1_000, seed=i) for i, s in enumerate(samples))]
    assert 0.90 <= np.mean(covered) <= 0.99


def test_seed_summary():
    summary = seed_summary([0.2, 0.4, 0.6])
    assert summary["mean"] == pytest.approx(0.4) and summary["std"] == pytest.approx(0.2) and summary["n"] == 3
    assert 0.2 <= summary["ci"][0] <= 0.4 <= summary["ci"][1] <= 0.6
    assert seed_summary([0.5]) == {"mean": 0.5, "std": 0.0, "ci": [0.5, 0.5], "n": 1}


def test_seeds_are_averaged_per_query_before_pairing():
    # A: 3 seeds, B: 2 seeds, over 4 queries. Per-query acc@1 means: A (1, 1/3, 0, 2/3), B (1, 1, 1/2, 0).
    a = np.array([[1, 1, 5, 1],
                  [1, 2, 5, 1],
                  [1, 3, 5, 4]])
    b = np.array([[1, 1, 1, 2],
                  [1, 1, 7, 2]])
    res = paired_difference(a, b, metric="acc@1", n_boot=500, n_perm=500)
    assert res["a"] == pytest.approx(2 / 4) and res["b"] == pytest.approx(2.5 / 4)
    assert res["delta"] == pytest.approx(0.5 / 4) and res["n"] == 4
    assert res["test"] == "sign-flip-permutation"


def test_repeating_a_seed_changes_nothing():
    a, b = planted(n=200, a_correct=40, extra=10)
    single = paired_difference(a, b, metric="mrr", n_boot=500, n_perm=500)
    stacked = paired_difference(np.stack([a, a, a]), np.stack([b, b]), metric="mrr", n_boot=500, n_perm=500)
    assert stacked == single


def test_bad_ranks_are_rejected():
    with pytest.raises(ValueError, match="500.*499"):
        paired_difference(np.ones(500), np.ones(499))
    with pytest.raises(ValueError, match=r"a_ranks.*>= 1"):
        paired_difference(np.array([1, 0, 2]), np.ones(3))
    with pytest.raises(ValueError, match=r"b_ranks.*whole numbers"):
        paired_difference(np.ones(3), np.array([1, 1.5, 2]))
    with pytest.raises(ValueError, match="shape"):
        paired_difference(np.ones((2, 2, 2)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        paired_difference(np.ones(0), np.ones(0))


def test_compare_runs_adjusts_over_tasks_and_metrics():
    a_diff, b_diff = planted()
    same = np.random.default_rng(7).integers(1, 9, size=500)
    res = compare_runs({"epa": a_diff, "sdoc": same}, {"sdoc": same, "epa": b_diff}, n_boot=500, n_perm=N_PERM)
    assert list(res["tasks"]) == ["epa", "sdoc"]
    epa, sdoc = res["tasks"]["epa"], res["tasks"]["sdoc"]
    assert set(epa) == {"acc@1", "mrr"}
    # Four p-values: 2·0.5^60 < 1/10001 < 1 = 1, so Holm multiplies them by 4, 3, 2, 1 (capped at 1).
    assert epa["acc@1"]["p_holm"] == pytest.approx(4 * 2 * 0.5 ** 60)
    assert epa["mrr"]["p_holm"] == pytest.approx(3 / (N_PERM + 1))
    assert sdoc["acc@1"]["p_holm"] == sdoc["mrr"]["p_holm"] == 1.0
    only = compare_runs({"epa": a_diff, "sdoc": same}, {"sdoc": same, "epa": b_diff}, tasks=["sdoc"], n_boot=100)
    assert list(only["tasks"]) == ["sdoc"]


def test_compare_runs_names_the_task_at_fault():
    with pytest.raises(ValueError, match=r"from b: \['sta'\]"):
        compare_runs({"sta": np.ones(3)}, {"epa": np.ones(3)})
    with pytest.raises(ValueError, match=r"task 'epa'.*3.*4"):
        compare_runs({"epa": np.ones(3)}, {"epa": np.ones(4)})
