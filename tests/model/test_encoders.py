"""Encoder loading (offline), pooling math and batched embedding."""

import os
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F

from argbench.model.encoders import (
    POOLINGS,
    EncoderError,
    embed,
    embed_texts,
    encode,
    hidden_size,
    load_encoder,
    pool,
)
from argbench.model.tokens import pad_batch, tokenize_texts

TEXTS = [
    "A man is eating food.",
    "Cats sleep.",
    "The girl is carrying a baby while her brother plays the guitar in the park.",
    "A man is eating a piece of bread.",
    "Yes.",
]


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- loading -----------------------------------------------------------------------------------------------------


def test_minilm_loads_offline_and_ranks_a_paraphrase_above_an_unrelated_sentence():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    model, tokenizer = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert not model.training
    assert hidden_size(model) == 384

    anchor, paraphrase, unrelated = F.normalize(
        embed_texts(model, tokenizer, [TEXTS[0], TEXTS[3], "The girl is carrying a baby."], pooling="mean"), dim=1
    )
    assert anchor @ paraphrase > anchor @ unrelated


def test_short_minilm_alias_loads_the_same_model():
    short, _ = load_encoder("all-MiniLM-L6-v2")
    long, _ = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert _same_weights(short, long)


def test_unknown_name_raises_listing_the_offline_names():
    with pytest.raises(EncoderError, match="no-such-encoder") as info:
        load_encoder("no-such-encoder")
    assert isinstance(info.value, ValueError)
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "tiny-random-bert"):
        assert name in str(info.value)


def test_a_model_in_the_local_hf_cache_loads_by_id_and_is_listed(tiny_encoder, tmp_path):
    model, tokenizer = tiny_encoder
    commit = "0" * 40
    repo = tmp_path / "models--acme--tiny-bert"
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    loaded, _ = load_encoder("acme/tiny-bert", cache_dir=tmp_path)
    assert _same_weights(loaded, model)
    with pytest.raises(EncoderError, match="acme/tiny-bert"):
        load_encoder("acme/other", cache_dir=tmp_path)


def test_a_local_folder_loads(tiny_encoder, tmp_path):
    model, tokenizer = tiny_encoder
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_encoder(str(tmp_path))
    assert _same_weights(loaded, model)
    assert loaded_tokenizer("Cats sleep.")["input_ids"] == tokenizer("Cats sleep.")["input_ids"]


def test_loading_off_a_terminal_draws_no_progress_bar_and_restores_the_setting(capfd):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # as in a fresh process (other tests may have turned it off)
    try:
        load_encoder("all-MiniLM-L6-v2")  # stderr is captured here: not a terminal
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_a_folder_without_a_model_raises_naming_it(tmp_path):
    with pytest.raises(EncoderError, match=str(tmp_path)):
        load_encoder(tmp_path)


def test_tiny_random_bert_is_deterministic_and_leaves_the_global_rng_alone(tiny_encoder):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again, _ = load_encoder("tiny-random-bert")
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(again, tiny_encoder[0])
    assert not again.training
    assert hidden_size(again) == 32


# --- pooling -----------------------------------------------------------------------------------------------------


def _outputs(hidden, pooler=None):
    return SimpleNamespace(last_hidden_state=hidden, pooler_output=pooler)


def test_cls_and_pooler_pooling_pick_their_vectors():
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.ones(2, 3, dtype=torch.long)
    pooler = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    assert pool(_outputs(hidden), mask, "cls").tolist() == [[0.0, 1.0], [6.0, 7.0]]
    assert torch.equal(pool(_outputs(hidden, pooler), mask, "pooler"), pooler)


def test_mean_pooling_ignores_padding():
    real = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # two real tokens
    padded = torch.cat([real, torch.tensor([[100.0, -100.0]])])  # plus a padding position holding junk
    hidden = torch.stack([torch.cat([real, torch.zeros(1, 2)]), padded])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    unpadded = pool(_outputs(real[None]), torch.ones(1, 2, dtype=torch.long), "mean")

    pooled = pool(_outputs(hidden), mask, "mean")
    assert unpadded.tolist() == [[2.0, 4.0]]
    assert torch.equal(pooled[0], unpadded[0]) and torch.equal(pooled[1], unpadded[0])


def test_mean_pooling_of_an_all_padding_row_is_zero_not_nan():
    pooled = pool(_outputs(torch.ones(1, 2, 3)), torch.zeros(1, 2, dtype=torch.long), "mean")
    assert pooled.tolist() == [[0.0, 0.0, 0.0]]


def test_pooling_errors_name_the_problem():
    outputs, mask = _outputs(torch.zeros(1, 2, 2)), torch.ones(1, 2)
    with pytest.raises(ValueError, match="pooler, cls, mean"):
        pool(outputs, mask, "max")
    with pytest.raises(ValueError, match="no pooler_output"):
        pool(outputs, mask, "pooler")


# --- embedding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_embed_returns_rows_in_input_order_and_matches_embedding_each_text_alone(tiny_encoder, pooling):
    model, tokenizer = tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS, max_length=64)
    batched = embed(model, tok, pooling=pooling, batch_size=2)
    alone = torch.cat([encode(model, *pad_batch(tok, [i]), pooling) for i in range(len(TEXTS))])

    assert batched.shape == (len(TEXTS), 32) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone.detach(), atol=1e-5, rtol=1e-4)


def test_embed_of_selected_rows_follows_the_rows_order(tiny_encoder):
    model, tokenizer = tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS, max_length=64)
    everything = embed(model, tok, pooling="mean", batch_size=3)
    selected = embed(model, tok, pooling="mean", batch_size=3, rows=[4, 0, 2])
    # Batches are padded differently in the two calls, so equal only up to float rounding.
    torch.testing.assert_close(selected, everything[[4, 0, 2]], atol=1e-5, rtol=1e-4)


def test_embed_runs_in_eval_mode_and_restores_train_mode(fresh_tiny_encoder):
    model, tokenizer = fresh_tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS, max_length=64)
    model.train()
    first = embed(model, tok, pooling="cls")
    second = embed(model, tok, pooling="cls")
    assert model.training
    assert torch.equal(first, second)  # dropout was off, or the two runs would differ
    assert not first.requires_grad


def test_embed_under_bfloat16_autocast_returns_float32_close_to_full_precision(tiny_encoder):
    model, tokenizer = tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS, max_length=64)
    full = embed(model, tok, pooling="mean")
    half = embed(model, tok, pooling="mean", autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert F.cosine_similarity(full, half).min() > 0.99


def test_encode_keeps_gradients(fresh_tiny_encoder):
    model, tokenizer = fresh_tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS[:2], max_length=64)
    encode(model, *pad_batch(tok, [0, 1]), "mean").sum().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None
