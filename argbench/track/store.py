"""The MLflow store, read and written through one door: every MLflow call outside the trainer hook goes through
:class:`Store`, which returns plain values (:class:`StoredRun`, :class:`System`, ``{key: [(step, value)]}``
histories, pandas tables), so no caller sees an MLflow type.

What a reference to a *system* (an ablation name or a run id) stands for is decided here, once, for the report,
``argbench compare``, the significance tables and the runner:

* a run id stands for that run;
* run ids joined by commas stand for one system whose seeds are those runs, in that order (seeds run as separate
  top-level runs, e.g. on different machines or as ``argbench baseline`` runs); each must have FINISHED;
* a name was trained in one or more *places*: each top-level run of that name, whose seeds are its FINISHED
  children of its own name (a multi-seed parent, as :mod:`argbench.experiments.runner` logs it) or else itself; and
  each other parent (a grid study's or a search's) holding runs of that name, whose seeds are those of its runs
  that FINISHED (a study's cells of one entry, every seed). The name stands for the newest place with a FINISHED
  seed (newest by the start of its newest seed); ``argbench study report`` takes its own study's place. A child of
  a top-level run of the same name is a seed of it, never taken in its place when that run failed or still runs;
* the seeds, oldest first, are what the report averages and ``compare`` pools per query.

:meth:`Store.trained` is the report's default selection: the places as they are, each study's or search's cells
grouped under that parent.

Per-query ranks (:meth:`Store.ranks`): a tracked run logs, per evaluated split, those of its selected epoch
(:mod:`argbench.train.selection`) as :data:`RANKS` and those of its last evaluated epoch as :data:`LAST_RANKS`; a
run logged before argbench selected epochs has only :data:`RANKS`, which holds its last epoch.

Writes: metrics (at ``step``, timestamped now), params and tags (every value through
:func:`argbench.track.redaction.redact`, in batches MLflow accepts), text artifacts, and closing a run left RUNNING by
a process that died. A store that cannot be used is one line (:mod:`argbench.track.store_faults`).
"""

from __future__ import annotations

import difflib
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from argbench.data.copies import RERANKED
from argbench.errors import UserError
from argbench.model.epoch_names import EPOCHS, LAST, SELECTED
from argbench.paths import default_tracking_uri
from argbench.track.redaction import redact
from argbench.track.store_faults import connect

RANKS = "per_query/{split}.csv"  # the per-query ranks of a tracked run's selected epoch, per evaluated split
LAST_RANKS = "per_query/last/{split}.csv"  # those of its last evaluated epoch (first-stage splits only)
BATCH = 100  # MLflow's limit on params + tags per log_batch call
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def check_epoch(epoch: str) -> None:
    """UserError unless ``epoch`` is one of :data:`argbench.model.epoch_names.EPOCHS`."""
    if epoch not in EPOCHS:
        raise UserError(f"epoch {epoch!r}: expected one of {', '.join(EPOCHS)}")


def ranks_artifact(split: str, epoch: str = SELECTED) -> str:
    """The artifact holding the per-query ranks of ``split`` at ``epoch`` (``selected`` or ``last``); UserError for
    another epoch, or for ``last`` of a ``/reranked`` split (the second stage ranks only the selected model)."""
    check_epoch(epoch)
    if epoch == SELECTED:
        return RANKS.format(split=split)
    if split.endswith(RERANKED):
        raise UserError(f"split {split}: the second stage ranked only the selected epoch's model, so there are no "
                        f"last-epoch {split} ranks; use --epoch {SELECTED}")
    return LAST_RANKS.format(split=split)


class NotInStore(UserError):
    """An experiment, run id or run name the store does not hold, or a name with no FINISHED run to stand for;
    the message says what is there instead."""


@dataclass(frozen=True)
class StoredRun:
    """One MLflow run as plain values; ``metrics`` holds each metric's latest value."""

    run_id: str
    name: str
    status: str
    start_time: int  # ms since the epoch
    experiment_id: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def parent_id(self) -> str | None:
        """Id of the run this one is nested under (a multi-seed or search parent), None for a top-level run."""
        return self.tags.get(MLFLOW_PARENT_RUN_ID)


@dataclass(frozen=True)
class System:
    """What a reference stands for: ``run`` (the run picked for a name, or the run of an id), its ``seeds`` (the
    runs whose results make the system; ``[run]`` for a single run) and ``passed_over``, the number of other
    runs of the name that were not picked (0 for a run id); ``parent``, the id of the study's or search's parent
    run whose runs the seeds are (None for a top-level run and its own seeds)."""

    ref: str
    run: StoredRun
    seeds: list[StoredRun]
    passed_over: int = 0
    parent: str | None = None


def _stored(run) -> StoredRun:
    return StoredRun(run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
                     start_time=run.info.start_time, experiment_id=run.info.experiment_id, tags=dict(run.data.tags),
                     params=dict(run.data.params), metrics=dict(run.data.metrics))


@dataclass(frozen=True)
class _Place:
    """Where a name was trained: a top-level ``run`` (``seeds`` None: looked up, :meth:`Store.seeds`), or the
    FINISHED runs of the name under another ``parent`` (``run`` the newest of them, or of all when none
    FINISHED)."""

    run: StoredRun
    seeds: list[StoredRun] | None = None
    parent: str | None = None

    @property
    def finished(self) -> bool:
        return bool(self.seeds) if self.parent else self.run.status == "FINISHED"

    @property
    def newest(self) -> int:
        return max(s.start_time for s in self.seeds) if self.parent else self.run.start_time


def _places(runs: list[StoredRun]) -> list[_Place]:
    """The places (module doc) of the runs of one name, oldest first."""
    own = {r.run_id for r in runs if r.parent_id is None}
    places = [_Place(r) for r in runs if r.parent_id is None]
    cells: dict[str, list[StoredRun]] = {}
    for r in runs:
        if r.parent_id is not None and r.parent_id not in own:
            cells.setdefault(r.parent_id, []).append(r)
    for parent, group in cells.items():
        finished = [r for r in group if r.status == "FINISHED"]
        places.append(_Place((finished or group)[-1], finished, parent))
    return places


def _newest_finished(runs: list[StoredRun], within: str | None = None) -> tuple[_Place | None, int]:
    """The picking rule over the runs of one name: (the place the name stands for, or None; how many other places
    were passed over); only the runs under parent ``within`` when given."""
    places = [p for p in _places(runs) if within is None or p.parent == within]
    finished = [p for p in places if p.finished]
    picked = max(finished, key=lambda p: p.newest) if finished else None
    return picked, len(places) - 1


class Store:
    """The MLflow store at ``tracking_uri`` (default :func:`argbench.paths.default_tracking_uri`), opened through
    :func:`argbench.track.store_faults.connect`.

    Lookup errors are :class:`NotInStore` (a UserError, so a ValueError) naming what is missing and what exists;
    the URI in a message is redacted.
    ``client`` is for :mod:`argbench.track` only."""

    def __init__(self, tracking_uri: str | None = None):
        self.uri = tracking_uri or default_tracking_uri()
        connect(self.uri)
        self.client = MlflowClient(self.uri)

    # --- finding runs -------------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``; NotInStore listing the experiments there if it is missing."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            known = ", ".join(e.name for e in self.client.search_experiments()) or "none"
            raise NotInStore(f"no MLflow experiment {name!r} at {redact(self.uri)}; experiments there: {known}")
        return found.experiment_id

    def _search(self, experiment_ids: list[str], filter_string: str = "") -> list[StoredRun]:
        """Every run matching ``filter_string`` (all pages), oldest first."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token,
                                           order_by=["attributes.start_time ASC"])
            runs.extend(_stored(r) for r in page)
            token = page.token
            if not token:
                return runs

    def runs(self, experiment: str) -> list[StoredRun]:
        """Every run of ``experiment``, any status, oldest first."""
        return self._search([self.experiment_id(experiment)])

    def run(self, run_id: str) -> StoredRun:
        """The run with id ``run_id``, wherever its experiment; NotInStore if the store has none."""
        try:
            return _stored(self.client.get_run(run_id))
        except MlflowException as err:
            raise NotInStore(f"no MLflow run with id {run_id} at tracking URI {redact(self.uri)}") from err

    def system(self, ref: str, experiment: str, within: str | None = None) -> System:
        """What ``ref`` (a run id, run ids joined by commas, or a run name in ``experiment``) stands for, with its
        seeds (module rules); ``within``: a name's runs under that parent run only (a study's own cells)."""
        if _RUN_ID.fullmatch(ref):
            run = self.run(ref)
            return System(ref, run, self.seeds(run))
        if "," in ref:
            return self._listed(ref)
        if "'" in ref:
            raise NotInStore(f"run name {ref!r}: quotes are not allowed")
        exp_id = self.experiment_id(experiment)
        named = self._search([exp_id], f"attributes.run_name = '{ref}'")
        place, passed_over = _newest_finished(named, within)
        if place is None:
            where = "" if within is None else f" under parent run {within}"
            raise NotInStore(self._no_run(ref, experiment, exp_id, named) + where)
        seeds = self.seeds(place.run) if place.seeds is None else place.seeds
        return System(ref, place.run, seeds, passed_over, place.parent)

    def _listed(self, ref: str) -> System:
        """The system "ID,ID,..." stands for: those runs as its seeds; NotInStore naming the first part that is no
        run id, is not in the store, or did not finish."""
        ids = [part.strip() for part in ref.split(",")]
        for part in ids:
            if not _RUN_ID.fullmatch(part):
                raise NotInStore(f"{ref!r}: {part!r} is not a run id; a system's seeds are given as run ids (32 hex "
                                 "digits) separated by commas")
        if len(set(ids)) < len(ids):
            raise NotInStore(f"{ref!r}: a run is listed twice; each seed is one run")
        runs = [self.run(part) for part in ids]
        for run in runs:
            if run.status != "FINISHED":
                raise NotInStore(f"{ref!r}: run {run.run_id} ({run.name}) is {run.status}, not FINISHED")
        return System(ref, runs[0], runs)

    def _no_run(self, name: str, experiment: str, exp_id: str, named: list[StoredRun]) -> str:
        where = f"no FINISHED run named {name!r} (nor a run id) in experiment {experiment!r}"
        if named:
            return f"{where}; its runs of that name are {', '.join(sorted({r.status for r in named}))}"
        close = difflib.get_close_matches(name, sorted({r.name for r in self._search([exp_id])}), n=3)
        return where + (f"; did you mean {close}?" if close else "")

    def seeds(self, run: StoredRun) -> list[StoredRun]:
        """The FINISHED children of ``run`` that bear its name (a multi-seed parent's seeds, oldest first), or
        ``[run]`` when it has none; NotInStore when it has such children but none FINISHED."""
        children = [c for c in self._search([run.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.run_id}'")
                    if c.name == run.name]
        if not children:
            return [run]
        finished = [c for c in children if c.status == "FINISHED"]
        if not finished:
            raise NotInStore(f"{run.name!r}: parent run {run.run_id} has {len(children)} seed runs, none FINISHED "
                             f"(statuses {sorted({c.status for c in children})})")
        return finished

    def names(self, experiment: str) -> list[str]:
        """The names a FINISHED top-level run of ``experiment`` bears, in the order of their oldest run."""
        top = [r for r in self.runs(experiment) if r.parent_id is None]
        finished = {r.name for r in top if r.status == "FINISHED"}
        return [name for name in dict.fromkeys(r.name for r in top) if name in finished]

    def trained(self, experiment: str) -> list[System]:
        """What was trained in ``experiment``: per name of a top-level run that is not a study's or search's
        parent, the system the name stands for among its top-level runs (oldest name first); then per such parent
        (oldest first), each name of its FINISHED runs with those runs as its seeds (``parent`` set). A parent is a
        top-level run with children of other names and none of its own."""
        runs = self.runs(experiment)
        children: dict[str, list[StoredRun]] = {}
        for r in runs:
            if r.parent_id is not None:
                children.setdefault(r.parent_id, []).append(r)
        top = [r for r in runs if r.parent_id is None]
        parents = [r for r in top if children.get(r.run_id)
                   and all(c.name != r.name for c in children[r.run_id])]
        ids = {p.run_id for p in parents}
        found = []
        for name in dict.fromkeys(r.name for r in top if r.run_id not in ids):
            named = [r for r in top if r.name == name and r.run_id not in ids]
            finished = [r for r in named if r.status == "FINISHED"]
            seeds = [c for c in children.get(finished[-1].run_id, []) if c.name == name] if finished else []
            seeds = [c for c in seeds if c.status == "FINISHED"] if seeds else finished[-1:]
            if seeds:
                found.append(System(name, finished[-1], seeds, len(named) - 1))
        for parent in parents:
            cells = [c for c in children[parent.run_id] if c.status == "FINISHED"]
            for name in dict.fromkeys(c.name for c in cells):
                seeds = [c for c in cells if c.name == name]
                found.append(System(name, seeds[-1], seeds, 0, parent.run_id))
        return found

    def systems(self, experiment: str, refs: list[str] | None = None) -> list[System]:
        """The systems ``refs`` stand for, in that order (default :meth:`trained`); one NotInStore says why for
        every ref that stands for nothing."""
        names = self.names(experiment)  # also checks that the experiment exists
        if refs is None:
            return self.trained(experiment)
        found, errors = [], []
        for ref in refs:
            try:
                found.append(self.system(ref, experiment))
            except NotInStore as err:
                errors.append(str(err))
        if errors:
            raise NotInStore(f"{'; '.join(errors)} (at {redact(self.uri)}; names with a FINISHED run there: "
                             f"{', '.join(sorted(names)) or 'none'})")
        return found

    # --- reading what a run logged ------------------------------------------------------------------------------
    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """[(step, value)] of metric ``key``, sorted by step; a step logged twice keeps its latest value."""
        points = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        return sorted({m.step: m.value for m in points}.items())

    def histories(self, run: StoredRun, skip_prefix: str = "system/") -> dict[str, list[tuple[int, float]]]:
        """:meth:`history` of every metric of ``run`` except those starting with ``skip_prefix`` (MLflow's
        own system metrics by default)."""
        return {key: self.history(run.run_id, key) for key in run.metrics if not key.startswith(skip_prefix)}

    def table(self, run_id: str, artifact: str) -> pd.DataFrame:
        """The CSV artifact ``artifact`` of run ``run_id``; FileNotFoundError naming the files logged beside it."""
        with tempfile.TemporaryDirectory() as scratch:
            try:
                return pd.read_csv(self.client.download_artifacts(run_id, artifact, scratch))
            except (MlflowException, OSError) as err:
                folder = str(Path(artifact).parent)
                logged = [Path(f.path).name for f in self.client.list_artifacts(run_id, folder)]
                raise FileNotFoundError(f"run {run_id}: no artifact {artifact}; files logged in {folder}/: "
                                        f"{logged or 'none'}") from err

    def ranks(self, run_id: str, split: str, epoch: str = SELECTED) -> pd.DataFrame:
        """The per-query ranks run ``run_id`` logged for ``split`` at ``epoch`` (:func:`ranks_artifact`; see
        argbench.track.tracker); FileNotFoundError naming what was logged when the run has none."""
        try:
            return self.table(run_id, ranks_artifact(split, epoch))
        except FileNotFoundError as err:
            if epoch != LAST:
                raise
            raise FileNotFoundError(f"{err} (a run logged before argbench selected epochs has only "
                                    f"{RANKS.format(split=split)}, its last epoch's: use --epoch {SELECTED})") from None

    # --- writing ------------------------------------------------------------------------------------------------
    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        """Log ``values`` ({key: number}) at ``step`` in one batch, all with the same timestamp (now)."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log(self, run_id: str, params: dict | None = None, tags: dict | None = None) -> None:
        """Log ``params`` and ``tags`` (values as text, None as "none", redacted) in batches MLflow accepts."""
        def text(value) -> str:
            return redact("none" if value is None else str(value))

        entries = [Param(k, text(v)) for k, v in (params or {}).items()] + \
                  [RunTag(k, text(v)) for k, v in (tags or {}).items()]
        for start in range(0, len(entries), BATCH):
            chunk = entries[start:start + BATCH]
            self.client.log_batch(run_id, params=[e for e in chunk if isinstance(e, Param)],
                                  tags=[e for e in chunk if isinstance(e, RunTag)])

    def update_params(self, run_id: str, params: dict[str, str]) -> bool:
        """Give the logged params ``params`` ({key: text}) new values: a resumed run whose ``train.epochs`` grew
        must say so. MLflow's API never changes a param, so the row is updated in the store's database (SQL
        stores); a tracking server cannot, and then the new values go to tags ``param.<key>`` instead (False)."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        backend = self.client._tracking_client.store
        if not isinstance(backend, SqlAlchemyStore):
            self.log(run_id, tags={f"param.{k}": v for k, v in params.items()})
            return False
        from mlflow.store.tracking.dbmodels.models import SqlParam

        with backend.ManagedSessionMaker(read_only=False) as session:
            for key, value in params.items():
                session.query(SqlParam).filter(SqlParam.run_uuid == run_id, SqlParam.key == key).update(
                    {SqlParam.value: redact(value)})
        return True

    def log_text(self, run_id: str, text: str, artifact: str) -> None:
        """Store ``text`` as the artifact file ``artifact`` (a relative path, e.g. ``figures/x.html``)."""
        self.client.log_text(run_id, text, artifact)

    def end_if_running(self, run_id: str, status: str = "KILLED", tags: dict | None = None) -> bool:
        """Close run ``run_id`` as ``status`` (after setting ``tags``) if it is RUNNING; True if it was closed.
        A run this store does not hold is left alone (False): it was logged elsewhere, so it is not ours."""
        try:
            if self.client.get_run(run_id).info.status != "RUNNING":
                return False
        except MlflowException:
            return False
        self.log(run_id, tags=tags)
        self.client.set_terminated(run_id, status)
        return True
