"""An export folder (:mod:`argbench.model.export`) as an MLflow model: a pyfunc whose ``predict`` embeds argument texts.

``log_export`` logs the folder as a pyfunc model of a run (MLflow 3 "logged model": it shows under the run's
"Logged models", carries the run's metrics of the exported epoch, which is the selected one for a run folder with
``best/`` (:mod:`argbench.train.selection`), tags ``argbench.epoch`` and ``argbench.selection`` saying so, a
signature and an input example);
``mlflow.pyfunc.load_model("models:/<model_id>")`` (or ``runs:/<run_id>/model``) loads it offline and
``predict(["an argument", ...])`` returns float32 [n, d] retrieval embeddings. ``params={"side": "query"}`` selects
the point encoder of a separate-encoder model (default "document", the candidate encoder; a shared model has one).
``download_export`` fetches the folder of a run's logged model back, for ``argbench export/retrieve RUN_ID``
(checking that it holds the epoch asked for).

MLflow's notes about argbench's own model are left out of stderr: the suggestion to add type hints to ``predict``
(this model states its signature), the CloudPickle caution (the object pickled is argbench's own class) and the
"Downloading artifacts" bar when stderr is not a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from argbench.errors import UserError
from argbench.track.redaction import redact

MODEL_NAME = "model"
ARTIFACT_KEY = "export"  # the export folder inside the model's artifacts
INPUT_COLUMN = "text"
SIDES = ("query", "document")


class ModelNotLogged(UserError):
    """An MLflow run without an argbench logged model."""


_TYPE_HINTS = ".*type hints to the `predict` method"


class ArgumentEncoder(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of an export folder: ``predict(texts) -> float32 [n, d]`` embeddings."""

    # MLflow wraps a PythonModel's predict for type-hint validation when the class is made, and without type hints
    # says so in a coloured warning (under its own warnings filter, so no filter of ours reaches it). This model
    # states its signature itself (signature()); the attribute is the one MLflow's own ChatModel uses to opt out.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(context.artifacts[ARTIFACT_KEY], device="cpu", local_files_only=True)

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        """``model_input``: a DataFrame with a ``text`` column (or one column), a list of strings or one string."""
        if isinstance(model_input, pd.DataFrame):
            column = INPUT_COLUMN if INPUT_COLUMN in model_input else model_input.columns[0]
            texts = model_input[column].astype(str).tolist()
        else:
            texts = [model_input] if isinstance(model_input, str) else [str(t) for t in model_input]
        side = (params or {}).get("side", "document")
        if side not in SIDES:
            raise ValueError(f"params side={side!r}: expected one of {', '.join(SIDES)}")
        return self.model.encode(texts, task=side, convert_to_numpy=True).astype(np.float32)


def signature(dim: int) -> ModelSignature:
    """Input: one unnamed string column (a list of texts, or a one-column DataFrame); output: float32 [-1, dim];
    param ``side`` (query/document)."""
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
                          params=ParamSchema([ParamSpec("side", "string", "document")]))


def log_export(client: MlflowClient, run_id: str, export_dir: Path, *, step: int | None = None) -> str:
    """Log ``export_dir`` as run ``run_id``'s pyfunc model ``model`` (the run's metrics of ``step`` attached; by
    default the step of the export's epoch); returns the model id. MLflow's model logging reads the process's
    tracking URI, so it is pointed at ``client``'s store for this call only and restored after."""
    from mlflow.models import Model

    info = json.loads((Path(export_dir) / "argbench" / "run.json").read_text())
    step = (info.get("epoch") or 0) if step is None else step
    model_cfg = info["config"]["model"]
    example = pd.DataFrame({INPUT_COLUMN: ["School uniforms restrict students' freedom of expression."]})
    # Created here, in the run's experiment: left to Model.log, the model would go to the process's active
    # experiment (the Default one), and the UI's "Logged models" of the run's experiment would not list it.
    model = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=MODEL_NAME,
                                       source_run_id=run_id, model_type="argbench-retriever",
                                       tags={"argbench.sharing": model_cfg["sharing"],
                                             "argbench.encoder": model_cfg["encoder"],
                                             "argbench.data.hash": str(info["data"].get("hash")),
                                             "argbench.epoch": str(info.get("epoch")),
                                             "argbench.selection": str(info.get("selection"))})
    with _tracking_uri(client.tracking_uri), _quiet_logging(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TYPE_HINTS)
        logged = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=step,
                           python_model=ArgumentEncoder(), artifacts={ARTIFACT_KEY: str(export_dir)},
                           signature=signature(info["dimension"]), input_example=example,
                           pip_requirements=_requirements(), model_id=model.model_id)
    return logged.model_id


class _OwnModelNotes(logging.Filter):
    """MLflow's CloudPickle caution, which is about loading someone else's pickle: the object pickled here is
    argbench's own :class:`ArgumentEncoder`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serialized using CloudPickle" not in record.getMessage()


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Inside the block: no CloudPickle caution from MLflow's pyfunc logger, and no "Downloading artifacts" bar
    unless stderr is a terminal."""
    logger, notes = logging.getLogger("mlflow.pyfunc"), _OwnModelNotes()
    saved = os.environ.get(_PROGRESS_BAR)
    logger.addFilter(notes)
    if not sys.stderr.isatty():
        os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        logger.removeFilter(notes)
        if saved is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = saved


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` inside the block. MLflow's ``_use_tracking_uri`` restores its
    global after, but unsets ``$MLFLOW_TRACKING_URI`` when that global was unset, which would send every later
    default-store call of the process to another store; the variable is restored as well."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _requirements() -> list[str]:
    """What loading the model needs (given, not inferred: inference would load the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "sentence-transformers", "torch", "transformers")]


def logged_model_id(client: MlflowClient, run_id: str) -> str:
    """Id of the newest argbench model logged by run ``run_id``; :class:`ModelNotLogged` if there is none."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ModelNotLogged(f"{run_id!r} is neither a folder nor an MLflow run at "
                             f"{redact(client.tracking_uri)}: {err.message}") from None
    outputs = run.outputs.model_outputs if run.outputs else []
    models = [client.get_logged_model(o.model_id) for o in outputs]
    models = sorted((m for m in models if m.name == MODEL_NAME), key=lambda m: m.creation_timestamp)
    if not models:
        raise ModelNotLogged(f"MLflow run {run_id} has no logged model: train it with `--log-model`, or pass its "
                             "run folder (config.yaml + checkpoint/) instead")
    return models[-1].model_id


def download_export(run_id: str, dest: Path, tracking_uri: str | None = None, epoch: str | None = None) -> Path:
    """Copy the export folder of run ``run_id``'s logged model to ``dest`` (an earlier export there is replaced);
    returns it. ExportError, before ``dest`` is touched, when ``dest`` is another non-empty folder or the model does
    not hold ``epoch`` ("selected" or "last"; None: whichever it holds), see
    :func:`argbench.model.export.check_holds`."""
    from argbench.model.export import check_destination, check_holds, run_info
    from argbench.paths import default_tracking_uri

    dest = Path(dest)
    check_destination(dest)
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    model = client.get_logged_model(logged_model_id(client, run_id))
    with tempfile.TemporaryDirectory() as scratch, _quiet_logging():
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/artifacts/"
                                                                 f"{ARTIFACT_KEY}", dst_path=scratch,
                                                    tracking_uri=uri)
        check_holds(run_info(local), epoch, f"the model logged by MLflow run {run_id}")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(local, dest)
    return dest
