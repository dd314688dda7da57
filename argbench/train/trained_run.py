"""A trained run folder read back: the weights of its selected epoch (or its last), with its config, history, data
and cross-encoder, as the :class:`~argbench.model.export.TrainedRun` an export is written from.

A run folder is what ``argbench train --out`` / ``argbench ablation run`` write: ``config.yaml``, ``checkpoint/`` (the
last epoch, :mod:`argbench.train.checkpoint`), ``best/`` (the selected epoch: the best ``eval.primary`` on validation,
see :mod:`argbench.train.selection`), ``data.json`` (the corpus source and hash) and ``mlflow_run_id``. A folder
without ``best/`` (written before argbench selected epochs, or whose run never evaluated ``eval.primary``) gives its
last epoch, and :attr:`~argbench.model.export.TrainedRun.note` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from argbench.config import load_config
from argbench.model.bi_encoder import build_model
from argbench.model.cross_encoder import build_cross_encoder
from argbench.model.epoch_names import LAST, SELECTED
from argbench.model.export import ExportError, TrainedRun, check_epoch, write_export
from argbench.train import checkpoint

DATA_FILE = "data.json"  # written by the trainer into a run folder: the corpus source and hash


def load_run_dir(run_dir: str | Path, epoch: str | None = None) -> TrainedRun:
    """Read a run folder written by ``argbench train --out`` / ``argbench ablation run`` with the weights of
    ``epoch``: "selected" (``best/``; ExportError when the folder has none), "last" (``checkpoint/``) or None (the
    selected where the folder has ``best/``, else the last, with ``note`` saying so)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not checkpoint.exists(run_dir):
        raise ExportError(f"{run_dir} is not a trained run folder: expected config.yaml and checkpoint/ "
                          "(written by `argbench train --out DIR` or `argbench ablation run`)")
    cfg = load_config(run_dir / "config.yaml")
    name, note = _checkpoint_name(run_dir, epoch, cfg.eval.primary)
    model, tokenizer = build_model(cfg.model)
    history = [json.loads(row) for row in checkpoint.load(run_dir, model, torch.device("cpu"))["history"]]
    weights_epoch = history[-1]["epoch"] if history else None
    if name == checkpoint.BEST:  # its state holds only {"epoch": N}; the history is the last checkpoint's
        weights_epoch = checkpoint.load(run_dir, model, torch.device("cpu"), name=checkpoint.BEST)["epoch"]
    model.eval()
    reranker = build_cross_encoder(model.point_encoder) if cfg.eval.rerank == "cross_encoder" else None
    if reranker is not None and not checkpoint.load_extra(run_dir, checkpoint.RERANKER, reranker, name=name):
        reranker = None  # stopped before the last epoch: no second stage yet
    data_file = run_dir / DATA_FILE
    data = json.loads(data_file.read_text()) if data_file.is_file() else {"source": "unknown", "hash": "unknown"}
    run_id_file = run_dir / "mlflow_run_id"
    run_id = (run_id_file.read_text().strip() or None) if run_id_file.is_file() else None
    return TrainedRun(run_dir, model, tokenizer, cfg, history, data, run_id,
                      reranker.eval() if reranker is not None else None, epoch=weights_epoch,
                      selection=SELECTED if name == checkpoint.BEST else LAST, note=note)


def _checkpoint_name(run_dir: Path, epoch: str | None, primary: str) -> tuple[str, str | None]:
    """(the checkpoint folder holding ``epoch``'s weights, the note when the last epoch stands in for the selected
    one); ExportError for an unknown epoch, or "selected" of a folder without ``best/``."""
    check_epoch(epoch)
    if epoch == LAST:
        return checkpoint.DIRNAME, None
    if checkpoint.exists(run_dir, checkpoint.BEST):
        return checkpoint.BEST, None
    missing = (f"{run_dir} has no {checkpoint.BEST}/, the selected epoch's model (a run folder written before "
               f"argbench selected epochs, or no epoch evaluated {primary})")
    if epoch == SELECTED:
        raise ExportError(f"--epoch {SELECTED}: {missing}; use --epoch {LAST} for its {checkpoint.DIRNAME}/")
    return checkpoint.DIRNAME, f"{missing}: using {checkpoint.DIRNAME}/, the last epoch's"


def export_run(run: TrainedRun | str | Path, out: str | Path, epoch: str | None = None) -> Path:
    """Write the export folder of ``run`` (a :class:`~argbench.model.export.TrainedRun`, or a run folder read at
    ``epoch``: see :func:`load_run_dir`) to ``out`` (:func:`argbench.model.export.write_export`); returns ``out``."""
    return write_export(run if isinstance(run, TrainedRun) else load_run_dir(run, epoch), out)
