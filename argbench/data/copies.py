"""Copies in counterargs-18: one text filed more than once, within a split and across splits.

The portal files some debates under several themes and reuses arguments across debates, so the same text occurs
more than once. Text identity is a corpus fact here: every argument has a *copy group*, a 64-bit id of its
whitespace-normalised text (:func:`copy_group_ids`; the corpus frame's ``copy_group`` column). The id depends on
the text alone, so it is comparable across splits, corpora and runs. Everything else is built on it:

* :func:`copy_stats` — per split, how many points and counters have a twin, how many held-out pairs occur in
  training, how many queries have a copy of themselves among their candidates (``argbench data stats``);
* :func:`decontaminate` and :func:`dedupe_pairs` — pure functions on the corpus frame that drop training pairs
  whose texts occur in validation or test, and text-identical training pairs (``data.decontaminate``,
  ``data.dedupe_pairs``);
* :func:`unseen_in_training` and :func:`query_copy_mask` — the *unseen* and *dedup* evaluation views
  (:data:`VIEWS`); :func:`in_batch_copies` — which in-batch candidates are copies of a row's anchor or positive.

Only *paired* arguments count (unpaired points are neither queries nor candidates).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from argbench.data.tasks import SplitData, build_split

TRAINING = "training"
HELD_OUT = ("validation", "test")
VIEWS = ("official", "dedup", "unseen")
"""Evaluation views: the official pools over all queries; *dedup*, the pools without copies of the query; *unseen*,
the official pools over only the queries whose point and counter texts both do not occur in training."""


def normalise(text: str) -> str:
    """``text`` with every run of whitespace collapsed to one space and the ends stripped."""
    return " ".join(text.split())


def copy_group_ids(texts) -> np.ndarray:
    """int64 [n]: the copy group of each text, the first 8 bytes of BLAKE2b of its normalised UTF-8 text.

    Two texts share an id exactly when their normalised texts are equal (a collision among 10^4 texts has a
    chance of about 10^-11)."""
    return np.array([int.from_bytes(hashlib.blake2b(normalise(t).encode(), digest_size=8).digest(), "little",
                                    signed=True) for t in texts], dtype=np.int64)


RERANKED = "/reranked"  # suffix of a split key whose ranks are a second stage's (argbench.train.trainer)
RANK_SPLITS = ("test", "val", "train", "test" + RERANKED, "val" + RERANKED)  # split keys a comparison can pair


def view_key(split_key: str, view: str) -> str:
    """Metrics key of ``view`` for a split key: ``val`` (official), ``val/dedup``, ``val/unseen``."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: expected one of {', '.join(VIEWS)}")
    return split_key if view == "official" else f"{split_key}/{view}"


# --- pairs of the corpus frame -------------------------------------------------------------------------------------

def _pairs(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """One row per true pair of ``split``: ``pair_id``, ``point`` and ``counter`` (their copy groups), in the
    frame's order of the points."""
    rows = frame[(frame["split"] == split) & frame["paired"]]
    points = rows[rows["kind"] == "point"].set_index("pair_id")["copy_group"]
    counters = rows[rows["kind"] == "counter"].set_index("pair_id")["copy_group"]
    return pd.DataFrame({"pair_id": points.index, "point": points.to_numpy(),
                         "counter": counters.reindex(points.index).to_numpy()})


def _groups(frame: pd.DataFrame, splits) -> set[int]:
    """Copy groups of the paired arguments of ``splits``."""
    return set(frame.loc[frame["split"].isin(splits) & frame["paired"], "copy_group"].tolist())


def _drop_pairs(frame: pd.DataFrame, split: str, pair_ids) -> pd.DataFrame:
    """``frame`` without the rows (point and counter) of ``pair_ids`` of ``split``."""
    drop = (frame["split"] == split) & frame["pair_id"].isin(set(pair_ids))
    return frame[~drop]


def decontaminate(frame: pd.DataFrame) -> pd.DataFrame:
    """The corpus frame without every training pair whose point or counter text occurs in validation or test.

    Held-out splits are unchanged, so their official pools and queries stay comparable with the paper."""
    pairs = _pairs(frame, TRAINING)
    held_out = _groups(frame, HELD_OUT)
    leaked = pairs["point"].isin(held_out) | pairs["counter"].isin(held_out)
    return _drop_pairs(frame, TRAINING, pairs.loc[leaked, "pair_id"])


def dedupe_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The corpus frame keeping one of each set of text-identical training pairs (same point text and same counter
    text): the first in the frame's order (sorted file paths), so the choice is deterministic."""
    pairs = _pairs(frame, TRAINING)
    repeated = pairs.duplicated(["point", "counter"], keep="first")
    return _drop_pairs(frame, TRAINING, pairs.loc[repeated, "pair_id"])


def training_frame(frame: pd.DataFrame, *, decontaminate_pairs: bool, dedupe: bool) -> tuple[pd.DataFrame, dict]:
    """The training split's rows after the configured cleaning, and the pair counts before and after each step
    (``{"corpus": N, "decontaminated": N, "deduped": N}``; a step that is off is left out)."""
    counts = {"corpus": len(_pairs(frame, TRAINING))}
    if decontaminate_pairs:
        frame = decontaminate(frame)
        counts["decontaminated"] = len(_pairs(frame, TRAINING))
    if dedupe:
        frame = dedupe_pairs(frame)
        counts["deduped"] = len(_pairs(frame, TRAINING))
    return frame[frame["split"] == TRAINING], counts


# --- views and masks over one split -----------------------------------------------------------------------------

def unseen_in_training(split: SplitData, frame: pd.DataFrame) -> np.ndarray:
    """bool [Q]: query i's point text and its counter's text both occur nowhere among the corpus frame's paired
    training arguments (as a point or as a counter). All False for the training split itself."""
    seen = _groups(frame, [TRAINING])
    groups = split.args["copy_group"].to_numpy()
    point_seen = np.isin(groups[split.query_idx], list(seen))
    counter_seen = np.isin(groups[split.positive_idx], list(seen))
    return ~point_seen & ~counter_seen


def query_copy_mask(split: SplitData, rows: slice = slice(None)) -> torch.Tensor:
    """bool [q, n] for the queries ``rows``: which of the split's other arguments are a copy of the query's text.
    Neither the query itself nor its true counter is marked (the dedup view never takes the answer out of a pool)."""
    groups = torch.from_numpy(split.args["copy_group"].to_numpy(copy=True))
    query = torch.from_numpy(split.query_idx[rows])
    positive = torch.from_numpy(split.positive_idx[rows])
    same = groups[None, :] == groups[query][:, None]
    same[torch.arange(len(query)), query] = False
    same[torch.arange(len(query)), positive] = False
    return same


def in_batch_copies(anchor_groups: np.ndarray, positive_groups: np.ndarray) -> np.ndarray:
    """bool [b, b] for one batch: entry (i, j), j ≠ i, is True when row j's positive (an in-batch candidate of
    row i) has the text of row i's positive or of its anchor. The diagonal (row i's own positive) is False."""
    anchor_groups, positive_groups = np.asarray(anchor_groups), np.asarray(positive_groups)
    candidate = positive_groups[None, :]
    copies = (candidate == positive_groups[:, None]) | (candidate == anchor_groups[:, None])
    np.fill_diagonal(copies, False)
    return copies


# --- the table of `argbench data stats` ----------------------------------------------------------------------------

def copy_stats(frame: pd.DataFrame, splits: dict[str, SplitData] | None = None) -> dict[str, dict]:
    """Per split, JSON-ready::

        {"points_with_twin": N, "counters_with_twin": N, "pairs_in_training": N | None,
         "query_copy_in_pool": {task: N, ...}}

    points (counters) with a text-identical twin among the split's other paired points (counters); held-out pairs
    whose point and counter both occur among training's paired arguments (None for training itself); queries whose
    pool holds a copy of the query's text. Training also gets ``pairs_in_heldout`` (training pairs whose point or
    counter occurs in validation or test: what :func:`decontaminate` drops) and ``distinct_pairs`` (what
    :func:`dedupe_pairs` keeps). ``frame``: the corpus frame; ``splits``: its splits by name, when already built.
    """
    training = _groups(frame, [TRAINING])
    out = {}
    for name in (TRAINING, *HELD_OUT):
        pairs = _pairs(frame, name)
        split = splits[name] if splits else build_split(frame[frame["split"] == name], name)
        copies = query_copy_mask(split)
        row = {
            "points_with_twin": int(pairs["point"].duplicated(keep=False).sum()),
            "counters_with_twin": int(pairs["counter"].duplicated(keep=False).sum()),
            "pairs_in_training": None if name == TRAINING
            else int((pairs["point"].isin(training) & pairs["counter"].isin(training)).sum()),
            "query_copy_in_pool": {task: int((pool & copies).any(1).sum()) for task, pool in split.pools.items()},
        }
        if name == TRAINING:
            held_out = _groups(frame, HELD_OUT)
            row["pairs_in_heldout"] = int((pairs["point"].isin(held_out) | pairs["counter"].isin(held_out)).sum())
            row["distinct_pairs"] = int((~pairs.duplicated(["point", "counter"])).sum())
        out[name] = row
    return out
