"""Online hard-negative mining on hand-made embeddings whose answers are known by construction."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from argbench.bench.mining import run_mining_bench
from argbench.train import negatives
from argbench.train.negatives import BACKENDS, mine, nearest
from argbench.train.original_mining import mine_reference
from argbench.train.schedule import Schedule, schedule_from_config

# A 2-D layout of six pairs. Answers worked out by hand (d = Euclidean distance):
#   p0 (0,0):    own c0 (0.5,0) is the nearest argument but is excluded; nearest point p1 (d 2), nearest other
#                counter c2 (d 1)                                                  -> counter 2, d 1
#   p1 (2,0):    nearest point p0 (d 2); nearest other counter c2 (d 1; c0 is 1.5)  -> counter 2, d 1
#   p2 (0,5):    nearest point p0 (d 5); nearest other counter c0 (d √25.25≈5.02)  -> point 0, d 5
#   p3 (20,20):  nearest point p2 (d 25); nearest other counter c1 (d √200≈14.1)    -> counter 1, d √200
#   p4 (-10,0):  nearest point p0 (d 10) ties with nearest other counter c5 (d 10)  -> point 0 (ties go to points)
#   p5 (-10,40): nearest point p3 (d √1300≈36.1); nearest other counter c4 (d 10)   -> counter 4, d 10
POINTS = [(0, 0), (2, 0), (0, 5), (20, 20), (-10, 0), (-10, 40)]
COUNTERS = [(0.5, 0), (10, 10), (1, 0), (21, 20), (-10, 50), (-20, 0)]
EXPECTED = [("counter", 2, 1.0), ("counter", 2, 1.0), ("point", 0, 5.0), ("counter", 1, math.sqrt(200)),
            ("point", 0, 10.0), ("counter", 4, 10.0)]


def layout() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(POINTS, dtype=torch.float32), torch.tensor(COUNTERS, dtype=torch.float32)


def random_pairs(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points at random, counters near their own point (so the own counter is often the nearest argument)."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=generator)
    return points, points + 0.5 * torch.randn(n, d, generator=generator)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same_negatives(a, b) -> None:
    np.testing.assert_array_equal(a.neg_kind, b.neg_kind)
    np.testing.assert_array_equal(a.neg_index, b.neg_index)
    np.testing.assert_array_equal(a.source, b.source)


def assert_never_positive(result, n: int) -> None:
    own = np.arange(n)
    assert not np.any((result.neg_kind == "point") & (result.neg_index == own)), "query chosen as its own negative"
    assert not np.any((result.neg_kind == "counter") & (result.neg_index == own)), "own counter chosen"


# ------------------------------------------------------------------------------------------------ mining
@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_gives_the_hand_worked_negatives(backend):
    result = mine(*layout(), rate=0.0, generator=gen(), backend=backend)
    assert list(result.neg_kind) == [kind for kind, _, _ in EXPECTED]
    assert result.neg_index.tolist() == [index for _, index, _ in EXPECTED]
    assert list(result.source) == list(result.neg_kind)
    np.testing.assert_allclose(result.distance, [dist for _, _, dist in EXPECTED], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3])
def test_duplicates_never_give_the_positive_and_ties_go_to_lower_index_then_points(backend, k):
    # Every argument at the same spot: the nearest other point / counter is the lowest index that is not i,
    # and the point wins the tie. With k=1 the query itself (or its own counter) fills the only neighbour
    # slot for some rows, so mining must ask again for more neighbours.
    emb = torch.ones(30, 4)
    result = mine(emb, emb.clone(), rate=0.0, generator=gen(), backend=backend, k=k, candidate_pool_size=2)
    assert (result.neg_kind == "point").all()
    assert result.neg_index.tolist() == [1] + [0] * 29
    assert_never_positive(result, 30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_counter_on_top_of_the_point_is_skipped(backend):
    points, _ = random_pairs(50, 8)
    result = mine(points, points.clone(), rate=0.0, generator=gen(), backend=backend)
    assert_never_positive(result, 50)
    assert (result.distance > 0).all()


def test_all_backends_and_the_reference_agree_at_rate_0():
    points, counters = random_pairs(500, 128)
    results = {backend: mine(points, counters, rate=0.0, generator=gen(), backend=backend) for backend in BACKENDS}
    reference = mine_reference(points, counters, 0.0, np.random.default_rng(0))
    for backend, result in results.items():
        assert_same_negatives(result, results["torch"])
        np.testing.assert_array_equal(result.distance, results["torch"].distance, err_msg=backend)
        assert_same_negatives(result, reference)
        np.testing.assert_allclose(result.distance, reference.distance, rtol=1e-12)
    # the data exercise both kinds of hard negative
    assert set(results["torch"].source) == {"point", "counter"}


def test_embeddings_that_require_grad_are_mined_without_a_graph():
    points, counters = layout()
    result = mine(points.requires_grad_(), counters.requires_grad_(), rate=0.0, generator=gen())
    assert result.neg_index.tolist() == [index for _, index, _ in EXPECTED]


def test_rate_0_has_no_random_negatives():
    result = mine(*random_pairs(100, 16), rate=0.0, generator=gen())
    assert "random" not in set(result.source)


def test_rate_1_draws_uniform_arguments_that_are_never_the_query_or_its_counter():
    n, repeats = 10, 400
    points, counters = random_pairs(n, 4)
    generator = gen(123)
    counts = np.zeros(2 * n)
    for _ in range(repeats):
        result = mine(points, counters, rate=1.0, generator=generator)
        assert (result.source == "random").all()
        assert_never_positive(result, n)
        np.add.at(counts, result.neg_index + n * (result.neg_kind == "counter"), 1)
    # Each argument is allowed for n-1 of the n queries, each of which picks among 2n-2: expected repeats/2.
    expected = repeats / 2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0, f"chi-square {chi2:.1f} over {2 * n} arguments (df {2 * n - 1}; 50 is p < 0.001)"


def test_random_distance_is_the_distance_to_the_drawn_argument():
    points, counters = layout()
    result = mine(points, counters, rate=1.0, generator=gen(5))
    for i, (kind, j, dist) in enumerate(zip(result.neg_kind, result.neg_index, result.distance)):
        other = points[j] if kind == "point" else counters[j]
        assert dist == pytest.approx(float(torch.dist(points[i].double(), other.double())), rel=1e-12)


def test_same_generator_seed_reproduces_and_generator_state_resumes():
    points, counters = random_pairs(200, 8)
    first = mine(points, counters, rate=0.5, generator=gen(7))
    again = mine(points, counters, rate=0.5, generator=gen(7))
    assert_same_negatives(first, again)
    other = mine(points, counters, rate=0.5, generator=gen(8))
    assert not np.array_equal(first.source, other.source)

    generator = gen(7)
    mine(points, counters, rate=0.5, generator=generator)
    state = generator.get_state()  # what a checkpoint stores
    second = mine(points, counters, rate=0.5, generator=generator)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert_same_negatives(mine(points, counters, rate=0.5, generator=resumed), second)


def test_mine_rejects_bad_input():
    points, counters = layout()
    with pytest.raises(ValueError, match="same shape"):
        mine(points, counters[:3], rate=0.0, generator=gen())
    with pytest.raises(ValueError, match="rate=1.5"):
        mine(points, counters, rate=1.5, generator=gen())
    with pytest.raises(ValueError, match="backend='annoy'"):
        mine(points, counters, rate=0.0, generator=gen(), backend="annoy")
    with pytest.raises(ValueError, match="N=1"):
        mine(points[:1], counters[:1], rate=0.0, generator=gen())
    with pytest.raises(ValueError, match="generator"):
        mine(points, counters, rate=0.0, generator=np.random.default_rng(0))


# --------------------------------------------------------------------------------------------- nearest
@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_matches_a_float64_brute_force_with_index_tie_order(backend):
    index, _ = random_pairs(300, 32, seed=1)
    index[10] = index[3]  # an exact duplicate: must come after row 3 for every backend
    query = torch.cat([index[:5], torch.randn(20, 32, generator=gen(2))])
    dist, idx = nearest(index, query, 7, backend)
    full = np.linalg.norm(query.double().numpy()[:, None, :] - index.double().numpy()[None], axis=-1)
    order = np.lexsort((np.broadcast_to(np.arange(300), full.shape), full), axis=1)[:, :7]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_allclose(dist.numpy(), np.take_along_axis(full, order, 1), rtol=1e-12)
    assert idx[3, :2].tolist() == [3, 10]


def test_torch_backend_gives_the_same_answer_in_small_blocks(monkeypatch):
    index, query = random_pairs(200, 16, seed=3)
    expected = nearest(index, query, 5, "torch")
    monkeypatch.setattr(negatives, "_SEARCH_BLOCK", 7 * 200)  # 7 query rows per block
    monkeypatch.setattr(negatives, "_RERANK_BLOCK", 3 * 13 * 16)  # 3 query rows per block
    got = nearest(index, query, 5, "torch")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_nearest_clamps_k_to_the_index_size():
    dist, idx = nearest(torch.zeros(3, 2), torch.zeros(1, 2), 10)
    assert idx.tolist() == [[0, 1, 2]] and dist.shape == (1, 3)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="faiss-cpu"):
        nearest(torch.zeros(3, 2), torch.zeros(1, 2), 1, "faiss")


# ------------------------------------------------------------------------------------ positive-aware mining
# Three pairs on the unit circle (cos = cosine similarity to the query, ceiling = max_ratio 1 x cos(point, counter)):
#   p0 (1,0)       ceiling cos(p0,c0) = 0.866. p1 (d 0.20, cos 0.98) is passed over -> p2 (d 0.89, cos 0.6);
#                  nearest other counter c1 (d 1.41, cos 0) is allowed.             -> point 2, 1 skipped
#   p1 (0.98,0.2)  ceiling 0.2. p0 (cos 0.98) and p2 (cos 0.43) both over: no point; c0 (d 0.32, cos 0.95) passed
#                  over -> c2 (cos -0.98).                                         -> counter 2, 3 skipped
#   p2 (0.6,-0.8)  ceiling -0.6. no point (cos 0.6, 0.43); c0 (d 1.33, cos 0.12) passed over -> c1 (cos -0.8)
#                                                                                   -> counter 1, 3 skipped
RATIO_POINTS = [(1, 0), (0.98, 0.2), (0.6, -0.8)]
RATIO_COUNTERS = [(0.866, 0.5), (0, 1), (-1, 0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_ratio_passes_over_candidates_too_similar_to_the_query(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    points, counters = torch.tensor(RATIO_POINTS), torch.tensor(RATIO_COUNTERS)
    plain = mine(points, counters, rate=0.0, generator=gen(), backend=backend)
    assert (plain.neg_kind[0], plain.neg_index[0], plain.ratio_skipped) == ("point", 1, None)
    aware = mine(points, counters, rate=0.0, generator=gen(), backend=backend, max_ratio=1.0)
    assert list(zip(aware.neg_kind, aware.neg_index.tolist())) == [("point", 2), ("counter", 2), ("counter", 1)]
    assert list(aware.source) == ["point", "counter", "counter"]
    assert aware.ratio_skipped == pytest.approx(7 / 3)
    assert aware.stats(np.arange(3), np.arange(3))["ratio_skipped"] == pytest.approx(7 / 3)


def test_max_ratio_row_with_nothing_under_its_ceiling_gets_a_random_negative():
    # p0 (1,0) and its counter (0,1) are orthogonal: ceiling 0, and every other argument lies in the first quadrant
    # (cos > 0), so no hard candidate is allowed. p1 (1,1): ceiling 0.5 x 0.999, every other argument has cos >= 0.71.
    # p2 (0.2,1): ceiling 0.5 x 0.994, and p0 (cos 0.20) is under it.
    points = torch.tensor([(1.0, 0.0), (1.0, 1.0), (0.2, 1.0)])
    counters = torch.tensor([(0.0, 1.0), (1.0, 0.9), (0.1, 1.0)])
    result = mine(points, counters, rate=0.0, generator=gen(), max_ratio=0.5)
    assert list(result.source) == ["random", "random", "point"] and result.neg_index[2] == 0
    assert_never_positive(result, 3)


# ------------------------------------------------------------------------------------------------- stats
def test_stats_on_the_layout():
    result = mine(*layout(), rate=0.0, generator=gen())
    # negatives come from pairs [2, 2, 0, 1, 0, 4] (see EXPECTED)
    debate = np.array(["x", "y", "x", "y", "z", "z"])  # own debate for queries 0, 2, 3, 5
    theme = np.array(["t1", "t1", "t1", "t1", "t2", "t2"])  # own theme for all but query 4
    stats = result.stats(debate, theme)
    assert stats == {
        "point": pytest.approx(2 / 6), "counter": pytest.approx(4 / 6), "random": 0.0,
        "same_debate": pytest.approx(4 / 6), "same_theme": pytest.approx(5 / 6),
        "mean_distance": pytest.approx((1 + 1 + 5 + math.sqrt(200) + 10 + 10) / 6), "rate": 0.0,
        "copy": None,  # mined without copy groups
        "ratio_skipped": None,  # mined without max_ratio
    }


def test_stats_fractions_sum_to_1_and_all_random_has_no_mean_distance():
    result = mine(*random_pairs(40, 4), rate=1.0, generator=gen())
    labels = np.arange(40) // 4
    stats = result.stats(labels, labels)
    assert stats["point"] + stats["counter"] + stats["random"] == pytest.approx(1.0)
    assert stats["random"] == 1.0 and stats["mean_distance"] is None and stats["rate"] == 1.0
    with pytest.raises(ValueError, match="debate has shape"):
        result.stats(labels[:5], labels)


def test_examples_and_negative_texts_follow_the_chosen_negatives():
    result = mine(*layout(), rate=0.0, generator=gen())
    points_text = [f"p{i}" for i in range(6)]
    counters_text = [f"c{i}" for i in range(6)]
    assert result.negative_texts(points_text, counters_text) == ["c2", "c2", "p0", "c1", "p0", "c4"]
    examples = result.examples(points_text, counters_text, n=3, seed=1)
    assert len(examples) == 3
    for example in examples:
        i = points_text.index(example["point"])
        assert example["negative"] == result.negative_texts(points_text, counters_text)[i]
        assert example["source"] == result.source[i]


# --------------------------------------------------------------------------------------------- schedules
def test_linear_schedule_decays_and_floors():
    schedule = Schedule.linear(0.8, 0.02)
    assert schedule.rate(0) == 0.8
    assert schedule.rate(10) == pytest.approx(0.6)
    assert [schedule.rate(e) for e in (40, 41, 200)] == [0.0, 0.0, 0.0]
    assert Schedule.linear(1.0, 0.005).rate(100) == pytest.approx(0.5)
    assert Schedule.linear(1.0, 0.05, floor=0.1).rate(30) == 0.1


def test_constant_schedule_and_factory():
    assert [Schedule.constant(0.3).rate(e) for e in (0, 5, 500)] == [0.3, 0.3, 0.3]
    assert schedule_from_config("linear", start=0.8, step=0.02) == Schedule.linear(0.8, 0.02)
    assert schedule_from_config("constant", rate=1.0) == Schedule.constant(1.0)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Schedule.linear(1.5, 0.01), "start=1.5"),
    (lambda: Schedule.linear(0.8, -0.1), "step=-0.1"),
    (lambda: Schedule.linear(0.8, 0.1, floor=2), "floor=2"),
    (lambda: Schedule.constant(-0.1), "rate=-0.1"),
    (lambda: schedule_from_config("cosine", start=1.0, step=0.1), "kind='cosine'"),
    (lambda: schedule_from_config("linear", start=0.8), "step=None"),
    (lambda: schedule_from_config("constant"), "rate=None"),
    (lambda: Schedule.constant(0.5).rate(-1), "epoch=-1"),
])
def test_schedule_validation_names_the_field_and_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -------------------------------------------------------------------------------------------- benchmark
def test_mining_bench_reports_agreement_on_a_small_case():
    (row,) = run_mining_bench(ns=(300,), d=8, repeats=1)
    assert set(row) == {"case", "argbench_s", "reference_s", "ratio", "agree"}
    assert row["agree"] is True and row["argbench_s"] > 0 and row["ratio"] > 0
