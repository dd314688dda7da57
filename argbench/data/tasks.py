"""The eight candidate pools of best-counterargument retrieval (Wachsmuth et al., 2018).

For every true pair (p, c) of a split, p is a query and c its one right answer. Candidates come from the same split's
*paired* arguments; "same debate" means same theme and debate folder (six test debates appear under two themes, as
separate copies). Two rules hold in every pool:

* the query p itself is never a candidate;
* another argument whose text is identical to c (after collapsing whitespace) is not a candidate: such copies come
  from debates filed under two themes, and ranking one of them first would be neither right nor wrong.

These rules reproduce the official mean pool sizes on the test split exactly (3.89, 7.65, 7.65, 14.30, 136.5, 272.1,
1400.8, 2800.8); counting debates by folder name alone, or keeping the copies, does not.

==== =========================================================================
task candidates for query p
==== =========================================================================
sdoc counters in p's debate under p's stance folder (they oppose p)
sdoa sdoc + the points of the other stance folder of p's debate
sdc  all counters of p's debate
sda  all arguments of p's debate except p
stc  all counters of p's theme
sta  all arguments of p's theme except p
epc  all counters of the split
epa  all arguments of the split except p
==== =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from argbench.config import TASK_NAMES as TASKS  # spelled once, where configs check task names against it


@dataclass
class SplitData:
    """One split, ready for retrieval.

    ``args`` holds the split's paired arguments with index 0..n-1 (the row of each argument in an embedding matrix):
    all counters first, then all points, both in pair order, so pair i is ``(points_idx[i], counters_idx[i])``.
    Queries are the points: ``query_idx == points_idx`` and ``positive_idx == counters_idx``.
    ``pool(task)`` is a ``torch.bool`` mask of shape [Q, n]; it is built on first use and cached.
    ``unseen`` (bool [Q], set by :meth:`argbench.data.corpus.Corpus.split`; None when unknown) marks the queries whose
    point and counter texts do not occur in the corpus's training split (:mod:`argbench.data.copies`).
    """

    name: str
    args: pd.DataFrame
    points_idx: np.ndarray
    counters_idx: np.ndarray
    _codes: dict[str, torch.Tensor]
    _pools: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    unseen: np.ndarray | None = None

    @property
    def query_idx(self) -> np.ndarray:
        return self.points_idx

    @property
    def positive_idx(self) -> np.ndarray:
        return self.counters_idx

    @property
    def texts(self) -> list[str]:
        return self.args["text"].tolist()

    @property
    def pools(self) -> dict[str, torch.Tensor]:
        """All eight pools (builds the missing ones)."""
        return {task: self.pool(task) for task in TASKS}

    def pool(self, task: str) -> torch.Tensor:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
        if task not in self._pools:
            self._pools[task] = _build_pool(task, self._codes, self.points_idx, self.counters_idx)
        return self._pools[task]


def build_split(frame: pd.DataFrame, name: str) -> SplitData:
    """Queries, positives and pool inputs of one split's rows of :attr:`argbench.data.corpus.Corpus.frame`."""
    paired = frame[frame["paired"]]
    args = paired.sort_values(["kind", "pair_id"], ascending=[True, True], kind="stable").reset_index(drop=True)
    n_pairs = len(args) // 2
    counters_idx = np.arange(n_pairs, dtype=np.int64)
    points_idx = counters_idx + n_pairs
    assert (args["kind"].iloc[:n_pairs] == "counter").all() and (args["kind"].iloc[n_pairs:] == "point").all()
    assert (args["pair_id"].iloc[:n_pairs].to_numpy() == args["pair_id"].iloc[n_pairs:].to_numpy()).all()

    def codes(values) -> torch.Tensor:
        return torch.from_numpy(pd.factorize(values)[0].astype(np.int64))

    normalised = args["text"].str.split().str.join(" ")
    return SplitData(
        name=name,
        args=args,
        points_idx=points_idx,
        counters_idx=counters_idx,
        _codes={
            "theme": codes(args["theme"]),
            "debate": codes(args["theme"] + "/" + args["debate"]),
            "stance": codes(args["stance"]),
            "counter": torch.from_numpy((args["kind"] == "counter").to_numpy(copy=True)),
            "text": codes(normalised),
        },
    )


def _build_pool(task: str, codes: dict[str, torch.Tensor], points_idx: np.ndarray, counters_idx: np.ndarray):
    """[Q, n] candidate mask of ``task`` from per-argument codes, by broadcasting (no per-row filtering)."""
    q = torch.from_numpy(points_idx)
    pos = torch.from_numpy(counters_idx)
    n = len(codes["text"])
    cand = torch.arange(n)

    def same(key: str) -> torch.Tensor:
        return codes[key][q][:, None] == codes[key][None, :]

    is_counter = codes["counter"][None, :].expand(len(q), n)
    not_self = cand[None, :] != q[:, None]
    not_copy = (codes["text"][None, :] != codes["text"][pos][:, None]) | (cand[None, :] == pos[:, None])
    if task == "sdoc":
        mask = same("debate") & same("stance") & is_counter
    elif task == "sdoa":
        mask = same("debate") & torch.where(is_counter, same("stance"), ~same("stance"))
    elif task == "sdc":
        mask = same("debate") & is_counter
    elif task == "sda":
        mask = same("debate") & not_self
    elif task == "stc":
        mask = same("theme") & is_counter
    elif task == "sta":
        mask = same("theme") & not_self
    elif task == "epc":
        mask = is_counter.clone()
    else:  # epa
        mask = not_self
    return mask & not_copy
