"""The token states of a frozen bottom (:mod:`argbench.model.partial`), computed once per text and reused.

Under ``model.train_layers`` the embeddings and lower layers are frozen and in eval mode, so they map a text to the
same states in every epoch. :class:`FrozenStates` computes them for a split's texts the first time they are asked
for and keeps them packed (one ``[tokens, hidden]`` tensor, each text's real tokens only); training steps, mining and
evaluation then run only the upper layers. Memory: the split's token count x hidden x 2 bytes in bf16 (4 in fp32);
on the real corpus at 128 tokens, ~0.4 GB for the training split and ~0.5 GB for validation and test in bf16.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from argbench.model.tokens import TokenizedTexts, length_sorted_batches, pad_batch


class FrozenStates:
    """States of ``bottom`` for the rows of ``tok``: ``get(rows) -> (states [b, t, h], mask [b, t])`` on ``device``,
    right-padded to the longest row, in ``dtype`` (the autocast dtype the bottom runs under, or float32)."""

    def __init__(self, bottom: torch.nn.Module, tok: TokenizedTexts, hidden: int, *, device: torch.device,
                 batch_size: int, autocast_dtype: torch.dtype | None):
        self.bottom, self.tok, self.device = bottom, tok, device
        self.batch_size, self.autocast_dtype = batch_size, autocast_dtype
        lengths = torch.as_tensor(tok.lengths, dtype=torch.int64)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        self.states = torch.empty(int(self.offsets[-1]), hidden, dtype=autocast_dtype or torch.float32)
        self.have = np.zeros(len(tok), dtype=bool)

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._fill(rows[~self.have[rows]])
        seqs = [self.states[self.offsets[r]:self.offsets[r + 1]] for r in rows]
        states = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = torch.zeros(states.shape[:2], dtype=torch.int64)
        for i, seq in enumerate(seqs):
            mask[i, :len(seq)] = 1
        return states.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    @torch.no_grad()
    def _fill(self, rows: np.ndarray) -> None:
        """Compute and keep the states of ``rows`` (distinct, in length-sorted batches)."""
        rows = np.unique(rows)
        if not len(rows):
            return
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        self.bottom.eval()  # frozen modules are always in eval mode (argbench.model.bi_encoder)
        with autocast:
            for batch in length_sorted_batches(self.tok.lengths[rows], self.batch_size):
                ids, mask = pad_batch(self.tok, rows[batch], self.device)
                out = self.bottom(input_ids=ids, attention_mask=mask).last_hidden_state.to("cpu", self.states.dtype)
                for row, seq, n in zip(rows[batch], out, mask.sum(dim=1).tolist()):
                    self.states[self.offsets[row]:self.offsets[row] + n] = seq[:n]
        self.have[rows] = True
