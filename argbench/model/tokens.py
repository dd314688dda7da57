"""Tokenise a corpus once, pad per batch.

Texts are tokenised a single time into unpadded id tensors (`TokenizedTexts`); every batch is then padded only to
its own longest row (`pad_batch`). Batch orders group rows of similar length so little compute goes to padding:
`length_sorted_batches` for inference, `bucketed_batches` for training (still random from epoch to epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Training batches are sorted by length only within windows of this many batches: wide enough that neighbours have
# similar lengths, narrow enough that an epoch's batches still mix rows from the whole corpus.
BUCKET_WINDOW_BATCHES = 50
# Texts per tokenizer call. A fast tokenizer's batch output for all 8,148 training texts at once (every token of
# every untruncated text, with offsets) grew the process by 320 MB that the allocator never gave back; 1,024 at a
# time keep 70 MB, in the same time.
TOKENIZE_CHUNK = 1024


@dataclass
class TokenizedTexts:
    """Token ids of n texts, one 1-D int64 tensor per text, unpadded.

    Each row includes the tokenizer's special tokens and is at most the `max_length` it was tokenised with.
    `pad_id` is the id `pad_batch` fills short rows with.
    """

    ids: list[torch.Tensor]
    pad_id: int

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: number of tokens of each row (special tokens included)."""
        return np.array([len(row) for row in self.ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> TokenizedTexts:
    """Tokenise `texts` in batched calls of `TOKENIZE_CHUNK`, truncating each to `max_length` tokens (special
    tokens included).

    `tokenizer` is a Hugging Face tokenizer with a pad token. Row i of the result is texts[i].
    """
    if isinstance(texts, str):
        raise TypeError("tokenize_texts: texts must be a sequence of strings, got a single str")
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    if max_length <= n_special:
        raise ValueError(
            f"tokenize_texts: max_length={max_length} leaves no room for text; "
            f"expected an int > {n_special} (the tokenizer adds {n_special} special tokens)"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenize_texts: tokenizer {tokenizer.name_or_path!r} has no pad token; expected one")
    texts, ids = list(texts), []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        encoded = tokenizer(texts[start:start + TOKENIZE_CHUNK], truncation=True, max_length=max_length,
                            padding=False, return_attention_mask=False, return_token_type_ids=False)
        ids += [torch.tensor(row, dtype=torch.long) for row in encoded["input_ids"]]
    return TokenizedTexts(ids=ids, pad_id=int(tokenizer.pad_token_id))


def pad_batch(
    tok: TokenizedTexts, rows: Sequence[int] | np.ndarray, device: torch.device | str | None = None, *,
    pin_memory: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the given rows of `tok` to the longest of them.

    Returns (input_ids, attention_mask), both int64 [len(rows), longest], on `device` (CPU if None);
    the mask is 1 on real tokens and 0 on padding. `pin_memory` (CUDA machines only) puts the CPU tensors in
    page-locked memory, so that their copy to the GPU (here, or later with ``non_blocking=True``) does not stall
    the host.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        raise ValueError("pad_batch: rows is empty; expected at least one row index")
    if rows.min() < 0 or rows.max() >= len(tok):
        raise IndexError(f"pad_batch: row indices must lie in [0, {len(tok)}), got {rows.min()}..{rows.max()}")
    seqs = [tok.ids[i] for i in rows]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tok.pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    if pin_memory:
        input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
    return input_ids.to(device, non_blocking=pin_memory), attention_mask.to(device, non_blocking=pin_memory)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")


def _cut(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches: row indices sorted by decreasing length, cut into batches of `batch_size`.

    Longest first so an out-of-memory batch fails at once rather than at the end. Every row appears exactly once.
    """
    _check_batch_size(batch_size)
    lengths = np.asarray(lengths)
    return _cut(np.argsort(-lengths, kind="stable"), batch_size)


def bucketed_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Training batches of similar-length rows in random order; every row appears exactly once.

    Shuffles all rows, sorts each window of `BUCKET_WINDOW_BATCHES * batch_size` shuffled rows by length, cuts the
    windows into batches (a window's last batch may be short) and shuffles the batch order. Deterministic given the
    state of `rng`, which it advances.
    """
    _check_batch_size(batch_size)
    lengths = np.asarray(lengths)
    shuffled = rng.permutation(len(lengths))
    window = BUCKET_WINDOW_BATCHES * batch_size
    batches = []
    for start in range(0, len(shuffled), window):
        chunk = shuffled[start : start + window]
        batches += _cut(chunk[np.argsort(lengths[chunk], kind="stable")], batch_size)
    return [batches[i] for i in rng.permutation(len(batches))]
