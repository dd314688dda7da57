"""Importing a run folder trained without MLflow: a real tiny training's folder, read back from a SQLite store."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.data.corpus import load_corpus
from argbench.experiments.run_import import RunFolderError, import_run, read_run_folder
from argbench.track.tracker import param_values
from argbench.train.selection import best, selected_epoch
from argbench.train.trainer import fit
from tests.factories import tiny_config

PRIMARY = "val/epa/acc_at_1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What `argbench train --out` leaves on a machine without MLflow: config.yaml, metrics.jsonl, checkpoint/."""
    out = tmp_path_factory.mktemp("gpu-box") / "run"
    fit(tiny_config(2), load_corpus("sample"), out_dir=out)
    return out


def runs(store: str, experiment: str) -> list:
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def test_an_imported_run_is_logged_like_a_tracked_one(run_dir, store):
    cfg, history = read_run_folder(run_dir)
    result = import_run(run_dir, name="with_relu", experiment="imported", tracking_uri=store,
                        tags={"device": "H100"})

    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "with_relu"
    assert run.data.tags["group"] == "norm"  # from the registry entry of that name
    assert run.data.tags["device"] == "H100" and run.data.tags["imported_from"] == str(run_dir.resolve())
    assert param_values(cfg).items() <= run.data.params.items()
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, PRIMARY)}
    assert logged == pytest.approx({m["epoch"]: m[PRIMARY] for m in history})
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "learning_curve.html"} <= artifacts
    assert result == {"run_id": run.info.run_id, "ablation": "with_relu", "epochs": 3,
                      "best": {PRIMARY: best(history, PRIMARY)}}
    # the selected epoch, as a tracked run records it
    chosen = selected_epoch(history, PRIMARY)
    assert (run.data.tags["selected_epoch"], run.data.tags["selection"]) == (str(chosen), f"best {PRIMARY}")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"best/{PRIMARY}")] == [
        (chosen, best(history, PRIMARY))]


def test_an_old_folder_with_nested_metrics_imports_under_the_same_names(run_dir, store, tmp_path):
    # metrics.jsonl as argbench wrote it before the flat names, and a config that spells the primary metric acc@1
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("checkpoint"))
    (old / "config.yaml").write_text((old / "config.yaml").read_text().replace("acc_at_1", "acc@1"))
    tasks = {"epa": {"acc@1": 0.25, "mrr": 0.5}, "sdoc": {"acc@1": 0.75, "mrr": 0.875}}
    rows = [{"epoch": 0, "loss": None, "negatives": None, "random_rate": None, "train_seq_per_s": None,
             "val": tasks, "val/dedup": {"epa": {"acc@1": 0.5, "mrr": 0.625}}, "val_rerank_acc@1": None,
             "epoch_seconds": 2.0},
            {"epoch": 1, "loss": {"total": 3.0, "triplet": 1.0}, "negatives": {"random": 0.8, "copy": None},
             "random_rate": 0.8, "train_seq_per_s": 10.0, "val": {"epa": {"acc@1": 0.5, "mrr": 0.75}},
             "val_rerank_acc@1": 0.125, "epoch_seconds": 4.0}]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = import_run(old, name="old_run", experiment="imported", tracking_uri=store)
    client = MlflowClient(store)
    history = {key: {m.step: m.value for m in client.get_metric_history(result["run_id"], key)}
               for key in client.get_run(result["run_id"]).data.metrics}
    assert history == {PRIMARY: {0: 0.25, 1: 0.5}, "val/epa/mrr": {0: 0.5, 1: 0.75}, "val/sdoc/acc_at_1": {0: 0.75},
                       "val/sdoc/mrr": {0: 0.875}, "val/dedup/epa/acc_at_1": {0: 0.5},
                       "val/dedup/epa/mrr": {0: 0.625}, "val/rerank/acc_at_1": {1: 0.125},
                       "train/loss": {1: 3.0}, "train/loss_triplet": {1: 1.0}, "negatives/random_frac": {1: 0.8},
                       "schedule/random_rate": {1: 0.8}, "perf/train_seq_per_s": {1: 10.0},
                       "perf/epoch_seconds": {0: 2.0, 1: 4.0},
                       # epoch 1 is selected: its validation metrics again as the run's result
                       f"best/{PRIMARY}": {1: 0.5}, "best/val/epa/mrr": {1: 0.75},
                       "best/val/rerank/acc_at_1": {1: 0.125}}
    assert result["best"] == {PRIMARY: 0.5}  # the old primary spelling reads as the new name


def damaged(run_dir, tmp_path, file: str, text: str):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint"))
    (copy / file).write_text(text)
    return copy


@pytest.mark.parametrize("file, text, message", [
    ("metrics.jsonl", '{"epoch": 0}\nnot json\n', r"metrics.jsonl, line 2: not JSON"),
    ("metrics.jsonl", '{"epoch": 1}\n{"epoch": 0}\n', r"line 2: epoch 0 after epoch 1"),
    ("metrics.jsonl", '{"epoch": "0"}\n', r"line 1: 'epoch' is '0'; expected an integer"),
    ("metrics.jsonl", '{"epoch": 0, "val/epa/acc_at_1": "high"}\n', r"line 1: val/epa/acc_at_1 is 'high'"),
    ("metrics.jsonl", '{"epoch": 0, "val": {"epa": {"acc@1": "high"}}}\n', r"line 1: val/epa/acc@1 is 'high'"),
    ("metrics.jsonl", "\n", r"no epochs"),
    ("config.yaml", "train:\n  epocs: 3\n", r"config.yaml.*epocs"),
])
def test_a_damaged_folder_is_refused_before_any_run_is_opened(run_dir, store, tmp_path, file, text, message):
    folder = damaged(run_dir, tmp_path, file, text)
    with pytest.raises(RunFolderError, match=message):
        import_run(folder, name="baseline", experiment="refused", tracking_uri=store)
    assert runs(store, "refused") == []


def test_cli_imports_and_reports_bad_input_with_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'cli.db'}")
    assert cli.main(["ablation", "import", str(run_dir), "--name", "baseline", "--tag", "device=cpu",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert MlflowClient().get_run(result["run_id"]).data.tags["device"] == "cpu"

    assert cli.main(["ablation", "import", str(tmp_path / "nowhere"), "--name", "baseline"]) == 2
    assert "nowhere/config.yaml: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything runs
        cli.main(["ablation", "import", str(run_dir), "--name", "baseline", "--tag", "device"])
    assert exit_.value.code == 2
    assert "argument --tag: 'device': expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("file, data, message", [
    ("metrics.jsonl", b'{"epoch": 0}\n{"epoch": 1, "note": "caf\xe9"}\n',
     "metrics.jsonl, line 2: not UTF-8 (byte 0xe9 at offset 38)"),
    ("config.yaml", b"train:\n  epochs: 3 # \xff\n", "config.yaml: <file>: not UTF-8 text (byte 0xff at offset 21)"),
])
def test_cli_names_an_undecodable_file_in_one_line(run_dir, tmp_path, capsys, monkeypatch, file, data, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    folder = damaged(run_dir, tmp_path, file, "")
    (folder / file).write_bytes(data)
    assert cli.main(["ablation", "import", str(folder), "--name", "baseline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "none").exists()  # no store was opened for it
