"""Copies and leakage (argbench.data.copies): copy groups, the data-stats table, decontamination and de-duplication,
copy-aware mining and in-batch negatives, and the dedup and unseen evaluation views.

Most tests use a hand-made corpus whose copies are known by construction (see ``copies_corpus``); the trainer and
the CLI are checked on the generated sample, whose copies are derived here from its files.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from argbench import cli
from argbench.config import load_config
from argbench.data.copies import (copy_group_ids, copy_stats, decontaminate, dedupe_pairs, in_batch_copies,
                             query_copy_mask, training_frame, view_key)
from argbench.data.corpus import load_corpus, stats
from argbench.eval.evaluate import evaluate
from argbench.model.loss import in_batch
from argbench.train.negatives import BACKENDS, mine
from argbench.train.trainer import fit
from tests.conftest import single_torch_thread
from tests.factories import write_argument, write_pairs

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)
REAL = os.environ.get("ARGBENCH_DATA")


def pair(root, split, theme, debate, stance, number, point, counter):
    write_argument(root, split, theme, debate, stance, number, "point", point)
    write_argument(root, split, theme, debate, stance, number, "counter", counter)


@pytest.fixture(scope="module")
def copies_corpus(tmp_path_factory):
    """Unique-text pairs (corpus_factory) plus these copies:

    training  t1/d1/pro/01 ("P", "C") and its copy t1/dup/pro/01 with other whitespace ("P ", "C\\n\\n"): a
              duplicate training pair; t1/leak/pro/01 ("L", "LC"): both texts also in test; t1/half/pro/01
              ("H", "HC"): only its counter occurs, as validation's t1/v/pro/01 counter.
    test      t1/leak/pro/01 ("L", "LC"), leaked from training, and the same debate filed under t2 as
              t2/p-leak/pro/01: two queries with a copy of themselves in their epa pool; t1/half/con/01
              ("H", "HC2"): its point occurs in training, its counter does not.
    """
    root = tmp_path_factory.mktemp("copies")
    for split in ("training", "validation", "test"):
        write_pairs(root, split, {("t1", "d0"): {"pro": 2, "con": 1}, ("t2", "d9"): {"con": 1}})
    pair(root, "training", "t1", "d1", "pro", 1, "Title\n\nP", "C")
    pair(root, "training", "t1", "dup", "pro", 1, "Title \n\n P ", "C\n\n")
    pair(root, "training", "t1", "leak", "pro", 1, "Leaked\n\nL", "LC")
    pair(root, "training", "t1", "half", "pro", 1, "Half\n\nH", "HC")
    pair(root, "validation", "t1", "v", "pro", 1, "Validation\n\nV", "HC")
    pair(root, "test", "t1", "leak", "pro", 1, "Leaked\n\nL", "LC")
    pair(root, "test", "t2", "p-leak", "pro", 1, "Leaked\n\nL", "LC")
    pair(root, "test", "t1", "half", "con", 1, "Half\n\nH", "HC2")
    return load_corpus(root)


def pair_ids(frame, split="training") -> set[str]:
    return set(frame.loc[(frame["split"] == split) & frame["paired"], "pair_id"])


# --- copy groups ---------------------------------------------------------------------------------------------------
def test_copy_groups_are_equal_exactly_for_equal_normalised_texts():
    groups = copy_group_ids(["a  b\n", " a b", "a b c", "ab"])
    assert groups[0] == groups[1] and len(set(groups[1:])) == 3 and groups.dtype == np.int64
    # a fact of the text alone: the same id in another call, corpus or split
    assert copy_group_ids(["a b"])[0] == groups[0]


def test_corpus_frame_carries_the_copy_group(copies_corpus):
    frame = copies_corpus.frame
    rows = frame[frame["pair_id"].isin(["t1/d1/pro/01", "t1/dup/pro/01"]) & (frame["kind"] == "point")]
    assert rows["copy_group"].nunique() == 1
    leak = frame[frame["pair_id"] == "t1/leak/pro/01"]
    assert leak.groupby("kind")["copy_group"].nunique().eq(1).all() and set(leak["split"]) == {"training", "test"}


# --- decontamination and de-duplication ---------------------------------------------------------------------------
def test_decontaminate_drops_exactly_the_pairs_whose_texts_occur_in_validation_or_test(copies_corpus):
    frame = copies_corpus.frame
    cleaned = decontaminate(frame)
    assert pair_ids(frame) - pair_ids(cleaned) == {"t1/leak/pro/01", "t1/half/pro/01"}
    held_out = frame["split"] != "training"
    assert cleaned[cleaned["split"] != "training"].equals(frame[held_out])  # held-out splits untouched


def test_dedupe_keeps_the_first_of_text_identical_training_pairs(copies_corpus):
    frame = copies_corpus.frame
    assert pair_ids(frame) - pair_ids(dedupe_pairs(frame)) == {"t1/dup/pro/01"}  # "d1" < "dup" in path order


def test_training_frame_counts_each_step(copies_corpus):
    n = len(pair_ids(copies_corpus.frame))
    rows, counts = training_frame(copies_corpus.frame, decontaminate_pairs=True, dedupe=True)
    assert counts == {"corpus": n, "decontaminated": n - 2, "deduped": n - 3}
    assert set(rows["split"]) == {"training"} and len(pair_ids(rows)) == n - 3
    _, counts = training_frame(copies_corpus.frame, decontaminate_pairs=False, dedupe=False)
    assert counts == {"corpus": n}


# --- the stats table -----------------------------------------------------------------------------------------------
def test_copy_stats_of_the_hand_made_corpus(copies_corpus):
    got = copy_stats(copies_corpus.frame)
    n_training = len(pair_ids(copies_corpus.frame))
    assert got["training"] == {
        "points_with_twin": 2, "counters_with_twin": 2, "pairs_in_training": None,
        "query_copy_in_pool": {"sdoc": 0, "sdoa": 0, "sdc": 0, "sda": 0, "stc": 0, "sta": 2, "epc": 0, "epa": 2},
        "pairs_in_heldout": 2, "distinct_pairs": n_training - 1}
    assert got["validation"]["pairs_in_training"] == 0  # "HC" alone: the pair's point is new
    # test: the leaked pair twice (t1, t2: twins, in each other's epa pool, not sta: other themes); the half
    # pair's point "H" occurs in training but its counter "HC2" does not
    assert got["test"] == {
        "points_with_twin": 2, "counters_with_twin": 2, "pairs_in_training": 2,
        "query_copy_in_pool": {"sdoc": 0, "sdoa": 0, "sdc": 0, "sda": 0, "stc": 0, "sta": 0, "epc": 0, "epa": 2}}


def test_data_stats_json_has_the_copies_keys(copies_corpus):
    splits = stats(copies_corpus)["splits"]
    assert set(splits["training"]["copies"]) == {"points_with_twin", "counters_with_twin", "pairs_in_training",
                                                 "query_copy_in_pool", "pairs_in_heldout", "distinct_pairs"}
    for split in ("validation", "test"):
        assert set(splits[split]["copies"]) == {"points_with_twin", "counters_with_twin", "pairs_in_training",
                                                "query_copy_in_pool"}
    json.dumps(splits)


# --- views ---------------------------------------------------------------------------------------------------------
def test_unseen_flags_queries_whose_point_and_counter_do_not_occur_in_training(copies_corpus):
    split = copies_corpus.split("test")
    pairs = split.args["pair_id"].to_numpy()[split.query_idx]
    seen = {"t1/leak/pro/01", "t2/p-leak/pro/01", "t1/half/con/01"}  # "H" occurs in training: not unseen
    assert dict(zip(pairs, split.unseen)) == {p: p not in seen for p in pairs}
    assert not copies_corpus.split("training").unseen.any()


def test_query_copy_mask_marks_exactly_the_copies_of_the_query(copies_corpus):
    split = copies_corpus.split("test")
    mask = query_copy_mask(split)
    points = split.args["pair_id"].to_numpy()[split.query_idx]
    t1, t2 = (int(np.flatnonzero(points == p)[0]) for p in ("t1/leak/pro/01", "t2/p-leak/pro/01"))
    assert mask.sum() == 2
    assert mask[t1, split.query_idx[t2]] and mask[t2, split.query_idx[t1]]


def test_dedup_ranks_leave_out_only_the_query_copies(copies_corpus):
    """Query i lies at (100 i, 0), its counter at distance 1, every other argument far away, except a copy of the
    query, placed on the query: the copy outscores the true counter (rank 2) where the pool holds it, and the dedup
    view takes it out (rank 1)."""
    split = copies_corpus.split("test")
    n = len(split.args)
    emb = torch.zeros(n, 2)
    emb[:, 0] = 10.0 + torch.arange(n, dtype=torch.float32)  # everything far, at distinct distances
    query = torch.zeros(len(split.query_idx), 2)
    for i, (q, c) in enumerate(zip(split.query_idx, split.positive_idx)):
        query[i] = torch.tensor([float(i) * 100, 0.0])
        emb[c] = query[i] + torch.tensor([0.0, 1.0])  # its counter at distance 1
    copied = query_copy_mask(split)
    for i in range(len(split.query_idx)):
        for j in np.flatnonzero(copied[i].numpy()):
            emb[j] = query[i]  # only queries t1 and t2 have a copy: it lies on the query
    got = evaluate(split, query, emb, metric="euclidean")
    assert copied.any(1).sum() == 2
    for task in got.ranks:
        in_pool = (split.pool(task) & copied).any(1).numpy()
        np.testing.assert_array_equal(got.ranks[task], np.where(in_pool, 2, 1), task)
        np.testing.assert_array_equal(got.dedup_ranks[task], np.ones(len(split.query_idx)), task)
    views = got.views()
    assert views["unseen"]["epa"]["acc@1"] == 1.0 and views["official"]["epa"]["acc@1"] < 1.0
    assert views["dedup"]["epa"]["acc@1"] == 1.0


def test_view_keys():
    assert [view_key("val", v) for v in ("official", "dedup", "unseen")] == ["val", "val/dedup", "val/unseen"]
    with pytest.raises(ValueError, match="unknown view"):
        view_key("val", "clean")


# --- mining --------------------------------------------------------------------------------------------------------
def twin_layout():
    """Pairs 0 and 1 are text copies (same groups) lying on top of each other; pair 2 is far away, pair 3 farther.
    Index-only exclusion makes 1 the hardest negative of 0 (distance 0) and vice versa."""
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [9.0, 0.0]])
    counters = points + torch.tensor([0.0, 0.5])
    groups = (np.array([100, 100, 102, 103]), np.array([200, 200, 202, 203]))
    return points, counters, groups


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mining_never_returns_a_copy_of_anchor_or_positive(backend):
    points, counters, groups = twin_layout()
    kept = mine(points, counters, rate=0.0, generator=gen(), backend=backend, copy_groups=groups,
                exclude_copies=False)
    assert kept.copy[:2].all() and kept.stats(np.zeros(4), np.zeros(4))["copy"] == 0.5
    excluded = mine(points, counters, rate=0.0, generator=gen(), backend=backend, copy_groups=groups)
    assert not excluded.copy.any() and excluded.stats(np.zeros(4), np.zeros(4))["copy"] == 0.0
    assert excluded.neg_index[:2].tolist() == [2, 2] and excluded.neg_kind[:2].tolist() == ["point", "point"]


def test_random_draws_never_return_a_copy():
    points, counters, groups = twin_layout()
    for seed in range(20):
        result = mine(points, counters, rate=1.0, generator=gen(seed), copy_groups=groups)
        assert not result.copy.any()
    drawn = [mine(points, counters, rate=1.0, generator=gen(s), copy_groups=groups, exclude_copies=False).copy
             for s in range(20)]
    assert np.concatenate(drawn).any()  # queries 0 and 1: 2 of their 6 allowed arguments are copies


def test_mining_without_groups_is_the_index_rule():
    points, counters, groups = twin_layout()
    plain = mine(points, counters, rate=0.5, generator=gen(3))
    with_groups = mine(points, counters, rate=0.5, generator=gen(3), copy_groups=groups, exclude_copies=False)
    assert plain.copy is None and plain.stats(np.zeros(4), np.zeros(4))["copy"] is None
    np.testing.assert_array_equal(plain.neg_index, with_groups.neg_index)
    np.testing.assert_array_equal(plain.source, with_groups.source)


def test_mining_refuses_a_row_with_nothing_left():
    points = torch.tensor([[0.0], [1.0]])
    same = (np.array([1, 1]), np.array([2, 2]))  # both pairs are one text pair: nothing is another text
    with pytest.raises(ValueError, match="no allowed neighbour"):
        mine(points, points + 1, rate=1.0, generator=gen(), copy_groups=same)
    with pytest.raises(ValueError, match="copy_groups"):
        mine(points, points + 1, rate=0.0, generator=gen(), copy_groups=(np.array([1]), np.array([2])))


# --- in-batch negatives --------------------------------------------------------------------------------------------
def test_in_batch_copies_marks_copies_of_the_positive_or_the_anchor():
    anchors, positives = np.array([1, 2, 3, 4]), np.array([10, 10, 1, 40])
    got = in_batch_copies(anchors, positives)
    want = np.zeros((4, 4), dtype=bool)
    want[0, 1] = want[1, 0] = True  # the same counter text
    want[0, 2] = True  # row 2's counter is row 0's anchor text
    np.testing.assert_array_equal(got, want)


def test_masked_in_batch_loss_equals_the_loss_without_the_masked_candidates():
    torch.manual_seed(0)
    anchor, positive = torch.randn(3, 4), torch.randn(3, 4)
    copies = torch.tensor([[False, True, False], [False, False, False], [False, False, False]])
    got = in_batch(anchor, positive, 0.1, copies)
    sim = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / 0.1
    row0 = F.cross_entropy(sim[0, [0, 2]][None], torch.tensor([0]))
    rest = F.cross_entropy(sim[1:], torch.tensor([1, 2]), reduction="sum")
    assert got.item() == pytest.approx(((row0 + rest) / 3).item(), rel=1e-5)
    assert in_batch(anchor, positive, 0.1).item() != pytest.approx(got.item())


# --- the sample and the trainer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_corpus():
    return load_corpus("sample")


def refiled_pairs(corpus) -> int:
    """Training pairs of the debate the sample also files in test (its ``p-`` copy): what decontamination drops."""
    frame = corpus.frame
    refiled = {d.removeprefix("p-") for d in frame.loc[frame["split"] == "test", "debate"] if d.startswith("p-")}
    rows = frame[(frame["split"] == "training") & frame["debate"].isin(refiled) & frame["paired"]]
    return len(rows) // 2


def test_sample_has_leakage_and_copies(sample_corpus):
    got = copy_stats(sample_corpus.frame)
    n = refiled_pairs(sample_corpus)
    assert n >= 6  # a whole debate: 3-5 pairs per stance
    assert got["training"]["pairs_in_heldout"] == got["test"]["pairs_in_training"] == n
    # the reused pair: one point and one counter twin per split, and one fewer distinct training pair
    for split in ("training", "test"):
        assert (got[split]["points_with_twin"], got[split]["counters_with_twin"]) == (2, 2)
        assert got[split]["query_copy_in_pool"]["epa"] == 2
    assert got["training"]["distinct_pairs"] == len(sample_corpus.split("training").query_idx) - 1
    assert got["validation"]["pairs_in_training"] == 0


@pytest.mark.parametrize("leaky", [False, True])
def test_trainer_trains_on_the_cleaned_pairs_and_reports_them(sample_corpus, leaky):
    class Info:
        def on_train_start(self, info):
            self.info = info

    switch = str(not leaky).lower()
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.max_length=32", "train.epochs=0",
                                 "train.device=cpu", f"data.decontaminate={switch}", f"data.dedupe_pairs={switch}"])
    hook = Info()
    history = fit(cfg, sample_corpus, [hook])
    before = len(sample_corpus.split("training").query_idx)
    cleaned = before if leaky else before - refiled_pairs(sample_corpus) - 1
    assert (hook.info["train_pairs_before"], hook.info["train_pairs_cleaned"], hook.info["train_pairs"]) == \
        (before, cleaned, cleaned)
    assert {"val/epa/acc_at_1", "val/dedup/epa/acc_at_1", "val/unseen/epa/acc_at_1"} <= set(history[0])


def test_copy_fraction_reaches_the_epoch_metrics(sample_corpus):
    overrides = ["model.encoder=tiny-random-bert", "model.max_length=32", "train.epochs=1", "train.device=cpu",
                 "negatives.schedule=constant", "negatives.rate=0.0", "data.dedupe_pairs=false",
                 "model.proj_dim=null", "model.classifier=false", "train.batch_size=32", "eval.every=5"]
    fractions = {}
    for exclude in (True, False):
        cfg = load_config(overrides=[*overrides, f"negatives.exclude_copies={str(exclude).lower()}"])
        fractions[exclude] = fit(cfg, sample_corpus)[1]["negatives/copy_frac"]
    # the reused pair is a text-identical training pair: two anchors whose copy lies at distance 0
    assert fractions == {True: 0.0, False: pytest.approx(2 / (len(sample_corpus.split("training").query_idx)
                                                                - refiled_pairs(sample_corpus)))}


def test_eval_json_has_the_three_views(capsys):
    assert cli.main(["eval", "--encoder", "tfidf", "--data", "sample", "--split", "test", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"test", "test_dedup", "test_unseen"}
    assert got["test_dedup"]["epa"]["acc@1"] >= got["test"]["epa"]["acc@1"]


# --- the real corpus -----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL, reason="set ARGBENCH_DATA to the real counterargs-18 corpus")
@pytest.mark.realdata
def test_real_corpus_copies_table():
    got = copy_stats(load_corpus(REAL).frame)
    table = {split: (got[split]["points_with_twin"], got[split]["counters_with_twin"], got[split]["pairs_in_training"])
             for split in got}
    assert table == {"training": (1844, 1862, None), "validation": (179, 183, 574), "test": (214, 218, 616)}
    assert (got["training"]["pairs_in_heldout"], got["training"]["distinct_pairs"]) == (1269, 3103)
    assert got["test"]["query_copy_in_pool"]["epa"] == 214


def test_data_stats_text_shows_the_copies_table(sample_corpus, capsys):
    assert cli.main(["data", "stats", "--data", "sample"]) == 0
    lines = capsys.readouterr().out.splitlines()
    distinct = next(line for line in lines if line.startswith("distinct training pairs"))
    assert distinct.split()[-3:] == [str(len(sample_corpus.split("training").query_idx) - 1), "–", "–"]
    leaked = next(line for line in lines if line.startswith("pairs whose point and counter both occur in training"))
    assert leaked.split()[-3:] == ["–", "0", str(refiled_pairs(sample_corpus))]
