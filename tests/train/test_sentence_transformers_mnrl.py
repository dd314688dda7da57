"""The sentence-transformers MNRL baseline on the generated sample corpus with tiny-random-bert: the pairs it trains
on, the epoch it keeps (chosen on validation, saved, then alone evaluated on test), and ``argbench baseline mnrl``
tracked in MLflow and paired with another run by ``compare``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sentence_transformers import SentenceTransformer

from argbench import cli
from argbench.analysis.compare import compare
from argbench.config import PRIMARY, Config
from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.train import sentence_transformers_mnrl as mnrl
from argbench.train.trainer import _clean_training_split
from tests.conftest import single_torch_thread

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)

TINY = {"encoder": "tiny-random-bert", "batch_size": 16, "max_length": 32}
TINY_FLAGS = ["--encoder", "tiny-random-bert", "--batch-size", "16", "--max-length", "32"]
PROBE = ["Uniforms make pupils equal.", "Taxes on sugar cut obesity."]
PLANTED_VAL = [0.2, 0.6, 0.6]  # the validation primary planted per epoch: epoch 2 is the best, 3 only ties it


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sample")


@pytest.fixture(scope="module")
def planted(corpus, tmp_path_factory):
    """Three epochs whose validation primary is :data:`PLANTED_VAL`; records the dataset trained on, the split of
    every evaluation in order, and each validation epoch's embeddings of :data:`PROBE`."""
    seen = {"splits": [], "probe": []}
    real_evaluate, real_dataset = mnrl.evaluate_model, mnrl.pair_dataset

    def evaluate_model(model, split, batch_size=128):
        evaluation = real_evaluate(model, split, batch_size)
        seen["splits"].append(split.name)
        if split.name == "validation":
            seen["probe"].append(model.encode(PROBE, convert_to_tensor=True).cpu())
            evaluation.metrics["epa"]["acc@1"] = PLANTED_VAL[len(seen["probe"]) - 1]
        return evaluation

    def pair_dataset(split):
        seen["dataset"] = real_dataset(split)
        return seen["dataset"]

    out = tmp_path_factory.mktemp("st_mnrl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnrl, "evaluate_model", evaluate_model)
        patch.setattr(mnrl, "pair_dataset", pair_dataset)
        result = mnrl.train_mnrl(corpus, mnrl.MnrlSettings(**TINY, epochs=3, lr=1e-3), out)
    return result, seen


def test_it_trains_on_exactly_argbench_s_cleaned_training_pairs(planted, corpus):
    result, seen = planted
    split, counts = _clean_training_split(corpus, Config())  # what argbench's trainer trains on by default
    texts = split.args["text"].to_numpy()
    assert counts["corpus"] > counts["deduped"]  # the sample has copies to clean, so the check has teeth
    assert result.pair_counts == counts and result.train_pairs == len(split.query_idx) == len(seen["dataset"])
    assert seen["dataset"]["anchor"] == texts[split.points_idx].tolist()
    assert seen["dataset"]["positive"] == texts[split.counters_idx].tolist()


def test_the_kept_epoch_is_the_best_validation_epoch_and_test_is_evaluated_once_after(planted):
    result, seen = planted
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert [row[PRIMARY] for row in result.history] == PLANTED_VAL
    assert result.selected_epoch == 2  # the best, the earlier of the tie, and not the last
    assert seen["splits"] == ["validation"] * 3 + ["test"]
    assert not any(key.startswith("test/") for row in result.history for key in row)
    for row in result.history:
        assert np.isfinite(row["train/loss"]) and row["perf/epoch_seconds"] >= row["perf/train_seconds"] > 0
    assert not torch.allclose(seen["probe"][1], seen["probe"][2])  # epochs 2 and 3 differ: keeping 2 is visible


def test_the_saved_folder_is_the_selected_epoch_s_model_and_gives_the_test_result(planted, corpus):
    result, seen = planted
    loaded = SentenceTransformer(str(result.out_dir), device="cpu", local_files_only=True)
    assert loaded.max_seq_length == TINY["max_length"]
    torch.testing.assert_close(loaded.encode(PROBE, convert_to_tensor=True).cpu(), seen["probe"][1])
    again = mnrl.evaluate_model(loaded, corpus.split("test"))
    for task in TASKS:
        np.testing.assert_array_equal(again.ranks[task], result.test.ranks[task])
        np.testing.assert_array_equal(again.dedup_ranks[task], result.test.dedup_ranks[task])
    summary = json.loads((result.out_dir / mnrl.SUMMARY).read_text())
    assert summary["selected_epoch"] == 2 and summary["pair_counts"] == result.pair_counts


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -3}, {"lr": 0.0}, {"max_length": 0}])
def test_bad_settings_are_user_errors_naming_the_field(bad):
    (name,) = bad
    with pytest.raises(UserError, match=name):
        mnrl.MnrlSettings(**bad)


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--batch-size", "-3"], ["--lr", "0"]])
def test_bad_flags_exit_2_with_one_line(flags, capsys, tmp_path):
    assert cli.main(["baseline", "mnrl", "--data", "sample", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("argbench: error: ")
    assert flags[0].removeprefix("--").replace("-", "_") in err
    assert not any(tmp_path.iterdir())  # nothing trained


def test_tracked_run_holds_the_selected_epoch_and_pairs_with_another_run(tmp_path, monkeypatch, capsys,
                                                                         empty_mlflow_db, corpus):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli.main(["baseline", "mnrl", "--data", "sample", *TINY_FLAGS, "--epochs", "2", "--out",
                     str(tmp_path / "model"), "--track", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"selected_epoch", "seconds", "train_pairs", "history", "test", "test_dedup",
                            "test_unseen"}

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("argbench").experiment_id],
                                f"attributes.run_name = '{mnrl.RUN_NAME}'")
    epoch = printed["selected_epoch"]
    assert run.info.status == "FINISHED" and run.data.tags["group"] == "baselines"
    assert run.data.tags["selected_epoch"] == str(epoch) and run.data.tags["data.hash"] == corpus.hash
    assert run.data.params["encoder"] == "tiny-random-bert" and run.data.params["max_length"] == "32"
    assert run.data.params["train_pairs"] == str(printed["train_pairs"])

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    assert history(PRIMARY) == [(row["epoch"], pytest.approx(row[PRIMARY])) for row in printed["history"]]
    assert history("test/epa/acc_at_1") == [(epoch, pytest.approx(printed["test"]["epa"]["acc@1"]))]
    ranks = pd.read_csv(client.download_artifacts(run.info.run_id, "per_query/test.csv", str(tmp_path)))
    assert set(ranks["epoch"]) == {epoch}
    assert (ranks[ranks["task"] == "epa"]["rank"] == 1).mean() == pytest.approx(printed["test"]["epa"]["acc@1"])

    assert cli.main(["eval", "--encoder", "tfidf", "--data", "sample", "--split", "test", "--track"]) == 0
    result = compare("tfidf", mnrl.RUN_NAME, tracking_uri=uri, n_boot=200, n_perm=200)
    assert list(result["tasks"]) == list(TASKS)
    for task, metrics in result["tasks"].items():
        assert metrics["acc@1"]["n"] == len(corpus.split("test").query_idx)
        assert metrics["acc@1"]["b"] == pytest.approx(printed["test"][task]["acc@1"])
