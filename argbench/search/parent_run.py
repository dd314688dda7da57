"""The MLflow parent run of a grid study: one per study, made by the worker that creates the study (its id is the
study user attr ``mlflow_parent_run_id``) and found by every other worker, each cell a child run of it. It stays
RUNNING until the last cell is done (workers come and go); then :mod:`argbench.search.study_table` logs the
significance tables on it and ends it FINISHED."""

from __future__ import annotations

import time

import optuna
from optuna.storages import BaseStorage

from argbench.search.cell_queue import check_grid, open_queue
from argbench.search.grid_plan import GridError, GridSpec
from argbench.search.storage import storage_url

PARENT_ATTR = "mlflow_parent_run_id"
PARENT_WAIT_S = 120  # how long a worker that did not create the study waits for its creator's parent run


def open_study(spec: GridSpec, storage: BaseStorage) -> tuple[optuna.Study, str]:
    """The study of `spec` and its MLflow parent run id, both created by whichever worker comes first (creating
    an Optuna study is atomic, so exactly one does); the others wait for the parent's id and check the grid."""
    study, created = open_queue(spec, storage)
    if not created:
        return study, _existing_parent(study, spec, storage)
    parent = _create_parent_run(spec)
    study.set_user_attr(PARENT_ATTR, parent)
    return study, parent


def _existing_parent(study: optuna.Study, spec: GridSpec, storage: BaseStorage) -> str:
    deadline = time.monotonic() + PARENT_WAIT_S
    while PARENT_ATTR not in study.user_attrs:  # its creator is making the parent run right now
        if time.monotonic() > deadline:
            raise GridError(f"study {spec.study!r} has no MLflow parent run after {PARENT_WAIT_S} s (its creator "
                            "died before making it?); delete the study or pick another --study name")
        time.sleep(1)
    check_grid(spec, study, storage)
    return study.user_attrs[PARENT_ATTR]


def _create_parent_run(spec: GridSpec) -> str:
    """The study's MLflow parent run, left RUNNING until the last cell is done (workers come and go)."""
    from argbench.track.tracker import open_run

    tags = {"study": spec.study, "base": spec.base, "group": spec.group or "none", "grid": "parent",
            "profile": spec.profile or "research", "storage": storage_url(spec.storage)}
    params = {"study.entries": ",".join(spec.entries), "study.seeds": ",".join(map(str, spec.seeds)),
              "study.overrides": " ".join(spec.overrides) or "none", "study.split": spec.split}
    return open_run(run_name=f"study-{spec.study}", experiment=spec.experiment, tracking_uri=spec.tracking_uri,
                    tags=tags, params=params)
