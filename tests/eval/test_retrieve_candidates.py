"""`argbench retrieve` on a hand-made corpus whose test split files one counter text twice (under two themes): the
text is one candidate, so the top k never holds it twice; the candidate set is stated; ``--all`` adds the points;
what is embedded is one line on stderr when stderr is not a terminal."""

from __future__ import annotations

import json

import pytest

from argbench.cli import main
from argbench.data.corpus import load_corpus
from argbench.eval.retrieve import candidate_rows, candidates, retrieve
from argbench.model.exported_model import load_export
from argbench.train.trained_run import export_run
from tests.factories import write_argument, write_small_corpus
from tests.model.test_export import save_run_folder

COPY = "counter test t1 d1 pro 1"  # the text of a counter of write_small_corpus's test split, filed again


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = write_small_corpus(tmp_path_factory.mktemp("corpus"))
    write_argument(root, "test", "t2", "d9", "pro", 1, "point", "Title other\n\na point answered by a copy")
    write_argument(root, "test", "t2", "d9", "pro", 1, "counter", "  " + COPY.replace(" ", "\n", 1))  # same text
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    save_run_folder(run_dir)
    return load_export(export_run(run_dir, tmp_path_factory.mktemp("export") / "model"))


def test_a_text_filed_twice_is_one_candidate_and_listed_once(corpus_root, model, tmp_path):
    corpus = load_corpus(str(corpus_root))
    split = corpus.split("test")
    counters = [split.args.iloc[i]["text"] for i in split.counters_idx]
    assert sum(" ".join(t.split()) == COPY for t in counters) == 2  # the corpus files the text twice
    filings = candidate_rows(split)
    assert len(filings) == len(counters) - 1 and sorted(map(len, filings))[-1] == 2
    cands = candidates(model, split, corpus.hash, tmp_path)
    (result,) = retrieve(model, cands, [COPY + " and more"], k=len(counters))
    texts = [" ".join(hit["text"].split()) for hit in result["counters"]]
    assert len(texts) == len(counters) - 1 and len(set(texts)) == len(texts)  # every candidate, each text once
    (copy,) = [hit for hit in result["counters"] if " ".join(hit["text"].split()) == COPY]
    assert copy["filed_under"] == ["t1 / d1 / pro", "t2 / d9 / pro"]
    assert result["candidates"] == (f"the {len(counters) - 1} distinct counters of the test split (1 text filed "
                                    "more than once, shown once)")


def test_all_searches_the_points_too_and_the_cli_says_what_it_embeds(corpus_root, model, tmp_path, capsys):
    corpus = load_corpus(str(corpus_root))
    split = corpus.split("test")
    args = ["retrieve", "--model", str(model.path), "--data", str(corpus_root), "--k", "50", "--json", "--cache",
            str(tmp_path), "Title other a point answered by a copy, asked again"]
    assert main([*args, "--all"]) == 0
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)
    assert {hit["kind"] for hit in result["counters"]} == {"point", "counter"}
    assert len(result["counters"]) == len(split.args) - 1 and "distinct arguments (points and counters)" in \
        result["candidates"]
    # stderr is no terminal here: one line saying what is embedded, no progress bar
    (line,) = [x for x in captured.err.splitlines() if "embedding" in x]
    assert line == f"argbench retrieve: embedding the {len(split.args) - 1} candidate texts of the test split " \
                   "(once: cached)" and "\r" not in captured.err
    assert main(args) == 0  # counters only: a cache of its own, embedded once
    captured = capsys.readouterr()
    assert {hit["kind"] for hit in json.loads(captured.out)[0]["counters"]} == {"counter"}
    assert "embedding the" in captured.err
    assert main(args) == 0  # from the cache: nothing embedded, nothing said
    assert "embedding" not in capsys.readouterr().err
