"""One rule picks the runs behind a name, for ``report --table``, ``study report``, ``compare`` and the report page:
after a two-seed grid study, all of them pool the study's two cells of an entry (not an older single run of the same
name), give the same numbers, and say why a member is not compared. The report's default selection is the trained
runs, a study's cells under its parent's name, the parent no run of its own.

The store is a private SQLite MLflow store with planted per-query ranks (tests.factories.log_run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.analysis import report, significance
from argbench.analysis.compare import compare
from argbench.search.grid_plan import GridSpec
from argbench.search.study_table import cell_runs, grid_table
from tests.factories import log_run

EXPERIMENT = "pick"
BASE = "learning_recipe_in_batch"
MEMBER = f"with_relu@{BASE}"
STUDY = "norm@lrib-2seeds"
N = 30


def ranks(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {task: rng.integers(1, 6, N) for task in ("sdoc", "epa")}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An old top-level run of the base (one seed), a top-level ``with_layernorm`` (trained over baseline), then a
    study parent with two cells each of the base and of ``with_relu`` over it, and a KILLED cell of the base."""
    folder = tmp_path_factory.mktemp("picking")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
    kw = {"tmp_dir": folder / "ranks"}
    old = log_run(client, EXPERIMENT, BASE, ranks(100), **kw)
    log_run(client, EXPERIMENT, "with_layernorm", ranks(101), **kw)
    parent = log_run(client, EXPERIMENT, f"study-{STUDY}", None, status="RUNNING", **kw)
    cells = {BASE: [log_run(client, EXPERIMENT, BASE, ranks(s), parent=parent, **kw) for s in (1, 2)],
             MEMBER: [log_run(client, EXPERIMENT, MEMBER, ranks(s), parent=parent, **kw) for s in (3, 4)]}
    log_run(client, EXPERIMENT, BASE, ranks(5), parent=parent, status="KILLED", **kw)  # a dead worker's cell
    return uri, old, parent, cells


def test_report_table_study_report_and_compare_pool_the_same_cells(store, monkeypatch, capsys):
    uri, old, parent, cells = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli.main(["report", "--table", "--group", "norm", "--base", BASE, "--experiment", EXPERIMENT,
                     "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    spec = GridSpec(study=STUDY, base=BASE, members=["with_relu"], seeds=[42, 43], experiment=EXPERIMENT,
                         tracking_uri=uri)
    study_runs = cell_runs(spec, parent)
    assert study_runs == {BASE: cells[BASE], "with_relu": cells[MEMBER]}  # FINISHED cells only, oldest first
    study = grid_table(spec, study_runs, "official")
    pair = compare(BASE, MEMBER, experiment=EXPERIMENT, tracking_uri=uri)
    assert pair["runs"] == {"a": cells[BASE], "b": cells[MEMBER]}  # not the older single run of the base
    rows = {(r["ablation"], r["task"]): r for r in table["rows"]}
    for row in study["rows"]:
        mine = rows[("with_relu", row["task"])]
        theirs = pair["tasks"][row["task"]]["acc@1"]
        assert (mine["seeds_a"], mine["seeds_b"], row["seeds_a"], row["seeds_b"]) == (2, 2, 2, 2)
        for key in ("a", "b", "delta"):
            assert mine[key] == pytest.approx(row[key]) == pytest.approx(theirs[key])
    expected_a = np.mean([(ranks(s)["epa"] == 1).mean() for s in (1, 2)])
    assert rows[("with_relu", "epa")]["a"] == pytest.approx(expected_a)  # the two seeds' queries pooled


def test_a_member_not_compared_says_why(store, monkeypatch, capsys):
    uri, *_ = store
    result = significance.group_table("norm", base=BASE, experiment=EXPERIMENT, tracking_uri=uri)
    assert result["missing"] == ["with_layernorm", "with_layernorm_relu"]
    assert result["not_compared"] == {"with_layernorm": f"trained over baseline, not over {BASE}",
                                      "with_layernorm_relu": "no FINISHED run"}
    text = significance.format_table(result)
    assert (f"not compared: with_layernorm (trained over baseline, not over {BASE}), with_layernorm_relu (no "
            "FINISHED run)") in text


def test_the_reports_default_selection_is_the_trained_runs_under_their_study(store):
    uri, old, parent, cells = store
    runs = report.load_runs(EXPERIMENT, tracking_uri=uri)
    shown = [(r.name, r.heading, r.seeds) for r in runs]
    assert shown == [(BASE, "", [old]), ("with_layernorm", "", [runs[1].run_id]),
                     (BASE, f"study-{STUDY}", cells[BASE]), (MEMBER, f"study-{STUDY}", cells[MEMBER])]
    assert parent not in {r.run_id for r in runs}  # the parent is a heading, not a run
    assert runs[2].label == f"{BASE} · study-{STUDY} (mean of 2 seeds)"  # the name twice on the page: whose
    assert runs[3].label == f"{MEMBER} (mean of 2 seeds)"
    (named,) = report.load_runs(EXPERIMENT, [BASE], tracking_uri=uri)
    assert named.seeds == cells[BASE]  # by name: the newest place it was trained, as compare takes it


def test_run_ids_joined_by_commas_are_one_system_of_those_seeds(store, monkeypatch, capsys):
    """Seeds run as separate top-level runs (here the old base run and the top-level with_layernorm run, standing in
    for two seeds of one system) are pooled per query when listed; a list with a run that did not finish, or with
    something that is no run id, is one line and exit 2."""
    uri, old, parent, cells = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    other = report.load_runs(EXPERIMENT, tracking_uri=uri)[1].run_id
    listed = f"{old},{other}"
    assert cli.main(["compare", listed, ",".join(cells[MEMBER]), "--experiment", EXPERIMENT, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == {"a": [old, other], "b": cells[MEMBER]}
    pooled = np.mean([(ranks(s)["epa"] == 1).mean() for s in (100, 101)])
    assert result["tasks"]["epa"]["acc@1"]["a"] == pytest.approx(pooled)
    assert result["tasks"]["epa"]["acc@1"]["b"] == pytest.approx(
        compare(BASE, MEMBER, experiment=EXPERIMENT, tracking_uri=uri)["tasks"]["epa"]["acc@1"]["b"])

    killed = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id],
                                           "attributes.status = 'KILLED'")[0].info.run_id
    for bad, says in ((f"{old},{killed}", f"run {killed} ({BASE}) is KILLED, not FINISHED"),
                      (f"{old},seed43", "'seed43' is not a run id"),
                      (f"{old},{old}", "a run is listed twice")):
        assert cli.main(["compare", bad, MEMBER, "--experiment", EXPERIMENT]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err
