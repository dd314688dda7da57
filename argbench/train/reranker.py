"""Train the cross-encoder second stage (``eval.rerank: cross_encoder``) on the pairs the bi-encoder trained on.

After the bi-encoder's last epoch, each training point gets its ``reranker.negatives`` nearest arguments among the
training pairs' points and counters under the final bi-encoder (:func:`hard_negatives`: the first-stage score the
evaluation ranks by; its own point and counter and every copy of their texts excluded), i.e. the kind of candidate
the reranker will have to put below the true counter at test time. The cross-encoder then reads (point, counter) and
(point, negative) and is trained with a softmax over each point's group, the true counter at position 0 (the
listwise loss of rerankers such as tevatron's and sentence-transformers' CrossEncoder MultipleNegativesRankingLoss).

Why not sentence-transformers' ``CrossEncoderTrainer``: the reranker must read the very token rows the bi-encoder
embedded, each side cut to ``model.max_length`` (:func:`argbench.model.cross_encoder.pad_pairs`), so that the second
stage judges the texts the first stage ranked, cut the same way, and nothing is tokenised twice; a ``CrossEncoder``
tokenises each text pair again and truncates the pair as a whole (longest side first), so a long point would be cut
elsewhere and the scores, hence the ``*/reranked/*`` metrics, change. It also trains inside the run: on the main
process while the other ranks wait at the epoch's end, under the run's autocast, with its own RNG stream, plain
AdamW at a constant rate, and a non-finite loss an error that names ``reranker.lr``; a ``CrossEncoderTrainer`` is a
Hugging Face ``Trainer`` with its own seeding, schedule, gradient clipping, distributed set-up and logging
integrations.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from argbench.config import Config
from argbench.data.tasks import SplitData
from argbench.errors import RunError
from argbench.eval.evaluate import scores
from argbench.model.cross_encoder import build_cross_encoder, pad_pairs, pair_scores
from argbench.model.encoders import load_encoder
from argbench.model.tokens import TokenizedTexts


def hard_negatives(query_emb: torch.Tensor, cand_emb: torch.Tensor, forbidden: torch.Tensor, n: int,
                   metric: str) -> np.ndarray:
    """int64 [N, n'] column indices of ``cand_emb`` [M, d]: each query's best-scoring candidates (best first) that
    ``forbidden`` (bool [N, M]) allows, n' = min(n, fewest allowed in any row). ValueError when a row allows none."""
    allowed = int((~forbidden).sum(1).min())
    if allowed == 0:
        raise ValueError("a point has no allowed negative: every candidate is a copy of its point or counter")
    score = scores(query_emb, cand_emb, metric).masked_fill(forbidden, float("-inf"))
    return score.topk(min(n, allowed), dim=1).indices.numpy()


def training_groups(split: SplitData, pairs: np.ndarray, embed, n: int, metric: str) -> tuple[np.ndarray, ...]:
    """(points [N], counters [N], negatives [N, n']) as rows of ``split.args`` for the training pairs ``pairs``:
    :func:`hard_negatives` among the pairs' points and counters, embedded by ``embed(rows, side) -> [m, d]`` (the
    final bi-encoder), copies of a pair's point or counter text forbidden."""
    points, counters = split.points_idx[pairs], split.counters_idx[pairs]
    cand_rows = np.concatenate([points, counters])
    groups = split.args["copy_group"].to_numpy()
    own = np.stack([groups[points], groups[counters]], axis=1)  # [N, 2]
    forbidden = torch.from_numpy((groups[cand_rows][None, :, None] == own[:, None, :]).any(2))
    chosen = hard_negatives(embed(points, "point"), embed(cand_rows, "candidate"), forbidden, n, metric)
    return points, counters, cand_rows[chosen]


def listwise_loss(scores_: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of [b, 1 + n] pair scores whose column 0 is the true counter."""
    return F.cross_entropy(scores_.float(), torch.zeros(len(scores_), dtype=torch.long, device=scores_.device))


def fit_cross_encoder(cfg: Config, encoder: torch.nn.Module, tok: TokenizedTexts, points: np.ndarray,
                      counters: np.ndarray, negatives: np.ndarray, *, seed: int, device: torch.device,
                      autocast, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """The trained cross-encoder and its figures (``train/rerank_loss``, last epoch; ``perf/rerank_train_seconds``).

    ``points`` [N], ``counters`` [N] and ``negatives`` [N, n] are rows of ``tok`` (the training split's texts);
    ``encoder`` is the trained bi-encoder's point encoder (``reranker.init: bi_encoder``; copied, not changed);
    ``autocast()`` the run's autocast context. Batches of ``reranker.batch_size`` points, shuffled by ``seed``.
    """
    t0 = time.perf_counter()
    rc = cfg.reranker
    start = encoder if rc.init == "bi_encoder" else load_encoder(cfg.model.encoder)[0].to(device)
    model = build_cross_encoder(start)
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr)
    rng = np.random.default_rng([seed, 2])  # its own stream: the bi-encoder's RNG states are left as they were
    group = np.column_stack([counters, negatives])  # [N, 1 + n], true counter first
    loss_sum, steps = 0.0, 0
    for epoch in range(1, rc.epochs + 1):
        order = rng.permutation(len(points))
        batches = [order[s:s + rc.batch_size] for s in range(0, len(order), rc.batch_size)]
        loss_sum, steps = 0.0, 0
        for rows in tqdm(batches, desc=f"reranker {epoch}", unit="batch", disable=not progress, leave=False):
            a = np.repeat(points[rows], group.shape[1])
            batch = pad_pairs(tok, a, group[rows].reshape(-1), device)
            with autocast():
                loss = listwise_loss(pair_scores(model, batch).view(len(rows), group.shape[1]))
            if not torch.isfinite(loss):
                raise RunError(f"non-finite cross-encoder loss {loss.item()} at reranker epoch {epoch}, step "
                               f"{steps + 1}; try a smaller reranker.lr in a new run")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, steps = loss_sum + float(loss.detach()), steps + 1
    model.eval()
    return model, {"train/rerank_loss": loss_sum / max(steps, 1),
                   "perf/rerank_train_seconds": time.perf_counter() - t0}
