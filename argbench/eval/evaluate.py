"""Ranking metrics over the eight pools, and the original top-10 + classifier rerank protocol, fixed.

Everything is batched tensor work: one score matrix per chunk of queries, masked per pool; no Python loop over
candidates or pairs.

Every split is reported in three views (:data:`argbench.data.copies.VIEWS`): *official* (the pools of
:mod:`argbench.data.tasks` over all queries: ``metrics`` and ``ranks``), *dedup* (the same pools without copies of the
query's text: ``dedup_ranks``) and *unseen* (the official ranks of only the queries flagged ``unseen``).

Ties are broken *against* the true counter: its rank is 1 + the number of other candidates that score at least as
well. A constant scorer therefore gets accuracy 0 rather than an optimistic 1, and a lexical baseline gets no credit
for candidates it cannot tell apart; a NaN score for the true counter ranks it last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import torch

from argbench.data.copies import query_copy_mask, view_key
from argbench.data.tasks import TASKS, SplitData

KS = (1, 3, 5, 10)
METRICS = ("cosine", "euclidean")
PRIMARY = "epa/acc@1"
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``scorer(query_rows [q], candidate_rows [q, k]) -> score [q, k]``: higher = more likely a true pair. Rows index
the split's queries (0..Q-1) and arguments (0..n-1); row i of ``candidate_rows`` holds query ``query_rows[i]``'s
candidates. Called once per chunk of queries (see :func:`evaluate`'s ``chunk``)."""


@dataclass
class Evaluation:
    """Per-task metrics (``acc@k`` for k in :data:`KS`, ``mrr``), per-query ranks, and the rerank accuracy.

    ``ranks[task][i]`` is the 1-based rank of query i's true counter in that task's pool; ``dedup_ranks[task][i]``
    its rank in that pool without the copies of query i's text (never larger). ``unseen`` (bool [Q] or None) flags
    the queries of the unseen view. ``rerank_acc1`` is ``None`` when no scorer was given.
    """

    metrics: dict[str, dict[str, float]]
    ranks: dict[str, np.ndarray]
    rerank_acc1: float | None = None
    pool_sizes: dict[str, float] = field(default_factory=dict)
    primary: str = PRIMARY
    dedup_ranks: dict[str, np.ndarray] = field(default_factory=dict)
    unseen: np.ndarray | None = None

    def views(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{view: {task: metrics}}`` for "official", "dedup" and, when some query is flagged unseen, "unseen"."""
        out = {"official": self.metrics}
        if self.dedup_ranks:
            out["dedup"] = {task: summarise(r) for task, r in self.dedup_ranks.items()}
        if self.unseen is not None and self.unseen.any():
            out["unseen"] = {task: summarise(r[self.unseen]) for task, r in self.ranks.items()}
        return out

    def flat(self, split_key: str) -> dict[str, float]:
        """The MLflow-safe metric names and values of this evaluation of split key ``split_key`` (``val``, ``test``,
        ``train``), the one place they are spelled: ``val/epa/acc_at_1`` (``@`` -> ``_at_``: MLflow forbids "@"),
        ``val/epa/mrr``, the same under ``val/dedup/`` and ``val/unseen/`` for those views, and
        ``val/rerank/acc_at_1`` when a scorer reranked."""
        out = {f"{view_key(split_key, view)}/{task}/{name.replace('@', '_at_')}": float(value)
               for view, tasks in self.views().items() for task, values in tasks.items()
               for name, value in values.items()}
        if self.rerank_acc1 is not None:
            out[f"{split_key}/rerank/acc_at_1"] = float(self.rerank_acc1)
        return out

    @property
    def primary_value(self) -> float:
        task, metric = self.primary.split("/")
        return self.metrics[task][metric]


def scores(query_emb, cand_emb, metric: str) -> torch.Tensor:
    """[Q, n] similarity, higher is closer: cosine similarity, or for ``euclidean`` 2 q·c − ‖c‖², which is
    ‖q‖² − ‖q − c‖²: along a query's row it orders candidates exactly as the distance does, and it is one matrix
    product of [2q, −1] with [c, ‖c‖²] (the square root, and the query's own norm, would change no rank and cost
    as much again as the product).

    Sparse scipy matrices (e.g. TF-IDF rows) are accepted for ``cosine`` and multiplied sparsely.
    """
    if scipy.sparse.issparse(query_emb):
        if metric != "cosine":
            raise ValueError("sparse embeddings support only metric='cosine'")
        q, c = _l2_rows(query_emb), _l2_rows(cand_emb)
        return torch.from_numpy((q @ c.T).toarray().astype(np.float32))
    if metric == "cosine":
        q = torch.nn.functional.normalize(query_emb.float(), dim=-1)
        c = torch.nn.functional.normalize(cand_emb.float(), dim=-1)
        return q @ c.T
    if metric == "euclidean":
        q, c = query_emb.float(), cand_emb.float()
        q_aug = torch.cat([2 * q, q.new_full((len(q), 1), -1.0)], dim=1)
        c_aug = torch.cat([c, (c * c).sum(1, keepdim=True)], dim=1)
        return q_aug @ c_aug.T
    raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")


def _l2_rows(m):
    norms = np.sqrt(m.multiply(m).sum(axis=1)).A1
    return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def ranks_from_scores(score: torch.Tensor, pool: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``positive[i]`` among the candidates ``pool[i]`` under ``score[i]`` (ties count against it)."""
    return ranks_in_pool(at_least_true(score, positive), pool, positive)


def at_least_true(score: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """bool [q, n]: which candidates score at least as well as row i's true counter ``positive[i]`` (the same for
    every task, so :func:`evaluate` computes it once per chunk of queries). A NaN true score is beaten by all."""
    true = score.gather(1, positive[:, None])
    at_least = score >= true
    if true.isnan().any():
        at_least |= true.isnan()
    return at_least


def ranks_in_pool(at_least: torch.Tensor, pool: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1 + the candidates in ``pool`` other than the positive that score at least as well as it."""
    competing = at_least & pool
    itself = competing.gather(1, positive[:, None]).squeeze(1)  # the positive, when in the pool (not NaN)
    return 1 + row_counts(competing).long() - itself.long()


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """int32 [rows]: True entries per row of a bool [rows, n] mask (summed as bytes: ~10x faster than
    ``mask.sum(1)``, which widens every element to int64 first)."""
    return mask.view(torch.uint8).sum(1, dtype=torch.int32)


def summarise(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    """``acc@k`` and ``mrr`` of 1-based ranks."""
    out = {f"acc@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def evaluate(
    split: SplitData,
    query_emb: torch.Tensor,
    cand_emb: torch.Tensor,
    *,
    metric: str = "cosine",
    scorer: Scorer | None = None,
    tasks=TASKS,
    rerank_depth: int = 10,
    rerank_task: str = "epa",
    chunk: int = 2048,
) -> Evaluation:
    """Rank every query's candidates in each task.

    ``query_emb`` [Q, d] embeds the split's queries (row i = query i), ``cand_emb`` [n, d] every argument (row j =
    ``split.args`` row j); separate encoders give different matrices, a shared one gives ``cand_emb[query_idx]`` for
    the queries. Ranks are also computed without the copies of each query (``dedup_ranks``), and ``split.unseen``
    is carried over (see :class:`Evaluation`). With a ``scorer``, also the original protocol: take the top
    ``rerank_depth`` of ``rerank_task``'s pool by embedding score, rerank them by the scorer, and count how often
    the top one is the true counter.
    """
    n_queries = len(split.query_idx)
    if query_emb.shape[0] != n_queries or cand_emb.shape[0] != len(split.args):
        raise ValueError(f"embeddings have {query_emb.shape[0]} query rows and {cand_emb.shape[0]} candidate rows; "
                         f"split {split.name} has {n_queries} queries and {len(split.args)} arguments")
    positive = torch.from_numpy(split.positive_idx)
    ranks = {task: [] for task in tasks}
    dedup = {task: [] for task in tasks}
    reranked_right = []
    for start in range(0, n_queries, chunk):
        rows = slice(start, start + chunk)
        score = scores(query_emb[rows], cand_emb, metric)
        at_least = at_least_true(score, positive[rows]) if tasks else None
        copies = query_copy_mask(split, rows)
        with_copies = copies.any(1).nonzero().squeeze(1)  # few rows: only they can rank differently
        for task in tasks:
            pool = split.pool(task)[rows]
            official = ranks_in_pool(at_least, pool, positive[rows])
            ranks[task].append(official)
            dedup[task].append(official.index_put((with_copies,), official[with_copies] - row_counts(
                at_least[with_copies] & pool[with_copies] & copies[with_copies])))
        if scorer is not None:
            reranked_right.append(_rerank(score, split.pool(rerank_task)[rows], positive[rows], start, scorer,
                                          rerank_depth))
    rank_arrays = {task: torch.cat(r).numpy() for task, r in ranks.items()}
    return Evaluation(
        metrics={task: summarise(r) for task, r in rank_arrays.items()},
        ranks=rank_arrays,
        rerank_acc1=float(torch.cat(reranked_right).float().mean()) if scorer is not None else None,
        pool_sizes={task: float(row_counts(split.pool(task)).float().mean()) for task in tasks},
        dedup_ranks={task: torch.cat(r).numpy() for task, r in dedup.items()},
        unseen=split.unseen,
    )


def _rerank(score, pool, positive, offset: int, scorer: Scorer, depth: int) -> torch.Tensor:
    """Whether the scorer's favourite among each query's top-``depth`` pool candidates is its true counter.

    Takes the top ``depth`` + (most candidates any row's pool leaves out) of the whole row, then keeps each row's
    first ``depth`` that are in its pool: the same candidates as masking the row first, without writing [q, n].
    """
    sizes = row_counts(pool)
    depth = min(depth, int(sizes.min()))
    width = min(depth + pool.shape[1] - int(sizes.min()), score.shape[1])
    nearest = score.topk(width, dim=1).indices  # best first
    in_pool = pool.gather(1, nearest)
    first_in_pool = torch.argsort((~in_pool).to(torch.uint8), dim=1, stable=True)[:, :depth]
    top = nearest.gather(1, first_in_pool)  # [q, depth], best first
    pair_score = scorer(torch.arange(offset, offset + len(top)), top)
    chosen = top.gather(1, pair_score.argmax(1, keepdim=True)).squeeze(1)
    return chosen == positive
