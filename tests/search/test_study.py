"""The grid study (`argbench study`): every cell exactly once with a child run each, the significance table on the
parent, a rerun that runs nothing, a killed worker's cell retried, and workers sharing one study on PostgreSQL and
a real `mlflow server`.

Cells train tiny-random-bert on the generated sample corpus for one epoch over 16 training pairs (a few seconds).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from argbench.search.grid_plan import GridError, GridSpec, plan
from argbench.search.parent_run import open_study
from argbench.search.storage import storage_url
from argbench.search.study import run_study
from tests.conftest import PG_PASSWORD, free_port

TINY = ["model.encoder=tiny-random-bert", "data.max_train_pairs=16", "model.max_length=32", "train.epochs=1",
        "data.eval_splits=[validation,test]"]
BASE = "learning_recipe_in_batch"
EXPERIMENT = "grid-test"
REPO = Path(__file__).resolve().parent.parent


def spec_for(folder: Path, members=("with_relu", "with_layernorm"), seeds: int = 2, storage: str | None = None,
             tracking_uri: str | None = None, **kw) -> GridSpec:
    return plan(list(members), base=BASE, seeds=seeds, overrides=TINY, data="sample", experiment=EXPERIMENT,
                     storage=storage or f"sqlite:///{folder / 'optuna.db'}",
                     tracking_uri=tracking_uri or f"sqlite:///{folder / 'mlflow.db'}", **kw)


def study_trials(spec: GridSpec) -> list:
    storage = optuna.storages.RDBStorage(storage_url(spec.storage))
    try:
        return optuna.load_study(study_name=spec.study, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def child_runs(spec: GridSpec, parent: str) -> list:
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=1000)


def worker(spec: GridSpec, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m argbench study`` on spec's grid, summary JSON on stdout."""
    sets = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, "-m", "argbench", "study", *spec.members, "--base", spec.base, "--seeds",
               str(len(spec.seeds)), "--data", "sample", "--storage", spec.storage, "--study", spec.study,
               "--experiment", EXPERIMENT, "--json", *sets, *extra]
    if spec.tracking_uri:
        command += ["--tracking-uri", spec.tracking_uri]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def killed_mid_cell(spec: GridSpec, *extra: str, wait_s: float = 300) -> optuna.trial.FrozenTrial:
    """Start a worker on spec's grid and SIGKILL it once a cell is inside its objective (heartbeat thread started,
    MLflow run opened); returns that cell's trial as it was then."""
    doomed = worker(spec, *extra)
    deadline, running = time.monotonic() + wait_s, []
    while not running:
        assert doomed.poll() is None and time.monotonic() < deadline, "the worker never started a cell"
        time.sleep(0.2)
        try:
            running = [t for t in study_trials(spec) if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
        except KeyError:  # study not created yet
            pass
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    return running[0]


def finished(process: subprocess.Popen, timeout: float = 400) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


# --- planning ------------------------------------------------------------------------------------------------------

def test_plan_keeps_the_distinct_members_and_seeds_from_the_base_config(tmp_path):
    spec = plan(group="norm", base=BASE, seeds=3, data="sample", overrides=["train.seed=7"])
    assert spec.members == ["with_layernorm", "with_layernorm_relu", "with_relu"]  # alias without_… left out
    assert spec.seeds == [7, 8, 9] and spec.profile == "embedded"
    assert spec.study == f"norm@{BASE}-3seeds" and len(spec.cells) == 4 * 3


@pytest.mark.parametrize("kwargs, problem", [
    ({"names": ["learning_recipe", "shared_encoder"], "base": BASE}, "every entry equals the base"),
    ({"names": [], "group": None}, "give registry entry names or --group"),
    ({"names": [], "group": "norms"}, "no such group"),
    ({"names": ["with_relu"], "seeds": 0}, "--seeds 0"),
])
def test_a_grid_with_nothing_to_compare_is_a_user_error(kwargs, problem):
    names = kwargs.pop("names")
    with pytest.raises(GridError, match=problem):
        plan(names, data="sample", **kwargs)


# --- a whole study with two worker processes ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    spec = spec_for(folder)
    first = run_study(spec, jobs=2)
    first["trials_after"] = len(study_trials(spec))
    return spec, first, run_study(spec, jobs=2)


@pytest.mark.slow
def test_every_cell_runs_exactly_once_as_a_child_run(two_jobs):
    spec, first, _ = two_jobs
    all_trials = study_trials(spec)
    trials = [t for t in all_trials if "duplicate_of" not in t.user_attrs]
    # two workers asking for the last open cell at once: the later trial ends PRUNED without training
    assert {t.state.name for t in all_trials if t not in trials} <= {"PRUNED"}
    assert len(spec.cells) == 6 and first["ran_now"] == 6
    assert sorted((t.params["entry"], t.params["seed"]) for t in trials) == sorted(spec.cells)
    assert {t.state.name for t in trials} == {"COMPLETE"}
    children = child_runs(spec, first["parent_run_id"])
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == sorted(
        [BASE] * 2 + ["with_layernorm@" + BASE] * 2 + ["with_relu@" + BASE] * 2)
    by_id = {r.info.run_id: r for r in children}
    client = MlflowClient(spec.tracking_uri)
    for t in trials:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        tags = run.data.tags
        assert (tags["entry"], tags["seed"], tags["base"], tags["study"]) == \
            (t.params["entry"], str(t.params["seed"]), BASE, spec.study)
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/epa/acc_at_1")] == [0, 1]
        assert {"test.csv", "val.csv"} <= {Path(a.path).name for a in client.list_artifacts(run.info.run_id,
                                                                                          "per_query")}


@pytest.mark.slow
def test_the_table_is_on_the_parent_and_in_the_summary(two_jobs):
    spec, first, _ = two_jobs
    assert (first["cells"], first["complete"], first["failed"]) == (6, 6, 0)
    rows = first["table"]
    views = ("official", "dedup", "unseen")
    assert {(r["member"], r["view"]) for r in rows} == {(m, v) for m in ("with_relu", "with_layernorm") for v in views}
    assert len(rows) == 2 * 8 * 3 and all({"task", "delta", "ci", "p_holm"} <= set(r) for r in rows)
    assert all(r["seeds_a"] == 2 and r["seeds_b"] == 2 for r in rows)  # seeds pooled per system
    client = MlflowClient(spec.tracking_uri)
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == spec.study
    folder = Path(client.download_artifacts(parent.info.run_id, "significance"))
    csv = pd.read_csv(folder / "official.csv")
    official = [r for r in rows if r["view"] == "official"]
    assert list(csv["ablation"]) == [r["member"] for r in official]
    assert csv["p_holm"].tolist() == pytest.approx([r["p_holm"] for r in official])
    assert {"official.csv", "dedup.csv", "unseen.csv"} <= {p.name for p in folder.iterdir()}
    assert "with_layernorm" in (folder / "official.html").read_text()


@pytest.mark.slow
def test_running_again_runs_nothing_new(two_jobs):
    spec, first, second = two_jobs
    assert second["ran_now"] == 0 and second["complete"] == 6
    assert second["parent_run_id"] == first["parent_run_id"]
    assert len(study_trials(spec)) == first["trials_after"]  # no trial asked for, not even a duplicate
    assert len(child_runs(spec, first["parent_run_id"])) == 6
    assert second["table"] == first["table"]


@pytest.mark.slow
def test_report_reads_the_grid_from_the_study_and_another_grid_is_refused(two_jobs, capsys):
    from argbench import cli

    spec, first, _ = two_jobs
    code = cli.main(["study", "report", spec.study, "--storage", spec.storage, "--tracking-uri", spec.tracking_uri,
                     "--experiment", EXPERIMENT, "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["table"] == first["table"]
    code = cli.main(["study", "with_relu", "--base", BASE, "--seeds", "2", "--study", spec.study, "--data", "sample",
                     "--storage", spec.storage, "--tracking-uri", spec.tracking_uri, "--experiment", EXPERIMENT,
                     *[a for item in TINY for a in ("--set", item)]])
    assert code == 2 and "holds another grid" in capsys.readouterr().err


@pytest.mark.slow
def test_the_table_pairs_the_selected_epochs_and_report_epoch_last_makes_its_own(two_jobs, capsys):
    """Official acc@1 of the base is the mean over its cells of what each logged: best/ at the selected epochs,
    the plain name's last value at the last epochs; the last epochs' tables go to significance/last/."""
    from argbench import cli

    spec, first, _ = two_jobs
    code = cli.main(["study", "report", spec.study, "--storage", spec.storage, "--tracking-uri", spec.tracking_uri,
                     "--experiment", EXPERIMENT, "--epoch", "last", "--json"])
    last = json.loads(capsys.readouterr().out)
    assert code == 0 and (first["epoch"], last["epoch"]) == ("selected", "last")
    client = MlflowClient(spec.tracking_uri)
    base = [r.data.metrics for r in child_runs(spec, first["parent_run_id"]) if r.data.tags["entry"] == BASE]
    for result, prefix in ((first, "best/"), (last, "")):
        official = [r for r in result["table"] if r["view"] == "official"]
        for row in official:
            assert row["a"] == pytest.approx(sum(m[f"{prefix}test/{row['task']}/acc_at_1"] for m in base) / len(base))
    folder = Path(client.download_artifacts(first["parent_run_id"], "significance"))
    assert {"official.csv", "dedup.csv", "unseen.csv"} <= {p.name for p in (folder / "last").iterdir()}
    assert pd.read_csv(folder / "official.csv")["a"].tolist() == pytest.approx(
        [r["a"] for r in first["table"] if r["view"] == "official"])  # the selected epochs' table is kept


def test_an_entry_edited_after_the_study_was_made_is_refused_naming_the_key(tmp_path, monkeypatch):
    # The study stores every entry's resolved config: cells run that, and a later start whose registry resolves
    # otherwise stops before training anything (exit 2), so one study never mixes two configs under one name.
    import shutil

    from argbench import paths
    from argbench.experiments import registry

    folder = tmp_path / "registry"
    shutil.copytree(paths.packaged_ablations() / "profiles", folder / "profiles")
    shutil.copy(paths.packaged_ablations() / "base.yaml", folder / "base.yaml")
    (folder / "b.yaml").write_text("group: g\nquestion: base?\nmodel:\n  pooling: mean\n")
    (folder / "m.yaml").write_text("group: g\nquestion: member?\nmodel:\n  relu: true\n")
    monkeypatch.setenv(registry.ENV_VAR, str(folder))
    settings = dict(base="b", seeds=1, overrides=TINY, data="sample", experiment=EXPERIMENT,
                    storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = plan(["m"], **settings)
    assert spec.configs["m"]["model"]["relu"] is True and spec.configs["b"]["model"]["relu"] is False
    storage = optuna.storages.RDBStorage(storage_url(spec.storage))
    try:
        open_study(spec, storage)
        open_study(plan(["m"], **settings), storage)  # unchanged: joins the study
        (folder / "m.yaml").write_text("group: g\nquestion: member?\nmodel:\n  relu: true\n  layernorm: true\n")
        with pytest.raises(GridError, match=r"entry m: model\.layernorm was False, now True since the study"):
            open_study(plan(["m"], **settings), storage)
    finally:
        storage.engine.dispose()


# --- a worker killed mid-cell --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_workers_cell_fails_and_the_next_worker_retries_it(tmp_path):
    spec = spec_for(tmp_path, members=("with_relu",), seeds=1)
    fast_heartbeat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    running = killed_mid_cell(spec, *fast_heartbeat, wait_s=240)
    time.sleep(3)  # longer than the grace period since its last heartbeat
    summary = finished(worker(spec, *fast_heartbeat))
    trials = {t.number: t for t in study_trials(spec)}
    killed = trials[running.number]
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.state.name == "FAIL"
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    assert (summary["complete"], summary["failed"], summary["ran_now"]) == (2, 0, 2)  # the retry and the other cell
    client = MlflowClient(spec.tracking_uri)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    assert len(summary["table"]) == 8 * 3  # one member × 8 tasks × 3 views


# --- two workers, PostgreSQL storage, a real MLflow tracking server ------------------------------------------------

@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port over a SQLite store, artifacts proxied to a temporary folder."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
                               str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            break
        except Exception:  # noqa: BLE001 - not listening yet
            assert server.poll() is None, server.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 120 s"
            time.sleep(1)
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgres_and_a_tracking_server(postgres_url, mlflow_server, tmp_path):
    spec = spec_for(tmp_path, members=("with_relu",), seeds=2, storage=postgres_url, tracking_uri=mlflow_server)
    summaries = [finished(w) for w in [worker(spec), worker(spec)]]
    trials = [t for t in study_trials(spec) if "duplicate_of" not in t.user_attrs]
    assert sorted((t.params["entry"], t.params["seed"]) for t in trials) == sorted(spec.cells)
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert sum(s["ran_now"] for s in summaries) == 4 and all(s["ran_now"] >= 1 for s in summaries)
    assert summaries[0]["parent_run_id"] == summaries[1]["parent_run_id"]
    assert len(child_runs(spec, summaries[0]["parent_run_id"])) == 4
    assert PG_PASSWORD not in json.dumps(summaries)
    done = [s for s in summaries if s["table"]]
    assert done and len(done[-1]["table"]) == 8 * 3  # the worker that saw the last cell done made the table
