"""Where argbench reads and writes, resolved at call time from the project folder, never from the source tree.

The *project folder* is ``$ARGBENCH_PROJECT`` when set, else the current working directory — like ``git`` or
``mlflow``, argbench works on the folder it is run in. Under it:

* ``mlruns/mlflow.db`` and ``mlruns/artifacts/``: the MLflow store (``$MLFLOW_TRACKING_URI`` overrides);
* ``mlruns/optuna.db``: the Optuna storage of searches and studies (``--storage`` overrides);
* ``mlruns/runs/<name>/seed<S>[-N]``: run folders (config, metrics.jsonl, checkpoint), one per run, never reused
  (``argbench.experiments.run_folders``);
* ``ablations/``: the registry, when the folder has one with a ``base.yaml`` (``$ARGBENCH_ABLATIONS`` overrides);
  otherwise the registry that ships inside the package;
* ``data/counterargs-18``: the real corpus, when present (``$ARGBENCH_DATA`` and ``--data`` override).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ENV = "ARGBENCH_PROJECT"
ABLATIONS_ENV = "ARGBENCH_ABLATIONS"


def project_dir() -> Path:
    """``$ARGBENCH_PROJECT`` if set, else the current working directory."""
    return Path(os.environ.get(PROJECT_ENV) or Path.cwd())


def mlruns_dir() -> Path:
    """``<project>/mlruns``: the local MLflow store, the Optuna storage and run folders live here."""
    return project_dir() / "mlruns"


def runs_dir() -> Path:
    """``<project>/mlruns/runs``: one folder per run (``<name>/seed<S>``, ``seed<S>-2``, …)."""
    return mlruns_dir() / "runs"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<project>/mlruns/mlflow.db`` (MLflow >= 3.13 no longer
    opens a plain ``./mlruns`` folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def default_storage() -> str:
    """The Optuna storage of searches and studies: ``sqlite:///<project>/mlruns/optuna.db``."""
    return f"sqlite:///{mlruns_dir() / 'optuna.db'}"


def packaged_ablations() -> Path:
    """The registry inside the package: ``argbench/_registry`` in a wheel, the checkout's ``ablations/`` in an
    editable install (the two are the same files; pyproject maps one onto the other)."""
    inside = PACKAGE_DIR / "_registry"
    return inside if (inside / "base.yaml").is_file() else PACKAGE_DIR.parent / "ablations"


def ablations_dir(directory: str | os.PathLike | None = None) -> Path:
    """``directory`` › ``$ARGBENCH_ABLATIONS`` › ``<project>/ablations`` (if it has a base.yaml) › the packaged one."""
    if directory or os.environ.get(ABLATIONS_ENV):
        return Path(directory or os.environ[ABLATIONS_ENV])
    local = project_dir() / "ablations"
    return local if (local / "base.yaml").is_file() else packaged_ablations()


def project_data() -> Path:
    """``<project>/data/counterargs-18``: used when no ``--data`` and no ``$ARGBENCH_DATA`` is given."""
    return project_dir() / "data" / "counterargs-18"
