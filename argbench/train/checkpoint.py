"""Per-epoch checkpoints that resume bit-for-bit on CPU, load without unpickling code, and are verified first.

A checkpoint is a folder ``<run>/checkpoint/`` holding ``model.safetensors`` (weights; shared encoders stored once),
``state.pt`` (optimiser state, every RNG state, miner state, epoch and history — tensors and plain Python values
only, read back with ``torch.load(weights_only=True)``), ``config.yaml`` (the run's config) and, written last,
``checksums.json`` (SHA-256 and size of each of them). It is written to a temporary sibling and renamed, so an
interruption leaves the previous checkpoint intact; a full disk is a :class:`DiskFull` error naming the folder.

:func:`verify` (and :func:`load`, which calls it) refuses, with a :class:`CheckpointError` naming the file and what
is wrong, a checkpoint whose checksum file is missing or unreadable, a file that is missing, empty, truncated or
changed since it was written, or one written for another config (only the keys of :data:`RESUMABLE_KEYS`, such as
``train.epochs``, may change between sessions of a run).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from argbench.config import Config, ConfigError, flatten, load_config, to_yaml
from argbench.errors import RunError, UserError

DIRNAME = "checkpoint"  # the last epoch's checkpoint, which --resume continues
BEST = "best"  # the selected epoch's (argbench.train.selection): weights, config and {"epoch": N}; what is exported
MODEL, STATE, CONFIG, CHECKSUMS = "model.safetensors", "state.pt", "config.yaml", "checksums.json"
RERANKER = "reranker"  # extra module of a run with eval.rerank: cross_encoder, saved as reranker.safetensors
# Keys that may differ between the sessions of one run: how long, where and how fast it trains, where the corpus is.
RESUMABLE_KEYS = frozenset({"train.epochs", "train.device", "train.precision", "train.embed_batch_size",
                            "train.num_threads", "train.compile", "train.ddp_timeout",
                            "data.path"})
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(UserError):
    """A checkpoint that must not be resumed: the message names the file and what is wrong with it."""


class DiskFull(RunError):
    """No space left while writing a checkpoint; the previous checkpoint is intact."""


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


def save(run_dir: Path, model: torch.nn.Module, state: dict, config: Config | None = None,
         extra: dict[str, torch.nn.Module] | None = None, name: str = DIRNAME) -> Path:
    """Write ``model``, ``state``, ``config`` and each ``extra`` module (as ``<name>.safetensors``) atomically to
    ``run_dir/<name>`` (:data:`DIRNAME` or :data:`BEST`), with their checksums."""
    final = run_dir / name
    tmp = run_dir / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / MODEL))
        torch.save(state, tmp / STATE)
        for extra_name, module in (extra or {}).items():
            save_model(module, str(tmp / f"{extra_name}.safetensors"))
        if config is not None:
            (tmp / CONFIG).write_text(to_yaml(config))
        _write_checksums(tmp)  # last: a folder with this file was written whole
    except Exception as err:
        full = _disk_full(err, tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        if full:
            raise DiskFull(f"no space left on the device of {run_dir} while writing the checkpoint of epoch "
                           f"{state.get('epoch')}; the previous checkpoint is kept in {final}: free some space, "
                           "then --resume") from err
        raise
    old = run_dir / (name + ".old")
    if final.exists():  # else an interrupted save left the last complete checkpoint in `old`: keep it till the end
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether writing into ``folder`` failed for want of space. The writers do not all say so: Python's raise
    OSError(ENOSPC), safetensors a SafetensorError "...(os error 28)", torch.save a RuntimeError "unexpected pos";
    so less than 1 MiB left where the write stopped counts as full too."""
    if getattr(err, "errno", None) in DISK_FULL or "os error 28" in str(err):
        return True
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).free < 1 << 20
    except OSError:
        return False


def _write_checksums(folder: Path) -> None:
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())}
    part = folder / (CHECKSUMS + ".part")
    with open(part, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, folder / CHECKSUMS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _latest(run_dir: Path, name: str = DIRNAME) -> Path | None:
    """The complete checkpoint folder: ``<name>/``, or ``<name>.old/`` when an interruption fell between the two
    renames of :func:`save` (the only moment ``<name>/`` is missing while a checkpoint exists)."""
    for folder in (run_dir / name, run_dir / (name + ".old")):
        if (folder / "state.pt").is_file():
            return folder
    return None


def exists(run_dir: Path, name: str = DIRNAME) -> bool:
    return _latest(run_dir, name) is not None


def verify(run_dir: Path, config: Config | None = None, name: str = DIRNAME) -> Path:
    """The checkpoint folder ``name`` of ``run_dir``, checked against its checksums and, if given, ``config``;
    raises :class:`CheckpointError` (or FileNotFoundError when there is none) naming what is wrong."""
    folder = _latest(run_dir, name)
    if folder is None:
        expected = run_dir / name
        raise FileNotFoundError(f"no checkpoint in {expected}: expected {expected}/state.pt and model.safetensors "
                                "(nothing to resume; start without --resume)")
    sums = folder / CHECKSUMS
    try:
        files = json.loads(sums.read_text())["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{sums}: missing, so the checkpoint cannot be verified (written by an argbench "
                              "before checksums, or damaged); start the run again without --resume") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{sums}: unreadable ({type(err).__name__}: {err}); expected the JSON checksums "
                              "written with the checkpoint, so it cannot be verified") from None
    for file in sorted({MODEL, STATE} | set(files)):
        problem = _file_problem(folder / file, files.get(file))
        if problem:
            raise CheckpointError(f"{folder / file}: {problem}; the checkpoint is damaged, so it is not resumed "
                                  "(start the run again without --resume)")
    if config is not None and (folder / CONFIG).is_file():
        _check_config(folder / CONFIG, config)
    return folder


def _file_problem(path: Path, expected: dict | None) -> str | None:
    if expected is None:
        return f"not in {CHECKSUMS}"
    try:
        size = path.stat().st_size
        digest = _sha256(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return f"empty (0 bytes; {expected['bytes']} were written)"
    if size < expected["bytes"]:
        return f"truncated ({size} of the {expected['bytes']} bytes written)"
    if digest != expected["sha256"]:
        return (f"changed since it was written (SHA-256 {digest[:12]}…, {size} bytes; {CHECKSUMS} has "
                f"{expected['sha256'][:12]}…, {expected['bytes']} bytes)")
    return None


def _check_config(path: Path, config: Config) -> None:
    try:
        saved = flatten(load_config(path))
    except ConfigError as err:
        raise CheckpointError(f"{path}: not a config argbench reads ({err})") from None
    now = flatten(config)
    changed = [k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE_KEYS and saved.get(k) != now.get(k)]
    if changed:
        shown = "; ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise CheckpointError(f"{path}: the checkpoint was written for another config ({shown}{more}); resume "
                              f"with the run's own config (only {', '.join(sorted(RESUMABLE_KEYS))} may change)")


def load(run_dir: Path, model: torch.nn.Module, device: torch.device, config: Config | None = None,
         name: str = DIRNAME) -> dict:
    """Verify the checkpoint ``name`` (:func:`verify`), load its weights into ``model`` (in place) and return the
    saved state dict."""
    folder = verify(run_dir, config, name)
    try:
        load_model(model, str(folder / MODEL), device=str(device))
    except Exception as err:  # noqa: BLE001 - any loader failure means this file does not fit this model
        raise CheckpointError(f"{folder / MODEL}: cannot be loaded into this model ({_first_line(err)})") from err
    try:
        return torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{folder / STATE}: cannot be read ({_first_line(err)})") from err


def load_extra(run_dir: Path, extra: str, module: torch.nn.Module, name: str = DIRNAME) -> bool:
    """Load the verified checkpoint's ``<extra>.safetensors`` into ``module``; False when the checkpoint has none."""
    folder = verify(run_dir, name=name)
    path = folder / f"{extra}.safetensors"
    if not path.is_file():
        return False
    try:
        load_model(module, str(path))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be loaded into this model ({_first_line(err)})") from err
    return True


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
