"""The step's inputs prepared ahead (prefetching, device masks), the loss sums kept on the device, and the deal of
training batches to ranks: each against the plain computation it replaces."""

import threading

import numpy as np
import pytest
import torch

from argbench.data.copies import in_batch_copies
from argbench.data.corpus import load_corpus
from argbench.model.tokens import bucketed_batches, pad_batch, tokenize_texts
from argbench.train.batches import host_batch, in_batch_masks, prefetch, to_device
from argbench.train.distributed import shares
from argbench.train.step_totals import StepTotals


@pytest.fixture(scope="module")
def training(tiny_encoder):
    """(tokenised training texts, (anchor, positive, negative) rows per pair, copy groups) of the sample corpus."""
    split = load_corpus("sample").split("training")
    tok = tokenize_texts(tiny_encoder[1], split.texts, 64)
    rng = np.random.default_rng(0)
    negatives = rng.integers(0, len(split.args), len(split.points_idx))
    return tok, (split.points_idx, split.counters_idx, negatives), split.args["copy_group"].to_numpy()


def test_prefetching_yields_exactly_the_batches_of_the_inline_loop(training):
    tok, sides, groups = training
    # The loop as the trainer ran it before: draw the batch order, then pad each side of each batch in turn.
    order = bucketed_batches(tok.lengths[sides[0]], 16, np.random.default_rng(7))
    inline = [[pad_batch(tok, side[rows]) for side in sides] for rows in order]
    again = bucketed_batches(tok.lengths[sides[0]], 16, np.random.default_rng(7))
    ahead = list(prefetch(lambda rows: host_batch(tok, rows, sides, groups, pad=True, pin_memory=False), again))
    assert len(ahead) == len(inline) > 10
    for want, got, rows in zip(inline, ahead, order):
        assert np.array_equal(got.rows, rows)
        for (ids, mask), (got_ids, got_mask) in zip(want, got.padded):
            assert torch.equal(ids, got_ids) and torch.equal(mask, got_mask)
        assert torch.equal(got.groups[0], torch.from_numpy(groups[sides[0][rows]]))
        assert torch.equal(got.groups[1], torch.from_numpy(groups[sides[1][rows]]))


def test_prefetching_raises_the_error_where_it_happened_and_stops_its_thread_early():
    def make(i):
        if i == 5:
            raise KeyError("item 5")
        return i

    seen = []
    with pytest.raises(KeyError, match="item 5"):
        for value in prefetch(make, range(10)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    stream = prefetch(lambda i: i, range(10_000), depth=2)
    assert next(stream) == 0
    stream.close()  # the loop left early: the worker must not stay blocked on the full queue
    assert not any(t.name == "argbench-prefetch" for t in threading.enumerate())


def test_in_batch_masks_on_the_device_equal_the_numpy_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        anchors, positives = rng.integers(0, 6, 12), rng.integers(0, 6, 12)  # few groups: many copies
        forward, reverse = in_batch_masks(torch.from_numpy(anchors), torch.from_numpy(positives), symmetric=True)
        assert np.array_equal(forward.numpy(), in_batch_copies(anchors, positives))
        assert np.array_equal(reverse.numpy(), in_batch_copies(positives, anchors))
    assert in_batch_masks(torch.from_numpy(anchors), torch.from_numpy(positives), symmetric=False)[1] is None
    pair = (torch.arange(3), (torch.arange(2), torch.arange(2)))
    assert all(torch.equal(a, b) for a, b in zip(to_device(pair[1], torch.device("cpu")), pair[1]))


def test_step_totals_sum_as_python_floats_and_keep_the_first_non_finite_step():
    rng = np.random.default_rng(1)
    steps = [{"triplet": torch.tensor(v[0], dtype=torch.float32), "total": torch.tensor(v[1], dtype=torch.float32)}
             for v in rng.normal(size=(50, 2)) * 1e3]
    totals = StepTotals()
    for parts in steps:
        totals.add(parts)
    python = {k: 0.0 for k in steps[0]}
    for parts in steps:
        for k, v in parts.items():
            python[k] += float(v)
    read = totals.read()
    assert read.sums == python and read.steps == 50 and read.bad_step == 0  # bit for bit, not approximately
    totals.add({"triplet": torch.tensor(float("nan")), "total": torch.tensor(float("nan"))})  # step 51
    totals.add({"triplet": torch.tensor(2.0), "total": torch.tensor(float("inf"))})  # step 52: not the first
    read = totals.read()
    assert read.bad_step == 51 and np.isnan(read.bad_parts["total"]) and np.isnan(read.bad_parts["triplet"])


@pytest.mark.parametrize("sizes, world", [([8] * 8, 2), ([8] * 9, 2), ([8, 8, 8, 8, 4], 2), ([8] * 7 + [1], 4),
                                          ([8] * 5 + [3], 4), ([2], 2), ([8] * 10, 3), ([5, 1], 4)])
def test_shares_leave_no_row_out_and_give_every_rank_as_many_batches(sizes, world):
    starts = np.cumsum([0, *sizes])
    batches = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
    dealt = shares(batches, world)
    assert len({len(share) for share in dealt}) == 1  # the same number of steps on every rank
    rows = np.concatenate([b for share in dealt for b in share])
    assert sorted(rows.tolist()) == list(range(starts[-1]))  # every row exactly once
    assert all(len(b) > 0 for share in dealt for b in share)
    if len(sizes) % world == 0:  # whole rounds: dealt as before, batch r, r + W, ...
        assert [b.tolist() for b in dealt[1]] == [b.tolist() for b in batches[1::world]]


def test_shares_refuse_fewer_rows_than_ranks():
    with pytest.raises(ValueError, match="cannot be shared"):
        shares([np.arange(1)], 2)
