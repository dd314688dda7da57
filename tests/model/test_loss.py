"""The combined loss on hand-made tensors whose values are worked out by hand (no model involved)."""

from __future__ import annotations

import math

import pytest
import torch

from argbench.config import LossConfig
from argbench.model.bi_encoder import Encoded, TripletOutput
from argbench.model.loss import COMPONENTS, combined_loss, in_batch, in_batch_term, pair_ce, triplet

# F.triplet_margin_loss adds eps=1e-6 to each coordinate difference before taking the norm.
EPS = 1e-5


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def output(anchor, positive, negative, logits_pos=None, logits_neg=None) -> TripletOutput:
    """A TripletOutput whose retrieval embeddings are the given rows (the loss never reads ``pooled``)."""
    enc = [Encoded(t(x), t(x)) for x in (anchor, positive, negative)]
    return TripletOutput(*enc, logits_pos, logits_neg)


# 1-D points, margin 1, Euclidean:
#   row 0: a=0, pos=1, neg=3  -> max(0, 1 - 3 + 1) = 0   (negative far enough)
#   row 1: a=0, pos=2, neg=1  -> max(0, 2 - 1 + 1) = 2   (negative closer than the positive)
# mean = 1
ANCHOR_1D, POSITIVE_1D, NEGATIVE_1D = [[0.0], [0.0]], [[1.0], [2.0]], [[3.0], [1.0]]


def test_triplet_1d_by_hand():
    assert triplet(t(ANCHOR_1D), t(POSITIVE_1D), t(NEGATIVE_1D), margin=1.0, p=2.0).item() == pytest.approx(1.0,
                                                                                                         abs=EPS)


def test_triplet_2d_euclidean_and_manhattan_by_hand():
    # a=(0,0), pos=(3,4): L2 5, L1 7; neg=(1,0): L2 1, L1 1.
    a, pos, neg = t([[0, 0]]), t([[3, 4]]), t([[1, 0]])
    assert triplet(a, pos, neg, margin=1.0, p=2.0).item() == pytest.approx(5 - 1 + 1, abs=EPS)
    assert triplet(a, pos, neg, margin=1.0, p=1.0).item() == pytest.approx(7 - 1 + 1, abs=EPS)
    # Swapping positive and negative: 1 - 5 + 0.5 < 0 -> 0; the margin is a parameter, not a constant.
    assert triplet(a, neg, pos, margin=0.5, p=2.0).item() == pytest.approx(0.0, abs=EPS)
    assert triplet(a, neg, pos, margin=4.5, p=2.0).item() == pytest.approx(1 - 5 + 4.5, abs=EPS)


def test_pair_ce_zero_logits_is_log2_for_either_label():
    zeros = torch.zeros(4, 2)
    assert pair_ce(zeros, 1).item() == pytest.approx(math.log(2))
    assert pair_ce(zeros, 0).item() == pytest.approx(math.log(2))


def test_pair_ce_class_one_means_true_pair():
    # logits (0, 10): P(true) = 1 / (1 + e^-10). CE against 1 is log(1 + e^-10); against 0 it is 10 + that.
    logits = t([[0.0, 10.0]])
    assert pair_ce(logits, 1).item() == pytest.approx(math.log1p(math.exp(-10)), abs=1e-6)
    assert pair_ce(logits, 0).item() == pytest.approx(10 + math.log1p(math.exp(-10)), rel=1e-6)


def test_in_batch_by_hand_for_orthogonal_aligned_pairs():
    # Each anchor equals its positive and is orthogonal to the other row's: cosine matrix = identity, so each row's
    # InfoNCE is -log(e^(1/T) / (e^(1/T) + e^0)) = log(1 + e^(-1/T)).
    a = t([[1, 0], [0, 1]])
    for temperature in (1.0, 0.5):
        expected = math.log1p(math.exp(-1 / temperature))
        assert in_batch(a, a, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_in_batch_is_lower_when_positives_align_with_anchors():
    gen = torch.Generator().manual_seed(0)
    anchors = torch.randn(16, 8, generator=gen)
    aligned = anchors + 0.1 * torch.randn(16, 8, generator=gen)
    shuffled = aligned[torch.roll(torch.arange(16), 1)]  # every anchor gets another row's positive
    assert in_batch(anchors, aligned, 0.05) < in_batch(anchors, shuffled, 0.05)


def test_symmetric_in_batch_averages_both_directions_by_hand():
    # Anchors (1,0), (0,1); both positives (1,0); T = 1. Cosines a_i·p_j = [[1, 1], [0, 0]].
    # points -> counters: both rows see logits equal across candidates -> log 2 each.
    # counters -> points: p_i·a_j = [[1, 0], [1, 0]]: row 0 (target 0) log(1 + e^-1), row 1 (target 1) log(1 + e).
    anchors, positives = t([[1, 0], [0, 1]]), t([[1, 0], [1, 0]])
    forward, backward = math.log(2), (math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2
    one_way = LossConfig(in_batch_weight=1.0, in_batch_temperature=1.0)
    both = LossConfig(in_batch_weight=1.0, in_batch_temperature=1.0, in_batch_symmetric=True)
    assert in_batch_term(anchors, positives, one_way).item() == pytest.approx(forward, abs=EPS)
    assert in_batch_term(anchors, positives, both).item() == pytest.approx((forward + backward) / 2, abs=EPS)
    # the reverse mask takes row 1's wrong candidate (point 0) out: that row's loss becomes 0
    reverse = torch.tensor([[False, False], [True, False]])
    masked = (math.log1p(math.exp(-1)) + 0.0) / 2
    assert in_batch_term(anchors, positives, both, copies_reverse=reverse).item() == \
        pytest.approx((forward + masked) / 2, abs=EPS)


def test_combined_weights_combine_as_documented():
    """total = w_t·triplet + w_pos·CE(pos, 1) + w_neg·CE(neg, 0) + w_ib·InfoNCE, with components unweighted."""
    # Two 2-D rows: row 0 is a=(1,0), pos=(1,0), neg=(1,3) -> triplet max(0, 0 - 3 + 1) = 0;
    #               row 1 is a=(0,1), pos=(0,1), neg=(0,1.5) -> max(0, 0 - 0.5 + 1) = 0.5.   mean 0.25.
    # Zero logits -> both CE terms log 2. Anchors = positives, orthogonal rows, T=1 -> InfoNCE log(1 + e^-1).
    out = output([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 3], [0, 1.5]], torch.zeros(2, 2), torch.zeros(2, 2))
    cfg = LossConfig(triplet_weight=0.5, ce_pos_weight=2.0, ce_neg_weight=3.0, in_batch_weight=0.25,
                     in_batch_temperature=1.0)
    parts = combined_loss(out, cfg)
    assert set(parts) == {"total", *COMPONENTS}
    expected = {"triplet": 0.25, "ce_pos": math.log(2), "ce_neg": math.log(2), "in_batch": math.log1p(math.exp(-1))}
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, abs=EPS), name
    total = 0.5 * 0.25 + 2 * math.log(2) + 3 * math.log(2) + 0.25 * math.log1p(math.exp(-1))
    assert parts["total"].item() == pytest.approx(total, abs=EPS)


def test_combined_defaults_are_the_research_recipe():
    # Defaults: triplet + CE(pos) + CE(neg), each weight 1, in-batch off (reported as 0).
    out = output(ANCHOR_1D, POSITIVE_1D, NEGATIVE_1D, torch.zeros(2, 2), torch.zeros(2, 2))
    parts = combined_loss(out, LossConfig())
    assert parts["in_batch"].item() == 0.0
    assert parts["total"].item() == pytest.approx(1.0 + 2 * math.log(2), abs=EPS)


def test_combined_without_classifier_has_zero_ce_terms():
    parts = combined_loss(output(ANCHOR_1D, POSITIVE_1D, NEGATIVE_1D), LossConfig(triplet_weight=2.0))
    assert parts["ce_pos"].item() == 0.0 and parts["ce_neg"].item() == 0.0
    assert parts["total"].item() == pytest.approx(2.0 * 1.0, abs=EPS)


def test_combined_gradients_by_hand():
    """Signs matter: the anchor moves towards its positive and away from the negative; class 1 is "true pair"."""
    # a=(0,0), pos=(3,4), neg=(1,0): triplet = |a-pos| - |a-neg| + 1 > 0, so d/da = (a-pos)/5 - (a-neg)/1 = (0.4, -0.8).
    # CE of zero logits: d/dlogits = softmax - onehot = (0.5, -0.5) for label 1 and (-0.5, 0.5) for label 0.
    anchor = t([[0, 0]]).requires_grad_()
    logits_pos, logits_neg = torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2, requires_grad=True)
    out = TripletOutput(Encoded(anchor, anchor), Encoded(t([[3, 4]]), t([[3, 4]])), Encoded(t([[1, 0]]), t([[1, 0]])),
                        logits_pos, logits_neg)
    combined_loss(out, LossConfig())["total"].backward()
    torch.testing.assert_close(anchor.grad, t([[0.4, -0.8]]), atol=EPS, rtol=0)
    torch.testing.assert_close(logits_pos.grad, t([[0.5, -0.5]]))
    torch.testing.assert_close(logits_neg.grad, t([[-0.5, 0.5]]))
