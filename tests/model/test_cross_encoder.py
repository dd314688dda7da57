"""argbench.model.cross_encoder with the tiny random BERT: pairs laid out as the tokenizer lays them out, weights
copied from the encoder, each distinct pair scored once, and the saved folder read by sentence-transformers."""

import numpy as np
import pytest
import torch

from argbench.model.cross_encoder import build_cross_encoder, pad_pairs, pair_scores, scorer
from argbench.model.tokens import tokenize_texts
from tests.conftest import single_torch_thread

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)

TEXTS = ["the tax should rise", "a much longer argument that runs on and on about taxes", "no", "lower it"]


def test_pairs_are_laid_out_as_the_tokenizer_lays_out_a_text_pair(tiny_encoder):
    _, tokenizer = tiny_encoder
    tok = tokenize_texts(tokenizer, TEXTS, 64)
    got = pad_pairs(tok, [0, 2], [1, 3])
    for i, (a, b) in enumerate([(0, 1), (2, 3)]):
        want = tokenizer(TEXTS[a], TEXTS[b])
        n = len(want["input_ids"])
        assert got["input_ids"][i, :n].tolist() == want["input_ids"]
        assert got["token_type_ids"][i, :n].tolist() == want["token_type_ids"]
        assert got["attention_mask"][i].sum() == n
        assert (got["input_ids"][i, n:] == tok.pad_id).all()


def test_mismatched_rows_are_refused(tiny_encoder):
    tok = tokenize_texts(tiny_encoder[1], TEXTS, 64)
    with pytest.raises(ValueError, match="same non-empty"):
        pad_pairs(tok, [0, 1], [2])


def test_weights_are_copied_from_the_encoder_which_stays_as_it_was(fresh_tiny_encoder):
    encoder, tokenizer = fresh_tiny_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = build_cross_encoder(encoder)
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.base_model.state_dict()[name], value), name
    tok = tokenize_texts(tokenizer, TEXTS, 64)
    loss = pair_scores(model, pad_pairs(tok, [0, 1], [2, 3])).sum()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not torch.equal(model.base_model.embeddings.word_embeddings.weight,
                           encoder.embeddings.word_embeddings.weight)


def test_scorer_scores_each_distinct_pair_once_without_dropout_and_as_one_by_one(fresh_tiny_encoder):
    encoder, tokenizer = fresh_tiny_encoder
    model = build_cross_encoder(encoder)  # in train mode, as after training
    tok = tokenize_texts(tokenizer, TEXTS, 64)
    rows_seen = []
    model.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(len(kw["input_ids"])), with_kwargs=True)
    a, b = np.array([0, 1, 0, 2, 0]), np.array([1, 3, 1, 3, 1])  # (0, 1) three times
    got = scorer(model, tok, batch_size=2)(a, b)
    assert sum(rows_seen) == 3  # distinct pairs, in batches of at most 2
    assert model.training  # the mode it found is restored
    with torch.no_grad():
        one_by_one = torch.cat([pair_scores(model.eval(), pad_pairs(tok, [i], [j])) for i, j in zip(a, b)])
    torch.testing.assert_close(got, one_by_one, rtol=1e-5, atol=1e-6)


def test_saved_folder_is_a_sentence_transformers_cross_encoder(fresh_tiny_encoder, tmp_path):
    from sentence_transformers import CrossEncoder

    encoder, tokenizer = fresh_tiny_encoder
    model = build_cross_encoder(encoder).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tok = tokenize_texts(tokenizer, TEXTS, 64)
    ours = scorer(model, tok)(np.array([0, 2]), np.array([1, 3]))
    theirs = CrossEncoder(str(tmp_path), device="cpu").predict([(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])])
    np.testing.assert_allclose(theirs, torch.sigmoid(ours).numpy(), rtol=1e-5, atol=1e-6)  # its default activation
