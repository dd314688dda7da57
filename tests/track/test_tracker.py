"""MLflow tracking: a real tiny training logged to a SQLite store in tmp, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from argbench.config import flatten
from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from argbench.paths import PACKAGE_DIR
from argbench.track import tracker as tracking
from argbench.track.tracker import load_run_id, redact, save_run_id, tracked_run
from argbench.train.selection import selected_epoch
from argbench.train.trainer import fit
from tests.factories import tiny_config, trainer_metrics

KS = (1, 3, 5, 10)
LOSS = ("train/loss", "train/loss_triplet", "train/loss_ce_pos", "train/loss_ce_neg", "train/loss_in_batch")
NEGATIVES = ("negatives/point_frac", "negatives/counter_frac", "negatives/random_frac",
             "negatives/same_debate_frac", "negatives/same_theme_frac", "negatives/mean_distance",
             "negatives/copy_frac")
# Keys the trainer leaves None at epoch 0 (nothing trained yet) and keys logged at every epoch.
TRAINED_KEYS = (*LOSS, *NEGATIVES, "schedule/random_rate", "perf/train_seq_per_s")
EVAL_KEYS = (*(f"val/{t}/acc_at_{k}" for t in TASKS for k in KS), *(f"val/{t}/mrr" for t in TASKS),
             "val/rerank/acc_at_1", "perf/epoch_seconds")
# The dedup and unseen views of the trained run's validation split (argbench.data.copies; the sample's validation texts
# occur nowhere else, so every query is unseen).
VIEW_KEYS = tuple(f"val/{view}/{t}/{m}" for view in ("dedup", "unseen") for t in TASKS for m in ("acc_at_1", "mrr"))


# What mlflow.set_system_metrics_sampling_interval sets.
SAMPLING_INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def read_csv(client: MlflowClient, run_id: str, path: str, tmp_path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, str(tmp_path)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its schema takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sample")


@pytest.fixture(scope="module")
def trained(store, corpus, tmp_path_factory):
    """A 2-epoch tiny run logged with the tracker as the trainer's hook: (client, run_id, cfg, history, out_dir)."""
    cfg, out_dir = tiny_config(epochs=2), tmp_path_factory.mktemp("run")
    tags = {"ablation": "tiny", "group": "tests", "profile": "embedded",
            "store": "postgresql://argbench:hunter2@db.example/mlflow"}
    # no config=: the tracker takes it from the trainer's on_train_start info; system metrics sampled every 0.2 s
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SAMPLING_INTERVAL, "0.2")
        with tracked_run(run_name="tiny", experiment="tracking", tracking_uri=store, tags=tags, out_dir=out_dir,
                         log_model=True) as tracker:
            history = fit(cfg, corpus, [tracker], out_dir=out_dir)
            tracker.finish(history)
    return MlflowClient(store), tracker.run_id, cfg, history, out_dir


def test_trained_run_is_finished_with_every_metric_once_per_epoch(trained):
    client, run_id, _, history, _ = trained
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in (*EVAL_KEYS, *VIEW_KEYS):
        assert steps(client, run_id, key) == [0, 1, 2], key
    for key in TRAINED_KEYS:
        assert steps(client, run_id, key) == [1, 2], key
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert logged == pytest.approx({m["epoch"]: m["train/loss"] for m in history[1:]})
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "val/epa/acc_at_1")}
    assert logged == pytest.approx({m["epoch"]: m["val/epa/acc_at_1"] for m in history})


def test_trained_run_logs_mlflow_system_metrics(trained):
    client, run_id, _, _, _ = trained
    system = {key for key in client.get_run(run_id).data.metrics if key.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    assert steps(client, run_id, "system/cpu_utilization_percentage")[0] == 0


def test_resumed_run_continues_its_system_metric_steps(store, monkeypatch):
    monkeypatch.setenv(SAMPLING_INTERVAL, "0.1")
    client, key = MlflowClient(store), "system/cpu_utilization_percentage"
    with tracked_run(run_name="sampled", experiment="system", tracking_uri=store) as first:
        time.sleep(0.5)
    before = steps(client, first.run_id, key)
    with tracked_run(run_name="sampled", tracking_uri=store, resume_run_id=first.run_id):
        time.sleep(0.5)
    after = steps(client, first.run_id, key)
    assert before and before == list(range(len(before)))
    assert after[:len(before)] == before and after[len(before)] == before[-1] + 1  # no step logged twice


def test_trained_run_params_are_the_flattened_config(trained):
    client, run_id, cfg, _, _ = trained
    expected = {k: "none" if v is None else ",".join(v) if isinstance(v, list) else str(v)
                for k, v in flatten(cfg).items()}
    assert client.get_run(run_id).data.params == expected


def test_trained_run_tags_describe_the_run_and_hide_passwords(trained, corpus):
    client, run_id, cfg, _, _ = trained
    tags = client.get_run(run_id).data.tags
    assert {k: tags[k] for k in ("ablation", "group", "seed", "encoder", "data.hash", "profile", "device")} == {
        "ablation": "tiny", "group": "tests", "seed": str(cfg.train.seed), "encoder": "tiny-random-bert",
        "data.hash": corpus.hash, "profile": "embedded", "device": "cpu"}
    assert tags["data.source"] == corpus.source.describe()
    assert tags["mlflow.source.git.commit"] == tracking.git_commit() and "git.commit" not in tags
    assert tags["store"] == "postgresql://argbench:***@db.example/mlflow"
    assert tags["mlflow.runName"] == "tiny"


def rev_parse_head(repo) -> str:
    """The tracker's former hand-written lookup, kept as the reference for MLflow's."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def test_git_commit_is_the_checked_out_commit_of_the_package(tmp_path):
    assert tracking.git_commit() == rev_parse_head(PACKAGE_DIR)  # this checkout (or "unknown" outside one)
    assert tracking.git_commit(tmp_path) == rev_parse_head(tmp_path) == "unknown"


def test_trained_run_artifacts(trained, tmp_path, store, corpus):
    client, run_id, cfg, history, out_dir = trained
    listed = {f.path for folder in (None, "per_query", "per_query/last") for f in client.list_artifacts(run_id, folder)}
    assert {"config.yaml", "metrics.csv", "negatives.csv", "learning_curve.html", "per_query/val.csv",
            "per_query/last/val.csv"} <= listed
    curve = client.download_artifacts(run_id, "learning_curve.html", str(tmp_path))
    assert "cdn.plot.ly" in open(curve).read() and os.path.getsize(curve) < 100_000  # no inlined plotly.js
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith(tracking.artifact_root(store).as_uri())  # beside the store, not ./mlruns
    assert list(read_csv(client, run_id, "metrics.csv", tmp_path)["epoch"]) == [0, 1, 2]
    negatives = read_csv(client, run_id, "negatives.csv", tmp_path)
    assert sorted(set(negatives["epoch"])) == [1, 2] and len(negatives) == 2 * 5  # negatives.examples = 5
    chosen = selected_epoch(history, cfg.eval.primary)
    assert client.get_run(run_id).data.tags["selected_epoch"] == str(chosen)
    queries = len(corpus.split("validation").query_idx)
    for artifact, epoch in (("per_query/val.csv", chosen), ("per_query/last/val.csv", 2)):
        ranks = read_csv(client, run_id, artifact, tmp_path / artifact)
        assert len(ranks) == len(TASKS) * queries and set(ranks["task"]) == set(TASKS)
        assert ranks["rank"].min() >= 1 and set(ranks["epoch"]) == {epoch}
        assert (ranks["rank_dedup"] <= ranks["rank"]).all() and ranks["unseen"].all()
        # acc@1 recomputed from the per-query ranks equals the metric logged for that epoch
        epa = ranks[ranks["task"] == "epa"]
        assert (epa["rank"] == 1).mean() == pytest.approx(history[epoch]["val/epa/acc_at_1"])
    assert load_run_id(out_dir) == run_id


def test_trained_run_logs_its_corpus_as_a_dataset_input(trained, corpus):
    client, run_id, _, _, _ = trained
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("sample", corpus.hash, "local")
    assert json.loads(dataset.source) == {"uri": str(corpus.source.path)}
    frame = corpus.frame
    assert json.loads(dataset.profile)["test"] == {
        "arguments": int((frame["split"] == "test").sum()), "pairs": len(corpus.split("test").query_idx)}
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}


def test_trained_run_logs_its_selected_model_under_logged_models(trained):
    client, run_id, cfg, history, _ = trained
    run = client.get_run(run_id)
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    chosen = selected_epoch(history, cfg.eval.primary)
    assert (model.name, model.source_run_id, output.step) == ("model", run_id, chosen)
    assert (model.tags["argbench.epoch"], model.tags["argbench.selection"]) == (str(chosen), "selected")
    assert model.experiment_id == run.info.experiment_id and str(model.status) == "READY"
    (listed,) = client.search_logged_models([run.info.experiment_id])  # what the run page's "Logged models" asks
    assert listed.model_id == model.model_id
    assert {m.key for m in model.metrics} >= {"val/epa/acc_at_1"}  # the selected epoch's metrics travel with it


def test_experiments_are_created_as_model_training(trained, store):
    client, run_id, _, _, _ = trained
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before argbench set the kind gets it the next time argbench opens it
    bare = client.create_experiment("made-elsewhere")
    assert tracking.experiment_id(client, "made-elsewhere") == bare
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"


def test_failing_hook_marks_the_run_failed_with_the_error(store, corpus):
    class Broken:
        def on_train_start(self, info):
            raise RuntimeError("cannot reach postgresql://u:secret@db/x")

    with pytest.raises(RuntimeError):
        with tracked_run(run_name="broken", experiment="failures", tracking_uri=store) as tracker:
            fit(tiny_config(epochs=1), corpus, [tracker, Broken()])
    run = MlflowClient(store).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: cannot reach postgresql://u:***@db/x"


def test_error_tag_is_truncated(store):
    with pytest.raises(ValueError):
        with tracked_run(run_name="long", experiment="failures", tracking_uri=store) as tracker:
            raise ValueError("x" * 9000)
    assert len(MlflowClient(store).get_run(tracker.run_id).data.tags["error"]) == tracking.MAX_ERROR_CHARS


def test_keyboard_interrupt_marks_the_run_killed_and_keeps_what_was_logged(store):
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(run_name="stopped", experiment="failures", tracking_uri=store) as tracker:
            tracker.on_epoch_end(0, trainer_metrics(0))
            raise KeyboardInterrupt
    client = MlflowClient(store)
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert steps(client, tracker.run_id, "val/epa/acc_at_1") == [0]
    assert "metrics.csv" in {f.path for f in client.list_artifacts(tracker.run_id)}


def test_resume_continues_the_same_run_and_logs_each_epoch_once(store, corpus, tmp_path):
    class StopAfterFirstEpoch:  # runs after the trainer's checkpoint, as Ctrl-C between epochs would
        def on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                raise KeyboardInterrupt

    cfg = tiny_config(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(run_name="resumed", experiment="resume", tracking_uri=store, config=cfg,
                         out_dir=tmp_path) as first:
            fit(cfg, corpus, [first, StopAfterFirstEpoch()], out_dir=tmp_path)
    client = MlflowClient(store)
    assert client.get_run(first.run_id).info.status == "KILLED"
    with tracked_run(run_name="resumed", experiment="resume", tracking_uri=store, config=cfg, out_dir=tmp_path,
                     resume_run_id=load_run_id(tmp_path)) as second:
        second.finish(fit(cfg, corpus, [second], out_dir=tmp_path, resume=True), cfg)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert steps(client, first.run_id, "train/loss") == [1, 2, 3]
    assert steps(client, first.run_id, "val/epa/acc_at_1") == [0, 1, 2, 3]
    assert client.get_run(first.run_id).data.tags["resumed_from"] == "1"
    assert list(read_csv(client, first.run_id, "metrics.csv", tmp_path / "dl")["epoch"]) == [0, 1, 2, 3]
    negatives = read_csv(client, first.run_id, "negatives.csv", tmp_path / "dl")
    assert sorted(set(negatives["epoch"])) == [1, 2, 3]


def test_resumed_tracker_ignores_epochs_already_logged_and_backfills_missing_ones(store):
    with tracked_run(run_name="guard", experiment="resume", tracking_uri=store, system_metrics=False) as t:
        t.on_epoch_end(0, trainer_metrics(0))
    with tracked_run(run_name="guard", experiment="resume", tracking_uri=store, system_metrics=False,
                     resume_run_id=t.run_id) as resumed:
        with pytest.warns(UserWarning, match="no config"):
            resumed.on_train_start({"resumed_from": 1})
        resumed.on_epoch_end(0, trainer_metrics(0, acc=0.9))  # replayed epoch: ignored
        resumed.on_epoch_end(2, trainer_metrics(2))
        # epoch 1 was checkpointed but never reached MLflow; the history passed to finish has it
        resumed.finish([trainer_metrics(e) for e in range(3)])
    client = MlflowClient(store)
    assert steps(client, t.run_id, "perf/epoch_seconds") == [0, 1, 2]
    assert {m.step: m.value for m in client.get_metric_history(t.run_id, "val/epa/acc_at_1")} == {0: 0.5, 1: 0.5,
                                                                                                 2: 0.5}


def test_the_trainers_metrics_are_logged_under_their_own_names(tmp_path):
    metrics = {0: trainer_metrics(0), 1: trainer_metrics(1, acc=0.75)}
    with tracked_run(run_name="flat", experiment="tracking", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                     system_metrics=False) as tracker:
        for epoch, m in metrics.items():
            tracker.on_epoch_end(epoch, m)
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    logged = client.get_run(tracker.run_id).data.metrics  # the last step of each name
    assert {k: v for k, v in logged.items() if not k.startswith("best/")} == {k: v for k, v in metrics[1].items()
                                                                              if k != "epoch"}
    # epoch 1 is the selected one (val/epa/acc_at_1 0.75 > 0.5): its validation metrics again under best/
    assert {k: v for k, v in logged.items() if k.startswith("best/")} == {f"best/{k}": v for k, v in metrics[1].items()
                                                                          if k.startswith("val/")}
    assert steps(client, tracker.run_id, "train/loss") == [1] and steps(client, tracker.run_id, "val/epa/mrr") == [0, 1]


@pytest.mark.parametrize("text, expected", [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://u:p@ss@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("mysql://root:s3cr/et@localhost", "mysql://root:***@localhost"),
    ("failed: 'http://a:b@x.org/p' and https://c:d@y.org", "failed: 'http://a:***@x.org/p' and https://c:***@y.org"),
    ("https://host/api?user=me&password=abc&x=1", "https://host/api?user=me&password=***&x=1"),
    ("http://user@host:5000/path", "http://user@host:5000/path"),
    ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("no url here: a:b@c", "no url here: a:b@c"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_default_tracking_uri_follows_the_project_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ARGBENCH_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert tracking.artifact_root(uri) == tmp_path / "mlruns" / "artifacts"
    monkeypatch.setenv("ARGBENCH_PROJECT", str(tmp_path / "elsewhere"))
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path}/elsewhere/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.default_tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.artifact_root("http://127.0.0.1:5000") is None


def test_run_id_file_round_trip(tmp_path):
    assert load_run_id(tmp_path / "nothing") is None
    save_run_id(tmp_path / "run", "abc123")
    assert load_run_id(tmp_path / "run") == "abc123"


def test_nested_run_is_a_child_of_the_enclosing_run(store):
    with tracked_run(run_name="study", experiment="nested", tracking_uri=store, system_metrics=False) as parent:
        with tracked_run(run_name="trial-0", experiment="nested", tracking_uri=store, nested=True,
                         system_metrics=False) as child:
            pass
    client = MlflowClient(store)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).info.status == client.get_run(child.run_id).info.status == "FINISHED"


def test_resume_of_an_unknown_run_names_it(store):
    with pytest.raises(ValueError, match="0123456789abcdef0123456789abcdef"):
        with tracked_run(run_name="x", tracking_uri=store, resume_run_id="0123456789abcdef0123456789abcdef"):
            pass


def test_missing_psutil_skips_system_metrics_with_a_warning(store, monkeypatch):
    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match="psutil"):
        with tracked_run(run_name="no-psutil", experiment="failures", tracking_uri=store) as tracker:
            pass
    assert MlflowClient(store).get_run(tracker.run_id).info.status == "FINISHED"


class AtEpoch:
    """Hook placed after the tracker: calls ``action(tracker)`` at the end of epoch ``epoch``."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            self.action()


def test_artifacts_are_in_the_store_as_soon_as_each_epoch_ends(store, corpus, tmp_path):
    cfg, client, seen = tiny_config(epochs=3), MlflowClient(store), {}

    def look():  # what a kill -9 right now would leave
        seen["metrics"] = read_csv(client, tracker.run_id, "metrics.csv", tmp_path / "m")
        seen["negatives"] = read_csv(client, tracker.run_id, "negatives.csv", tmp_path / "n")
        seen["ranks"] = read_csv(client, tracker.run_id, "per_query/last/val.csv", tmp_path / "r")
        seen["files"] = {f.path for f in client.list_artifacts(tracker.run_id)}

    with tracked_run(run_name="live", experiment="live", tracking_uri=store, config=cfg) as tracker:
        tracker.finish(fit(cfg, corpus, [tracker, AtEpoch(2, look)]), cfg)
    assert list(seen["metrics"]["epoch"]) == [0, 1, 2]
    assert sorted(set(seen["negatives"]["epoch"])) == [1, 2]
    assert set(seen["ranks"]["epoch"]) == {2}
    assert {"config.yaml", "learning_curve.html"} <= seen["files"]


def test_a_resumed_run_that_finishes_loses_the_error_of_a_failed_session(store, corpus, tmp_path):
    cfg, client = tiny_config(epochs=3), MlflowClient(store)

    def broken():
        raise RuntimeError("disk unplugged")

    with pytest.raises(RuntimeError):
        with tracked_run(run_name="flaky", experiment="resume", tracking_uri=store, config=cfg,
                         out_dir=tmp_path) as first:
            fit(cfg, corpus, [first, AtEpoch(1, broken)], out_dir=tmp_path)
    assert client.get_run(first.run_id).data.tags["error"] == "RuntimeError: disk unplugged"
    with tracked_run(run_name="flaky", experiment="resume", tracking_uri=store, config=cfg, out_dir=tmp_path,
                     resume_run_id=first.run_id) as second:
        second.finish(fit(cfg, corpus, [second], out_dir=tmp_path, resume=True), cfg)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert list(read_csv(client, run.info.run_id, "metrics.csv", tmp_path / "dl")["epoch"]) == [0, 1, 2, 3]


def test_resume_from_a_damaged_checkpoint_leaves_the_run_as_it_was(store, tmp_path, monkeypatch, capsys):
    from argbench import cli
    from argbench.experiments.runner import run_ablation

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    sets = ["model.encoder=tiny-random-bert", "model.max_length=32", "data.max_train_pairs=16", "train.epochs=2"]
    with pytest.raises(KeyboardInterrupt):
        run_ablation("baseline", sets, data="sample", out=tmp_path, experiment="damaged", progress=False,
                     hooks=[AtEpoch(1, lambda: (_ for _ in ()).throw(KeyboardInterrupt))])
    run_id = load_run_id(tmp_path / "seed42")
    state = tmp_path / "seed42" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    status = cli.main(["ablation", "run", "baseline", "--data", "sample", "--experiment", "damaged", "--out",
                       str(tmp_path), "--resume", *(a for s in sets for a in ("--set", s))])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith(f"argbench: error: {state}: truncated (1000 of the ")
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and "error" not in run.data.tags


# --- the selected epoch: hand-made evaluations with known answers ------------------------------------------------

QUERIES = 20
# Validation acc@1 per epoch peaks at epoch 2; test keeps rising to epoch 4 (test must never choose the epoch).
PLANTED_VAL = {0: 0.1, 1: 0.3, 2: 0.6, 3: 0.5, 4: 0.4}
PLANTED_TEST = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.5, 4: 0.9}


def planted_ranks(epoch: int, split: str) -> SimpleNamespace:
    """An Evaluation-shaped object whose epa ranks say which epoch and split made them: every rank is
    epoch + 1 (val) or epoch + 11 (test)."""
    return SimpleNamespace(ranks={"epa": np.full(QUERIES, epoch + (1 if split == "val" else 11))})


def planted_epoch(tracker, epoch: int, val: dict = PLANTED_VAL, extra: dict | None = None) -> None:
    """What the trainer does at the end of an epoch: on_evaluation per split, then on_epoch_end."""
    for split in ("val", "test"):
        tracker.on_evaluation(epoch, split, planted_ranks(epoch, split))
    tracker.on_epoch_end(epoch, {**trainer_metrics(epoch, val[epoch]), "test/epa/acc_at_1": PLANTED_TEST[epoch],
                                 **(extra or {})})


def planted_run(store: str, name: str, epochs, **kw):
    with tracked_run(run_name=name, experiment="selection", tracking_uri=store, system_metrics=False) as tracker:
        for epoch in epochs:
            planted_epoch(tracker, epoch, **kw)
    return tracker.run_id


def epa_ranks(client, run_id, artifact, tmp_path) -> set:
    table = read_csv(client, run_id, artifact, tmp_path / artifact)
    return {(int(e), int(r)) for e, r in zip(table["epoch"], table["rank"])}


def test_the_best_validation_epoch_is_the_result_and_test_is_never_consulted(store, tmp_path):
    client = MlflowClient(store)
    run_id = planted_run(store, "peak", range(5))
    run = client.get_run(run_id)
    assert (run.data.tags["selected_epoch"], run.data.tags["selection"]) == ("2", "best val/epa/acc_at_1")
    assert epa_ranks(client, run_id, "per_query/test.csv", tmp_path) == {(2, 13)}
    assert epa_ranks(client, run_id, "per_query/val.csv", tmp_path) == {(2, 3)}
    assert epa_ranks(client, run_id, "per_query/last/test.csv", tmp_path) == {(4, 15)}
    assert epa_ranks(client, run_id, "per_query/last/val.csv", tmp_path) == {(4, 5)}
    best = {k.removeprefix("best/"): v for k, v in run.data.metrics.items() if k.startswith("best/")}
    expected = {k: v for k, v in trainer_metrics(2, 0.6).items() if k.startswith("val/")}
    assert best == {**expected, "test/epa/acc_at_1": 0.3}  # epoch 2's test value, not the better 0.9 of epoch 4
    assert steps(client, run_id, "best/test/epa/acc_at_1") == [0, 1, 2]  # each new selection, at its epoch
    assert run.data.metrics["test/epa/acc_at_1"] == 0.9  # the plain names keep every epoch


def test_a_tie_keeps_the_earlier_epoch(store, tmp_path):
    client = MlflowClient(store)
    run_id = planted_run(store, "tie", range(4), val={0: 0.1, 1: 0.5, 2: 0.2, 3: 0.5})
    assert client.get_run(run_id).data.tags["selected_epoch"] == "1"
    assert epa_ranks(client, run_id, "per_query/test.csv", tmp_path) == {(1, 12)}


def test_without_the_primary_metric_the_last_evaluated_epoch_stands_in(tmp_path):
    store = f"sqlite:///{tmp_path / 'm.db'}"
    with tracked_run(run_name="no-val", experiment="selection", tracking_uri=store, system_metrics=False) as tracker:
        for epoch in range(3):
            tracker.on_evaluation(epoch, "test", planted_ranks(epoch, "test"))
            tracker.on_epoch_end(epoch, {"epoch": epoch, "test/epa/acc_at_1": PLANTED_TEST[epoch]})
    client = MlflowClient(store)
    run = client.get_run(tracker.run_id)
    assert (run.data.tags["selected_epoch"], run.data.tags["selection"]) == ("2", "last (primary not evaluated)")
    assert epa_ranks(client, tracker.run_id, "per_query/test.csv", tmp_path) == {(2, 13)}
    assert run.data.metrics["best/test/epa/acc_at_1"] == PLANTED_TEST[2]


def test_the_second_stage_describes_the_selected_model(store, tmp_path):
    """The trainer reranks the selected epoch's model at the final epoch: its metrics arrive with epoch 4."""
    client = MlflowClient(store)
    with tracked_run(run_name="reranked", experiment="selection", tracking_uri=store, system_metrics=False) as tracker:
        for epoch in range(4):
            planted_epoch(tracker, epoch)
        tracker.on_evaluation(4, "test/reranked", SimpleNamespace(ranks={"epa": np.ones(QUERIES, dtype=int)}))
        planted_epoch(tracker, 4, extra={"test/reranked/epa/acc_at_1": 1.0})
    assert {(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "best/test/reranked/epa/acc_at_1")} \
        == {(2, 1.0)}
    assert epa_ranks(client, tracker.run_id, "per_query/test/reranked.csv", tmp_path) == {(4, 1)}
    assert "per_query/last/test/reranked.csv" not in {
        f.path for f in client.list_artifacts(tracker.run_id, "per_query/last/test")}
    assert epa_ranks(client, tracker.run_id, "per_query/test.csv", tmp_path) == {(2, 13)}


def test_a_resumed_run_keeps_the_selection_made_before_the_interruption(store, tmp_path):
    client = MlflowClient(store)
    history = []
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(run_name="resumed-best", experiment="selection", tracking_uri=store,
                         system_metrics=False) as first:
            for epoch in range(4):
                planted_epoch(first, epoch)
                history.append({**trainer_metrics(epoch, PLANTED_VAL[epoch]),
                                "test/epa/acc_at_1": PLANTED_TEST[epoch]})
            raise KeyboardInterrupt
    with tracked_run(run_name="resumed-best", experiment="selection", tracking_uri=store, system_metrics=False,
                     resume_run_id=first.run_id) as second:
        with pytest.warns(UserWarning, match="no config"):
            second.on_train_start({"resumed_from": 3, "history": history})
        planted_epoch(second, 4)  # worse on validation than epoch 2: the selection stands
        second.finish()
    run = client.get_run(first.run_id)
    assert run.data.tags["selected_epoch"] == "2"
    assert epa_ranks(client, first.run_id, "per_query/test.csv", tmp_path) == {(2, 13)}  # from the first session
    assert epa_ranks(client, first.run_id, "per_query/last/test.csv", tmp_path) == {(4, 15)}
    assert [m.step for m in client.get_metric_history(first.run_id, "best/val/epa/acc_at_1")] == [0, 1, 2]
    assert list(read_csv(client, first.run_id, "metrics.csv", tmp_path / "m")["epoch"]) == [0, 1, 2, 3, 4]
