"""argbench.track.store on a private SQLite MLflow store: which runs a name stands for (the one rule every reader
uses), what is read back, what is written; and that the report and ``compare`` show a multi-seed entry as the same
seed runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient

from argbench.analysis import report
from argbench.analysis.compare import compare
from argbench.errors import UserError
from argbench.track.redaction import redact
from argbench.track.store import LAST_RANKS, RANKS, NotInStore, Store
from argbench.track.tracker import tracked_run

PARENT = "mlflow.parentRunId"
_clock = iter(range(1_000_000_000_000, 2_000_000_000_000, 1_000))


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def exp(uri, request, tmp_path):
    """A fresh experiment per test (artifacts in the test's tmp folder); its name."""
    MlflowClient(uri).create_experiment(request.node.name, artifact_location=(tmp_path / "artifacts").as_uri())
    return request.node.name


def make_run(uri: str, exp: str, name: str, status: str = "FINISHED", parent: str | None = None) -> str:
    """A run named ``name`` started after every run made before it, ended with ``status`` (RUNNING: left open)."""
    client = MlflowClient(uri)
    tags = {PARENT: parent} if parent else {}
    run_id = client.create_run(client.get_experiment_by_name(exp).experiment_id, start_time=next(_clock),
                               run_name=name, tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def test_a_name_stands_for_its_newest_finished_top_level_run(uri, exp):
    make_run(uri, exp, "base")
    newest_finished = make_run(uri, exp, "base")
    make_run(uri, exp, "base", "FAILED")
    system = Store(uri).system("base", exp)
    assert (system.run.run_id, [s.run_id for s in system.seeds], system.passed_over) == \
        (newest_finished, [newest_finished], 2)


def test_a_multi_seed_parent_stands_for_its_finished_seeds(uri, exp):
    parent = make_run(uri, exp, "multi")
    seeds = [make_run(uri, exp, "multi", parent=parent) for _ in range(2)]
    make_run(uri, exp, "multi", "FAILED", parent=parent)
    make_run(uri, exp, "other-name", parent=parent)  # a child, but not a seed: another name
    # A newer parent that was killed, whose one seed finished: the name never stands for that child.
    killed = make_run(uri, exp, "multi", "KILLED")
    make_run(uri, exp, "multi", parent=killed)
    store = Store(uri)
    system = store.system("multi", exp)
    assert system.run.run_id == parent and [s.run_id for s in system.seeds] == seeds
    assert [s.run_id for s in store.system(parent, "any experiment").seeds] == seeds  # by id: the same seeds
    assert store.system(seeds[0], exp).seeds[0].run_id == seeds[0]  # a seed by id is itself


def test_a_name_only_children_bear_stands_for_the_newest_finished_child(uri, exp):
    search = make_run(uri, exp, "search-s")
    make_run(uri, exp, "s-t0", parent=search)
    trial = make_run(uri, exp, "s-t0", parent=search)
    assert Store(uri).system("s-t0", exp).run.run_id == trial


def test_names_that_stand_for_nothing_say_why(uri, exp):
    make_run(uri, exp, "with_layernorm")
    make_run(uri, exp, "broken", "FAILED")
    make_run(uri, exp, "broken", "RUNNING")
    store = Store(uri)
    with pytest.raises(NotInStore, match=r"no FINISHED run named 'broken'.*FAILED, RUNNING"):
        store.system("broken", exp)
    with pytest.raises(NotInStore, match=r"'with_layernrom'.*did you mean \['with_layernorm'\]"):
        store.system("with_layernrom", exp)
    with pytest.raises(NotInStore, match="no MLflow experiment 'absent'.*experiments there:.*" + exp):
        store.system("with_layernorm", "absent")
    with pytest.raises(NotInStore, match="quotes are not allowed"):
        store.system("it's", exp)
    with pytest.raises(NotInStore, match=r"named 'broken'.*FAILED, RUNNING; no FINISHED run named 'nope'.*"
                                         r"names with a FINISHED run there: with_layernorm\)"):
        store.systems(exp, ["with_layernorm", "broken", "nope"])
    assert store.names(exp) == ["with_layernorm"]


def test_histories_keep_the_latest_value_of_a_step_and_skip_system_metrics(uri, exp):
    run_id = make_run(uri, exp, "x", "RUNNING")
    store = Store(uri)
    store.log_metrics(run_id, {"val/epa/acc_at_1": 0.1, "system/cpu": 50.0}, step=0)
    store.log_metrics(run_id, {"val/epa/acc_at_1": 0.3}, step=1)
    store.log_metrics(run_id, {"val/epa/acc_at_1": 0.2}, step=0)  # logged again later: this value counts
    assert store.histories(store.run(run_id)) == {"val/epa/acc_at_1": [(0, 0.2), (1, 0.3)]}


def test_writes_are_redacted_and_a_dead_run_is_closed_once(uri, exp):
    run_id = make_run(uri, exp, "x", "RUNNING")
    store = Store(uri)
    secret = "postgresql://me:hunter2@db/optuna"
    store.log(run_id, params={"storage": secret, "nothing": None}, tags={"note": secret})
    run = store.run(run_id)
    assert run.params == {"storage": redact(secret), "nothing": "none"} and run.tags["note"] == redact(secret)
    assert "hunter2" not in redact(secret)
    assert store.end_if_running(run_id, "KILLED", tags={"trial.state": "FAIL"})
    run = store.run(run_id)
    assert (run.status, run.tags["trial.state"]) == ("KILLED", "FAIL")
    assert not store.end_if_running(run_id, "FAILED")  # no longer RUNNING: left as it is
    assert not store.end_if_running("0123456789abcdef0123456789abcdef")  # not in this store: not ours
    assert store.run(run_id).status == "KILLED"


def test_a_missing_table_names_what_was_logged(uri, exp):
    run_id = make_run(uri, exp, "x", "RUNNING")
    store = Store(uri)
    store.log_text(run_id, "query,task,rank\n0,epa,1\n", RANKS.format(split="val"))
    assert store.ranks(run_id, "val").to_dict("records") == [{"query": 0, "task": "epa", "rank": 1}]
    with pytest.raises(FileNotFoundError, match=r"per_query/test.csv.*\['val.csv'\]"):
        store.ranks(run_id, "test")


def test_ranks_of_the_selected_or_the_last_epoch(uri, exp):
    run_id = make_run(uri, exp, "x", "RUNNING")
    store = Store(uri)
    store.log_text(run_id, "epoch,query,task,rank\n2,0,epa,1\n", RANKS.format(split="test"))
    store.log_text(run_id, "epoch,query,task,rank\n4,0,epa,3\n", LAST_RANKS.format(split="test"))
    assert store.ranks(run_id, "test")["epoch"].tolist() == [2]
    assert store.ranks(run_id, "test", "last")["epoch"].tolist() == [4]
    with pytest.raises(FileNotFoundError, match=r"per_query/last/val.csv.*logged before argbench selected epochs"):
        store.ranks(run_id, "val", "last")
    with pytest.raises(UserError, match="epoch 'best': expected one of selected, last"):
        store.ranks(run_id, "test", "best")
    with pytest.raises(UserError, match="second stage ranked only the selected epoch's model"):
        store.ranks(run_id, "test/reranked", "last")


def test_a_two_seed_entry_is_reported_and_compared_as_the_same_seed_runs(uri, exp):
    """Logged by the tracker as argbench.experiments.runner does: a parent, two nested seeds of the same name.
    Seed k's val/epa/acc_at_1 at epoch e is ACC[k][e]; its test ranks put the counter first on 40 + 20k of N
    queries."""
    n, acc = 100, [[0.1, 0.3, 0.5], [0.2, 0.5, 0.6]]
    track = {"experiment": exp, "tracking_uri": uri, "system_metrics": False}
    with tracked_run(run_name="seeds", **track) as parent:
        seeds = []
        for k in range(2):
            with tracked_run(run_name="seeds", nested=True, **track) as seed:
                for epoch, value in enumerate(acc[k]):
                    seed.store.log_metrics(seed.run_id, {"val/epa/acc_at_1": value}, step=epoch)
                ranks = np.full(n, 2)
                ranks[:40 + 20 * k] = 1
                seed.on_evaluation(2, "test", SimpleNamespace(ranks={"epa": ranks}))
            seeds.append(seed.run_id)
    with tracked_run(run_name="single", **track) as single:
        single.on_evaluation(2, "test", SimpleNamespace(ranks={"epa": np.ones(n, dtype=int)}))

    (shown,) = report.load_runs(exp, ["seeds"], tracking_uri=uri)
    compared = compare("seeds", "single", experiment=exp, tracking_uri=uri, n_boot=200, n_perm=200)
    assert shown.seeds == compared["runs"]["a"] == seeds and shown.run_id == parent.run_id
    assert compared["tasks"]["epa"]["acc@1"]["a"] == pytest.approx(50 / n)  # both seeds pooled
    steps, means = shown.series("val/epa/acc_at_1")
    assert steps == [0, 1, 2] and means == pytest.approx([0.15, 0.4, 0.55])
    assert shown.selected_epochs == [2, 2] and shown.selected["val/epa/acc_at_1"] == pytest.approx(0.55)
    # Two seeds: every bootstrap resample's mean lies between them, and both extremes are drawn often.
    assert shown.band("val/epa/acc_at_1") == ([0, 1, 2], pytest.approx([0.1, 0.3, 0.5]),
                                             pytest.approx([0.2, 0.5, 0.6]))
    curve = report.metric_per_epoch([shown], "val/epa/acc@1").data
    assert [t.name for t in curve] == ["seeds 95% CI", "seeds (mean of 2 seeds)"] and curve[0].fill == "toself"
    assert list(curve[1].y) == pytest.approx([0.15, 0.4, 0.55])
    assert list(curve[0].y) == pytest.approx([0.2, 0.5, 0.6, 0.5, 0.3, 0.1])  # upper edge, then lower edge back
