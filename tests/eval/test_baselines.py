"""Zero-shot baselines through the CLI, tracked in a private SQLite MLflow store and compared like any run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.data.tasks import TASKS


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def evaluate_cli(capsys, *args) -> dict:
    assert cli.main(["eval", "--data", "sample", "--split", "test", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)["test"]


def latest(client: MlflowClient, name: str):
    (experiment,) = [e for e in client.search_experiments() if e.name == "argbench"]
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return runs[0]


def test_a_tracked_baseline_is_a_finished_run_with_the_printed_metrics_and_ranks(store, capsys, tmp_path):
    printed = evaluate_cli(capsys, "--encoder", "tfidf", "--track")

    run = latest(store, "tfidf")
    assert run.info.status == "FINISHED" and run.data.tags["group"] == "baselines"
    assert run.data.params["encoder"] == "tfidf" and run.data.params["split"] == "test"
    for task in TASKS:
        assert run.data.metrics[f"test/{task}/acc_at_1"] == pytest.approx(printed[task]["acc@1"])
        assert run.data.metrics[f"test/{task}/mrr"] == pytest.approx(printed[task]["mrr"])
    ranks = pd.read_csv(store.download_artifacts(run.info.run_id, "per_query/test.csv", str(tmp_path)))
    epa = ranks[ranks["task"] == "epa"]["rank"]
    assert (epa == 1).mean() == pytest.approx(printed["epa"]["acc@1"])  # the ranks behind the metric


def test_untracked_eval_logs_nothing(store, capsys):
    evaluate_cli(capsys, "--encoder", "tfidf")
    assert [e.name for e in store.search_experiments() if e.name == "argbench"] == []


def test_two_tracked_baselines_can_be_compared(store, capsys):
    tfidf = evaluate_cli(capsys, "--encoder", "tfidf", "--track")
    random = evaluate_cli(capsys, "--encoder", "tiny-random-bert", "--max-length", "32", "--track")
    assert latest(store, "zero_shot:tiny-random-bert").data.params["max_length"] == "32"

    assert cli.main(["compare", "tfidf", "zero_shot:tiny-random-bert", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["tasks"]) == list(TASKS)  # every task, paired query by query from the logged ranks
    for task, metrics in result["tasks"].items():
        assert (metrics["acc@1"]["a"], metrics["acc@1"]["b"]) == \
            pytest.approx((tfidf[task]["acc@1"], random[task]["acc@1"]))
