"""Partial fine-tuning views: the frozen bottom then the trained top compute what the whole model computes."""

from __future__ import annotations

import copy

import pytest
import torch

from argbench.model.bi_encoder import BiEncoder
from argbench.model.partial import layer_count, split_layers


def test_top_of_bottom_equals_the_whole_model(tiny_encoder):
    model, tokenizer = copy.deepcopy(tiny_encoder[0]).eval(), tiny_encoder[1]
    batch = tokenizer(["a short text", "a much longer text with more tokens in it"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        whole = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for train_layers in range(1, layer_count(model)):
            split = split_layers(model, train_layers)
            states = split.bottom(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out = split.top(inputs_embeds=states.last_hidden_state, attention_mask=batch["attention_mask"])
            torch.testing.assert_close(out.last_hidden_state, whole.last_hidden_state)
            torch.testing.assert_close(out.pooler_output, whole.pooler_output)


def test_the_views_share_the_weights_and_leave_the_model_whole(tiny_encoder):
    model = copy.deepcopy(tiny_encoder[0])
    n, keys = layer_count(model), set(model.state_dict())
    split = split_layers(model, 1)
    assert len(model.encoder.layer) == n and model.pooler is not None and set(model.state_dict()) == keys
    assert split.top.encoder.layer[0] is model.encoder.layer[n - 1]
    assert split.bottom.embeddings is model.embeddings and split.bottom.pooler is None
    assert split_layers(model, n) is None  # every layer trains: nothing to cut


def test_only_the_top_layers_and_heads_train_and_the_bottom_stays_in_eval_mode(tiny_encoder):
    model = BiEncoder(copy.deepcopy(tiny_encoder[0]), train_layers=1).train()
    encoder = model.point_encoder
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    last = layer_count(encoder) - 1
    assert trainable and all(name.startswith((f"encoder.layer.{last}.", "pooler.")) for name in trainable)
    assert all(p.requires_grad for p in model.head.parameters())
    assert not encoder.embeddings.training and not encoder.encoder.layer[0].training
    assert encoder.encoder.layer[last].training


def test_a_non_bert_encoder_is_refused():
    with pytest.raises(ValueError, match="not a BERT-style encoder"):
        split_layers(torch.nn.Linear(2, 2), 1)
