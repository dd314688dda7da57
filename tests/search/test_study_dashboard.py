"""What optuna-dashboard shows of a grid study: a named objective (set without Optuna's experimental warning), the
grid as short readable study attributes (the full grid kept where the study reads it back), and no "Best is trial"
line per cell on stderr."""

from __future__ import annotations

import warnings

import optuna
import pytest

from argbench.search.cell_queue import GRID_ATTR
from argbench.search.grid_plan import plan
from argbench.search.parent_run import open_study
from argbench.search.storage import storage_url
from argbench.search.study import spec_of_study

TINY = ["model.encoder=tiny-random-bert", "train.epochs=1"]
BASE = "learning_recipe_in_batch"


@pytest.fixture
def made(tmp_path):
    spec = plan(["with_relu"], base=BASE, seeds=2, overrides=TINY, data="sample", experiment="dash",
                     storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    storage = optuna.storages.RDBStorage(storage_url(spec.storage))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study, parent = open_study(spec, storage)
    yield spec, storage, study, parent, caught
    storage.engine.dispose()


def test_the_objective_is_named_and_the_grid_is_readable(made):
    spec, storage, study, parent, caught = made
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert study.metric_names == ["val/epa/acc_at_1 (selected epoch)"]
    attrs = study.user_attrs
    assert all(isinstance(value, str) and len(value) < 200 for value in attrs.values())
    assert (attrs["base"], attrs["entries"], attrs["seeds"], attrs["cells"]) == \
        (BASE, f"{BASE}, with_relu", "42, 43", "4 = 2 entries x 2 seeds")
    assert attrs["overrides"] == " ".join(TINY) and attrs["mlflow_parent_run_id"] == parent
    assert GRID_ATTR not in attrs  # the full grid (every entry's config) is no attribute people read
    assert open_study(spec, storage)[1] == parent  # read back and compared: the same grid joins the study
    assert spec_of_study(spec.study, storage=spec.storage).configs == spec.configs


def test_a_cells_result_is_no_best_trial_line(made, caplog):
    spec, storage, study, parent, caught = made
    caplog.set_level("INFO", logger="optuna")
    study.optimize(lambda trial: (trial.suggest_categorical("entry", spec.entries),
                                  trial.suggest_categorical("seed", spec.seeds), 0.5)[-1], n_trials=1)
    assert "Best is trial" not in caplog.text
    other = optuna.create_study(storage=storage, study_name="a-search")
    other.optimize(lambda trial: trial.suggest_float("lr", 0, 1), n_trials=1)
    assert "Best is trial" in caplog.text  # a search keeps Optuna's line
