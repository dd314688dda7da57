"""Partial fine-tuning: a transformer cut into a frozen bottom and a trained top (``model.train_layers``).

:func:`split_layers` returns two views of one BERT-style model (``embeddings`` + ``encoder.layer`` + ``pooler``) that
share its modules, so the weights stay where the model, its checkpoint and its export expect them:

* ``bottom(input_ids, attention_mask).last_hidden_state`` — embeddings and the lower layers: the token states that
  enter the first trained layer. Frozen and in eval mode (no dropout), it is a fixed function of the text, so the
  trainer computes it once per text (:mod:`argbench.train.frozen_states`).
* ``top(inputs_embeds=states, attention_mask=mask)`` — the upper ``train_layers`` layers and the pooler, on those
  states: with the bottom's output it returns what the whole model returns.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from torch import nn


class LayerSplit(NamedTuple):
    bottom: nn.Module
    top: nn.Module
    frozen: tuple[nn.Module, ...]  # the modules the bottom runs: embeddings and the lower layers


class _PassThrough(nn.Module):
    """Stands in for the embeddings in the top view: the states it is given are already embedded."""

    def forward(self, inputs_embeds=None, **_):
        return inputs_embeds


def layer_count(model: nn.Module) -> int:
    """Number of transformer layers of a BERT-style model; ValueError for another architecture."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise ValueError(f"{type(model).__name__} is not a BERT-style encoder (embeddings + encoder.layer)")
    return len(layers)


def split_layers(model: nn.Module, train_layers: int) -> LayerSplit | None:
    """Bottom and top views of ``model`` with the upper ``train_layers`` layers in the top; None when that is every
    layer (nothing to freeze). The views share ``model``'s modules (no copy of a weight)."""
    n = layer_count(model)
    if train_layers >= n:
        return None
    layers, cut = model.encoder.layer, n - train_layers
    bottom = _view(model, list(layers[:cut]), model.embeddings, None)
    top = _view(model, list(layers[cut:]), _PassThrough(), model.pooler)
    return LayerSplit(bottom, top, (model.embeddings, *layers[:cut]))


def _view(model: nn.Module, layers: list[nn.Module], embeddings: nn.Module, pooler: nn.Module | None) -> nn.Module:
    """A shallow copy of ``model`` whose embeddings, layer list and pooler are the given ones."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    inner = copy.copy(model.encoder)
    inner._modules = dict(model.encoder._modules)
    inner.layer = nn.ModuleList(layers)
    view.encoder, view.embeddings, view.pooler = inner, embeddings, pooler
    return view
