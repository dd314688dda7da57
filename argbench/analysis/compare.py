"""Paired comparison of two tracked systems, read back from MLflow: ``compare(a, b) -> dict`` (JSON-ready).

A system is an ablation name or a run id; :class:`argbench.track.store.Store` decides which runs it stands for (the
newest FINISHED top-level run of the name; a multi-seed parent's FINISHED children are its seeds, stacked as ranks
[seeds, n]), the same runs ``argbench report`` shows.
Ranks come from the per-query artifacts :mod:`argbench.track.tracker` logs: with ``epoch="selected"`` (the default)
those of each run's selected epoch (the best ``eval.primary`` on validation; :mod:`argbench.train.selection`),
``per_query/<split>.csv``, with ``epoch="last"`` those of its last evaluated epoch, ``per_query/last/<split>.csv``
(split key ``val``, ``test`` or ``train``; see :func:`argbench.track.store.ranks_artifact`): a long table with columns
``query`` (the query's position in the split, so the same query has the same id in every run on the same data),
``task`` and ``rank`` (1-based rank of the true counter), plus ``epoch``, which is not used here. Runs on different
data (``data.hash`` tags that differ) are refused. The statistics are :func:`argbench.eval.stats.compare_runs`.

A *view* (:data:`argbench.data.copies.VIEWS`) picks what is paired: ``official`` the ``rank`` column; ``dedup`` the
``rank_dedup`` column (pools without copies of the query); ``unseen`` the ``rank`` of only the rows flagged
``unseen`` (queries whose texts do not occur in training). Artifacts logged before the views existed hold only the
official ranks.

A split key ending in ``/reranked`` (``test/reranked``) pairs the *final* rankings of two-stage systems: a run with
a cross-encoder second stage (``eval.rerank: cross_encoder``) logged them as ``per_query/test/reranked.csv``; a run
without one has no second stage, so its final ranking is its first stage's, ``per_query/test.csv``. That is how a
reranker is compared with the one-stage recipe it was added to. The second stage ranks only the selected epoch's
model, so a two-stage run has no last-epoch final rankings (a UserError with ``epoch="last"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from argbench.data.copies import RERANKED, VIEWS
from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.eval.stats import compare_runs
from argbench.model.epoch_names import LAST, SELECTED
from argbench.track.store import Store, StoredRun, check_epoch, ranks_artifact

COLUMNS = ("query", "task", "rank")

DATA_TAG = "data.hash"
OFFICIAL = "official"


# --- reading one run's ranks ---------------------------------------------------------------------------------------

def _ranks(store: Store, run_id: str, split: str, epoch: str) -> tuple[str, pd.DataFrame]:
    """(artifact name, table) of the ranks of `split` at `epoch` of `run_id`; a ``/reranked`` split of a run without
    a second stage is its first stage's (module doc)."""
    if not split.endswith(RERANKED):
        return ranks_artifact(split, epoch), store.ranks(run_id, split, epoch)
    try:
        reranked = store.ranks(run_id, split, SELECTED)
    except FileNotFoundError:  # one stage: its final ranking is its first
        first = split.removesuffix(RERANKED)
        return ranks_artifact(first, epoch), store.ranks(run_id, first, epoch)
    if epoch == LAST:
        raise UserError(f"run {run_id}: its second stage ranked only the selected epoch's model, so it has no "
                        f"last-epoch {split} ranks; use --epoch {SELECTED}")
    return ranks_artifact(split), reranked


def _read_table(store: Store, run_id: str, split: str, view: str = OFFICIAL, epoch: str = SELECTED) -> pd.DataFrame:
    """The per-query table of `run_id` for `split` at `epoch` in `view`, checked: the columns of COLUMNS (``rank``
    holding the view's rank, rows only of the view's queries), one row per (task, query)."""
    artifact, frame = _ranks(store, run_id, split, epoch)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"run {run_id}: {artifact} lacks columns {missing}; expected columns {list(COLUMNS)}, "
                         f"got {list(frame.columns)}")
    duplicated = frame.duplicated(["task", "query"])
    if duplicated.any():
        task, query = frame.loc[duplicated, ["task", "query"]].iloc[0]
        raise ValueError(f"run {run_id}: {artifact} has more than one row for task {task!r}, query {query!r}")
    return _in_view(frame, view, f"run {run_id}: {artifact}")


def _in_view(frame: pd.DataFrame, view: str, name: str) -> pd.DataFrame:
    """The rows and ``rank`` of `view` of a checked per-query table."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: expected one of {', '.join(VIEWS)}")
    needed = {"official": None, "dedup": "rank_dedup", "unseen": "unseen"}[view]
    if needed and needed not in frame.columns:
        raise ValueError(f"{name} has no column {needed!r} (logged before the {view} view existed); "
                         "compare it with --view official or re-evaluate it")
    if view == "dedup":
        return frame.assign(rank=frame["rank_dedup"])
    if view == "unseen":
        return frame[frame["unseen"].astype(bool)]
    return frame


def _task_order(tasks) -> list[str]:
    """`tasks` in the order of TASKS, any others after them, alphabetically."""
    return sorted(tasks, key=lambda t: (TASKS.index(t), "") if t in TASKS else (len(TASKS), t))


def _ranks_by_task(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (query ids, ranks)}, both sorted by query id so two runs of a split line up position by position."""
    out = {}
    for task in _task_order(frame["task"].unique()):
        rows = frame[frame["task"] == task].sort_values("query")
        out[task] = (rows["query"].to_numpy(), rows["rank"].to_numpy())
    return out


def load_ranks(run: str | StoredRun, split: str, tracking_uri: str | None = None, view: str = OFFICIAL,
               epoch: str = SELECTED) -> dict[str, np.ndarray]:
    """{task: ranks [n]} of one run (a run id or a StoredRun) on `split` at `epoch` in `view`, ordered by query id
    (the same in every run)."""
    run_id = run.run_id if isinstance(run, StoredRun) else run
    table = _read_table(Store(tracking_uri), run_id, split, view, epoch)
    return {task: ranks for task, (_, ranks) in _ranks_by_task(table).items()}


# --- the runs of one system ---------------------------------------------------------------------------------------

def system_runs(store: Store, ref: str | list[str], experiment: str) -> list[StoredRun]:
    """The runs whose ranks make system `ref`: a run name or id (its seeds, as :meth:`Store.system` picks them) or
    a list of run ids (a system's seeds as given, e.g. a grid study's cells)."""
    if isinstance(ref, (list, tuple)):
        return [store.run(run_id) for run_id in ref]
    return store.system(ref, experiment).seeds


def _system_ranks(store: Store, runs: list[StoredRun], split: str, view: str = OFFICIAL, epoch: str = SELECTED
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (query ids, ranks [seeds, n])} over `runs` at `epoch` in `view`, which must hold the same tasks and
    queries."""
    per_run = [_ranks_by_task(_read_table(store, r.run_id, split, view, epoch)) for r in runs]
    first = per_run[0]
    for run, ranks in zip(runs[1:], per_run[1:]):
        _check_same_queries(first, ranks, f"run {runs[0].run_id}", f"run {run.run_id}")
    return {task: (queries, np.stack([ranks[task][1] for ranks in per_run])) for task, (queries, _) in first.items()}


def _check_same_data(runs: list[StoredRun]) -> None:
    """Raise if the runs' ``data.hash`` tags (where set) differ: query ids are positions, meaningful per corpus."""
    hashes = {r.run_id: r.tags[DATA_TAG] for r in runs if DATA_TAG in r.tags}
    if len(set(hashes.values())) > 1:
        raise ValueError(f"the runs were evaluated on different data ({DATA_TAG} per run: {hashes}); paired "
                         "comparison needs the same corpus")


def _check_same_queries(x: dict, y: dict, x_name: str, y_name: str) -> None:
    """Raise unless `x` and `y` ({task: (query ids, ranks)}) have the same tasks with the same query ids."""
    if set(x) != set(y):
        raise ValueError(f"{x_name} has tasks {_task_order(x)} but {y_name} has {_task_order(y)}")
    for task in x:
        qx, qy = x[task][0], y[task][0]
        if len(qx) != len(qy) or not np.array_equal(qx, qy):
            only_x = sorted(set(qx.tolist()) - set(qy.tolist()))[:3]
            only_y = sorted(set(qy.tolist()) - set(qx.tolist()))[:3]
            raise ValueError(f"task {task!r}: {x_name} has {len(qx)} queries, {y_name} has {len(qy)}; they must be "
                             f"the same queries (only in the first: {only_x}, only in the second: {only_y})")


# --- the comparison ------------------------------------------------------------------------------------------------

def compare(a: str | list[str], b: str | list[str], *, split: str = "test", tasks=None, experiment: str = "argbench",
            tracking_uri: str | None = None, view: str = OFFICIAL, epoch: str = SELECTED, **stats_kw) -> dict:
    """Compare system `b` against system `a` (ablation names, run ids, or lists of run ids = a system's seeds) on
    `split` in `view`, each run at `epoch` ("selected" or "last"), paired by query.

    Returns ``{"a", "b", "split", "view", "epoch", "runs": {"a": [run ids], "b": [...]}, "tasks": {task: {"acc@1":
    {...}, "mrr": {...}}}}``; each metric dict holds ``a``, ``b``, ``delta`` (= b − a), ``ci`` [lo, hi], ``p_value``,
    ``p_holm`` (Holm over the tasks × metrics shown), ``test`` and ``n``: see
    :func:`argbench.eval.stats.paired_difference`.
    `tasks` defaults to every task logged; `stats_kw` (n_boot, n_perm, seed, level) goes to the statistics.
    `tracking_uri` defaults to :func:`argbench.paths.default_tracking_uri`.
    """
    check_epoch(epoch)
    store = Store(tracking_uri)
    runs = {side: system_runs(store, ref, experiment) for side, ref in (("a", a), ("b", b))}
    _check_same_data(runs["a"] + runs["b"])
    ranks = {side: _system_ranks(store, side_runs, split, view, epoch) for side, side_runs in runs.items()}
    _check_same_queries(ranks["a"], ranks["b"], f"a ({a!r})", f"b ({b!r})")
    shown = _task_order(ranks["a"]) if tasks is None else list(tasks)
    unknown = [t for t in shown if t not in ranks["a"]]
    if unknown:
        raise ValueError(f"tasks {unknown} were not logged for split {split!r}; logged: {_task_order(ranks['a'])}")
    result = compare_runs({t: ranks["a"][t][1] for t in shown}, {t: ranks["b"][t][1] for t in shown}, **stats_kw)
    return {"a": a, "b": b, "split": split, "view": view, "epoch": epoch,
            "runs": {side: [r.run_id for r in side_runs] for side, side_runs in runs.items()},
            "tasks": result["tasks"]}
