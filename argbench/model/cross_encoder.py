"""The cross-encoder reranker: one transformer reads a (point, candidate) pair and scores it.

The original's protocol retrieved the top 10 and reranked them with a pair model; its pair model was the bi-encoder's
linear classifier over two independently computed vectors. A cross-encoder reads both texts in one sequence,
``[CLS] point [SEP] candidate [SEP]``, so every token of the point attends to every token of the candidate.

It is a Hugging Face ``*ForSequenceClassification`` with one output (the score, higher = more likely the true
counter), its transformer initialised from an encoder's weights (the bi-encoder's trained encoder or the packaged
one) and its head (pooler + linear) as the encoder has it / freshly initialised. Saved with ``save_pretrained`` it
is a standard cross-encoder folder: ``AutoModelForSequenceClassification`` and sentence-transformers' ``CrossEncoder``
load it as they load the MS MARCO MiniLM cross-encoders.

Pairs are built from rows already tokenised by :func:`argbench.model.tokens.tokenize_texts` (each ``[CLS] text
[SEP]``, cut to ``model.max_length``): the candidate's ``[CLS]`` is dropped and its tokens get segment id 1, so a pair
is at most 2 · max_length − 1 tokens and nothing is tokenised twice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from argbench.model.tokens import TokenizedTexts


def build_cross_encoder(encoder: PreTrainedModel) -> PreTrainedModel:
    """A one-output sequence classifier whose transformer holds a copy of ``encoder``'s weights (``encoder`` itself is
    not changed); on ``encoder``'s device, in train mode. ValueError for an encoder family without such a head."""
    config = copy.deepcopy(encoder.config)
    config.num_labels = 1
    config.problem_type = "regression"  # one logit: a score, not a class (and no softmax over one class)
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as err:
        raise ValueError(f"no sequence-classification head for encoder type {config.model_type!r}: {err}") from err
    missing, unexpected = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not name.startswith("pooler.") for name in missing):
        raise ValueError(f"the encoder's weights do not fit {type(model).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    first = next(encoder.parameters())
    return model.to(device=first.device, dtype=first.dtype).train()


def pad_pairs(tok: TokenizedTexts, a_rows, b_rows, device=None) -> dict[str, torch.Tensor]:
    """The padded model inputs of pairs (``tok`` row ``a_rows[i]``, row ``b_rows[i]``): ``input_ids``,
    ``attention_mask`` and ``token_type_ids``, int64 [m, longest pair], right-padded with ``tok.pad_id``."""
    a_rows, b_rows = np.asarray(a_rows, dtype=np.int64), np.asarray(b_rows, dtype=np.int64)
    if a_rows.shape != b_rows.shape or a_rows.ndim != 1 or not len(a_rows):
        raise ValueError(f"pad_pairs: a_rows {a_rows.shape} and b_rows {b_rows.shape} must be the same non-empty [m]")
    firsts = [tok.ids[i] for i in a_rows]
    seconds = [tok.ids[j][1:] for j in b_rows]  # without the candidate's [CLS]
    lengths = torch.tensor([len(a) + len(b) for a, b in zip(firsts, seconds)])
    width = int(lengths.max())
    ids = torch.full((len(a_rows), width), tok.pad_id, dtype=torch.long)
    segments = torch.zeros_like(ids)
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        ids[i, :len(a)], ids[i, len(a):len(a) + len(b)] = a, b
        segments[i, len(a):len(a) + len(b)] = 1
    mask = (torch.arange(width) < lengths[:, None]).long()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "token_type_ids": segments.to(device)}


def pair_scores(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[m] scores of a padded batch of pairs (the model's single logit)."""
    return model(**batch).logits.squeeze(-1)


def scorer(model: nn.Module, tok: TokenizedTexts, *, batch_size: int = 64, device=None,
           autocast_dtype: torch.dtype | None = None) -> Callable[[np.ndarray, np.ndarray], torch.Tensor]:
    """``score(a_rows [m], b_rows [m]) -> [m]``: float32 CPU scores of pairs of rows of ``tok``, in eval mode
    without gradients; each distinct pair is scored once, in batches of ``batch_size`` pairs sorted by length."""
    device = device or next(model.parameters()).device

    @torch.no_grad()
    def score(a_rows: np.ndarray, b_rows: np.ndarray) -> torch.Tensor:
        a_rows, b_rows = np.asarray(a_rows, dtype=np.int64), np.asarray(b_rows, dtype=np.int64)
        keys = a_rows * len(tok) + b_rows
        unique, inverse = np.unique(keys, return_inverse=True)
        ua, ub = unique // len(tok), unique % len(tok)
        lengths = tok.lengths
        order = np.argsort(-(lengths[ua] + lengths[ub]), kind="stable")
        out = torch.empty(len(unique), dtype=torch.float32)
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(order), batch_size):
                rows = order[s:s + batch_size]
                batch = pad_pairs(tok, ua[rows], ub[rows], device)
                with torch.autocast(torch.device(device).type, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    out[torch.from_numpy(rows)] = pair_scores(model, batch).float().cpu()
        finally:
            model.train(was_training)
        return out[torch.from_numpy(inverse.reshape(-1))]
    return score
