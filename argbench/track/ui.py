"""Links into the MLflow UI that open on the training runs.

MLflow 3's UI keeps its "GenAI" / "Model training" switch in the browser (localStorage ``mlflow.workflowType``,
GenAI on a fresh profile) and does not follow the experiment's ``mlflow.experimentKind`` tag: a plain experiment
link lands on a GenAI overview of traces, with the runs table one toggle away. The UI reads the switch from the
page's query parameter ``workflowType`` before localStorage, so every link argbench prints carries
:data:`MODE` (``?workflowType=machine_learning``): the experiment's runs table and charts, a run's metrics.

The UI is the tracking server itself for an ``http(s)://`` tracking URI; for a local store it is what ``make ui``
serves (``http://127.0.0.1:5000``; ``$ARGBENCH_UI_URL`` names another address).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient

from argbench.paths import default_tracking_uri
from argbench.track.store import NotInStore, Store
from argbench.track.store_init import sqlite_path

MODE = "workflowType=machine_learning"
UI_URL = "http://127.0.0.1:5000"  # `make ui`'s HOST and PORT
UI_URL_VARIABLE = "ARGBENCH_UI_URL"


def ui_root(tracking_uri: str | None = None) -> str:
    """The address of the MLflow UI showing ``tracking_uri``'s store: the server of an http(s) URI (its user and
    password left out), else ``$ARGBENCH_UI_URL`` or :data:`UI_URL`."""
    uri = tracking_uri or default_tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return os.environ.get(UI_URL_VARIABLE, UI_URL).rstrip("/")


def experiment_url(experiment_id: str, root: str | None = None) -> str:
    """The experiment's page in model-training mode: its runs table."""
    return f"{root or ui_root()}/#/experiments/{experiment_id}?{MODE}"


def run_url(experiment_id: str, run_id: str, root: str | None = None) -> str:
    """A run's page in model-training mode."""
    return f"{root or ui_root()}/#/experiments/{experiment_id}/runs/{run_id}?{MODE}"


def experiment_link(experiment: str, tracking_uri: str | None = None, root: str | None = None) -> str:
    """The page of experiment ``experiment`` (by name) of the store at ``tracking_uri``; the experiments list (in
    model-training mode) when the store or the experiment does not exist yet. Never creates a store."""
    uri = tracking_uri or default_tracking_uri()
    root = root or ui_root(uri)
    db = sqlite_path(uri)
    found = None
    if db is None or db.is_file():
        found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{root}/#/experiments?{MODE}"
    return experiment_url(found.experiment_id, root)


def run_link(run_id: str, tracking_uri: str | None = None, root: str | None = None) -> str:
    """The page of run ``run_id`` of the store at ``tracking_uri`` (a run this process just logged)."""
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise NotInStore(f"run {run_id}: no MLflow store at {db}")
    return run_url(Store(uri).run(run_id).experiment_id, run_id, root or ui_root(uri))
