"""Two-stage ranks: the first stage's top ``depth`` of each pool, reordered by a pair model.

For every query and task (and, for the dedup view, the task's pool without the copies of the query's text) the
``depth`` best candidates of the pool under the first-stage embedding score are scored by the pair model and put in
its order; everything below them keeps its first-stage order. So a true counter inside the top ``depth`` gets rank
1 + the other top candidates the pair model scores at least as high (ties count against it, as in
:mod:`argbench.eval.evaluate`), and one outside it keeps its first-stage rank: reranking never moves it up or down.

The result is an ordinary :class:`argbench.eval.evaluate.Evaluation` (all tasks, three views, per-query ranks), so
the second stage is logged, compared and tested like the first. A (query, candidate) pair that several tasks or
views put in their top is scored once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from argbench.data.copies import query_copy_mask
from argbench.data.tasks import TASKS, SplitData
from argbench.eval.evaluate import Evaluation, at_least_true, ranks_in_pool, row_counts, scores, summarise

PairScorer = Callable[[np.ndarray, np.ndarray], torch.Tensor]
"""``pair_score(query_rows [m], candidate_rows [m]) -> [m]`` float32: a pair model's score of (argument
``query_rows[i]``, argument ``candidate_rows[i]``) of the split, higher = more likely the true counter
(:func:`argbench.model.cross_encoder.scorer` is one)."""


def rerank(split: SplitData, query_emb: torch.Tensor, cand_emb: torch.Tensor, pair_score: PairScorer, *,
           metric: str = "cosine", depth: int = 10, tasks=TASKS, reranked=None, chunk: int = 256) -> Evaluation:
    """The two-stage :class:`Evaluation` of ``split``: first stage ``scores(query_emb, cand_emb, metric)`` (as in
    :func:`argbench.eval.evaluate.evaluate`), second stage ``pair_score(query_arg_rows, cand_arg_rows)`` over each
    pool's top ``depth`` (rows of ``split.args``; higher = more likely the true counter). Only the tasks in
    ``reranked`` (default all of ``tasks``) get a second stage; the others keep their first-stage ranks, which are
    their final ones (the pair model is the costly part: each task's top is up to ``depth`` more pairs per query)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    reranked = set(tasks if reranked is None else reranked)
    positive = torch.from_numpy(split.positive_idx)
    official = {task: [] for task in tasks}
    dedup = {task: [] for task in tasks}
    for start in range(0, len(split.query_idx), chunk):
        rows = slice(start, start + chunk)
        score = scores(query_emb[rows], cand_emb, metric)
        at_least = at_least_true(score, positive[rows])  # the same for every pool of the chunk
        copies = query_copy_mask(split, rows)
        pools = [(task, kind, split.pool(task)[rows]) for task in tasks for kind in ("official", "dedup")]
        pools = [(task, kind, pool & ~copies if kind == "dedup" else pool) for task, kind, pool in pools]
        staged = [(task, kind, pool) for task, kind, pool in pools if task in reranked]
        tops = [_top(score, pool, depth) for _, _, pool in staged]
        second = dict(zip([(task, kind) for task, kind, _ in staged],
                          zip(tops, _second_stage(split, rows, positive[rows], tops, pair_score))))
        for task, kind, pool in pools:
            ranks = ranks_in_pool(at_least, pool, positive[rows])
            if (task, kind) in second:
                (top, valid), pair = second[task, kind]
                ranks = _reranked(ranks, top, valid, pair, positive[rows])
            (official if kind == "official" else dedup)[task].append(ranks)
    ranks = {task: torch.cat(r).numpy() for task, r in official.items()}
    return Evaluation(metrics={task: summarise(r) for task, r in ranks.items()}, ranks=ranks,
                      pool_sizes={task: float(row_counts(split.pool(task)).float().mean()) for task in tasks},
                      dedup_ranks={task: torch.cat(r).numpy() for task, r in dedup.items()}, unseen=split.unseen)


def classifier_rerank(split: SplitData, query_emb: torch.Tensor, cand_emb: torch.Tensor, scorer,
                      **kwargs) -> Evaluation:
    """:func:`rerank` with a bi-encoder's pair classifier as the second stage: ``scorer(query_rows [q], cand_rows [q,
    k]) -> [q, k]`` is :meth:`argbench.model.bi_encoder.BiEncoder.pair_scorer` of the split's queries (rows of
    ``split.query_idx``) and candidates (rows of ``split.args``); ``kwargs`` as :func:`rerank`'s."""
    query_of = np.full(len(split.args), -1, dtype=np.int64)
    query_of[split.query_idx] = np.arange(len(split.query_idx))

    def pair_score(query_rows: np.ndarray, cand_rows: np.ndarray) -> torch.Tensor:
        return scorer(torch.from_numpy(query_of[query_rows]), torch.from_numpy(cand_rows)[:, None])[:, 0]

    return rerank(split, query_emb, cand_emb, pair_score, **kwargs)


def _top(score: torch.Tensor, pool: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [q, d], valid [q, d]): each row's best ``d = min(depth, largest pool)`` pool members, best first;
    ``valid`` is False past the end of a smaller pool."""
    width = min(depth, int(row_counts(pool).max()))
    masked = score.masked_fill(~pool, float("-inf"))
    top = masked.topk(width, dim=1).indices
    return top, pool.gather(1, top)


def _second_stage(split: SplitData, rows: slice, positive: torch.Tensor, tops, pair_score: PairScorer) -> list:
    """Per pool, the pair scores [q, d] of its top and of each query's true counter [q] (each distinct pair once)."""
    queries = torch.from_numpy(split.query_idx[rows])
    cand = torch.cat([top for top, _ in tops] + [positive[:, None]], dim=1)  # [q, sum d + 1]
    flat = pair_score(queries[:, None].expand_as(cand).reshape(-1).numpy(), cand.reshape(-1).numpy())
    flat = flat.reshape(cand.shape)
    out, at = [], 0
    for top, _ in tops:
        out.append((flat[:, at:at + top.shape[1]], flat[:, -1]))
        at += top.shape[1]
    return out


def _reranked(first: torch.Tensor, top: torch.Tensor, valid: torch.Tensor, pair, positive: torch.Tensor):
    """Two-stage rank: inside the top, 1 + other top members scoring at least the true counter; else ``first``."""
    top_scores, true_score = pair
    inside = first <= valid.sum(1)  # (then it is in the top; a tie that put it there by luck does not count)
    beaten = (top_scores >= true_score[:, None]) & valid & (top != positive[:, None])
    return torch.where(inside, 1 + row_counts(beaten).long(), first)
