"""Gradient cache: one training step over a large batch with the encoder's activations held for a few rows at a time.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GradCache), as
sentence-transformers' CachedMultipleNegativesRankingLoss does it. The in-batch loss compares every row with every
other, so it cannot be split into independent mini-batches; its *encoder* part can:

1. every side's (anchor, positive, negative) pooled encoder outputs are computed ``mini`` rows at a time without a
   graph, each chunk's random state (dropout) saved;
2. the heads and the loss run on the whole batch over those pooled vectors made leaves: ``backward`` gives the heads'
   gradients and d loss / d pooled;
3. each chunk is encoded again under its saved random state (the same dropout masks) and ``backward`` of
   ``pooled_chunk`` with its cached gradient adds the encoder's gradients.

The gradients are those of the whole-batch step up to float rounding (tested), at the memory of ``mini`` rows of
encoder activations plus one more encoder forward per step. Single process only (the encoder's second forward
bypasses DistributedDataParallel's gradient hooks): the trainer rejects it under torchrun.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable

import torch

from argbench.model.bi_encoder import BiEncoder, TripletOutput
from argbench.model.encoders import encode

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask) [b, t]


class _RandomState:
    """The CPU and (where used) CUDA random states at one moment, to replay a forward pass's dropout exactly."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    @contextmanager
    def replay(self):
        """A context in which the random state is the saved one; the state outside is left as it was."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield


def _chunks(batch: Batch, mini: int):
    """``mini``-row slices of a padded batch, each trimmed to its own longest row."""
    ids, mask = batch
    for start in range(0, len(ids), mini):
        m = mask[start:start + mini]
        width = int(m.sum(1).max())
        yield ids[start:start + mini, :width], m[:, :width]


def cached_step(model: BiEncoder, anchor: Batch, positive: Batch, negative: Batch, mini: int,
                loss_fn: Callable[[TripletOutput], dict[str, torch.Tensor]], autocast=nullcontext
                ) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """Loss parts of one step (``loss_fn(model(...))``, as the plain step computes them) and the ``backward``
    that fills every parameter's ``.grad`` (steps 2 and 3 above). ``autocast``: a context factory for mixed
    precision, used for every forward."""
    device = anchor[0].device
    sides = ((anchor, model.point_encoder), (positive, model.candidate_encoder),
             (negative, model.candidate_encoder))
    saved: list[list[tuple[Batch, _RandomState]]] = []
    leaves = []
    with torch.no_grad():
        for batch, encoder in sides:
            pieces, pooled = [], []
            for chunk in _chunks(batch, mini):
                pieces.append((chunk, _RandomState(device)))
                with autocast():
                    pooled.append(encode(encoder, *chunk, model.pooling))
            saved.append(pieces)
            leaves.append(torch.cat(pooled).detach().requires_grad_())
    with autocast():
        parts = loss_fn(model(*leaves))

    def backward() -> None:
        parts["total"].backward()
        for (_, encoder), pieces, leaf in zip(sides, saved, leaves):
            if leaf.grad is None:  # the loss does not use this side (e.g. negatives with only the in-batch term)
                continue
            start = 0
            for chunk, state in pieces:
                rows = len(chunk[0])
                with state.replay(), autocast():
                    pooled = encode(encoder, *chunk, model.pooling)
                if pooled.requires_grad:  # a frozen encoder has nothing to learn
                    pooled.backward(leaf.grad[start:start + rows].to(pooled.dtype))
                start += rows

    return parts, backward
