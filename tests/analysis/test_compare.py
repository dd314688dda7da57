"""argbench.analysis.compare against a private SQLite MLflow store holding per-query ranks with known differences.

Most runs are written by ``log_run`` in the format argbench.track.tracker logs (so start times and statuses can be set);
one test writes them through argbench.track.tracker itself, so a change of that format fails here.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from argbench import cli
from argbench.analysis.compare import compare, load_ranks
from argbench.errors import UserError
from argbench.track.store import LAST_RANKS
from argbench.track.tracker import tracked_run
from tests.factories import log_run

N = 200
STATS = {"n_boot": 300, "n_perm": 1_000}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, artifact folder) of one SQLite store shared by this module (creating one takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


@pytest.fixture
def tracking(store, request):
    """(client, experiment name): a fresh experiment per test, artifacts under the store's temporary folder."""
    uri, artifacts = store
    client = MlflowClient(uri)
    name = request.node.name
    client.create_experiment(name, artifact_location=(artifacts / name).as_uri())
    return client, name


def log_last(client, run_id, ranks, tmp_dir, split="test"):
    """Log {task: [n]} ranks as run `run_id`'s last-epoch artifact (per_query/last/<split>.csv, epoch 9)."""
    artifact = LAST_RANKS.format(split=split)
    path = tmp_dir / run_id / artifact
    path.parent.mkdir(parents=True)
    pd.DataFrame([{"epoch": 9, "query": i, "task": task, "rank": int(r)} for task, rs in ranks.items()
                  for i, r in enumerate(rs)]).to_csv(path, index=False)
    client.log_artifact(run_id, str(path), artifact_path=str(Path(artifact).parent))


def planted(extra=30):
    """A ranks the counter first on the first 40 queries, B on `extra` more; every other rank is 2."""
    a, b = np.full(N, 2), np.full(N, 2)
    a[:40] = 1
    b[:40 + extra] = 1
    return a, b


def test_load_ranks_orders_by_query(tracking, tmp_path):
    client, exp = tracking
    epa = np.arange(1, N + 1)
    run_id = log_run(client, exp, "x", {"epa": epa, "sdoc": np.ones(N)}, tmp_dir=tmp_path)
    ranks = load_ranks(run_id, "test", tracking_uri=client.tracking_uri)
    assert list(ranks) == ["sdoc", "epa"]  # the order of TASKS
    assert ranks["epa"].tolist() == epa.tolist()


def test_compare_by_name_single_seed(tracking, tmp_path):
    client, exp = tracking
    a, b = planted()
    same = np.random.default_rng(0).integers(1, 5, size=N)
    id_a = log_run(client, exp, "base", {"epa": a, "sdoc": same}, tmp_dir=tmp_path)
    id_b = log_run(client, exp, "variant", {"epa": b, "sdoc": same}, tmp_dir=tmp_path)
    res = compare("base", "variant", experiment=exp, tracking_uri=client.tracking_uri, **STATS)
    assert (res["a"], res["b"], res["split"]) == ("base", "variant", "test")
    assert res["runs"] == {"a": [id_a], "b": [id_b]}
    assert list(res["tasks"]) == ["sdoc", "epa"]
    acc = res["tasks"]["epa"]["acc@1"]
    assert (acc["a"], acc["b"], acc["delta"]) == pytest.approx((40 / N, 70 / N, 30 / N))
    assert acc["p_value"] == pytest.approx(2 * 0.5 ** 30) and acc["ci"][0] > 0
    assert res["tasks"]["sdoc"]["mrr"]["delta"] == 0.0 and res["tasks"]["sdoc"]["mrr"]["p_value"] == 1.0
    json.dumps(res)  # the CLI prints it as is
    by_id = compare(id_a, id_b, experiment="elsewhere", tracking_uri=client.tracking_uri, tasks=["epa"], **STATS)
    assert by_id["runs"] == res["runs"] and list(by_id["tasks"]) == ["epa"]
    assert by_id["tasks"]["epa"]["acc@1"]["p_value"] == acc["p_value"]


def test_latest_finished_run_of_a_name_is_used(tracking, tmp_path):
    client, exp = tracking
    a, b = planted()
    log_run(client, exp, "base", {"epa": np.full(N, 9)}, tmp_dir=tmp_path)  # older
    newest_finished = log_run(client, exp, "base", {"epa": a}, tmp_dir=tmp_path)
    log_run(client, exp, "base", {"epa": np.full(N, 7)}, status="FAILED", tmp_dir=tmp_path)
    log_run(client, exp, "variant", {"epa": b}, tmp_dir=tmp_path)
    res = compare("base", "variant", experiment=exp, tracking_uri=client.tracking_uri, **STATS)
    assert res["runs"]["a"] == [newest_finished]
    assert res["tasks"]["epa"]["acc@1"]["a"] == pytest.approx(40 / N)


def test_multi_seed_parent_stacks_its_finished_children(tracking, tmp_path):
    client, exp = tracking
    a, b = planted()
    parent = log_run(client, exp, "multi", None, tmp_dir=tmp_path)
    # Seed k (k = 0, 1, 2) ranks the counter first on the first 40 + 10k queries: pooled acc@1 = (40 + 10) / N.
    children = []
    for k in range(3):
        seed_ranks = np.full(N, 2)
        seed_ranks[:40 + 10 * k] = 1
        children.append(log_run(client, exp, "multi", {"epa": seed_ranks}, parent=parent, tmp_dir=tmp_path))
    log_run(client, exp, "multi", {"epa": np.full(N, 5)}, parent=parent, status="FAILED", tmp_dir=tmp_path)
    log_run(client, exp, "single", {"epa": b}, tmp_dir=tmp_path)
    res = compare("multi", "single", experiment=exp, tracking_uri=client.tracking_uri, **STATS)
    assert res["runs"]["a"] == children
    acc = res["tasks"]["epa"]["acc@1"]
    assert acc["a"] == pytest.approx(50 / N) and acc["b"] == pytest.approx(70 / N)
    assert acc["test"] == "sign-flip-permutation"


def test_unknown_name_suggests_close_ones(tracking, tmp_path):
    client, exp = tracking
    log_run(client, exp, "with_layernorm", {"epa": np.ones(N)}, tmp_dir=tmp_path)
    with pytest.raises(ValueError, match=r"with_layernrom.*did you mean \['with_layernorm'\]"):
        compare("with_layernrom", "with_layernorm", experiment=exp, tracking_uri=client.tracking_uri)
    with pytest.raises(ValueError, match="no MLflow experiment 'nope'"):
        compare("a", "b", experiment="nope", tracking_uri=client.tracking_uri)
    with pytest.raises(ValueError, match="no MLflow run with id 0123456789abcdef0123456789abcdef"):
        compare("0123456789abcdef0123456789abcdef", "with_layernorm", experiment=exp, tracking_uri=client.tracking_uri)


def test_missing_split_names_what_was_logged(tracking, tmp_path):
    client, exp = tracking
    log_run(client, exp, "base", {"epa": np.ones(N)}, split="val", tmp_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"per_query/test.csv.*val.csv"):
        compare("base", "base", experiment=exp, tracking_uri=client.tracking_uri)


def test_runs_over_different_queries_are_refused(tracking, tmp_path):
    client, exp = tracking
    log_run(client, exp, "base", {"epa": np.ones(N)}, tmp_dir=tmp_path)
    log_run(client, exp, "short", {"epa": np.ones(N - 1)}, tmp_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"task 'epa'.*{N} queries.*{N - 1}.*\[{N - 1}\]"):
        compare("base", "short", experiment=exp, tracking_uri=client.tracking_uri)


def test_runs_on_different_data_are_refused(tracking, tmp_path):
    client, exp = tracking
    log_run(client, exp, "base", {"epa": np.ones(N)}, data="sample-1", tmp_dir=tmp_path)
    log_run(client, exp, "other", {"epa": np.ones(N)}, data="real-2", tmp_dir=tmp_path)
    with pytest.raises(ValueError, match="different data.*sample-1.*real-2"):
        compare("base", "other", experiment=exp, tracking_uri=client.tracking_uri)


def test_reads_what_tracking_writes(tracking):
    """Runs logged by argbench.track.tracker: a multi-seed parent (children share its name) against a single run."""
    client, exp = tracking
    a, b = planted()
    track = {"experiment": exp, "tracking_uri": client.tracking_uri, "system_metrics": False}
    with tracked_run(run_name="seeds", **track):
        for k in range(2):  # seed k ranks the counter first on the first 40 + 20k queries: pooled acc@1 = 50 / N
            with tracked_run(run_name="seeds", nested=True, **track) as seed_run:
                seed_ranks = np.full(N, 2)
                seed_ranks[:40 + 20 * k] = 1
                seed_run.on_evaluation(1, "val", SimpleNamespace(ranks={"epa": np.ones(N, dtype=int)}))
                seed_run.on_evaluation(1, "test", SimpleNamespace(ranks={"epa": seed_ranks, "sdoc": a}))
    with tracked_run(run_name="single", **track) as single:
        single.on_evaluation(1, "test", SimpleNamespace(ranks={"epa": b, "sdoc": a}))
    res = compare("seeds", "single", experiment=exp, tracking_uri=client.tracking_uri, **STATS)
    assert len(res["runs"]["a"]) == 2 and res["runs"]["b"] == [single.run_id]
    assert list(res["tasks"]) == ["sdoc", "epa"]
    assert res["tasks"]["epa"]["acc@1"]["a"] == pytest.approx(50 / N)
    assert res["tasks"]["epa"]["acc@1"]["b"] == pytest.approx(70 / N)
    assert res["tasks"]["sdoc"]["mrr"]["delta"] == 0.0
    assert load_ranks(single.run_id, "test", client.tracking_uri)["epa"].tolist() == b.tolist()


def test_views_pair_the_dedup_ranks_or_only_the_unseen_queries(tracking):
    """Through argbench.track.tracker's format: b beats a in the official ranks only on the queries a ranks behind a
    copy of the query (dedup removes the difference) and only on seen queries (unseen removes it too)."""
    client, exp = tracking
    track = {"experiment": exp, "tracking_uri": client.tracking_uri, "system_metrics": False}
    a = np.where(np.arange(N) < 50, 2, 1)  # queries 0-49: a copy of the query outranks the counter
    unseen = np.arange(N) >= 50
    for name, ranks in (("a", a), ("b", np.ones(N, dtype=int))):
        with tracked_run(run_name=name, **track) as run:
            run.on_evaluation(1, "test", SimpleNamespace(ranks={"epa": ranks}, dedup_ranks={"epa": np.ones(N)},
                                                         unseen=unseen))
    official = compare("a", "b", experiment=exp, tracking_uri=client.tracking_uri, **STATS)["tasks"]["epa"]["acc@1"]
    assert (official["a"], official["b"], official["n"]) == (pytest.approx(150 / N), 1.0, N)
    dedup = compare("a", "b", experiment=exp, tracking_uri=client.tracking_uri, view="dedup", **STATS)
    assert dedup["view"] == "dedup" and dedup["tasks"]["epa"]["acc@1"]["delta"] == 0.0
    only_unseen = compare("a", "b", experiment=exp, tracking_uri=client.tracking_uri, view="unseen", **STATS)
    cells = only_unseen["tasks"]["epa"]["acc@1"]
    assert (cells["a"], cells["b"], cells["n"]) == (1.0, 1.0, N - 50)


def test_a_view_the_artifact_lacks_is_named(tracking, tmp_path):
    client, exp = tracking
    for name in ("a", "b"):
        log_run(client, exp, name, {"epa": np.ones(N)}, tmp_dir=tmp_path)  # official ranks only (older runs)
    with pytest.raises(ValueError, match="no column 'rank_dedup'.*--view official"):
        compare("a", "b", experiment=exp, tracking_uri=client.tracking_uri, view="dedup", **STATS)


def test_reranked_split_pairs_final_rankings_a_one_stage_run_counting_its_first_stage(tracking, tmp_path):
    client, exp = tracking
    a, b = planted()
    log_run(client, exp, "one_stage", {"epa": a}, tmp_dir=tmp_path)
    two = log_run(client, exp, "two_stage", {"epa": np.full(N, 3)}, tmp_dir=tmp_path)  # its first stage: rank 3
    second = tmp_path / "second" / "per_query" / "test" / "reranked.csv"
    second.parent.mkdir(parents=True)
    pd.DataFrame({"epoch": 1, "query": np.arange(N), "task": "epa", "rank": b}).to_csv(second, index=False)
    client.log_artifact(two, str(second), artifact_path="per_query/test")
    final = compare("one_stage", "two_stage", split="test/reranked", experiment=exp,
                    tracking_uri=client.tracking_uri, **STATS)["tasks"]["epa"]["acc@1"]
    assert (final["a"], final["b"]) == pytest.approx((40 / N, 70 / N))
    first = compare("one_stage", "two_stage", experiment=exp, tracking_uri=client.tracking_uri,
                    **STATS)["tasks"]["epa"]["acc@1"]
    assert (first["a"], first["b"]) == pytest.approx((40 / N, 0.0))


def test_epoch_last_pairs_the_last_epochs_ranks(tracking, tmp_path, monkeypatch, capsys):
    """At the selected epochs b leads (70 vs 40 first places); at the last epochs the two swap."""
    client, exp = tracking
    a, b = planted()
    id_a = log_run(client, exp, "base", {"epa": a}, tmp_dir=tmp_path)
    id_b = log_run(client, exp, "variant", {"epa": b}, tmp_dir=tmp_path)
    log_last(client, id_a, {"epa": b}, tmp_path)
    log_last(client, id_b, {"epa": a}, tmp_path)
    selected = compare("base", "variant", experiment=exp, tracking_uri=client.tracking_uri, **STATS)
    last = compare("base", "variant", experiment=exp, tracking_uri=client.tracking_uri, epoch="last", **STATS)
    assert (selected["epoch"], last["epoch"]) == ("selected", "last")
    assert (selected["tasks"]["epa"]["acc@1"]["a"], selected["tasks"]["epa"]["acc@1"]["b"]) == (40 / N, 70 / N)
    assert (last["tasks"]["epa"]["acc@1"]["a"], last["tasks"]["epa"]["acc@1"]["b"]) == (70 / N, 40 / N)
    assert load_ranks(id_a, "test", client.tracking_uri, epoch="last")["epa"].tolist() == b.tolist()
    with pytest.raises(UserError, match="epoch 'best': expected one of selected, last"):
        compare("base", "variant", experiment=exp, tracking_uri=client.tracking_uri, epoch="best")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    assert cli.main(["compare", "base", "variant", "--experiment", exp, "--epoch", "last", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epoch"] == "last" and printed["tasks"]["epa"]["acc@1"]["delta"] == pytest.approx(-30 / N)
    assert cli.main(["compare", "base", "variant", "--experiment", exp, "--epoch", "last"]) == 0
    assert capsys.readouterr().out.startswith("variant vs base on test at the last epochs: ")


def test_epoch_last_of_a_run_logged_before_epochs_were_selected_is_named(tracking, tmp_path):
    client, exp = tracking
    for name in ("a", "b"):
        log_run(client, exp, name, {"epa": np.ones(N)}, tmp_dir=tmp_path)  # per_query/test.csv only
    with pytest.raises(FileNotFoundError, match=r"per_query/last/test.csv.*logged before argbench selected epochs"):
        compare("a", "b", experiment=exp, tracking_uri=client.tracking_uri, epoch="last", **STATS)


def test_final_rankings_at_the_last_epoch(tracking, tmp_path):
    """One-stage runs: their last epoch's first stage. A two-stage run: refused, its second stage ranked only the
    selected epoch's model."""
    client, exp = tracking
    a, b = planted()
    for name, first in (("one", a), ("other", b)):
        log_last(client, log_run(client, exp, name, {"epa": np.full(N, 5)}, tmp_dir=tmp_path), {"epa": first},
                 tmp_path)
    final = compare("one", "other", split="test/reranked", experiment=exp, tracking_uri=client.tracking_uri,
                    epoch="last", **STATS)["tasks"]["epa"]["acc@1"]
    assert (final["a"], final["b"]) == pytest.approx((40 / N, 70 / N))
    two = log_run(client, exp, "two_stage", {"epa": np.full(N, 3)}, split="test/reranked", tmp_dir=tmp_path)
    log_last(client, two, {"epa": a}, tmp_path)
    with pytest.raises(UserError, match=f"run {two}: its second stage ranked only the selected epoch's model"):
        compare("one", "two_stage", split="test/reranked", experiment=exp, tracking_uri=client.tracking_uri,
                epoch="last", **STATS)


def test_tracked_runs_are_compared_at_their_selected_or_last_epoch(tracking):
    """Through argbench.track.tracker: run "early" peaks on validation at epoch 1 (where its test ranks are b's),
    then falls (its last test ranks are a's); run "flat" ranks a at every epoch."""
    client, exp = tracking
    a, b = planted()
    track = {"experiment": exp, "tracking_uri": client.tracking_uri, "system_metrics": False}
    for name, val, test in (("early", [0.1, 0.9, 0.2], [a, b, a]), ("flat", [0.5, 0.5, 0.5], [a, a, a])):
        with tracked_run(run_name=name, **track) as run:
            for epoch in range(3):
                run.on_evaluation(epoch, "test", SimpleNamespace(ranks={"epa": test[epoch]}))
                run.on_epoch_end(epoch, {"epoch": epoch, "val/epa/acc_at_1": val[epoch]})
    at = {epoch: compare("flat", "early", experiment=exp, tracking_uri=client.tracking_uri, epoch=epoch,
                         **STATS)["tasks"]["epa"]["acc@1"] for epoch in ("selected", "last")}
    assert (at["selected"]["a"], at["selected"]["b"]) == pytest.approx((40 / N, 70 / N))
    assert at["last"]["delta"] == 0.0
