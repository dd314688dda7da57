import pytest
import torch

from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from tests.factories import write_argument, write_small_corpus


@pytest.fixture
def test_split(tmp_path):
    write_small_corpus(tmp_path)
    return load_corpus(tmp_path).split("test")


def candidates(split, task, query_path):
    q = int(split.args.index[(split.args["path"] == query_path)][0])
    row = list(split.query_idx).index(q)
    mask = split.pool(task)[row]
    return {p.split("/", 1)[1] for p in split.args["path"][mask.numpy()]}


def test_each_pool_holds_exactly_the_protocol_candidates(test_split):
    d1 = "t1/d1"
    got = {task: candidates(test_split, task, "test/t1/d1/pro/pro01a-point.txt") for task in TASKS}
    pro_counters = {f"{d1}/pro/pro01b-counter.txt", f"{d1}/pro/pro02b-counter.txt"}
    assert got["sdoc"] == pro_counters
    assert got["sdoa"] == pro_counters | {f"{d1}/con/con01a-point.txt"}
    assert got["sdc"] == pro_counters | {f"{d1}/con/con01b-counter.txt"}
    assert got["sda"] == got["sdc"] | {f"{d1}/pro/pro02a-point.txt", f"{d1}/con/con01a-point.txt"}
    t1_counters = got["sdc"] | {"t1/d2/pro/pro01b-counter.txt", "t1/d2/con/con01b-counter.txt"}
    assert got["stc"] == t1_counters
    assert got["sta"] == got["sda"] | {"t1/d2/pro/pro01a-point.txt", "t1/d2/con/con01a-point.txt"} \
        | {"t1/d2/pro/pro01b-counter.txt", "t1/d2/con/con01b-counter.txt"}
    assert got["epc"] == t1_counters | {"t2/d3/pro/pro01b-counter.txt"}
    assert len(got["epa"]) == 11 and "t1/d1/pro/pro01a-point.txt" not in got["epa"]


def test_query_is_never_a_candidate_and_positive_always_is(test_split):
    rows = torch.arange(len(test_split.query_idx))
    for task in TASKS:
        pool = test_split.pool(task)
        assert not pool[rows, torch.from_numpy(test_split.query_idx)].any(), task
        assert pool[rows, torch.from_numpy(test_split.positive_idx)].all(), task


def test_same_debate_name_under_two_themes_is_two_debates(tmp_path):
    write_small_corpus(tmp_path)
    write_argument(tmp_path, "test", "t2", "d1", "pro", 1, "point", "copy theme point")
    write_argument(tmp_path, "test", "t2", "d1", "pro", 1, "counter", "copy theme counter")
    split = load_corpus(tmp_path).split("test")
    assert candidates(split, "sdoc", "test/t2/d1/pro/pro01a-point.txt") == {"t2/d1/pro/pro01b-counter.txt"}


def test_copies_of_the_true_counter_are_not_candidates(tmp_path):
    write_small_corpus(tmp_path)
    original = (tmp_path / "test/t1/d1/pro/pro01b-counter.txt").read_text()
    write_argument(tmp_path, "test", "t2", "d3", "con", 1, "point", "some point")
    write_argument(tmp_path, "test", "t2", "d3", "con", 1, "counter", "  " + original.replace(" ", "\n  "))
    split = load_corpus(tmp_path).split("test")
    epc = candidates(split, "epc", "test/t1/d1/pro/pro01a-point.txt")
    assert "t1/d1/pro/pro01b-counter.txt" in epc and "t2/d3/con/con01b-counter.txt" not in epc
    # the copy's own query still has its own counter as the answer
    assert "t2/d3/con/con01b-counter.txt" in candidates(split, "epc", "test/t2/d3/con/con01a-point.txt")


def test_pairs_line_up(test_split):
    args = test_split.args
    assert (args.loc[test_split.points_idx, "kind"] == "point").all()
    assert (args.loc[test_split.counters_idx, "kind"] == "counter").all()
    assert (args.loc[test_split.points_idx, "pair_id"].to_numpy()
            == args.loc[test_split.counters_idx, "pair_id"].to_numpy()).all()
