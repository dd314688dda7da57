"""argbench.analysis.significance and the ``compare`` / ``report --table`` commands.

Two private SQLite stores: ``planted`` holds hand-logged per-query ranks for the registry group ``norm`` with known
differences (so the p-values, the Holm correction and the significance marks are known by construction); ``trained``
holds real runs of tiny-random-bert on the sample corpus made by argbench.experiments.runner (about 40 s, built
once), checked against what the tracker logged and against properties every table must have.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.analysis import report, significance
from argbench.analysis.compare import compare
from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from tests.factories import log_run

N = 200
STATS = {"n_boot": 300, "n_perm": 1_000}
PLANTED = "planted"


def _first(n_first: int) -> np.ndarray:
    """Ranks of N queries: the counter first (rank 1) on the first `n_first`, second everywhere else."""
    ranks = np.full(N, 2)
    ranks[:n_first] = 1
    return ranks


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Tracking URI of a store where, on epa, the baseline ranks the counter first on 40 queries, with_layernorm
    on those and 5 more, with_relu on 30 more; on sdoc all three agree. with_layernorm_relu only FAILED; the alias
    without_layernorm_relu has a run that differs hugely (it must be skipped, not compared)."""
    root = tmp_path_factory.mktemp("planted")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(PLANTED, artifact_location=(root / "artifacts").as_uri())
    sdoc = np.random.default_rng(0).integers(1, 4, size=N)
    for name, epa, status in [("baseline", _first(40), "FINISHED"), ("with_layernorm", _first(45), "FINISHED"),
                              ("with_relu", _first(70), "FINISHED"), ("with_layernorm_relu", _first(90), "FAILED"),
                              ("without_layernorm_relu", _first(150), "FINISHED")]:
        log_run(client, PLANTED, name, {"sdoc": sdoc, "epa": epa}, status=status, tmp_dir=root)
    return uri


def planted_table(uri: str, **kw) -> dict:
    return significance.group_table("norm", experiment=PLANTED, tracking_uri=uri, **STATS, **kw)


def test_group_table_on_planted_differences(planted):
    result = planted_table(planted)
    assert {k: result[k] for k in ("group", "baseline", "split", "metric", "missing")} == {
        "group": "norm", "baseline": "baseline", "split": "test", "metric": "acc@1",
        "missing": ["with_layernorm_relu"]}
    rows = result["rows"]
    assert [(r["ablation"], r["task"]) for r in rows] == [
        ("with_layernorm", "sdoc"), ("with_layernorm", "epa"), ("with_relu", "sdoc"), ("with_relu", "epa")]
    sdoc = rows[0]["a"]
    assert [v for r in rows for v in (r["a"], r["b"], r["delta"])] == pytest.approx(
        [sdoc, sdoc, 0.0, 40 / N, 45 / N, 5 / N, sdoc, sdoc, 0.0, 40 / N, 70 / N, 30 / N])
    # Exact McNemar (one seed each): k discordant queries, all favouring the member -> p = 2 * 0.5**k.
    assert [r["p_value"] for r in rows] == pytest.approx([1.0, 2 * 0.5 ** 5, 1.0, 2 * 0.5 ** 30])
    # Holm over the 4 rows: the smallest p times 4, the next times 3, then capped at 1.
    assert [r["p_holm"] for r in rows] == pytest.approx([1.0, 3 * 2 * 0.5 ** 5, 1.0, 4 * 2 * 0.5 ** 30])
    assert [r["significant"] for r in rows] == [False, False, False, True]
    assert {(r["seeds_a"], r["seeds_b"], r["n"]) for r in rows} == {(1, 1, N)}
    assert json.loads(json.dumps(result)) == result


def test_group_table_holm_family_is_what_is_shown(planted):
    epa_only = planted_table(planted, tasks=["epa"])
    assert [(r["ablation"], r["task"]) for r in epa_only["rows"]] == [("with_layernorm", "epa"), ("with_relu", "epa")]
    assert [r["p_holm"] for r in epa_only["rows"]] == pytest.approx([2 * 0.5 ** 5, 2 * 2 * 0.5 ** 30])
    mrr = planted_table(planted, metric="mrr")
    # MRR per query is 1 or 1/2 here: 30 queries gain 1/2 each for with_relu.
    assert mrr["rows"][3]["delta"] == pytest.approx(30 * 0.5 / N)


def test_group_table_user_errors(planted):
    with pytest.raises(significance.ComparisonError, match="metric 'acc@5': expected one of acc@1, mrr"):
        planted_table(planted, metric="acc@5")
    with pytest.raises(significance.ComparisonError, match=r"tasks \['nope'\] were not logged"):
        planted_table(planted, tasks=["nope"])
    with pytest.raises(significance.UnknownRun, match="no FINISHED run named 'nobody'"):
        planted_table(planted, baseline="nobody")
    with pytest.raises(ValueError, match="no ablation in group 'nrom'"):
        significance.group_table("nrom", experiment=PLANTED, tracking_uri=planted)


def test_group_tables_keeps_groups_with_runs(planted):
    tables = significance.group_tables(experiment=PLANTED, tracking_uri=planted, tasks=["epa"], **STATS)
    assert [t["group"] for t in tables] == ["norm"]


def test_format_table_and_figures(planted):
    result = planted_table(planted)
    lines = significance.format_table(result).splitlines()
    assert "norm" in lines[0] and "Holm over the 4 comparisons" in lines[0]
    body = {(line.split()[0], line.split()[1]): line for line in lines[2:6]}
    assert set(body) == {("with_layernorm", "sdoc"), ("with_layernorm", "epa"), ("with_relu", "sdoc"),
                         ("with_relu", "epa")}
    assert [key for key, line in body.items() if line.endswith("*")] == [("with_relu", "epa")]
    assert "+0.150" in body[("with_relu", "epa")]  # delta 30 / 200
    assert lines[-1] == "not compared: with_layernorm_relu (no FINISHED run)"

    fig = significance.figure(result)
    assert [t.name for t in fig.data] == ["with_layernorm", "with_relu"]
    relu = fig.data[1]
    row = result["rows"][3]
    assert list(relu.x) == ["sdoc", "epa"] and relu.y[1] == pytest.approx(row["delta"])
    assert relu.error_y.array[1] == pytest.approx(row["ci"][1] - row["delta"])
    assert relu.error_y.arrayminus[1] == pytest.approx(row["delta"] - row["ci"][0])
    assert list(relu.marker.symbol) == ["circle", "star"]
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(0, 0)]  # the zero line
    figure = significance.table_figure(result)
    table = figure.data[0]
    assert "official view" in figure.layout.title.text  # the HTML page says which view it shows
    assert list(table.cells.values[0]) == ["with_layernorm"] * 2 + ["with_relu"] * 2
    assert [p.endswith("*") for p in table.cells.values[-1]] == [False, False, False, True]  # p_holm, starred


def test_cli_report_table_and_compare_errors(planted, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", planted)
    assert cli.main(["report", "--table", "--group", "norm", "--experiment", PLANTED, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["ablation"], r["task"]) for r in printed["rows"]] == [
        (r["ablation"], r["task"]) for r in planted_table(planted)["rows"]]
    assert printed["missing"] == ["with_layernorm_relu"]
    assert cli.main(["report", "--table", "--experiment", PLANTED, "--metric", "mrr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("norm: mrr on test at the selected epochs,") and "with_relu" in out
    with pytest.raises(SystemExit) as stopped:  # argparse's choices: usage and one error line, exit 2
        cli.main(["report", "--table", "--experiment", PLANTED, "--epoch", "best"])
    assert stopped.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err

    assert cli.main(["compare", "baseline", "with_rleu", "--experiment", PLANTED]) == 2
    assert "no FINISHED run named 'with_rleu'" in capsys.readouterr().err
    assert cli.main(["compare", "baseline", "with_relu", "--experiment", PLANTED, "--task", "nope"]) == 2
    assert "tasks ['nope'] were not logged" in capsys.readouterr().err
    assert cli.main(["report", "--table", "--experiment", PLANTED, "--baseline", "nobody"]) == 2
    assert "no FINISHED run named 'nobody'" in capsys.readouterr().err


# --- real runs: tiny-random-bert on the sample corpus --------------------------------------------------------------

TINY = ["model.encoder=tiny-random-bert", "data.max_train_pairs=16", "model.max_length=32", "train.epochs=1",
        "data.eval_splits=[validation,test]"]
TRAINED = "trained"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tracking URI of a store with real runs: baseline (2 seeds), with_relu and with_layernorm (1 seed each)."""
    from argbench.experiments.runner import run_ablation

    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name, seeds in (("baseline", 2), ("with_relu", 1), ("with_layernorm", 1)):
        run_ablation(name, TINY, data="sample", seeds=seeds, experiment=TRAINED, tracking_uri=uri,
                     out=root / "runs" / name, progress=False)
    return uri


@pytest.mark.parametrize("epoch, prefix", [("selected", "best/"), ("last", "")])
def test_compare_matches_the_logged_metrics(trained, epoch, prefix):
    """End to end: the pooled per-query ranks give back the accuracies the tracker logged from the evaluator: at
    the selected epochs its best/ metrics, at the last epochs the plain names' last values."""
    result = compare("baseline", "with_relu", experiment=TRAINED, tracking_uri=trained, epoch=epoch, **STATS)
    client = MlflowClient(trained)
    logged = {side: [client.get_run(i).data.metrics for i in ids] for side, ids in result["runs"].items()}
    assert (len(logged["a"]), len(logged["b"])) == (2, 1)
    queries = len(load_corpus("sample").split("test").query_idx)
    for task in TASKS:
        for metric, key in (("acc@1", "acc_at_1"), ("mrr", "mrr")):
            cell = result["tasks"][task][metric]
            assert cell["n"] == queries
            assert cell["a"] == pytest.approx(np.mean([m[f"{prefix}test/{task}/{key}"] for m in logged["a"]]))
            assert cell["b"] == pytest.approx(logged["b"][0][f"{prefix}test/{task}/{key}"])


def test_group_table_on_trained_runs(trained):
    result = significance.group_table("norm", experiment=TRAINED, tracking_uri=trained, **STATS)
    rows = result["rows"]
    assert [(r["ablation"], r["task"]) for r in rows] == [(m, t) for m in ("with_layernorm", "with_relu")
                                                          for t in TASKS]
    assert result["missing"] == ["with_layernorm_relu"]  # and the alias without_layernorm_relu is not compared
    assert {(r["seeds_a"], r["seeds_b"]) for r in rows} == {(2, 1)}
    p, p_holm = np.array([r["p_value"] for r in rows]), np.array([r["p_holm"] for r in rows])
    assert np.all((p <= p_holm) & (p_holm <= 1))
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(p_holm[order]) >= 0)  # Holm keeps the order of the raw p-values
    # The smallest raw p is multiplied by the number of comparisons (unless capped at 1).
    assert p_holm[order[0]] == pytest.approx(min(1.0, len(rows) * p[order[0]]))
    assert [r["significant"] for r in rows] == [r["p_holm"] < 0.05 for r in rows]
    text = significance.format_table(result)
    assert "with_layernorm" in text and "with_relu" in text and "with_layernorm_relu" in text.splitlines()[-1]


def test_cli_compare_json(trained, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained)
    assert cli.main(["compare", "baseline", "with_relu", "--experiment", TRAINED, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"a", "b", "split", "view", "epoch", "runs", "tasks"}
    assert (result["a"], result["b"], result["split"], result["view"], result["epoch"]) == (
        "baseline", "with_relu", "test", "official", "selected")
    assert [len(result["runs"]["a"]), len(result["runs"]["b"])] == [2, 1]
    assert list(result["tasks"]) == list(TASKS)
    for cells in result["tasks"].values():
        assert set(cells) == {"acc@1", "mrr"}
        for cell in cells.values():
            assert set(cell) == {"a", "b", "delta", "ci", "p_value", "p_holm", "test", "n"}
            assert cell["ci"][0] <= cell["delta"] <= cell["ci"][1]


def test_cli_compare_pairs_only_the_unseen_queries_with_view_unseen(trained, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained)
    assert cli.main(["compare", "baseline", "with_relu", "--experiment", TRAINED, "--view", "unseen", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    unseen = int(load_corpus("sample").split("test").unseen.sum())  # the sample's test split has leaked pairs
    assert result["view"] == "unseen" and 0 < unseen < len(load_corpus("sample").split("test").query_idx)
    assert {cell["n"] for cells in result["tasks"].values() for cell in cells.values()} == {unseen}
    assert cli.main(["compare", "baseline", "with_relu", "--experiment", TRAINED, "--task", "epa", "sdoc"]) == 0
    lines = capsys.readouterr().out.splitlines()  # a title, a header, then the tasks in the order asked for
    assert [line.split()[:2] for line in lines[2:]] == [["epa", "acc@1"], ["epa", "mrr"], ["sdoc", "acc@1"],
                                                        ["sdoc", "mrr"]]


def test_a_run_compared_with_itself(trained):
    result = compare("with_relu", "with_relu", experiment=TRAINED, tracking_uri=trained, **STATS)
    cells = [cell for per_task in result["tasks"].values() for cell in per_task.values()]
    assert len(cells) == 2 * len(TASKS)
    assert all(c["delta"] == 0 and c["ci"] == [0, 0] and c["p_value"] == 1 and c["p_holm"] == 1 for c in cells)


def test_html_report_gets_the_group_significance(trained, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained)
    out = tmp_path / "report.html"
    assert cli.main(["report", "--experiment", TRAINED, "--group", "norm", "-o", str(out)]) == 0
    page = out.read_text()
    assert 'id="fig-significance"' in page and 'id="fig-significance-table"' in page
    assert page.count("plotly.js v") == 1  # plotly.js still inlined once
    runs = report.load_runs(TRAINED, ["with_relu"], tracking_uri=trained)
    with pytest.raises(ValueError, match=r"div ids \['fig-table'\] are taken"):
        report.write_report(runs, "val/epa/acc@1", tmp_path / "x.html", extra_figures={"fig-table": go.Figure()})


def test_an_alias_run_stands_in_for_a_baseline_without_runs(tmp_path):
    """`make ablations GROUP=norm` runs without_layernorm_relu (an alias of baseline) but not baseline itself: the
    alias's runs are the reference, and the table says so."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("alias", artifact_location=(tmp_path / "artifacts").as_uri())
    for name, epa in [("without_layernorm_relu", _first(40)), ("with_relu", _first(70))]:
        log_run(client, "alias", name, {"epa": epa}, tmp_dir=tmp_path)
    result = significance.group_table("norm", experiment="alias", tracking_uri=uri, **STATS)
    assert result["baseline_run"] == "without_layernorm_relu"
    assert [(r["ablation"], r["a"], r["b"]) for r in result["rows"]] == [("with_relu", 40 / N, 70 / N)]
    assert "its alias without_layernorm_relu" in significance.format_table(result)
    with pytest.raises(significance.UnknownRun, match="nor for its aliases"):
        significance.group_table("norm", experiment="alias", tracking_uri=uri, baseline="with_layernorm", **STATS)
