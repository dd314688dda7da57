"""Bring a run trained outside MLflow into the store: a run folder's ``config.yaml`` and ``metrics.jsonl``.

``fit(cfg, corpus, out_dir=DIR)`` (and ``argbench train --out DIR``) writes both files on any machine, including a
GPU box without MLflow. :func:`import_run` reads and checks them *before* opening a run (so a bad file leaves no
half-written run), then logs the run exactly as a tracked run is logged, through the same
:class:`argbench.track.tracker.MlflowTracker`: the config's params, every epoch's metrics at ``step = epoch``, the
artifacts (config, metrics.csv, learning curve), the selected epoch (tags ``selected_epoch`` and ``selection``,
its ``best/`` metrics), FINISHED. It adds the tag ``imported_from`` (the folder) and any
``tags`` given, e.g. ``device=H100``. Per-query ranks are not in those files, so an imported run has none and
``argbench compare`` cannot use it; its metrics and curves appear in the MLflow UI and ``argbench report``. A
``metrics.jsonl`` of an older argbench, whose rows nest the metrics (``{"val": {"epa": {"acc@1": ...}}, "loss":
{...}}``), is read as the flat rows ``fit`` writes now (:func:`legacy_row`), under the same MLflow names.

    argbench ablation import RUN_DIR --name learning_recipe_in_batch --tag device=H100
"""

from __future__ import annotations

import json
from pathlib import Path

from argbench.config import Config, ConfigError, load_config, metric_name
from argbench.errors import UserError
from argbench.experiments.registry import RegistryError, get
from argbench.track.tracker import tracked_run
from argbench.train.metric_names import LOSS_NAMES, NEGATIVE_NAMES
from argbench.train.selection import best

CONFIG, METRICS = "config.yaml", "metrics.jsonl"
# Scalars of the old nested rows and their names now
LEGACY_SCALARS = {"random_rate": "schedule/random_rate", "epoch_seconds": "perf/epoch_seconds",
                  "train_seq_per_s": "perf/train_seq_per_s"}


class RunFolderError(UserError):
    """The run folder is missing a file or holds one that is not what ``fit`` writes; the message says where."""


def read_run_folder(run_dir: Path) -> tuple[Config, list[dict]]:
    """The config and per-epoch metrics of ``run_dir``, checked: epochs are increasing integers, and
    each row's metric values are numbers (``None`` allowed where ``fit`` writes it, e.g. epoch 0's loss)."""
    run_dir = Path(run_dir)
    for name in (CONFIG, METRICS):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"{run_dir / name}: missing; a run folder written by fit(out_dir=...) or "
                                 f"`argbench train --out` holds {CONFIG} and {METRICS}")
    try:
        cfg = load_config(run_dir / CONFIG)
    except ConfigError as err:
        raise RunFolderError(str(err)) from None
    history: list[dict] = []
    data = (run_dir / METRICS).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = data.count(b"\n", 0, err.start) + 1
        raise RunFolderError(f"{run_dir / METRICS}, line {bad_line}: not UTF-8 (byte "
                             f"0x{data[err.start]:02x} at offset {err.start}); expected the UTF-8 JSON lines that "
                             "fit writes") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{run_dir / METRICS}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunFolderError(f"{where}: not JSON ({err.msg}); expected one JSON object per epoch") from None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise RunFolderError(f"{where}: 'epoch' is {epoch!r}; expected an integer epoch number")
        if history and epoch <= history[-1]["epoch"]:
            raise RunFolderError(f"{where}: epoch {epoch} after epoch {history[-1]['epoch']}; expected increasing "
                                 "epochs (a resumed run's file is rewritten whole, so this file was edited)")
        _check_numbers(row, where)
        history.append(legacy_row(row))
    if not history:
        raise RunFolderError(f"{run_dir / METRICS}: no epochs; expected at least the untrained epoch 0")
    return cfg, history


def legacy_row(row: dict) -> dict:
    """The flat metrics row (as ``fit`` writes it now) of a checked ``metrics.jsonl`` row; a row of an older
    argbench nests them: ``loss`` {total, ...}, ``negatives`` {point, ...}, split keys (``val``, ``val/dedup``)
    {task: {"acc@1", ...}}, ``val_rerank_acc@1``, ``random_rate``, ``epoch_seconds``. A flat row is returned as is;
    ``None`` values (nothing measured) are left out."""
    out: dict = {}
    for key, value in row.items():
        if key == "loss":
            out.update({LOSS_NAMES.get(part, f"train/loss_{part}"): v for part, v in (value or {}).items()})
        elif key == "negatives":
            out.update({NEGATIVE_NAMES.get(part, f"negatives/{part}"): v for part, v in (value or {}).items()})
        elif isinstance(value, dict):
            out.update({f"{key}/{task}/{metric_name(m)}": v for task, values in value.items()
                        for m, v in values.items()})
        elif key.endswith("_rerank_acc@1"):
            out[f"{key.removesuffix('_rerank_acc@1')}/rerank/acc_at_1"] = value
        else:
            out[LEGACY_SCALARS.get(key, key)] = value
    return {k: v for k, v in out.items() if v is not None}


def _check_numbers(value, where: str, key: str = "") -> None:
    """Every leaf of a metrics row is a number or ``None``."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, where, f"{key}/{k}" if key else k)
    elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RunFolderError(f"{where}: {key} is {value!r}; expected a number or null")


def import_run(run_dir: Path, *, name: str, experiment: str = "argbench", tracking_uri: str | None = None,
               tags: dict | None = None) -> dict:
    """Log the run folder ``run_dir`` as a FINISHED MLflow run named ``name``; returns ``{"run_id", "ablation",
    "epochs", "best": {primary: value}}``. ``name`` need not be a registry entry; when it is, the run gets its
    group (and ``alias_of``) tags like a run made by ``argbench ablation run``."""
    cfg, history = read_run_folder(run_dir)
    run_tags = {"imported_from": str(Path(run_dir).resolve()), "profile": "imported",
                "mlflow.source.git.commit": "unknown (imported)", **(tags or {})}
    try:
        entry = get(name)
        run_tags.setdefault("group", entry.group)
        if entry.alias_of:
            run_tags.setdefault("alias_of", entry.alias_of)
    except RegistryError:
        pass
    with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri, tags=run_tags,
                     system_metrics=False, config=cfg) as tracker:
        tracker.on_train_start({"config": cfg})
        tracker.finish(history, cfg)  # logs every epoch of the history, then the artifacts once
    return {"run_id": tracker.run_id, "ablation": name, "epochs": len(history),
            "best": {cfg.eval.primary: best(history, cfg.eval.primary)}}
