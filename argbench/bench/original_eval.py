"""Benchmark: the original evaluation protocol (Euclidean top 10 of the ``epa`` pool, reranked by the pair
classifier, accuracy of the top one) batched in argbench against a per-candidate loop like the original's.

argbench: :func:`argbench.eval.evaluate.evaluate` with the trainer's pair scorer (:meth:`BiEncoder.pair_scorer`: the
linear classifier split into per-query, per-candidate and per-pair terms; one call for all pairs). Reference: a
Python loop over queries and over each query's 10 candidates, one classifier call per candidate, as the original
did, but with its query bug fixed (the point's embedding, not the counter's, is the query; the query is not a
candidate), so both must report the same accuracy.

Inputs are synthetic and seeded: a pooled vector (width ``hidden``) per argument, each counter its point plus
noise so the true counter is often in the top 10; retrieval embeddings (width ``proj_dim``) are a random
:class:`argbench.model.bi_encoder.BiEncoder`'s
projection of them, and its random classifier (``concatenated`` fusion) reranks.

    argbench bench eval
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from argbench.bench.mining import _median_time
from argbench.data.corpus import load_corpus, resolve_data
from argbench.data.tasks import TASKS, SplitData
from argbench.eval.evaluate import evaluate
from argbench.model.bi_encoder import BiEncoder, Encoded

DEPTH = 10


def run_eval_bench(data: str | None = None, repeats: int = 3, reference_repeats: int = 3, hidden: int = 384,
                   proj_dim: int = 128, noise: float = 0.5, seed: int = 0) -> list[dict]:
    """One row for the test split: {"case", "argbench_s", "reference_s", "ratio", "agree", "rerank_acc1", ...}.

    ``data``: corpus path or ``"sample"``; ``None`` = ``$ARGBENCH_DATA``, else the sample. ``argbench_all_tasks_s``
    also times argbench's full evaluation (ranks in all eight pools as well), which the reference does not compute.
    ``distance_product_s`` times the bare [Q, d] x [d, n] product that exact top-10 retrieval needs in any
    implementation (the reference's per-query distances add up to it): ``max_ratio`` = reference / that is the
    ratio an evaluator that did nothing else would reach.
    """
    split = load_corpus(resolve_data(data, announce=False)).split("test")
    split.pools  # noqa: B018 -- built once here and cached: the load benchmark times them
    model = random_model(hidden, proj_dim, seed)
    candidates = random_embeddings(model, split, hidden, noise, seed)
    queries = Encoded(candidates.pooled[split.query_idx], candidates.emb[split.query_idx])

    def ours(tasks=()):  # the protocol only (what the reference computes); TASKS adds the eight pools' ranks
        scorer = model.pair_scorer(queries, candidates)
        return evaluate(split, queries.emb, candidates.emb, metric="euclidean", scorer=scorer, tasks=tasks,
                        rerank_depth=DEPTH).rerank_acc1

    ours_s, ours_acc = _median_time(ours, repeats)
    all_tasks_s, _ = _median_time(lambda: ours(tasks=TASKS), repeats)
    floor_s, _ = _median_time(lambda: queries.emb @ candidates.emb.T, repeats)
    ref_s, ref_acc = _median_time(lambda: reference_rerank_acc1(split, model, queries, candidates), reference_repeats)
    n_queries = len(split.query_idx)
    # argbench averages in float32, the reference counts: compare the numbers of right answers.
    agree = round(ours_acc * n_queries) == round(ref_acc * n_queries)
    return [{"case": f"test split: Q={n_queries} n={len(split.args)} top-{DEPTH} rerank, "
                     f"fusion=concatenated d={proj_dim}+{hidden}",
             "argbench_s": ours_s, "reference_s": ref_s, "ratio": ref_s / ours_s, "agree": agree,
             "rerank_acc1": ours_acc, "reference_rerank_acc1": ref_acc, "argbench_all_tasks_s": all_tasks_s,
             "distance_product_s": floor_s, "max_ratio": ref_s / floor_s}]


def random_model(hidden: int, proj_dim: int, seed: int) -> BiEncoder:
    """A BiEncoder with random heads (projection to ``proj_dim``, classifier over ``concatenated`` features) whose
    encoder is a one-layer stand-in of width ``hidden``: only its heads are used here."""
    config = BertConfig(vocab_size=8, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BiEncoder(BertModel(config), proj_dim=proj_dim, fusion="concatenated").eval()


@torch.no_grad()
def random_embeddings(model: BiEncoder, split: SplitData, hidden: int, noise: float, seed: int) -> Encoded:
    """Pooled vectors [n, hidden] of every argument of ``split`` (a counter = its point + ``noise`` · N(0, 1)) and
    their projections by ``model``."""
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.randn(len(split.args), hidden, generator=generator)
    counters, points = torch.from_numpy(split.counters_idx), torch.from_numpy(split.points_idx)
    pooled[counters] = pooled[points] + noise * torch.randn(len(counters), hidden, generator=generator)
    return model.project(pooled)


@torch.no_grad()
def reference_rerank_acc1(split: SplitData, model: BiEncoder, queries: Encoded, candidates: Encoded,
                          depth: int = DEPTH) -> float:
    """The original protocol, query bug fixed: per query, the ``depth`` ``epa`` candidates nearest in Euclidean
    distance, each scored by its own classifier call; accuracy of the best-scored one."""
    pool = split.pool("epa")
    right = 0
    for i, positive in enumerate(split.positive_idx.tolist()):
        rows = pool[i].nonzero().squeeze(1)
        distance = torch.cdist(queries.emb[i:i + 1], candidates.emb[rows])[0]
        top = rows[distance.topk(min(depth, len(rows)), largest=False).indices]
        query = Encoded(queries.pooled[i:i + 1], queries.emb[i:i + 1])
        best, best_p = -1, -1.0
        for j in top.tolist():
            p = model.classify(query, Encoded(candidates.pooled[j:j + 1], candidates.emb[j:j + 1])).softmax(-1)[0, 1]
            if p.item() > best_p:
                best, best_p = j, p.item()
        right += best == positive
    return right / len(split.positive_idx)
