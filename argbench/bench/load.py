"""Benchmark: load the corpus and build the eight pools of every split, against the original's per-row filtering.

argbench: :func:`argbench.data.corpus.load_corpus`, then ``corpus.split(s).pools`` for the three splits (one broadcast
mask per task, :mod:`argbench.data.tasks`). Reference: the original's way, one pandas filter of the split's rows per
query per task (``group_and_split`` style), with the same rules as :mod:`argbench.data.tasks` (same theme and debate
folder, the query never a candidate, copies of the true counter's text excluded).

The reference is slow on the real corpus, so it is timed on a seeded subset of queries per split and its time is
extrapolated linearly to all queries (rows say from how many). Corpus loading is the same file reading for both, so
the reference's total counts argbench's loading time. Agreement is exact: for every timed query and task the
reference's candidate set (by file path) equals argbench's mask row.

    argbench bench load
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from argbench.bench.mining import _median_time
from argbench.data.corpus import SPLITS, Corpus, load_corpus, resolve_data
from argbench.data.tasks import TASKS, SplitData


def run_load_bench(data: str | None = None, repeats: int = 3, reference_queries: int = 200,
                   seed: int = 0) -> list[dict]:
    """One row per split (pool building only) and one ``all splits`` row (loading + pools); times in seconds.

    ``data``: corpus path or ``"sample"``; ``None`` = ``$ARGBENCH_DATA``, else the sample. The reference runs once
    on ``reference_queries`` queries per split (all of them when the split has fewer).
    """
    source = resolve_data(data, announce=False)
    load_s, corpus = _median_time(lambda: load_corpus(source), repeats)
    rows, ours_total, ref_total = [], load_s, load_s
    for name in SPLITS:
        ours_s, split = _median_time(lambda: _with_pools(corpus.split(name)), repeats)
        ref_s, timed, agree = _reference_split(corpus, split, reference_queries, seed)
        rows.append(_row(f"{name}: 8 pools", ours_s, ref_s, agree, queries=len(split.query_idx), timed=timed))
        ours_total += ours_s
        ref_total += ref_s
    rows.append(_row(f"all splits: load_corpus + 8 pools x 3 ({source.kind})", ours_total, ref_total,
                     all(r["agree"] for r in rows), queries=sum(r["queries"] for r in rows),
                     timed=sum(r["reference_queries_timed"] for r in rows), load_s=load_s, arguments=len(corpus.frame)))
    return rows


def _with_pools(split: SplitData) -> SplitData:
    split.pools  # noqa: B018 -- builds and caches the eight masks
    return split


def _row(case: str, ours_s: float, ref_s: float, agree: bool, queries: int, timed: int, **extra) -> dict:
    return {"case": case, "argbench_s": ours_s, "reference_s": ref_s, "ratio": ref_s / ours_s, "agree": agree,
            "queries": queries, "reference_queries_timed": timed,
            "reference_extrapolated_from": timed if timed < queries else None, **extra}


def _reference_split(corpus: Corpus, split: SplitData, n_queries: int, seed: int) -> tuple[float, int, bool]:
    """Reference time for all of ``split``'s queries (extrapolated), queries timed, and agreement with argbench."""
    start = time.perf_counter()
    frame = corpus.frame[(corpus.frame["split"] == split.name) & corpus.frame["paired"]].copy()
    frame["norm_text"] = [" ".join(text.split()) for text in frame["text"]]
    setup_s = time.perf_counter() - start
    points = frame[frame["kind"] == "point"]
    chosen = np.sort(np.random.default_rng(seed).choice(len(points), min(n_queries, len(points)), replace=False))
    queries = points.iloc[chosen]
    start = time.perf_counter()
    reference = reference_pools(frame, queries)
    loop_s = time.perf_counter() - start
    total_s = setup_s + loop_s * len(points) / len(queries)
    return total_s, len(queries), _agrees(split, queries["path"].tolist(), reference)


# ------------------------------------------------------------------------------------------------- reference
def _debate(f: pd.DataFrame, q) -> pd.Series:
    return (f["theme"] == q.theme) & (f["debate"] == q.debate)


_REFERENCE_FILTERS: dict[str, Callable[[pd.DataFrame, object], pd.Series]] = {
    "sdoc": lambda f, q: _debate(f, q) & (f["stance"] == q.stance) & (f["kind"] == "counter"),
    "sdoa": lambda f, q: _debate(f, q) & (((f["kind"] == "counter") & (f["stance"] == q.stance))
                                          | ((f["kind"] == "point") & (f["stance"] != q.stance))),
    "sdc": lambda f, q: _debate(f, q) & (f["kind"] == "counter"),
    "sda": lambda f, q: _debate(f, q) & (f["path"] != q.path),
    "stc": lambda f, q: (f["theme"] == q.theme) & (f["kind"] == "counter"),
    "sta": lambda f, q: (f["theme"] == q.theme) & (f["path"] != q.path),
    "epc": lambda f, q: f["kind"] == "counter",
    "epa": lambda f, q: f["path"] != q.path,
}


def reference_pools(frame: pd.DataFrame, queries: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """The original's pool building: per query row, find its counter, then filter ``frame`` once per task.

    ``frame`` holds one split's paired arguments (columns of ``Corpus.frame`` plus ``norm_text``, the text with
    whitespace collapsed); ``queries`` are some of its points. Returns, per task, one array of candidate paths per
    query, in ``queries`` order.
    """
    out: dict[str, list[np.ndarray]] = {task: [] for task in TASKS}
    for q in queries.itertuples(index=False):
        counter = frame[(frame["pair_id"] == q.pair_id) & (frame["kind"] == "counter")].iloc[0]
        for task in TASKS:
            pool = frame[_REFERENCE_FILTERS[task](frame, q)]
            pool = pool[(pool["norm_text"] != counter["norm_text"]) | (pool["path"] == counter["path"])]
            out[task].append(pool["path"].to_numpy())
    return out


def _agrees(split: SplitData, query_paths: list[str], reference: dict[str, list[np.ndarray]]) -> bool:
    """Whether argbench's mask row of each query holds exactly the reference's candidates, in every task."""
    paths = split.args["path"].to_numpy()
    row_of = {path: i for i, path in enumerate(paths[split.query_idx])}
    rows = [row_of[p] for p in query_paths]
    for task in TASKS:
        mask = split.pool(task)[rows].numpy()
        for k, candidates in enumerate(reference[task]):
            if not np.array_equal(np.sort(paths[mask[k]]), np.sort(candidates)):
                return False
    return True
