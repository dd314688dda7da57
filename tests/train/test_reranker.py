"""The cross-encoder second stage: mining its negatives by hand, its loss by hand, and a tiny run end to end (the
first stage left exactly as without it, two-stage metrics in every view, the checkpoint, the export and
`argbench retrieve --rerank`)."""

import math

import numpy as np
import pytest
import torch

from argbench.config import load_config
from argbench.data.corpus import load_corpus
from argbench.data.tasks import TASKS
from argbench.eval.retrieve import candidates, retrieve
from argbench.model.export import write_export
from argbench.model.exported_model import load_export
from argbench.train.reranker import hard_negatives, listwise_loss, training_groups
from argbench.train.selection import selected_epoch
from argbench.train.trained_run import load_run_dir
from argbench.train.trainer import fit
from tests.conftest import single_torch_thread

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)

TINY = ["model.encoder=tiny-random-bert", "model.max_length=48", "train.batch_size=16", "data.max_train_pairs=24",
        "train.device=cpu", "train.epochs=1", "data.eval_splits=[validation,test]"]
TIMINGS = {"perf/epoch_seconds", "perf/train_seq_per_s"}


def test_hard_negatives_are_the_best_scoring_allowed_candidates():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    forbidden = torch.tensor([[True, False, False, False], [False, False, True, False]])
    assert hard_negatives(query, cand, forbidden, 2, "cosine").tolist() == [[1, 3], [3, 1]]
    assert hard_negatives(query, cand, forbidden, 9, "cosine").shape == (2, 3)  # as many as every row allows


def test_a_point_with_nothing_allowed_is_an_error():
    with pytest.raises(ValueError, match="no allowed negative"):
        hard_negatives(torch.eye(2), torch.eye(2), torch.tensor([[True, True], [False, True]]), 1, "cosine")


def test_listwise_loss_by_hand():
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    want = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (1 + 2 * math.e))) / 2
    assert listwise_loss(scores).item() == pytest.approx(want, rel=1e-6)


def test_training_groups_never_hold_a_copy_of_the_point_or_its_counter():
    corpus = load_corpus("sample")
    split = corpus.split("training")
    pairs = np.arange(len(split.points_idx))
    emb = torch.randn(len(split.args), 8, generator=torch.Generator().manual_seed(0))
    points, counters, negatives = training_groups(split, pairs, lambda rows, side: emb[rows], 3, "euclidean")
    groups = split.args["copy_group"].to_numpy()
    assert negatives.shape == (len(pairs), 3)
    assert (groups[negatives] != groups[points][:, None]).all()
    assert (groups[negatives] != groups[counters][:, None]).all()
    own = np.concatenate([points, counters])
    assert np.isin(negatives, own).all()  # drawn from the pairs trained on


class Recorder:
    def __init__(self):
        self.evaluations = []

    def on_evaluation(self, epoch, split, evaluation):
        self.evaluations.append((epoch, split))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny recipe trained with and without the cross-encoder, same seed; the first with a run folder."""
    corpus = load_corpus("sample")
    out = tmp_path_factory.mktemp("run") / "run"
    recorder = Recorder()
    staged = fit(load_config(overrides=[*TINY, "eval.rerank=cross_encoder"]), corpus, [recorder], out_dir=out)
    plain = fit(load_config(overrides=TINY), corpus)
    return corpus, out, recorder, staged, plain


def test_the_first_stage_is_exactly_the_run_without_a_second_one(runs):
    _, _, _, staged, plain = runs
    for with_stage, without in zip(staged, plain):
        first = {k: v for k, v in without.items() if k not in TIMINGS and "/reranked/" not in k}  # the classifier's
        assert {k: v for k, v in with_stage.items() if k in first} == first


def test_two_stage_metrics_of_every_split_task_and_view_at_the_last_epoch(runs):
    _, _, recorder, staged, plain = runs
    last = staged[-1]
    selected = staged[selected_epoch(staged, "val/epa/acc_at_1")]  # the second stage reranks the selected model's
    for key in ("val", "test"):
        for view in ("", "/dedup", "/unseen"):
            for task in TASKS:
                assert 0.0 <= last[f"{key}/reranked{view}/{task}/acc_at_1"] <= 1.0
        # reranking the top 10 never changes which counters are in it
        assert last[f"{key}/reranked/epa/acc_at_10"] == pytest.approx(selected[f"{key}/epa/acc_at_10"])
    assert last["train/rerank_loss"] > 0 and last["perf/rerank_train_seconds"] > 0
    assert not any("reranked" in k for k in staged[0])  # epoch 0: no second stage yet
    assert set(last) - set(plain[-1]) == {k for k in last if "rerank_" in k}  # the plain run's second stage is
    assert {k for k in plain[-1] if "/reranked/" in k} == {k for k in last if "/reranked/" in k}  # its classifier
    assert (1, "val/reranked") in recorder.evaluations and (1, "test/reranked") in recorder.evaluations


def test_without_a_cross_encoder_the_pair_classifier_is_the_selected_epochs_second_stage(runs):
    _, _, _, _, plain = runs
    last, selected = plain[-1], plain[selected_epoch(plain, "val/epa/acc_at_1")]
    for key in ("val", "test"):
        for view in ("", "/dedup", "/unseen"):
            for task in TASKS:
                assert 0.0 <= last[f"{key}/reranked{view}/{task}/acc_at_1"] <= 1.0
            # the top 10 keeps its members; what is outside it keeps its first-stage rank
            top = f"{view}/sdoa/acc_at_10"
            assert last[f"{key}/reranked{top}"] == pytest.approx(selected[f"{key}{top}"])
        # every epoch's epa-only figure of the classifier (the original's protocol), at the selected epoch
        assert last[f"{key}/reranked/epa/acc_at_1"] == pytest.approx(selected[f"{key}/rerank/acc_at_1"])
    assert not any("/reranked/" in k for row in plain[:-1] for k in row)


def test_the_checkpoint_export_and_retrieve_use_the_cross_encoder(runs, tmp_path):
    corpus, out, _, _, _ = runs
    assert (out / "checkpoint" / "reranker.safetensors").is_file()
    run = load_run_dir(out)
    assert run.reranker is not None
    exported = load_export(write_export(run, tmp_path / "export"))
    assert (tmp_path / "export" / "cross_encoder" / "config.json").is_file()
    split = corpus.split("test")
    cands = candidates(exported, split, corpus.hash, None)
    query = [split.texts[split.query_idx[0]]]
    reranked = retrieve(exported, cands, query, k=5, rerank=True)[0]["counters"]
    scores = [hit["cross_encoder_score"] for hit in reranked]
    assert scores == sorted(scores, reverse=True)
    plain = retrieve(exported, cands, query, k=10)[0]["counters"]
    assert {hit["path"] for hit in reranked} <= {hit["path"] for hit in plain}  # reordered from the nearest 10
    assert "cross_encoder_score" not in plain[0]
