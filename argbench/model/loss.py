"""The combined training loss: triplet margin + pair cross-entropy (+ optional in-batch negatives).

Inputs (one row per training triplet, from :class:`argbench.model.bi_encoder.TripletOutput`):

=============== ========================= =====================================================
input           shape                     meaning
=============== ========================= =====================================================
anchor.emb      [b, d]                    retrieval embedding of the point
positive.emb    [b, d]                    of its true counter
negative.emb    [b, d]                    of the mined negative
logits_pos/neg  [b, 2] or None            classifier logits for (point, counter) / (point, negative)
=============== ========================= =====================================================

``total = w_t · TripletMarginLoss(margin, p)(a, p, n) + w_pos · CE(logits_pos, 1) + w_neg · CE(logits_neg, 0)
+ w_ib · InfoNCE(a, positives of the batch)``. The components come back separately (unweighted) so that they can be
logged; ``total`` is what is optimised. Without a classifier the CE terms are 0. ``copies`` ([b, b] bool, optional;
:func:`argbench.data.copies.in_batch_copies`) takes the in-batch candidates that are copies of a row's positive or
anchor out of that row's InfoNCE denominator: a copy of the right answer is not a wrong answer.

With ``loss.in_batch_symmetric`` the InfoNCE term is the mean of both directions, points → counters and counters →
points (each counter must also pick its own point among the batch's points; sentence-transformers'
MultipleNegativesSymmetricRankingLoss); ``copies_reverse`` is that direction's mask (row j's point is a copy of row
i's counter or point).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COMPONENTS = ("triplet", "ce_pos", "ce_neg", "in_batch")


def triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float, p: float):
    """mean(max(0, ‖a − pos‖_p − ‖a − neg‖_p + margin)), as ``torch.nn.TripletMarginLoss``."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=p)


def pair_ce(logits: torch.Tensor, label: int) -> torch.Tensor:
    """Cross-entropy of [b, 2] logits against one label for every row (1 = true pair, 0 = not)."""
    return F.cross_entropy(logits.float(), torch.full((len(logits),), label, device=logits.device))


def in_batch(anchor: torch.Tensor, positive: torch.Tensor, temperature: float,
             copies: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over the batch: each point's own counter against the other rows' counters (cosine / temperature).
    ``copies[i, j]`` True leaves row j's counter out of row i's candidates (the diagonal must be False)."""
    sim = F.normalize(anchor.float(), dim=-1) @ F.normalize(positive.float(), dim=-1).T / temperature
    if copies is not None:
        sim = sim.masked_fill(copies.to(sim.device), float("-inf"))
    return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))


def in_batch_term(anchor: torch.Tensor, positive: torch.Tensor, loss_cfg, copies: torch.Tensor | None = None,
                  copies_reverse: torch.Tensor | None = None) -> torch.Tensor:
    """The in-batch InfoNCE term of ``loss_cfg``: points → counters, averaged with counters → points when
    ``loss_cfg.in_batch_symmetric``."""
    forward = in_batch(anchor, positive, loss_cfg.in_batch_temperature, copies)
    if not loss_cfg.in_batch_symmetric:
        return forward
    return (forward + in_batch(positive, anchor, loss_cfg.in_batch_temperature, copies_reverse)) / 2


def combined_loss(out, loss_cfg, copies: torch.Tensor | None = None,
                  copies_reverse: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"total", "triplet", "ce_pos", "ce_neg", "in_batch"}`` for a :class:`TripletOutput` and a ``LossConfig``;
    ``copies`` / ``copies_reverse``: the in-batch masks of :func:`in_batch_term`."""
    zero = out.anchor.emb.new_zeros(())
    parts = {
        "triplet": triplet(out.anchor.emb.float(), out.positive.emb.float(), out.negative.emb.float(),
                           loss_cfg.margin, loss_cfg.p),
        "ce_pos": pair_ce(out.logits_pos, 1) if out.logits_pos is not None else zero,
        "ce_neg": pair_ce(out.logits_neg, 0) if out.logits_neg is not None else zero,
        "in_batch": in_batch_term(out.anchor.emb, out.positive.emb, loss_cfg, copies, copies_reverse)
        if loss_cfg.in_batch_weight > 0 else zero,
    }
    weights = {"triplet": loss_cfg.triplet_weight, "ce_pos": loss_cfg.ce_pos_weight,
               "ce_neg": loss_cfg.ce_neg_weight, "in_batch": loss_cfg.in_batch_weight}
    parts["total"] = sum(weights[k] * parts[k] for k in COMPONENTS)
    return parts
