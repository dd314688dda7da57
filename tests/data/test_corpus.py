import json
import os
from pathlib import Path

import pytest

from argbench.data.corpus import CorpusError, load_corpus, resolve_data, stats
from tests.factories import write_argument, write_small_corpus

REAL = os.environ.get("ARGBENCH_DATA")
needs_real = pytest.mark.skipif(not REAL, reason="set ARGBENCH_DATA to the real counterargs-18 corpus")


def test_loads_rows_pairs_and_unpaired(tmp_path):
    write_small_corpus(tmp_path)
    write_argument(tmp_path, "training", "t1", "d1", "con", 7, "point", "A point nobody answered")
    corpus = load_corpus(tmp_path)
    frame = corpus.frame
    assert len(frame) == 3 * 2 * 6 + 1
    lonely = frame[frame["path"] == "training/t1/d1/con/con07a-point.txt"].iloc[0]
    assert not lonely["paired"] and lonely["kind"] == "point" and lonely["number"] == 7
    assert frame[frame["path"] != lonely["path"]]["paired"].all()
    point = frame[frame["path"] == "test/t1/d1/pro/pro02a-point.txt"].iloc[0]
    counter = frame[frame["path"] == "test/t1/d1/pro/pro02b-counter.txt"].iloc[0]
    assert point["pair_id"] == counter["pair_id"] == "t1/d1/pro/02"
    assert (point["theme"], point["debate"], point["stance"]) == ("t1", "d1", "pro")
    assert corpus.split("training").query_idx.size == 6  # the unpaired point is no query


def test_hash_changes_with_content(tmp_path):
    write_small_corpus(tmp_path)
    before = load_corpus(tmp_path).hash
    assert load_corpus(tmp_path).hash == before
    (tmp_path / "test/t1/d1/pro/pro01b-counter.txt").write_text("changed", encoding="utf-8")
    assert load_corpus(tmp_path).hash != before


def test_bad_names_and_empty_files_are_skipped_with_a_warning(tmp_path):
    write_small_corpus(tmp_path)
    (tmp_path / "test/t1/d1/pro/notes.txt").write_text("stray", encoding="utf-8")
    write_argument(tmp_path, "test", "t1", "d1", "pro", 9, "counter", "   \n")
    with pytest.warns(UserWarning, match="notes.txt"):
        corpus = load_corpus(tmp_path)
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert set(reasons) == {"test/t1/d1/pro/notes.txt", "test/t1/d1/pro/pro09b-counter.txt"}
    assert "empty" in reasons["test/t1/d1/pro/pro09b-counter.txt"]
    assert stats(corpus)["splits"]["test"]["skipped"] == sorted(reasons)


@pytest.mark.parametrize("breakage, expected", [
    (lambda root: root / "nowhere", "does not exist"),
    (lambda root: (__import__("shutil").rmtree(root / "validation"), root)[1], "validation"),
])
def test_missing_root_or_split_is_an_error(tmp_path, breakage, expected):
    write_small_corpus(tmp_path)
    with pytest.raises(CorpusError, match=expected):
        load_corpus(breakage(tmp_path))


def test_split_without_pairs_is_an_error(tmp_path):
    write_small_corpus(tmp_path)
    for counter in (tmp_path / "test").rglob("*-counter.txt"):
        counter.unlink()
    with pytest.raises(CorpusError, match="split test .* no true pair"):
        load_corpus(tmp_path)


def test_non_utf8_file_is_an_error_naming_it(tmp_path):
    write_small_corpus(tmp_path)
    bad = tmp_path / "training/t1/d2/con/con01b-counter.txt"
    bad.write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(CorpusError, match=r"con01b-counter\.txt is not UTF-8"):
        load_corpus(tmp_path)


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data(str(tmp_path / "arg")).kind == "arg"
    assert resolve_data(None).path == tmp_path / "env"
    monkeypatch.delenv("ARGBENCH_DATA")
    monkeypatch.setattr("argbench.data.corpus.project_data", lambda: tmp_path)
    assert resolve_data(None).kind == "repo"
    monkeypatch.setattr("argbench.data.corpus.project_data", lambda: tmp_path / "absent")
    monkeypatch.setattr("argbench.data.sample.sample_root", lambda: Path("/cache/sample"))
    assert resolve_data(None, announce=False) .kind == "sample"
    assert resolve_data("sample").path == Path("/cache/sample")


OFFICIAL = {
    "training": (8148, 4065, 551, 15),
    "validation": (2577, 1287, 178, 15),
    "test": (2807, 1401, 189, 15),
}
OFFICIAL_TEST_POOLS = {"sdoc": "3.89", "sdoa": "7.65", "sdc": "7.65", "sda": "14.30",
                       "stc": "136.5", "sta": "272.1", "epc": "1400.8", "epa": "2800.8"}


@pytest.fixture(scope="module")
def real_corpus():
    return load_corpus(REAL)


@needs_real
@pytest.mark.realdata
def test_real_corpus_counts(real_corpus):
    got = stats(real_corpus)["splits"]
    for split, (arguments, pairs, debates, themes) in OFFICIAL.items():
        row = got[split]
        assert (row["arguments"], row["pairs"], row["debates"], row["themes"]) == (arguments, pairs, debates, themes)
        assert row["skipped"] == []
    json.dumps(got)


@needs_real
@pytest.mark.realdata
def test_real_test_pools_equal_the_official_sizes(real_corpus):
    split = real_corpus.split("test")
    for task, official in OFFICIAL_TEST_POOLS.items():
        mean = float(split.pool(task).sum(1).float().mean())
        decimals = len(official.split(".")[1])
        assert f"{mean:.{decimals}f}" == official, task
