"""Per-epoch checkpoints that resume bit-for-bit on CPU, and load without unpickling code.

A checkpoint is a folder ``<run>/checkpoint/`` holding ``model.safetensors`` (weights; shared encoders stored once)
and ``state.pt`` (optimiser state, every RNG state, miner state, epoch and history — tensors and plain Python values
only, read back with ``torch.load(weights_only=True)``). It is written to a temporary sibling and renamed, so an
interruption leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

DIRNAME = "checkpoint"


def rng_state(np_rng: np.random.Generator, miner: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np_rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "miner": miner.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, np_rng: np.random.Generator, miner: torch.Generator) -> None:
    random.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    miner.set_state(state["miner"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, model: torch.nn.Module, state: dict) -> Path:
    """Write ``model`` and ``state`` atomically to ``run_dir/checkpoint``."""
    final = run_dir / DIRNAME
    tmp = run_dir / (DIRNAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    old = run_dir / (DIRNAME + ".old")
    if final.exists():  # else an interrupted save left the last complete checkpoint in `old`: keep it till the end
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _latest(run_dir: Path) -> Path | None:
    """The complete checkpoint folder: ``checkpoint/``, or ``checkpoint.old/`` when an interruption fell between
    the two renames of :func:`save` (the only moment ``checkpoint/`` is missing while a checkpoint exists)."""
    for folder in (run_dir / DIRNAME, run_dir / (DIRNAME + ".old")):
        if (folder / "state.pt").is_file():
            return folder
    return None


def exists(run_dir: Path) -> bool:
    return _latest(run_dir) is not None


def load(run_dir: Path, model: torch.nn.Module, device: torch.device) -> dict:
    """Load weights into ``model`` (in place) and return the saved state dict."""
    folder = _latest(run_dir)
    if folder is None:
        expected = run_dir / DIRNAME
        raise FileNotFoundError(f"no checkpoint in {expected}: expected {expected}/state.pt and model.safetensors "
                                "(nothing to resume; start without --resume)")
    load_model(model, str(folder / "model.safetensors"), device=str(device))
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
