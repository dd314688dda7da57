"""Hyperparameter search: spaces are checked before any trial; a study runs, resumes, prunes and survives Ctrl-C
and killed workers with every trial an MLflow child run; PostgreSQL studies are shared by worker processes.

Trials train tiny-random-bert on the generated sample corpus for 2 epochs (a few seconds each). Where a test needs
a known ordering of trial values (pruning), a first hook overwrites the primary metric with values chosen by
construction, so the real trainer, tracker and pruner run but the outcome cannot flake.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from argbench import cli
from argbench.cli.search import format_summary
from argbench.data.corpus import load_corpus
from argbench.search.hyperparameter_search import run_search
from argbench.search.space import SearchSpaceError, load_space
from argbench.search.storage import DEFAULT_STORAGE, storage_url
from argbench.train import trainer
from tests.conftest import PG_PASSWORD, free_port

OVERRIDES = ["model.encoder=tiny-random-bert", "data.max_train_pairs=16", "model.max_length=32", "train.epochs=2",
             "data.eval_splits=[validation]"]
SPACE_KEYS = {"loss.margin", "train.lr", "negatives.step"}
PRIMARY = "val/epa/acc_at_1"  # eval.primary's default
EXPERIMENT = "search-test"


def stores(folder: Path) -> dict:
    return {"storage": f"sqlite:///{folder / 'optuna.db'}", "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}


@pytest.fixture
def folder(tmp_path, empty_mlflow_db) -> Path:
    """A test's store folder: an empty MLflow store (mlflow.db) and room for optuna.db."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


def search(folder: Path, **kwargs) -> dict:
    return run_search(data="sample", overrides=OVERRIDES, experiment=EXPERIMENT, **stores(folder), **kwargs)


def mlflow_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def children(runs: list, parent_id: str) -> dict:
    """{trial number: run} of the child runs of ``parent_id``."""
    return {int(r.data.tags["trial.number"]): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}


def trials_of(folder_or_url, study: str) -> list:
    url = folder_or_url if isinstance(folder_or_url, str) else stores(folder_or_url)["storage"]
    storage = optuna.storages.RDBStorage(storage_url(url))
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    finally:
        storage.engine.dispose()  # close the connections now (the kill test polls many times)


class MetricOverride:
    """First hook of a run: sets the primary metric of every epoch >= 1 to ``value`` (the dict is shared with the
    hooks after it and with the history), and optionally raises KeyboardInterrupt / sends SIGINT at an epoch."""

    def __init__(self, value=None, interrupt_at=None, sigint_at=None):
        self.value, self.interrupt_at, self.sigint_at = value, interrupt_at, sigint_at

    def on_epoch_end(self, epoch, metrics):
        if self.value is not None and epoch >= 1:
            metrics[PRIMARY] = self.value
        if epoch == self.interrupt_at:
            raise KeyboardInterrupt
        if epoch == self.sigint_at:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in a terminal does


@pytest.fixture
def fit_with(monkeypatch):
    """fit_with(lambda call_index: MetricOverride(...)): every trial's fit gets that hook first."""
    real_fit, calls = trainer.fit, []

    def install(make_hook):
        def fit(cfg, corpus, hooks=(), **kwargs):
            calls.append(cfg)
            return real_fit(cfg, corpus, [make_hook(len(calls) - 1), *hooks], **kwargs)
        monkeypatch.setattr(trainer, "fit", fit)
        return calls
    return install


# --- search spaces -------------------------------------------------------------------------------------------------

def test_default_space_holds_the_three_documented_ranges():
    space = load_space("default")
    assert set(space.params) == SPACE_KEYS
    margin, lr, step = space.params["loss.margin"], space.params["train.lr"], space.params["negatives.step"]
    assert (margin.type, margin.low, margin.high, margin.log) == ("float", 0.1, 2.0, False)
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-6, 1e-4, True)
    assert (step.type, step.low, step.high, step.log) == ("float", 0.0, 0.05, False)


def write_space(tmp_path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("params:\n" + body)
    return path


@pytest.mark.parametrize("body, expected", [
    ("  loss.margn: {type: float, low: 0.1, high: 2.0}\n", ["params.loss.margn", "unknown config key", "loss.margin"]),
    ("  train.lr: {type: float, low: 1.0e-4, high: 1.0e-6}\n", ["params.train.lr", "0.0001", "expected low < high"]),
    ("  loss.margin: {type: float, low: 1.0, high: 1.0}\n", ["params.loss.margin", "low 1.0 >= high 1.0"]),
    ("  negatives.step: {type: float, low: 0.0, high: 0.05, log: true}\n",
     ["params.negatives.step", "log: true with low 0.0", "expected low > 0"]),
    ("  train.lr: {type: float, low: -1.0, high: 1.0e-4, log: true}\n", ["params.train.lr", "low -1.0"]),
    ("  model.fusion: {type: categorical, choices: []}\n", ["params.model.fusion", "choices []", "non-empty list"]),
    ("  model.fusion: {type: categorical, choices: [concatenated, cls_only]}\n",
     ["params.model.fusion", "'cls_only' is not allowed", "only_cls"]),
    ("  loss.margin: {type: float, low: 0.0, high: 2.0}\n", ["params.loss.margin", "0.0", "> 0"]),
    ("  model.layernorm: {type: float, low: 0.0, high: 1.0}\n", ["params.model.layernorm", "categorical"]),
    ("  train.batch_size: {type: int, low: 4, high: 16.5}\n", ["params.train.batch_size", "16.5", "an integer"]),
    ("  loss.margin: {type: normal, low: 0.1, high: 2.0}\n", ["params.loss.margin", "float, int, categorical"]),
    ("  loss.margin: {type: float, low: 0.1, hi: 2.0}\n", ["params.loss.margin", "unexpected hi"]),
])
def test_bad_space_entry_names_file_key_value_and_expectation(tmp_path, body, expected):
    path = write_space(tmp_path, body)
    with pytest.raises(SearchSpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    for part in expected:
        assert part in str(err.value)


def test_space_accepts_yaml_1_1_exponent_strings_int_steps_and_choices(tmp_path):
    path = write_space(tmp_path, "  train.lr: {type: float, low: 1e-6, high: 1e-4, log: true}\n"
                                 "  train.batch_size: {type: int, low: 4, high: 16, step: 4}\n"
                                 "  model.layernorm: {type: categorical, choices: [true, false]}\n")
    params = load_space(path).params
    assert (params["train.lr"].low, params["train.lr"].high) == (1e-6, 1e-4)
    assert (params["train.batch_size"].low, params["train.batch_size"].step) == (4, 4)
    assert params["model.layernorm"].choices == (True, False)


def test_missing_space_lists_the_known_ones():
    with pytest.raises(SearchSpaceError, match="no such search space.*default"):
        load_space("no_such_space")


def test_bad_space_fails_before_any_storage_or_run_is_created(tmp_path):
    path = write_space(tmp_path, "  loss.margn: {type: float, low: 0.1, high: 2.0}\n")
    with pytest.raises(SearchSpaceError):
        search(tmp_path, space=str(path), trials=1)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("body, problem", [
    ("  loss.margin: {type: float, low: 0.1, high: [\n", "not valid YAML"),
    ("  loss.margn: {type: float, low: 0.1, high: 2.0}\n", "unknown config key"),
])
def test_cli_search_with_a_bad_space_exits_2_naming_the_file(tmp_path, capsys, body, problem):
    path = write_space(tmp_path, body)
    argv = ["search", "--space", str(path), "--data", "sample", "--storage", stores(tmp_path)["storage"],
            "--tracking-uri", stores(tmp_path)["tracking_uri"], "--experiment", EXPERIMENT]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and problem in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()  # no trial, no run


def test_postgresql_urls_use_psycopg_3():
    assert storage_url("postgresql://u:pw@127.0.0.1:5432/db") == "postgresql+psycopg://u:pw@127.0.0.1:5432/db"
    assert storage_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert storage_url(None).endswith("/mlruns/optuna.db")


# --- one study -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_search(tmp_path_factory, empty_mlflow_db):
    """A 4-trial study (median pruner: no pruning before 5 complete trials) and where it is stored."""
    folder = tmp_path_factory.mktemp("search")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    return search(folder, trials=4), folder


def test_search_runs_every_trial_with_the_space_params(first_search):
    summary, folder = first_search
    assert summary["study"] == "baseline-default" and summary["n_trials"] == {"COMPLETE": 4}
    trials = trials_of(folder, "baseline-default")
    assert [t.number for t in trials] == [0, 1, 2, 3]
    space = load_space("default").params
    for t in trials:
        assert set(t.params) == SPACE_KEYS
        assert all(space[k].low <= v <= space[k].high for k, v in t.params.items())
    best = max(trials, key=lambda t: t.value)
    assert (summary["best_trial"], summary["best_value"], summary["best_params"]) == \
        (best.number, best.value, best.params)
    assert summary["seconds_per_trial"] > 0
    study = optuna.load_study(study_name="baseline-default", storage=storage_url(stores(folder)["storage"]))
    assert study.metric_names == [PRIMARY]
    assert study.user_attrs == {"ablation": "baseline", "base": "base.yaml", "data.hash": load_corpus("sample").hash,
                                "space": "default", "space.file": str(load_space("default").path)}


def test_each_trial_is_a_child_run_with_per_epoch_metrics_and_its_params(first_search):
    summary, folder = first_search
    uri = stores(folder)["tracking_uri"]
    runs = children(mlflow_runs(uri), summary["parent_run_id"])
    trials = {t.number: t for t in trials_of(folder, "baseline-default")}
    assert set(runs) == set(trials)
    client = MlflowClient(uri)
    for number, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial.state"] == "COMPLETE" and run.data.tags["study"] == "baseline-default"
        history = client.get_metric_history(run.info.run_id, PRIMARY)
        assert [m.step for m in history] == [0, 1, 2]
        # the trial's value is its best trained epoch; the untrained epoch 0 does not count
        assert trials[number].value == pytest.approx(max(m.value for m in history if m.step > 0))
        for key, value in trials[number].params.items():  # the trial trained with what Optuna suggested
            assert float(run.data.params[key]) == pytest.approx(value)
        assert trials[number].user_attrs["mlflow_run_id"] == run.info.run_id


def test_parent_run_holds_best_params_and_the_study_figures(first_search):
    summary, folder = first_search
    client = MlflowClient(stores(folder)["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.run_name == "search-baseline-default" and parent.info.status == "FINISHED"
    assert {k: float(v) for k, v in parent.data.params.items() if k.startswith("best.")} == \
        pytest.approx({f"best.{k}": v for k, v in summary["best_params"].items()})
    assert parent.data.metrics["best_value"] == pytest.approx(summary["best_value"])
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {f"figures/{n}.html" for n in
                       ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")}


def test_running_again_continues_the_study(first_search, tmp_path):
    _, folder = first_search
    for name in ("optuna.db", "mlflow.db"):  # a copy: the module's study stays as the other tests expect
        shutil.copy(folder / name, tmp_path / name)
    before = trials_of(folder, "baseline-default")
    summary = search(tmp_path, trials=2)
    after = trials_of(tmp_path, "baseline-default")
    assert summary["n_trials"] == {"COMPLETE": 6} and summary["trials_run"] == 2
    assert [t.params for t in after[:4]] == [t.params for t in before]
    # the sampler is re-seeded past the existing trials, so the new ones are not replays of the first ones
    assert all(new.params != old.params for new in after[4:] for old in before)
    assert set(children(mlflow_runs(stores(tmp_path)["tracking_uri"]), summary["parent_run_id"])) == {4, 5}


def test_journal_file_storage_runs_a_study(folder):
    summary = run_search(data="sample", overrides=OVERRIDES, experiment=EXPERIMENT, trials=1,
                         storage=f"journal:///{folder / 'journal.log'}",
                         tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    assert summary["n_trials"] == {"COMPLETE": 1} and (folder / "journal.log").stat().st_size > 0


def test_cli_shortcuts_come_before_set_and_the_summary_says_how_to_watch(folder, fit_with, capsys):
    calls = fit_with(lambda k: MetricOverride(value=0.5))
    sets = [arg for item in OVERRIDES if not item.startswith(("model.encoder", "train.epochs"))
            for arg in ("--set", item)]
    urls = stores(folder)
    assert cli.main(["search", "--trials", "1", "--data", "sample", "--storage", urls["storage"], "--tracking-uri",
                     urls["tracking_uri"], "--experiment", EXPERIMENT, "--encoder", "tiny-random-bert",
                     "--epochs", "5", *sets, "--set", "train.epochs=1"]) == 0
    (cfg,) = calls
    assert (cfg.model.encoder, cfg.train.epochs) == ("tiny-random-bert", 1)  # an explicit --set wins
    out = capsys.readouterr().out
    (parent,) = [r for r in mlflow_runs(urls["tracking_uri"]) if r.data.tags.get("search") == "parent"]
    (trial,) = trials_of(folder, "baseline-default")
    assert f"study baseline-default  storage {urls['storage']}" in out and "trials: 1 complete (1 run now" in out
    assert f"best: 0.5 (trial 0) loss.margin={trial.params['loss.margin']:.4g}" in out
    assert f"MLflow parent run {parent.info.run_id}: http://127.0.0.1:5000/#/experiments/" \
           f"{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in out
    assert f"watch it: optuna-dashboard {urls['storage']}" in out and "make dashboard" not in out


def test_a_profile_lies_under_the_sets_and_the_searched_values_and_is_recorded(folder, fit_with):
    calls = fit_with(lambda k: MetricOverride(value=0.5))
    urls = stores(folder)
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    assert cli.main(["search", "--trials", "1", "--data", "sample", "--profile", "smoke", "--storage",
                     urls["storage"], "--tracking-uri", urls["tracking_uri"], "--experiment", EXPERIMENT, *sets]) == 0
    (cfg,) = calls
    (trial,) = trials_of(folder, "baseline-default")
    assert cfg.eval.at_start is False  # the smoke profile's key (embedded and base.yaml evaluate at the start)
    assert (cfg.model.max_length, cfg.train.epochs) == (32, 2)  # --set wins over the profile
    assert cfg.loss.margin == trial.params["loss.margin"]  # the searched value wins over both
    study = optuna.load_study(study_name="baseline-default", storage=urls["storage"])
    assert study.user_attrs["profile"] == "smoke"
    (parent,) = [r for r in mlflow_runs(urls["tracking_uri"]) if r.data.tags.get("search") == "parent"]
    assert parent.data.tags["profile"] == "smoke"


def test_summary_text_without_a_complete_trial_on_the_default_storage():
    text = format_summary({"study": "s", "storage": DEFAULT_STORAGE, "n_trials": {"FAIL": 2}, "best_value": None,
                           "best_params": None, "best_trial": None, "parent_run_id": "abc", "trials_run": 2,
                           "seconds_per_trial": None})
    assert text.splitlines() == [f"study s  storage {DEFAULT_STORAGE}", "trials: 2 fail (2 run now, no trial finished)",
                                 "best: none yet (no complete trial)", "MLflow parent run abc",
                                 f"watch it: make dashboard, or optuna-dashboard {DEFAULT_STORAGE}"]


# --- pruning and interruption --------------------------------------------------------------------------------------

def test_trials_below_the_median_are_pruned_and_tagged(folder, fit_with):
    # Trial k reports 1.0 - 0.2 k at every epoch: trials 0 and 1 complete (startup), then 0.6 and 0.4 fall below
    # the median of the completed trials at epoch 1 (0.9), so trials 2 and 3 are pruned there.
    fit_with(lambda k: MetricOverride(value=1.0 - 0.2 * k))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    summary = search(folder, trials=4, pruner=pruner)
    states = {t.number: t.state.name for t in trials_of(folder, "baseline-default")}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}
    assert summary["best_value"] == pytest.approx(1.0) and summary["n_trials"] == {"COMPLETE": 2, "PRUNED": 2}
    uri = stores(folder)["tracking_uri"]
    runs = children(mlflow_runs(uri), summary["parent_run_id"])
    assert {n: r.data.tags["trial.state"] for n, r in runs.items()} == states
    pruned = runs[2].info.run_id
    assert [m.step for m in MlflowClient(uri).get_metric_history(pruned, PRIMARY)] == [0, 1]  # stopped at epoch 1


def assert_nothing_left_running(folder: Path, study: str) -> dict:
    trials = {t.number: t.state.name for t in trials_of(folder, study)}
    runs = mlflow_runs(stores(folder)["tracking_uri"])
    assert "RUNNING" not in trials.values()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    return trials


def test_ctrl_c_in_a_trial_fails_it_and_kills_its_runs(folder, fit_with):
    fit_with(lambda k: MetricOverride(interrupt_at=1 if k == 1 else None))
    with pytest.raises(KeyboardInterrupt):
        search(folder, trials=3)
    assert assert_nothing_left_running(folder, "baseline-default") == {0: "COMPLETE", 1: "FAIL"}
    runs = mlflow_runs(stores(folder)["tracking_uri"])
    (parent,) = [r for r in runs if r.data.tags.get("search") == "parent"]
    child = children(runs, parent.info.run_id)[1]
    assert parent.info.status == "KILLED"
    assert (child.info.status, child.data.tags["trial.state"]) == ("KILLED", "FAIL")


def test_ctrl_c_with_worker_threads_stops_every_trial(folder, fit_with):
    calls = fit_with(lambda k: MetricOverride(sigint_at=1 if k == 0 else None))
    with pytest.raises(KeyboardInterrupt):
        search(folder, trials=6, jobs=2)
    trials = assert_nothing_left_running(folder, "baseline-default")
    assert trials[0] == "FAIL" and set(trials.values()) <= {"COMPLETE", "FAIL"} and len(trials) < 6
    assert all(cfg.train.num_threads == max(1, (os.cpu_count() or 1) // 2) for cfg in calls)
    runs = mlflow_runs(stores(folder)["tracking_uri"])
    (parent,) = [r for r in runs if r.data.tags.get("search") == "parent"]
    assert parent.info.status == "KILLED" and children(runs, parent.info.run_id)[0].info.status == "KILLED"


# --- several worker processes on PostgreSQL ------------------------------------------------------------------------

def worker(url: str, study: str, tracking_uri: str, trials: int, *extra: str) -> subprocess.Popen:
    """``python -m argbench search`` adding ``trials`` trials to ``study``; the summary JSON comes on stdout."""
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    return subprocess.Popen([sys.executable, "-m", "argbench", "search", "--json", "--data", "sample", "--storage", url,
                             "--study", study, "--trials", str(trials), "--tracking-uri", tracking_uri,
                             "--experiment", EXPERIMENT, *sets, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def finished(process: subprocess.Popen, timeout: float = 300) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


@pytest.mark.slow
def test_two_worker_processes_share_one_postgres_study(postgres_url, folder):
    # one MLflow store per worker: SQLite is no store for two writing processes (a server would be shared)
    shutil.copy(folder / "mlflow.db", folder / "mlflow1.db")
    uris = [f"sqlite:///{folder / name}" for name in ("mlflow.db", "mlflow1.db")]
    workers = [worker(postgres_url, "shared", uri, 3) for uri in uris]
    summaries = [finished(w) for w in workers]
    trials = trials_of(postgres_url, "shared")
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    for s in summaries:
        assert s["trials_run"] == 3 and PG_PASSWORD not in json.dumps(s) and "argbench:***@" in s["storage"]


@pytest.mark.slow
def test_a_killed_workers_trial_fails_and_is_retried(postgres_url, folder):
    tracking_uri = stores(folder)["tracking_uri"]
    fast_heartbeat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    doomed = worker(postgres_url, "killed", tracking_uri, 1, *fast_heartbeat)
    deadline, running = time.monotonic() + 240, []
    while not running:  # a trial inside its objective: heartbeat thread started, MLflow run opened
        assert doomed.poll() is None and time.monotonic() < deadline, "the worker never started a trial"
        time.sleep(0.2)
        try:
            running = [t for t in trials_of(postgres_url, "killed")
                       if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
        except KeyError:  # study not created yet
            pass
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()  # reap it and close its pipes
    time.sleep(3)  # longer than the grace period since its last heartbeat
    finished(worker(postgres_url, "killed", tracking_uri, 1, *fast_heartbeat))
    trials = {t.number: t for t in trials_of(postgres_url, "killed")}
    killed = trials[running[0].number]
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.state.name == "FAIL"
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    client = MlflowClient(tracking_uri)
    dead_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert (dead_run.info.status, dead_run.data.tags["trial.state"]) == ("KILLED", "FAIL")
    assert client.get_run(killed.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    assert [r.info.run_name for r in mlflow_runs(tracking_uri) if r.info.status == "RUNNING"] == []


# --- failures and stale trials -------------------------------------------------------------------------------------

def test_an_unreachable_storage_is_one_line_without_the_password(folder, capsys):
    url = f"postgresql://argbench:{PG_PASSWORD}@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    status = cli.main(["search", "--storage", url, "--data", "sample",
                       "--tracking-uri", stores(folder)["tracking_uri"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and PG_PASSWORD not in err[0]
    assert err[0].startswith("argbench: error: cannot open the Optuna storage postgresql+psycopg://argbench:***@"
                             "127.0.0.1:")
    assert "Connection refused" in err[0]


def running_trial(url: str, study: str):
    try:
        return [t for t in trials_of(url, study) if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
    except KeyError:  # study not created yet
        return []


@pytest.mark.slow
def test_sigkill_of_a_worker_leaves_no_running_trial_or_run_after_the_next_search(folder):
    """The next search fails the dead worker's trial at once (its pid is gone), without waiting for the 30 s
    heartbeat grace period, retries it, and closes its MLflow runs."""
    url, tracking_uri = stores(folder)["storage"], stores(folder)["tracking_uri"]
    doomed = worker(url, "dead", tracking_uri, 1)
    deadline, running = time.monotonic() + 240, []
    while not running:
        assert doomed.poll() is None and time.monotonic() < deadline, "the worker never started a trial"
        time.sleep(0.2)
        running = running_trial(url, "dead")
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    summary = search(folder, study_name="dead", trials=1)  # the next command, well inside the grace period
    trials = {t.number: t for t in trials_of(url, "dead")}
    killed = trials[running[0].number]
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.state.name == "FAIL" and len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert summary["trials_run"] == 1
    client = MlflowClient(tracking_uri)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).data.tags["trial.state"] == "FAIL"
    assert [r.info.run_name for r in mlflow_runs(tracking_uri) if r.info.status == "RUNNING"] == []


def every_artifact(client: MlflowClient, run_id: str, scratch: Path, path: str = "") -> list[bytes]:
    contents = []
    for item in client.list_artifacts(run_id, path or None):
        if item.is_dir:
            contents += every_artifact(client, run_id, scratch, item.path)
        else:
            contents.append(Path(client.download_artifacts(run_id, item.path, str(scratch))).read_bytes())
    return contents


@pytest.mark.slow
def test_the_postgres_password_is_in_no_param_tag_artifact_or_log_line(postgres_url, folder, tmp_path):
    tracking_uri = stores(folder)["tracking_uri"]
    process = worker(postgres_url, "secret", tracking_uri, 1)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    runs = mlflow_runs(tracking_uri)
    assert len(runs) == 2  # the search's parent and its trial
    client = MlflowClient(tracking_uri)
    for run in runs:
        texts = [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
        assert not [t for t in texts if PG_PASSWORD in t], run.info.run_name
        artifacts = every_artifact(client, run.info.run_id, tmp_path / run.info.run_id)
        assert artifacts and not [a for a in artifacts if PG_PASSWORD.encode() in a], run.info.run_name
    assert "argbench:***@127.0.0.1" in json.loads(stdout)["storage"]
    assert PG_PASSWORD not in stdout + stderr


def test_label_study_names_the_objective_and_records_what_was_searched():
    from argbench.search.storage import label_study

    study = optuna.create_study(direction="maximize")
    attrs = {"ablation": "baseline", "base": "base.yaml", "data.hash": "51e0a5ece8ddfa6b", "space": "default"}
    label_study(study, "val/epa/acc@1", attrs)
    label_study(study, "val/epa/acc@1", attrs)  # a continued study: labelled again, unchanged
    assert study.metric_names == ["val/epa/acc@1"] and study.user_attrs == attrs
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert "value_val/epa/acc@1" in study.trials_dataframe().columns  # named, not "value"
