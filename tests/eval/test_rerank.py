"""argbench.eval.rerank: two-stage ranks against a brute-force reference, and the two pair models whose answer is
known without one (the truth itself, and the first stage's own score)."""

import numpy as np
import pytest
import torch

from argbench.data.copies import query_copy_mask
from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from argbench.eval.evaluate import evaluate
from argbench.eval.rerank import classifier_rerank, rerank
from tests.factories import write_argument, write_pairs, write_small_corpus


@pytest.fixture(scope="module")
def split_with_copies(tmp_path_factory):
    """A test split where two pairs repeat another pair's point text: the dedup view differs from the official."""
    root = tmp_path_factory.mktemp("copies")
    write_small_corpus(root)
    write_pairs(root, "test", {("t1", "d1"): {"pro": 5}})
    repeated = (root / "test" / "t1" / "d1" / "pro" / "pro01a-point.txt").read_text()
    for number in (6, 7):
        write_argument(root, "test", "t1", "d1", "pro", number, "point", repeated)
        write_argument(root, "test", "t1", "d1", "pro", number, "counter", f"counter of copy {number}")
    split = load_corpus(root).split("test")
    assert query_copy_mask(split).any()
    return split


def first_stage(split, seed=0):
    """One-hot candidates and random positive query rows: cosine(query i, candidate j) ∝ q[i, j], no ties."""
    gen = torch.Generator().manual_seed(seed)
    cand = torch.eye(len(split.args))
    query = torch.rand(len(split.query_idx), len(split.args), generator=gen) + 0.01
    return query, cand


def table_scorer(table: torch.Tensor, calls: list | None = None):
    """A pair model reading a fixed [n_args, n_args] table of scores; records the pairs it is asked for."""
    def score(a_rows, b_rows):
        if calls is not None:
            calls.append(len(a_rows))
        return table[torch.from_numpy(np.asarray(a_rows)), torch.from_numpy(np.asarray(b_rows))]
    return score


def brute_force(split, query, table, task, depth, dedup):
    """Independent reference: sort each pool by the first stage, reorder its first `depth` by the table."""
    pool = split.pool(task) & (~query_copy_mask(split) if dedup else True)
    ranks = []
    for i, (q, pos) in enumerate(zip(split.query_idx, split.positive_idx)):
        members = sorted((j for j in range(len(split.args)) if pool[i, j]), key=lambda j: -query[i, j])
        top, rest = members[:depth], members[depth:]
        order = sorted(top, key=lambda j: -table[q, j]) + rest
        ranks.append(order.index(pos) + 1)
    return np.array(ranks)


@pytest.mark.parametrize("depth", [1, 3, 10])
@pytest.mark.parametrize("which", ["plain", "with copies"])
def test_two_stage_ranks_match_a_brute_force_reference(split, split_with_copies, depth, which):
    split = split_with_copies if which == "with copies" else split
    query, cand = first_stage(split)
    table = torch.rand(len(split.args), len(split.args), generator=torch.Generator().manual_seed(1))
    got = rerank(split, query, cand, table_scorer(table), metric="cosine", depth=depth)
    for task in TASKS:
        np.testing.assert_array_equal(got.ranks[task], brute_force(split, query, table, task, depth, False), task)
        np.testing.assert_array_equal(got.dedup_ranks[task], brute_force(split, query, table, task, depth, True))
        assert got.metrics[task]["acc@1"] == pytest.approx(np.mean(got.ranks[task] == 1))


def test_the_truth_as_pair_model_puts_every_counter_in_the_top_first_and_leaves_the_others(split):
    query, cand = first_stage(split, seed=2)
    n = len(split.args)
    truth = torch.zeros(n, n)
    truth[torch.from_numpy(split.query_idx), torch.from_numpy(split.positive_idx)] = 1.0
    plain = evaluate(split, query, cand, metric="cosine")
    got = rerank(split, query, cand, table_scorer(truth), metric="cosine", depth=3)
    for task in TASKS:
        inside = plain.ranks[task] <= 3
        assert (got.ranks[task][inside] == 1).all()
        np.testing.assert_array_equal(got.ranks[task][~inside], plain.ranks[task][~inside])
    assert got.metrics["epa"]["acc@3"] == plain.metrics["epa"]["acc@3"]  # reranking the top 3 keeps who is in it


def test_the_first_stage_score_as_pair_model_changes_no_rank(split):
    query, cand = first_stage(split, seed=3)
    own = torch.nn.functional.normalize(query, dim=-1) @ cand.T  # the first stage's own cosine, [queries, args]
    table = torch.zeros(len(split.args), len(split.args))
    table[torch.from_numpy(split.query_idx)] = own
    plain = evaluate(split, query, cand, metric="cosine")
    got = rerank(split, query, cand, table_scorer(table), metric="cosine", depth=5)
    for task in TASKS:
        np.testing.assert_array_equal(got.ranks[task], plain.ranks[task], task)
        np.testing.assert_array_equal(got.dedup_ranks[task], plain.dedup_ranks[task], task)


def test_one_pair_model_call_per_chunk_of_queries(split):
    query, cand = first_stage(split)
    calls = []
    rerank(split, query, cand, table_scorer(torch.zeros(len(split.args), len(split.args)), calls), depth=2, chunk=4)
    assert len(calls) == -(-len(split.query_idx) // 4)


def test_depth_below_one_is_refused(split):
    query, cand = first_stage(split)
    with pytest.raises(ValueError, match="depth"):
        rerank(split, query, cand, table_scorer(torch.zeros(1, 1)), depth=0)


def test_tasks_left_out_of_the_second_stage_keep_their_first_stage_ranks(split):
    query, cand = first_stage(split, seed=4)
    table = torch.rand(len(split.args), len(split.args), generator=torch.Generator().manual_seed(5))
    plain = evaluate(split, query, cand, metric="cosine")
    every = rerank(split, query, cand, table_scorer(table), metric="cosine", depth=3)
    calls_all, calls_one = [], []
    rerank(split, query, cand, table_scorer(table, calls_all), metric="cosine", depth=3)
    got = rerank(split, query, cand, table_scorer(table, calls_one), metric="cosine", depth=3, reranked=["epa"])
    np.testing.assert_array_equal(got.ranks["epa"], every.ranks["epa"])
    for task in TASKS[:-1]:
        np.testing.assert_array_equal(got.ranks[task], plain.ranks[task], task)
    assert sum(calls_one) < sum(calls_all)  # fewer pairs asked for


def test_the_classifier_stage_reads_its_scorer_by_query_position(split_with_copies):
    # a pair classifier's scorer takes positions in split.query_idx, rerank's pair model rows of split.args
    split = split_with_copies
    query, cand = first_stage(split, seed=3)
    table = torch.rand(len(split.args), len(split.args), generator=torch.Generator().manual_seed(4))
    rows = torch.from_numpy(split.query_idx)

    def scorer(query_positions, cand_rows):
        return table[rows[query_positions][:, None], cand_rows]

    expected = rerank(split, query, cand, table_scorer(table), depth=3)
    got = classifier_rerank(split, query, cand, scorer, depth=3)
    for task in TASKS:
        np.testing.assert_array_equal(got.ranks[task], expected.ranks[task])
        np.testing.assert_array_equal(got.dedup_ranks[task], expected.dedup_ranks[task])
    assert any((got.ranks[t] != evaluate(split, query, cand, metric="cosine").ranks[t]).any() for t in TASKS)
