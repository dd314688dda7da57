"""Links into the MLflow UI (argbench.track.ui, ``argbench link``): every one carries the query parameter that opens
the UI in model-training mode, the parameter is the one the installed UI reads, and the address is the tracking
server's or ``make ui``'s."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.track import ui

PARAM = "?workflowType=machine_learning"


def test_the_installed_ui_reads_the_mode_from_that_query_parameter():
    """MLflow's UI bundle: the workflow type comes from the page's ``workflowType`` parameter when it is one of the
    two known values, else from localStorage; "machine_learning" is the model-training value."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "\n".join(p.read_text(errors="replace") for p in bundle.glob("main.*.js"))
    assert 'MACHINE_LEARNING="machine_learning"' in text
    assert re.search(r'\.get\("workflowType"\);return \w+===\w+\.GENAI\|\|\w+===\w+\.MACHINE_LEARNING\?', text)
    assert ui.MODE == PARAM[1:]


def test_argbench_link_prints_the_experiment_and_run_pages(tmp_path, monkeypatch, capsys, empty_mlflow_db):
    db = tmp_path / "mlflow.db"
    db.write_bytes(empty_mlflow_db.read_bytes())
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("argbench", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(experiment, run_name="baseline").info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(ui.UI_URL_VARIABLE, raising=False)
    assert cli.main(["link"]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:5000/#/experiments/{experiment}{PARAM}"
    assert cli.main(["link", run, "--ui", "http://gpu-box:5001/"]) == 0
    assert capsys.readouterr().out.strip() == f"http://gpu-box:5001/#/experiments/{experiment}/runs/{run}{PARAM}"
    monkeypatch.setenv(ui.UI_URL_VARIABLE, "http://127.0.0.1:5123")
    assert ui.run_link(run) == f"http://127.0.0.1:5123/#/experiments/{experiment}/runs/{run}{PARAM}"
    assert cli.main(["link", "0" * 32]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_missing_store_gives_the_experiments_list_and_is_not_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    monkeypatch.delenv(ui.UI_URL_VARIABLE, raising=False)
    assert cli.main(["link"]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:5000/#/experiments{PARAM}"
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("uri", "root"), [("http://user:s3cret@mlflow.lab:5000/", "http://mlflow.lab:5000"),
                                           ("https://mlflow.lab/base", "https://mlflow.lab/base")])
def test_a_tracking_server_is_its_own_ui_and_its_password_is_left_out(uri, root):
    assert ui.ui_root(uri) == root
    assert ui.experiment_url("3", ui.ui_root(uri)) == f"{root}/#/experiments/3{PARAM}"
