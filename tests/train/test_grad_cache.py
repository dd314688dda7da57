"""The gradient cache gives the whole-batch step's gradients, with and without dropout (tiny random BERT)."""

from __future__ import annotations

import pytest
import torch

from argbench.config import LossConfig, load_config
from argbench.model.bi_encoder import build_model
from argbench.model.encoders import encode
from argbench.model.loss import combined_loss, in_batch
from argbench.train.grad_cache import cached_step

LOSS = LossConfig(in_batch_weight=1.0, in_batch_symmetric=True)


def model_and_batches(sharing: str, rows: int = 6):
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.pooling=mean", f"model.sharing={sharing}"])
    model, _ = build_model(cfg.model)
    gen = torch.Generator().manual_seed(1)

    def batch():  # rows of different lengths, right-padded
        lengths = torch.randint(3, 12, (rows,), generator=gen)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        return torch.randint(5, 100, (rows, 12), generator=gen) * mask, mask

    return model, (batch(), batch(), batch())


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_fn(out):
    return combined_loss(out, LOSS)


def assert_same_grads(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys() and len(expected) > 10  # encoder, projection and classifier all learn
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("sharing", ["shared", "separate"])
def test_without_dropout_the_cached_step_has_the_whole_batch_gradients(sharing):
    model, batches = model_and_batches(sharing)
    model.eval()  # no dropout: the whole-batch forward is deterministic
    whole = loss_fn(model(*batches))
    whole["total"].backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    parts, backward = cached_step(model, *batches, 4, loss_fn)
    torch.testing.assert_close(parts["total"], whole["total"], rtol=1e-5, atol=1e-6)
    backward()
    assert_same_grads(expected, grads(model))


def test_with_dropout_the_second_forward_replays_the_first_ones_masks():
    # Reference: the same chunks (each trimmed to its longest row, as the cache encodes them: dropout draws depend on
    # the shape) encoded with a graph, in the same order, from the same random state.
    model, batches = model_and_batches("shared")
    model.train()

    def chunk(ids, mask, i):
        width = int(mask[i:i + 2].sum(1).max())
        return ids[i:i + 2, :width], mask[i:i + 2, :width]

    torch.manual_seed(7)
    pooled = [torch.cat([encode(model.point_encoder, *chunk(ids, mask, i), "mean") for i in range(0, 6, 2)])
              for ids, mask in batches]
    loss_fn(model(*pooled))["total"].backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    parts, backward = cached_step(model, *batches, 2, loss_fn)
    after_forward = torch.get_rng_state()
    backward()
    assert torch.equal(torch.get_rng_state(), after_forward)  # the replay leaves the random stream where it was
    assert_same_grads(expected, grads(model))



def test_a_side_the_loss_does_not_use_is_skipped_and_the_rest_still_matches():
    # A loss of anchors and positives only: the negatives' leaf gets no gradient at all (None), which the cache
    # must pass over rather than fail on.
    def without_negatives(out):
        return {"total": in_batch(out.anchor.emb, out.positive.emb, 0.05)}

    model, batches = model_and_batches("separate")
    model.eval()
    without_negatives(model(*batches))["total"].backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    _, backward = cached_step(model, *batches, 4, without_negatives)
    backward()
    assert_same_grads(expected, grads(model))
