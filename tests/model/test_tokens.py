"""Tokenise-once / pad-per-batch helpers, on the MiniLM tokenizer and hand-made id rows."""

import numpy as np
import pytest
import torch

from argbench.model.tokens import (
    BUCKET_WINDOW_BATCHES,
    TokenizedTexts,
    bucketed_batches,
    length_sorted_batches,
    pad_batch,
    tokenize_texts,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    return tiny_encoder[1]


def _hand_made() -> TokenizedTexts:
    return TokenizedTexts(ids=[torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])], pad_id=0)


def _covers_each_row_once(batches, n):
    return sorted(np.concatenate(batches).tolist()) == list(range(n))


def test_tokenize_truncates_at_max_length_including_special_tokens(tokenizer):
    long_text = " ".join(["word"] * 100)
    tok = tokenize_texts(tokenizer, [long_text, "hello"], max_length=8)
    full = tokenize_texts(tokenizer, [long_text], max_length=512).ids[0]

    assert len(tok) == 2
    assert tok.lengths.tolist()[0] == 8
    assert tok.lengths[1] < 8
    # Truncation keeps the leading text tokens and still closes the row with [SEP].
    assert tok.ids[0][:-1].tolist() == full[:7].tolist()
    assert tok.ids[0][-1].item() == tokenizer.sep_token_id
    assert tok.ids[1][0].item() == tokenizer.cls_token_id
    assert tok.pad_id == tokenizer.pad_token_id
    assert all(row.dtype == torch.long and row.dim() == 1 for row in tok.ids)


def test_tokenize_calls_the_tokenizer_once_for_all_texts(tokenizer):
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, texts, **kwargs):
            calls.append(len(texts))
            return tokenizer(texts, **kwargs)

    tokenize_texts(Spy(), ["a", "b c", "d e f"], max_length=16)
    assert calls == [3]


def test_tokenize_rejects_a_max_length_with_no_room_for_text(tokenizer):
    with pytest.raises(ValueError, match="max_length=2"):
        tokenize_texts(tokenizer, ["hello"], max_length=2)


def test_pad_batch_pads_to_the_longest_row_of_the_batch_only():
    tok = _hand_made()
    ids, mask = pad_batch(tok, [1, 2])
    assert ids.tolist() == [[8, 0], [9, 10]]
    assert mask.tolist() == [[1, 0], [1, 1]]

    ids, mask = pad_batch(tok, np.array([0, 1]))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_batch_rejects_empty_or_out_of_range_rows():
    with pytest.raises(ValueError, match="empty"):
        pad_batch(_hand_made(), [])
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        pad_batch(_hand_made(), [0, 3])


def test_lengths_and_len():
    tok = _hand_made()
    assert len(tok) == 3
    assert tok.lengths.tolist() == [3, 1, 2]


def test_length_sorted_batches_cover_all_rows_longest_first():
    lengths = np.array([3, 1, 4, 1, 5, 9, 2])
    batches = length_sorted_batches(lengths, batch_size=3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert _covers_each_row_once(batches, len(lengths))
    in_order = lengths[np.concatenate(batches)]
    assert (np.diff(in_order) <= 0).all()


def test_bucketed_batches_cover_every_row_once_across_windows():
    batch_size = 8
    n = 2 * BUCKET_WINDOW_BATCHES * batch_size + 13  # two full windows and a partial one
    lengths = np.random.default_rng(1).integers(3, 200, size=n)
    batches = bucketed_batches(lengths, batch_size, np.random.default_rng(0))
    assert _covers_each_row_once(batches, n)
    assert max(len(b) for b in batches) == batch_size


def test_bucketed_batches_are_deterministic_for_a_seeded_rng():
    lengths = np.random.default_rng(1).integers(3, 200, size=500)
    first = bucketed_batches(lengths, 4, np.random.default_rng(7))
    again = bucketed_batches(lengths, 4, np.random.default_rng(7))
    other = bucketed_batches(lengths, 4, np.random.default_rng(8))
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert [b.tolist() for b in first] != [b.tolist() for b in other]


def test_bucketed_batches_group_similar_lengths_in_random_order():
    # 40 rows of distinct lengths fit in one window, so each batch holds 4 consecutive lengths.
    lengths = np.arange(40)[::-1].copy()
    batches = bucketed_batches(lengths, 4, np.random.default_rng(0))
    spans = [lengths[b].max() - lengths[b].min() for b in batches]
    assert spans == [3] * 10
    batch_minima = [lengths[b].min() for b in batches]
    assert batch_minima != sorted(batch_minima)  # the batch order is shuffled, not sorted by length


def test_batches_reject_a_non_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([1, 2], 0)
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches([1, 2], 0, np.random.default_rng(0))


def test_tokenizing_in_chunks_keeps_every_row_in_order(tokenizer, monkeypatch):
    texts = [f"argument number {i} " + "word " * i for i in range(7)]
    one_by_one = [tokenize_texts(tokenizer, [t], max_length=16).ids[0].tolist() for t in texts]
    monkeypatch.setattr("argbench.model.tokens.TOKENIZE_CHUNK", 3)  # chunks of 3, 3 and 1 texts

    assert [row.tolist() for row in tokenize_texts(tokenizer, texts, max_length=16).ids] == one_by_one
