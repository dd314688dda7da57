"""The bi-encoder: every ablation switch builds the network it names, runs a forward pass and trains one step.

All on tiny-random-bert (hidden size 32), so the expected widths below are known numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch

from argbench.config import LossConfig, ModelConfig, TrainConfig
from argbench.model.bi_encoder import BiEncoder, TripletOutput, build_model, classifier_width
from argbench.model.loss import combined_loss
from argbench.model.tokens import pad_batch, tokenize_texts
from argbench.train.trainer import _optimizer
from tests.conftest import single_torch_thread

HIDDEN = 32  # tiny-random-bert's hidden size
TEXTS = {
    "anchor": ["Homework should be banned.", "Zoos protect endangered species from extinction in the wild."],
    "positive": ["Practice at home builds discipline and lets pupils learn at their own pace.", "Zoos breed animals."],
    "negative": ["Taxes fund roads.", "Voting should be compulsory because turnout matters for legitimacy."],
}


one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)


@pytest.fixture(scope="module")
def batch(tiny_encoder):
    """(anchor, positive, negative), each (input_ids, attention_mask) [2, len], of different lengths."""
    _, tokenizer = tiny_encoder
    out = []
    for name in ("anchor", "positive", "negative"):
        tok = tokenize_texts(tokenizer, TEXTS[name], max_length=32)
        out.append(pad_batch(tok, [0, 1]))
    return tuple(out)


def make(fresh_tiny_encoder, **switches) -> BiEncoder:
    torch.manual_seed(0)  # the heads' initial weights
    return BiEncoder(fresh_tiny_encoder[0], **switches).train()


def train_step(model: BiEncoder, batch, lr: float = 1e-2) -> tuple[TripletOutput, dict]:
    """Forward, combined loss, backward and one step of the trainer's own optimiser."""
    optimizer = _optimizer(model, TrainConfig(lr=lr))
    out = model(*batch)
    parts = combined_loss(out, LossConfig())
    optimizer.zero_grad()
    parts["total"].backward()
    optimizer.step()
    return out, parts


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p)}


SWITCHES = [
    {"sharing": sharing, "proj_dim": proj_dim, "fusion": fusion}
    for sharing in ("shared", "separate") for proj_dim in (32, None)
    for fusion in ("concatenated", "only_cls", "only_embedding")
] + [
    {"layernorm": layernorm, "relu": relu, "proj_dim": proj_dim}
    for layernorm in (False, True) for relu in (False, True) for proj_dim in (32, None)
] + [
    {"classifier": False}, {"classifier": False, "sharing": "separate"},
    {"freeze_encoder": True}, {"freeze_encoder": True, "sharing": "separate"},
    {"pooling": "mean"}, {"pooling": "cls"},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_builds_runs_and_trains(fresh_tiny_encoder, batch, switches):
    model = make(fresh_tiny_encoder, **switches)
    emb_dim = switches.get("proj_dim", 128) or HIDDEN
    trained = [model.head] + ([model.classifier] if model.classifier else [])
    if not switches.get("freeze_encoder"):
        trained += model.encoders()
    trained = [m for m in trained if any(True for _ in m.parameters())]  # an empty head (no projection) has none
    before = [snapshot(m) for m in trained]
    out, parts = train_step(model, batch)
    for encoded in out[:3]:
        assert encoded.pooled.shape == (2, HIDDEN)
        assert encoded.emb.shape == (2, emb_dim)
    if model.classifier is not None:
        assert out.logits_pos.shape == out.logits_neg.shape == (2, 2)
    assert all(torch.isfinite(v) for v in parts.values())
    for snap, module in zip(before, trained):  # the step moved every trained module
        assert changed(snap, module), type(module).__name__


@pytest.mark.parametrize("fusion, proj_dim, width", [
    ("concatenated", 8, 3 * 8 + 3 * 32),  # 120
    ("only_cls", 8, 3 * 32),              # 96
    ("only_embedding", 8, 3 * 8),         # 24
    ("concatenated", None, 3 * 32 + 3 * 32),  # no projection: the retrieval embedding is the pooled vector
    ("only_embedding", None, 3 * 32),
])
def test_classifier_width_follows_fusion(fresh_tiny_encoder, batch, fusion, proj_dim, width):
    model = make(fresh_tiny_encoder, fusion=fusion, proj_dim=proj_dim)
    assert model.classifier.in_features == width
    assert classifier_width(fusion, HIDDEN, proj_dim or HIDDEN) == width
    assert model(*batch).logits_pos.shape == (2, 2)  # and the classifier really receives that width


@pytest.mark.parametrize("fusion,proj_dim", [("concatenated", 8), ("only_cls", 8), ("only_embedding", 8),
                                              ("concatenated", None)])
def test_pair_scorer_equals_the_classifiers_softmax_for_every_pair(fresh_tiny_encoder, fusion, proj_dim):
    model = make(fresh_tiny_encoder, fusion=fusion, proj_dim=proj_dim).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.3, -0.2]))  # a non-zero bias must enter the margin too
        queries, candidates = (model.project(torch.randn(n, HIDDEN, generator=gen)) for n in (5, 7))
        cand_rows = torch.randint(0, 7, (4, 3), generator=gen)
        query_rows = torch.tensor([4, 0, 2, 2])
        got = model.pair_scorer(queries, candidates, chunk=3)(query_rows, cand_rows)  # chunks of 3 and 1 queries
        for i, q in enumerate(query_rows.tolist()):
            for j, c in enumerate(cand_rows[i].tolist()):
                a = type(queries)(queries.pooled[q:q + 1], queries.emb[q:q + 1])
                b = type(candidates)(candidates.pooled[c:c + 1], candidates.emb[c:c + 1])
                torch.testing.assert_close(got[i, j], model.classify(a, b).softmax(-1)[0, 1])


def test_research_widths_for_bert_base():
    # The protocol's numbers: 3·128 + 3·768 = 2688, 3·768 = 2304, 3·128 = 384.
    assert [classifier_width(f, 768, 128) for f in ("concatenated", "only_cls", "only_embedding")] == [2688, 2304, 384]


def test_head_switches_shape_the_embedding(fresh_tiny_encoder, batch):
    plain = make(fresh_tiny_encoder, proj_dim=None)
    assert len(plain.head) == 0
    out = plain(*batch)
    torch.testing.assert_close(out.anchor.emb, out.anchor.pooled)  # no projection: emb is the pooled vector

    relu = make(fresh_tiny_encoder, proj_dim=16, relu=True)
    assert [type(m).__name__ for m in relu.head] == ["Linear", "ReLU"]
    assert (relu(*batch).anchor.emb >= 0).all()

    norm = make(fresh_tiny_encoder, proj_dim=16, layernorm=True)
    assert [type(m).__name__ for m in norm.head] == ["Linear", "LayerNorm"]
    emb = norm(*batch).anchor.emb  # LayerNorm starts with weight 1, bias 0: rows have mean 0, variance 1
    torch.testing.assert_close(emb.mean(-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.var(-1, unbiased=False), torch.ones(2), atol=1e-2, rtol=0)

    both = make(fresh_tiny_encoder, proj_dim=16, layernorm=True, relu=True)
    assert [type(m).__name__ for m in both.head] == ["Linear", "LayerNorm", "ReLU"]


def test_without_classifier_there_is_no_module_and_no_ce(fresh_tiny_encoder, batch):
    model = make(fresh_tiny_encoder, classifier=False)
    assert model.classifier is None
    assert not any(name.startswith("classifier") for name, _ in model.named_parameters())
    out, parts = train_step(model, batch)
    assert out.logits_pos is None and out.logits_neg is None
    assert parts["ce_pos"].item() == 0.0 and parts["ce_neg"].item() == 0.0
    with pytest.raises(RuntimeError, match="no pair classifier"):
        model.classify(out.anchor, out.positive)


@pytest.mark.parametrize("sharing", ["shared", "separate"])
def test_freeze_encoder_trains_heads_only(fresh_tiny_encoder, batch, sharing):
    model = make(fresh_tiny_encoder, freeze_encoder=True, sharing=sharing)
    encoders = [snapshot(e) for e in model.encoders()]
    heads = snapshot(model.head), snapshot(model.classifier)
    train_step(model, batch)
    for before, encoder in zip(encoders, model.encoders()):
        assert not any(p.requires_grad for p in encoder.parameters())
        assert changed(before, encoder) == set()
    assert changed(heads[0], model.head) == set(heads[0])
    assert changed(heads[1], model.classifier) == set(heads[1])


def test_shared_is_one_encoder(fresh_tiny_encoder):
    model = make(fresh_tiny_encoder, sharing="shared")
    assert model.point_encoder is model.candidate_encoder
    assert model.encoders() == [model.point_encoder]


def test_separate_encoders_both_train(fresh_tiny_encoder, batch):
    """The original built a second encoder and never optimised it: both must get gradients and optimiser steps."""
    model = make(fresh_tiny_encoder, sharing="separate")
    point, candidate = model.encoders()
    assert point is not candidate and model.candidate_encoder is candidate
    assert not set(map(id, point.parameters())) & set(map(id, candidate.parameters()))
    for (name, p), q in zip(point.named_parameters(), candidate.parameters()):
        assert torch.equal(p, q), name  # same initial weights

    optimizer = _optimizer(model, TrainConfig(lr=1e-2))
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for encoder in (point, candidate):
        assert {id(p) for p in encoder.parameters()} <= optimised
    assert optimised == {id(p) for p in model.parameters()}

    before = snapshot(point), snapshot(candidate)
    combined_loss(model(*batch), LossConfig())["total"].backward()
    for encoder in (point, candidate):
        grads = [p.grad for p in encoder.encoder.parameters()]  # the transformer layers (pooler aside)
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    optimizer.step()
    assert changed(before[0], point) and changed(before[1], candidate)
    assert not all(torch.equal(p, q) for p, q in zip(point.parameters(), candidate.parameters()))


def test_head_lr_gives_heads_their_own_group(fresh_tiny_encoder):
    model = make(fresh_tiny_encoder)
    groups = _optimizer(model, TrainConfig(lr=1e-5, head_lr=1e-3)).param_groups
    encoder_ids = {id(p) for p in model.point_encoder.parameters()}
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    assert {id(p) for p in groups[0]["params"]} == encoder_ids
    assert not {id(p) for p in groups[1]["params"]} & encoder_ids


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_fused_optimizer_steps_like_the_textbook_one(fresh_tiny_encoder, batch, optimizer):
    cfg = TrainConfig(lr=1e-3, optimizer=optimizer, weight_decay=0.01)
    fused = make(fresh_tiny_encoder)
    plain = copy.deepcopy(fused)  # its own encoder: the fixture's module is shared
    fused_opt = _optimizer(fused, cfg)
    assert fused_opt.defaults["fused"] is True  # on CPU
    reference = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(
        [{"params": g["params"], "lr": g["lr"]} for g in _optimizer(plain, cfg).param_groups], weight_decay=0.01,
        foreach=False)
    for model, opt in ((fused, fused_opt), (plain, reference)):
        for _ in range(3):
            opt.zero_grad()
            combined_loss(model.eval()(*batch), LossConfig())["total"].backward()  # eval: no dropout
            opt.step()
    # The same steps up to rounding: Adam's first steps move each weight by about lr, and where a gradient is near
    # eps the two place eps differently, so agree within a tenth of lr (a wrong lr or group would be off by ~lr).
    for p, q in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, atol=cfg.lr / 10, rtol=0)


@pytest.mark.parametrize("switches, match", [({"sharing": "both"}, "sharing 'both'"),
                                             ({"fusion": "sum"}, "fusion 'sum'"),
                                             ({"fusion": "sum", "classifier": False}, "fusion 'sum'")])
def test_unknown_switch_values_are_rejected(fresh_tiny_encoder, switches, match):
    with pytest.raises(ValueError, match=match):
        BiEncoder(fresh_tiny_encoder[0], **switches)


def test_build_model_from_config(batch):
    model, tokenizer = build_model(ModelConfig(encoder="tiny-random-bert", proj_dim=16, sharing="separate",
                                               fusion="only_embedding", layernorm=True))
    assert model.emb_dim == 16 and model.sharing == "separate" and model.classifier.in_features == 3 * 16
    assert tokenizer.pad_token_id is not None
    assert model(*batch).anchor.emb.shape == (2, 16)


# ------------------------------------------------------------------------------------------------ projection start
def test_an_orthogonal_projection_keeps_every_distance(tiny_encoder):
    width = tiny_encoder[0].config.hidden_size
    model = BiEncoder(copy.deepcopy(tiny_encoder[0]), proj_dim=width)
    model.init_projection("orthogonal")
    pooled = torch.randn(20, width)
    torch.testing.assert_close(torch.cdist(model.head(pooled), model.head(pooled)), torch.cdist(pooled, pooled),
                               atol=1e-4, rtol=1e-4)


def test_a_pca_projection_is_centred_on_the_top_principal_directions(tiny_encoder):
    width = tiny_encoder[0].config.hidden_size
    model = BiEncoder(copy.deepcopy(tiny_encoder[0]), proj_dim=2)
    gen = torch.Generator().manual_seed(0)
    # variance 100 along axis 0, 25 along axis 1, 1 elsewhere; mean 5
    pooled = torch.randn(500, width, generator=gen) * torch.tensor([10.0, 5.0] + [1.0] * (width - 2)) + 5.0
    model.init_projection("pca", pooled)
    projected = model.head(pooled).detach()
    torch.testing.assert_close(projected.mean(dim=0), torch.zeros(2), atol=1e-4, rtol=0)
    assert projected[:, 0].var() > projected[:, 1].var() > 4 * pooled[:, 2:].var(dim=0).max()


def test_a_pca_projection_wider_than_the_data_completes_its_rows_orthogonally(tiny_encoder):
    width = tiny_encoder[0].config.hidden_size
    model = BiEncoder(copy.deepcopy(tiny_encoder[0]), proj_dim=width + 8)
    pooled = torch.randn(10, width, generator=torch.Generator().manual_seed(1))
    model.init_projection("pca", pooled)
    weight = model.head[0].weight.detach()
    _, _, components = torch.linalg.svd(pooled - pooled.mean(dim=0), full_matrices=False)
    torch.testing.assert_close(weight[:9].abs(), components[:9].abs())  # 10 texts: 9 directions (signs free)
    torch.testing.assert_close(model.head(pooled).mean(dim=0), torch.zeros(width + 8), atol=1e-5, rtol=0)
