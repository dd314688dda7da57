import numpy as np
import pytest
import torch

from argbench.data.tasks import TASKS
from argbench.eval.evaluate import Evaluation, evaluate, ranks_from_scores, summarise


def test_rank_counts_ties_against_the_true_candidate():
    score = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    pool = torch.ones(2, 4, dtype=torch.bool)
    assert ranks_from_scores(score, pool, torch.tensor([1, 3])).tolist() == [3, 4]


def test_rank_ignores_candidates_outside_the_pool():
    score = torch.tensor([[0.9, 0.5, 0.8, 0.1]])
    pool = torch.tensor([[False, True, False, True]])
    assert ranks_from_scores(score, pool, torch.tensor([1])).tolist() == [1]


def test_ranks_match_a_brute_force_count_per_pool():
    gen = torch.Generator().manual_seed(0)
    score = torch.randint(0, 5, (30, 12), generator=gen).float()  # few values: many ties
    pool = torch.rand(30, 12, generator=gen) > 0.4
    positive = torch.randint(0, 12, (30,), generator=gen)
    pool[torch.arange(15), positive[:15]] = True  # half the rows hold their positive, half may not
    expected = [1 + sum(1 for j in range(12)
                        if pool[i, j] and j != positive[i] and score[i, j] >= score[i, positive[i]])
                for i in range(30)]
    assert ranks_from_scores(score, pool, positive).tolist() == expected


def test_a_nan_true_score_ranks_last():
    score = torch.tensor([[0.9, float("nan"), 0.8, 0.1]])
    assert ranks_from_scores(score, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1])).tolist() == [4]


def test_summarise():
    got = summarise(np.array([1, 2, 4, 20]))
    assert got["acc@1"] == 0.25 and got["acc@3"] == 0.5 and got["acc@5"] == 0.75 and got["acc@10"] == 0.75
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 20) / 4)


def test_flat_names_every_view_and_the_rerank_in_mlflows_spelling():
    ranks, dedup = np.array([1, 2, 4, 20]), np.array([1, 1, 4, 20])
    got = Evaluation(metrics={"epa": summarise(ranks)}, ranks={"epa": ranks}, rerank_acc1=0.5,
                     dedup_ranks={"epa": dedup}, unseen=np.array([True, False, True, False])).flat("test")
    assert got == pytest.approx({
        "test/epa/acc_at_1": 0.25, "test/epa/acc_at_3": 0.5, "test/epa/acc_at_5": 0.75, "test/epa/acc_at_10": 0.75,
        "test/epa/mrr": (1 + 1 / 2 + 1 / 4 + 1 / 20) / 4,
        "test/dedup/epa/acc_at_1": 0.5, "test/dedup/epa/acc_at_3": 0.5, "test/dedup/epa/acc_at_5": 0.75,
        "test/dedup/epa/acc_at_10": 0.75, "test/dedup/epa/mrr": (1 + 1 + 1 / 4 + 1 / 20) / 4,
        "test/unseen/epa/acc_at_1": 0.5, "test/unseen/epa/acc_at_3": 0.5, "test/unseen/epa/acc_at_5": 1.0,
        "test/unseen/epa/acc_at_10": 1.0, "test/unseen/epa/mrr": (1 + 1 / 4) / 2,  # queries 0 and 2
        "test/rerank/acc_at_1": 0.5})
    plain = Evaluation(metrics={"epa": summarise(ranks)}, ranks={"epa": ranks}).flat("val")
    assert set(plain) == {f"val/epa/{m}" for m in ("acc_at_1", "acc_at_3", "acc_at_5", "acc_at_10", "mrr")}


def brute_force_ranks(split, q_scores, task):
    """Independent reference: loop over every candidate of every query."""
    pool = split.pool(task)
    ranks = []
    for i, pos in enumerate(split.positive_idx):
        better = sum(1 for j in range(len(split.args))
                     if pool[i, j] and j != pos and q_scores[i, j] >= q_scores[i, pos])
        ranks.append(better + 1)
    return np.array(ranks)


def test_evaluate_matches_a_brute_force_reference_on_every_task(split):
    gen = torch.Generator().manual_seed(0)
    n, q = len(split.args), len(split.query_idx)
    # one-hot candidates and positive query vectors: cosine(query i, candidate j) is proportional to q[i, j]
    cand = torch.eye(n)
    query = torch.rand(q, n, generator=gen) + 0.01
    query[torch.arange(q), torch.from_numpy(split.query_idx)] = 10.0  # the query itself must not count
    query[0, :] = 0.5  # a row of ties
    got = evaluate(split, query, cand, metric="cosine")
    for task in TASKS:
        np.testing.assert_array_equal(got.ranks[task], brute_force_ranks(split, query.numpy(), task), task)
        assert got.metrics[task]["acc@1"] == pytest.approx(np.mean(got.ranks[task] == 1))
    assert got.ranks["epa"][0] == split.pool("epa")[0].sum()  # all tied: the true counter ranks last


def test_identical_embeddings_for_pairs_are_perfect_under_both_metrics(split):
    gen = torch.Generator().manual_seed(1)
    cand = torch.randn(len(split.args), 16, generator=gen)
    query = cand[torch.from_numpy(split.positive_idx)]
    for metric in ("cosine", "euclidean"):
        got = evaluate(split, query, cand, metric=metric)
        assert all(got.metrics[task]["acc@1"] == 1.0 for task in TASKS)
        assert got.primary_value == 1.0


def test_rerank_uses_the_query_and_stops_at_depth(split):
    n, q = len(split.args), len(split.query_idx)
    positive = torch.from_numpy(split.positive_idx)
    cand = torch.eye(n)
    query = torch.full((q, n), 0.5)
    query[torch.arange(q), positive] = torch.where(torch.arange(q) % 2 == 0, 1.0, 0.0)  # odd queries: positive last
    asked = []

    def scorer(query_rows, cand_rows):
        asked.append(tuple(cand_rows.shape))
        return (positive[query_rows][:, None] == cand_rows).float()  # knows the truth for the query it is given

    got = evaluate(split, query, cand, metric="cosine", scorer=scorer, rerank_depth=3, tasks=("epa",))
    assert got.rerank_acc1 == pytest.approx(np.mean(np.arange(q) % 2 == 0))
    assert asked == [(q, 3)]  # one batched call: every query's 3 candidates


def test_shape_mismatch_is_an_error(split):
    with pytest.raises(ValueError, match="queries"):
        evaluate(split, torch.zeros(3, 4), torch.zeros(len(split.args), 4))
