"""`argbench retrieve`: a tiny run trained on a few sample pairs finds their true counters among the split's
counters; candidates are cached on disk by model and data; the CLI reads stdin and prints JSON."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from argbench.cli import main
from argbench.config import load_config
from argbench.data.corpus import load_corpus
from argbench.eval.retrieve import candidates, distances, retrieve
from argbench.model.exported_model import load_export
from argbench.train.trained_run import export_run
from argbench.train.trainer import _clean_training_split, _training_pairs, fit
from tests.conftest import single_torch_thread
from tests.model.test_export import save_run_folder

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)
PAIRS = 8


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sample")


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    """A tiny model trained 4 epochs on 8 training pairs (high lr: it learns them), exported."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(overrides=[
        "model.encoder=tiny-random-bert", "model.max_length=48", "model.pooling=mean", "train.epochs=4",
        "train.lr=2e-3", "train.batch_size=4", f"data.max_train_pairs={PAIRS}", "data.eval_splits=[test]",
        "loss.in_batch_weight=1.0", "negatives.examples=0"])
    fit(cfg, corpus, out_dir=run_dir)
    return load_export(export_run(run_dir, tmp_path_factory.mktemp("export") / "model")), cfg


def test_trained_pairs_get_their_true_counter_first(exported, corpus, tmp_path):
    model, cfg = exported
    split, _ = _clean_training_split(corpus, cfg)  # the pairs the trainer kept (decontaminated, de-duplicated)
    pairs = _training_pairs(split, PAIRS, np.random.default_rng(cfg.train.seed))  # the trainer's draw
    texts = split.texts
    results = retrieve(model, candidates(model, split, corpus.hash, tmp_path), [texts[split.points_idx[p]]
                                                                                 for p in pairs], k=3)
    firsts = [r["counters"][0] for r in results]
    assert [f["text"] for f in firsts] == [texts[split.counters_idx[p]] for p in pairs]
    truth = split.args.iloc[split.counters_idx[pairs]]
    assert [(f["theme"], f["debate"], f["stance"]) for f in firsts] == list(zip(truth["theme"], truth["debate"],
                                                                               truth["stance"]))
    for r in results:
        hits = r["counters"]
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
        assert all(0 <= h["classifier_score"] <= 1 for h in hits)


def test_rerank_orders_by_classifier_score(exported, corpus, tmp_path):
    model, _ = exported
    split = corpus.split("test")
    hits = retrieve(model, candidates(model, split, corpus.hash, tmp_path), [split.texts[0]], k=10,
                    rerank=True)[0]["counters"]
    scores = [h["classifier_score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 10


def test_a_counter_is_not_its_own_answer(exported, corpus, tmp_path):
    model, _ = exported
    split = corpus.split("test")
    counter = split.texts[split.counters_idx[0]]
    hits = retrieve(model, candidates(model, split, corpus.hash, tmp_path), ["  " + counter + " "], k=5)[0]
    assert counter not in [h["text"] for h in hits["counters"]]


def test_candidates_are_cached_by_model_and_data(exported, corpus, tmp_path, monkeypatch):
    model, _ = exported
    split = corpus.split("test")
    first = candidates(model, split, corpus.hash, tmp_path)
    (path,) = tmp_path.iterdir()
    assert path.name == f"{model.info['weights_digest']}-{corpus.hash}-test-counters.safetensors"
    monkeypatch.setattr(model, "embed", None)  # a second call must not embed again
    second = candidates(model, split, corpus.hash, tmp_path)
    assert torch.equal(first.encoded.emb, second.encoded.emb) and torch.equal(first.rows, second.rows)


def test_distances_by_hand():
    q, c = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert distances(q, c, "euclidean").flatten().tolist() == pytest.approx([5.0, 2.0, 20 ** 0.5, 5 ** 0.5])
    assert distances(q[1:], c, "cosine").flatten().tolist() == pytest.approx([1 - 0.6, 1.0])


def test_cli_reads_stdin_and_prints_json(exported, corpus, tmp_path, monkeypatch, capsys):
    model, _ = exported
    split = corpus.split("test")
    one_line = " ".join(split.texts[split.points_idx[0]].split())
    monkeypatch.setattr("sys.stdin", io.StringIO(one_line + "\n\nanother argument\n"))  # blank lines skipped
    assert main(["retrieve", "--model", str(model.path), "--data", "sample", "--k", "2", "--json",
                 "--cache", str(tmp_path)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and [len(r["counters"]) for r in results] == [2, 2]
    assert set(results[0]["counters"][0]) == {"rank", "text", "kind", "theme", "debate", "stance", "filed_under",
                                              "distance", "classifier_score", "path"}
    assert results[0]["candidates"].startswith("the ") and "distinct counters of the test split" in \
        results[0]["candidates"]


def test_cli_unknown_model_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["retrieve", "--model", "no-such-run", "--data", "sample", "an argument"]) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_cli_retrieves_with_the_selected_epoch_unless_asked_for_the_last(tmp_path, capsys):
    """A run folder whose best/ (epoch 2) and checkpoint/ (epoch 4) hold different weights: other distances; a
    folder without best/ uses its checkpoint/ and says so on stderr in one line."""
    save_run_folder(tmp_path / "run")
    distances_by_epoch = {}
    for epoch in (None, "selected", "last"):
        args = ["retrieve", "--model", str(tmp_path / "run"), "--data", "sample", "--k", "3", "--json", "--cache",
                str(tmp_path / "cache"), "an argument about school uniforms"] + (["--epoch", epoch] if epoch else [])
        assert main(args) == 0
        (result,) = json.loads(capsys.readouterr().out)
        distances_by_epoch[epoch] = [h["distance"] for h in result["counters"]]
    assert distances_by_epoch[None] == distances_by_epoch["selected"] != distances_by_epoch["last"]
    save_run_folder(tmp_path / "old", with_best=False)
    assert main(["retrieve", "--model", str(tmp_path / "old"), "--data", "sample", "--k", "1", "--json", "--cache",
                 str(tmp_path / "cache"), "an argument"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "best/" in line]
    assert len(notes) == 1 and notes[0].startswith(f"argbench: {tmp_path / 'old'} has no best/")
