"""The synthetic sample corpus: deterministic, counterargs-18 layout, learnable but not trivial.

Files are parsed here with pathlib/regex on purpose: these tests pin the on-disk format independently of
argbench.data.corpus.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from argbench.data import sample
from argbench.data.sample import SAMPLE_VERSION, generate_sample, sample_root

SPLITS = ("training", "validation", "test")
NAME = re.compile(r"(?P<stance>pro|con)(?P<nn>\d\d)(?P<ab>[ab])-(?P<kind>point|counter)\.txt")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_sample(tmp_path_factory.mktemp("sample") / "corpus")


def _arguments(root: Path) -> list[dict]:
    """One dict per file: split, theme, debate, stance, nn, kind, pair (theme/debate/stance/nn), text."""
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        split, theme, debate, stance, name = path.relative_to(root).parts
        m = NAME.fullmatch(name)
        rows.append(dict(split=split, theme=theme, debate=debate, stance=stance, nn=m["nn"], kind=m["kind"],
                         pair=f"{theme}/{debate}/{stance}/{m['nn']}", text=path.read_text(encoding="utf-8")))
    return rows


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generation_is_byte_identical(root, tmp_path):
    again = generate_sample(tmp_path / "again")
    assert _tree(again) == _tree(root)


def test_other_seed_gives_other_corpus(root, tmp_path):
    assert _tree(generate_sample(tmp_path / "seed1", seed=1)) != _tree(root)


def test_refuses_existing_destination(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken"):
        generate_sample(tmp_path / "taken")


def test_layout_and_file_names(root):
    assert sorted(p.name for p in root.iterdir()) == sorted(SPLITS)  # no temp folders or markers left behind
    for path in (p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        assert len(parts) == 5, path
        split, theme, debate, stance, name = parts
        m = NAME.fullmatch(name)
        assert m and split in SPLITS and stance == m["stance"], path
        assert (m["ab"], m["kind"]) in {("a", "point"), ("b", "counter")}, path
    for folder in root.glob("*/*/*/*"):
        numbers = sorted({int(NAME.fullmatch(p.name)["nn"]) for p in folder.iterdir()})
        assert numbers == list(range(1, len(numbers) + 1)), f"{folder}: numbers must run 01, 02, ..."


def test_text_format(root):
    for row in _arguments(root):
        words = len(row["text"].split())
        assert 30 <= words <= 80, (row["pair"], words)
        lines = row["text"].splitlines()
        if row["kind"] == "point":
            assert lines[0].strip() and lines[1] == "" and lines[2].strip(), row["pair"]  # title, blank, premises
        else:
            assert len(lines) == 1, row["pair"]  # counters have no title


def test_splits_have_pairs_both_stances_and_one_unpaired_point(root):
    rows = _arguments(root)
    for split in SPLITS:
        kinds_by_pair: dict[str, set] = {}
        for r in (r for r in rows if r["split"] == split):
            kinds_by_pair.setdefault(r["pair"], set()).add(r["kind"])
        paired = [p for p, kinds in kinds_by_pair.items() if kinds == {"point", "counter"}]
        unpaired = [p for p, kinds in kinds_by_pair.items() if kinds != {"point", "counter"}]
        debates = {(r["theme"], r["debate"]) for r in rows if r["split"] == split}
        assert len({theme for theme, _ in debates}) == 3, f"{split}: debates should spread over all themes"
        for theme, debate in debates:
            for stance in ("pro", "con"):
                n = sum(p.startswith(f"{theme}/{debate}/{stance}/") for p in paired)
                assert 3 <= n <= 5, f"{split}/{theme}/{debate}/{stance}: {n} pairs, expected 3-5"
        if split == "training":
            assert len(unpaired) == 1 and kinds_by_pair[unpaired[0]] == {"point"}
            assert 150 <= len(paired) <= 200
        else:
            assert unpaired == []


def test_one_training_debate_is_filed_again_in_test_under_another_theme(root):
    rows = _arguments(root)
    refiled = {(r["theme"], r["debate"]) for r in rows if r["split"] == "test" and r["debate"].startswith("p-")}
    assert len(refiled) == 1
    (theme, debate), = refiled
    original = {r["theme"] for r in rows if r["split"] == "training" and r["debate"] == debate.removeprefix("p-")}
    assert len(original) == 1 and theme not in original

    def files(split, theme, debate):
        return {(r["stance"], r["nn"], r["kind"]): r["text"] for r in rows
                if (r["split"], r["theme"], r["debate"]) == (split, theme, debate)}
    assert files("test", theme, debate) == files("training", original.pop(), debate.removeprefix("p-"))


def test_one_pair_is_reused_in_a_second_debate_of_the_same_theme_in_training_and_test(root):
    rows = _arguments(root)
    for split in ("training", "test"):
        here = [r for r in rows if r["split"] == split and not r["debate"].startswith("p-")]
        texts: dict[tuple[str, str], list[dict]] = {}
        for point in (r for r in here if r["kind"] == "point"):
            counter = next((r for r in here if r["pair"] == point["pair"] and r["kind"] == "counter"), None)
            if counter is not None:
                texts.setdefault((point["text"], counter["text"]), []).append(point)
        repeated = [points for points in texts.values() if len(points) > 1]
        assert len(repeated) == 1 and len(repeated[0]) == 2, split
        first, second = repeated[0]
        assert first["theme"] == second["theme"] and first["debate"] != second["debate"], split
    validation = [r["text"] for r in rows if r["split"] == "validation"]
    assert len(set(validation)) == len(validation)  # no copies there


def _tfidf_acc1(rows: list[dict], same_debate: bool) -> tuple[float, float]:
    """acc@1 of TF-IDF cosine nearest counter for each paired point, and the chance rate mean(1 / pool size)."""
    counters = [r for r in rows if r["kind"] == "counter"]
    paired = {r["pair"] for r in counters}
    points = [r for r in rows if r["kind"] == "point" and r["pair"] in paired]
    tfidf = TfidfVectorizer().fit([r["text"] for r in rows])
    sim = cosine_similarity(tfidf.transform([r["text"] for r in points]),
                            tfidf.transform([r["text"] for r in counters]))
    hits, chance = [], []
    for i, point in enumerate(points):
        pool = [j for j, c in enumerate(counters) if not same_debate or c["debate"] == point["debate"]]
        best = max(pool, key=lambda j: sim[i, j])
        hits.append(counters[best]["pair"] == point["pair"])
        chance.append(1 / len(pool))
    return float(np.mean(hits)), float(np.mean(chance))


def test_counter_is_lexically_findable_within_debate(root):
    test_rows = [r for r in _arguments(root) if r["split"] == "test"]
    acc, chance = _tfidf_acc1(test_rows, same_debate=True)
    assert acc > 2 * chance, f"TF-IDF acc@1 {acc:.2f} within debate vs chance {chance:.2f}: signal too weak"


def test_counter_is_not_trivially_findable_in_whole_split(root):
    test_rows = [r for r in _arguments(root) if r["split"] == "test"]
    acc, chance = _tfidf_acc1(test_rows, same_debate=False)
    assert 2 * chance < acc < 0.95, f"TF-IDF acc@1 {acc:.2f} over all test counters: want learnable, not solved"


def test_sample_root_generates_once(tmp_path, monkeypatch):
    first = sample_root(tmp_path)
    assert first == tmp_path / f"sample-v{SAMPLE_VERSION}" and (first / "test").is_dir()
    stamp = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    monkeypatch.setattr(sample, "generate_sample", _must_not_run)
    assert sample_root(tmp_path) == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == stamp


def test_sample_root_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGBENCH_CACHE", str(tmp_path / "cache"))
    assert sample_root() == tmp_path / "cache" / f"sample-v{SAMPLE_VERSION}"


def test_sample_root_tolerates_losing_the_race(tmp_path, monkeypatch):
    """Another worker renames its copy into place while this one is generating: this one uses theirs."""
    dest = tmp_path / f"sample-v{SAMPLE_VERSION}"
    real_corpus_files = sample.corpus_files

    def racing_corpus_files(seed):
        monkeypatch.setattr(sample, "corpus_files", real_corpus_files)
        generate_sample(dest, seed)  # the other worker wins while we are mid-way
        return real_corpus_files(seed)

    monkeypatch.setattr(sample, "corpus_files", racing_corpus_files)
    assert sample_root(tmp_path) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # our temp folder was cleaned up


def test_sample_root_concurrent_processes(tmp_path):
    """Two workers racing on a cold cache both get one complete corpus and leave no temp folder."""
    code = "import sys; from argbench.data.sample import sample_root; print(sample_root(sys.argv[1]))"
    workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=60)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    dest = tmp_path / f"sample-v{SAMPLE_VERSION}"
    assert outputs == [str(dest)] * 2 and [p.name for p in tmp_path.iterdir()] == [dest.name]
    assert _tree(dest) == _tree(generate_sample(tmp_path.parent / f"{tmp_path.name}-ref"))


def _must_not_run(*args, **kwargs):
    raise AssertionError("sample_root regenerated a cached sample")
