"""The MLflow model of a run: `--log-model` logs the export as a pyfunc that loads offline and embeds like the
exported SentenceTransformer; `argbench export RUN_ID` and `retrieve --model RUN_ID` fetch it back."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from argbench.cli import main
from argbench.config import load_config
from argbench.data.corpus import load_corpus
from argbench.model.export import is_export
from argbench.track.model_log import ModelNotLogged, log_export, logged_model_id
from argbench.track.tracker import tracked_run
from argbench.train.trained_run import export_run
from argbench.train.trainer import fit
from tests.conftest import single_torch_thread
from tests.model.test_export import save_run_folder

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)
TEXTS = ["School uniforms stop bullying over clothes.", "A ban pushes the trade underground."]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 1-epoch tiny run (separate encoders) tracked with --log-model in a temporary store: (store, run id). Only
    the trained epoch is evaluated, so it is the one selected and logged (at epoch 0 both encoders are the same)."""
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.max_length=32", "train.epochs=1",
                                 "data.max_train_pairs=16", "model.sharing=separate", "negatives.examples=0",
                                 "eval.at_start=false"])
    out = tmp_path_factory.mktemp("run")
    with tracked_run(run_name="tiny", experiment="models", tracking_uri=store, out_dir=out, log_model=True,
                     system_metrics=False) as tracker:
        tracker.finish(fit(cfg, load_corpus("sample"), [tracker], out_dir=out))
    return store, tracker.run_id


def test_pyfunc_loads_offline_and_embeds_like_the_export(logged, tmp_path, monkeypatch, capsys):
    from sentence_transformers import SentenceTransformer

    store, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    model_id = logged_model_id(MlflowClient(store), run_id)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    assert [t.name for t in pyfunc.metadata.get_input_schema().input_types()] == ["string"]
    assert main(["export", run_id, "--to", str(tmp_path / "model")]) == 0
    assert is_export(tmp_path / "model") and "encode_query" in capsys.readouterr().out
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu", local_files_only=True)
    documents = pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    queries = pyfunc.predict(TEXTS, params={"side": "query"})
    assert documents.dtype == np.float32 and documents.shape == (2, 128)
    assert np.abs(documents - st.encode_document(TEXTS)).max() <= 1e-5
    assert np.abs(queries - st.encode_query(TEXTS)).max() <= 1e-5
    assert np.abs(queries - documents).max() > 1e-4  # the routes are the two encoders, not one twice


def test_retrieve_takes_a_run_id(logged, tmp_path, monkeypatch, capsys):
    store, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["retrieve", "--model", run_id, "--data", "sample", "--k", "1", "--json", "--cache",
                 str(tmp_path), "an argument about school uniforms"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["counters"]) == 1


def test_a_run_without_a_logged_model_is_named(logged):
    store, _ = logged
    client = MlflowClient(store)
    with tracked_run(run_name="bare", experiment="models", tracking_uri=store, system_metrics=False) as tracker:
        pass
    with pytest.raises(ModelNotLogged, match=f"{tracker.run_id} has no logged model"):
        logged_model_id(client, tracker.run_id)


def test_a_logged_model_is_the_selected_epoch_and_export_checks_the_epoch_asked_for(logged, tmp_path, monkeypatch,
                                                                                    capsys):
    """A run folder whose best/ is epoch 2 of 4, exported and logged: the model sits at step 2, and asking the
    run id for the last epoch's model is refused in one line."""
    store, _ = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    save_run_folder(tmp_path / "run")
    client = MlflowClient(store)
    with tracked_run(run_name="selected", experiment="models", tracking_uri=store, system_metrics=False) as tracker:
        model_id = log_export(client, tracker.run_id, export_run(tmp_path / "run", tmp_path / "export"))
    assert os.environ["MLFLOW_TRACKING_URI"] == store  # MLflow's model logging must not unset it
    (output,) = client.get_run(tracker.run_id).outputs.model_outputs
    model = client.get_logged_model(model_id)
    assert output.step == 2 and (model.tags["argbench.epoch"], model.tags["argbench.selection"]) == ("2", "selected")
    assert main(["export", tracker.run_id, "--to", str(tmp_path / "model"), "--epoch", "selected", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 2
    assert main(["export", tracker.run_id, "--to", str(tmp_path / "last"), "--epoch", "last"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"argbench: error: the model logged by MLflow run {tracker.run_id} holds epoch 2, the best")
    assert not (tmp_path / "last").exists()  # refused before anything was written
