"""MLflow tracking of one training run, plugged into the trainer's hooks (the trainer never imports mlflow).

One module on purpose: opening or re-opening a run, its hook, its heartbeat and its system metrics share the run's
lifetime (one ``with`` block); read top to bottom, it is what one tracked run does.

``tracked_run`` opens (or, with ``resume_run_id``, re-opens) an MLflow run and yields an :class:`MlflowTracker`,
the hook passed to ``argbench.train.trainer.fit``. What one run holds:

* params: the flattened resolved config (None -> "none", lists comma-joined), logged once;
* tags: ablation, group, seed, data.source, data.hash, encoder, device, ``mlflow.source.git.commit`` (the commit
  of argbench's code, MLflow's own tag), any extra tags; every tag, param and error message goes through
  :func:`redact`, so a password in a URL is never stored;
* metrics, ``step = epoch`` (0 = untrained model), the trainer's per-epoch dict as is: ``train/loss*``,
  ``{split}/{task}/acc_at_{1,3,5,10}``, ``{split}/{task}/mrr``, ``{split}/rerank/acc_at_1``, the same per task
  under ``{split}/dedup/`` and ``{split}/unseen/`` (the views of argbench.data.copies), ``negatives/*``,
  ``schedule/random_rate``, ``perf/*``; plus MLflow's own ``system/*`` metrics when psutil is installed;
* the run's result, its *selected epoch* (:mod:`argbench.train.selection`: the best ``eval.primary`` on validation,
  the earliest on ties, test never consulted), decided again at the end of every epoch: tags ``selected_epoch`` and
  ``selection`` ("best <primary>", or "last (primary not evaluated)" when no epoch evaluated it, and then the last
  evaluated epoch stands in), and every ``val/...`` and ``test/...`` metric of that epoch again as ``best/<name>``
  at ``step`` = that epoch, so the run table shows the result; the second stage's ``*/reranked/*`` metrics (logged
  with the final epoch, but ranking the selected epoch's model) are ``best/`` metrics too;
* artifacts: config.yaml, metrics.csv (one row per epoch), negatives.csv, learning_curve.html (plotly.js from its
  CDN), per-query ranks in long format (epoch, query, task, rank, rank_dedup, unseen): ``per_query/{split}.csv``
  those of the selected epoch (written when an epoch becomes the selected one, so a resumed run whose best epoch
  came before the interruption keeps it), ``per_query/last/{split}.csv`` those of the last evaluated epoch
  (:data:`argbench.track.store.RANKS`, :data:`~argbench.track.store.LAST_RANKS`), and ``per_query/{split}.csv``
  of the ``/reranked`` splits; all rewritten at the end of every epoch (a kill loses at most the running epoch);
* with ``log_model``: at the end, the selected model exported (:mod:`argbench.model.export`) and logged as a
  pyfunc model (:mod:`argbench.track.model_log`), listed under the run's "Logged models";
* the corpus as the run's dataset input (:mod:`argbench.track.lineage`); the experiment is created with MLflow's
  experiment kind "custom_model_development" (model training);
* where it runs: tags ``process.host``, ``process.pid`` and a ``process.heartbeat`` refreshed by a thread and
  every epoch, so that :mod:`argbench.track.stale` can close it as KILLED once its process is gone.

Every call goes through one :class:`argbench.track.store.Store` (and its ``MlflowClient``) bound to the run's
tracking URI, which callers reach as ``tracker.store`` to log more on the run; no global MLflow state (active run,
global tracking URI) is read or changed, so runs on different stores can coexist in one process.
"""

from __future__ import annotations

import contextvars
import re
import tempfile
import warnings
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from argbench.config import PRIMARY, Config, flatten, to_yaml
from argbench.data.copies import RERANKED
from argbench.errors import UserError, stops_deferred
from argbench.paths import PACKAGE_DIR, default_tracking_uri
from argbench.track import stale
from argbench.track.redaction import redact
from argbench.track.store import LAST_RANKS, RANKS, Store
from argbench.track.store_init import sqlite_path
from argbench.train.selection import selected_epoch

DEFAULT_EXPERIMENT = "argbench"
RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_ERROR_CHARS = 5000
# The experiment tag MLflow's UI reads to pick its view (MLflow 3.17: "genai_development" opens on traces and
# evaluation runs, "custom_model_development" on runs, charts and models).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
EPOCH_MARKER = "perf/epoch_seconds"  # logged at every epoch, so its steps are the epochs already logged
SELECTED_TAG, SELECTION_TAG = "selected_epoch", "selection"
FALLBACK = "last (primary not evaluated)"  # the selection tag when no epoch evaluated eval.primary
BEST_PREFIX = "best/"
RESULT_SPLITS = ("val/", "test/")  # the metrics of the selected epoch repeated as best/<name>

# Run ids of the tracked_run blocks open in this context, innermost last (parents of nested runs).
_open_runs: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("argbench_open_runs", default=())


# --- names and values --------------------------------------------------------------------------------------------

def _row(metrics: dict) -> dict[str, float]:
    """The metrics of one epoch's trainer dict (see argbench.train.trainer), ``epoch`` left out."""
    return {k: v for k, v in metrics.items() if k != "epoch"}


def result_metrics(rows: list[dict], epoch: int) -> dict[str, float]:
    """A run's result when ``epoch`` is its selected epoch: every ``val/`` and ``test/`` metric of that epoch's row
    and every second-stage (``*/reranked/*``) metric of any row, since the second stage ranks the selected epoch's
    model whenever it ran."""
    chosen = next((row for row in rows if row["epoch"] == epoch), {})
    values = {k: v for k, v in chosen.items() if k.startswith(RESULT_SPLITS)}
    for row in rows:
        values.update({k: v for k, v in row.items() if RERANKED + "/" in k})
    return {k: v for k, v in values.items() if v is not None}


def best_metrics(rows: list[dict], epoch: int) -> dict[str, float]:
    """:func:`result_metrics` under their ``best/`` names."""
    return {BEST_PREFIX + k: v for k, v in result_metrics(rows, epoch).items()}


def param_values(cfg: Config) -> dict[str, str]:
    """MLflow params of ``cfg``: one per config key, None -> "none", lists comma-joined, redacted, <= 6000 chars."""
    def text(value) -> str:
        if value is None:
            return "none"
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return {key: redact(text(value))[:MAX_PARAM_CHARS] for key, value in flatten(cfg).items()}


def git_commit(repo: Path = PACKAGE_DIR) -> str:
    """The commit checked out at ``repo`` (MLflow's lookup), or "unknown" outside a git checkout, in a git-ignored
    folder (a non-editable install inside the checkout's ``.venv``) or without git.

    MLflow tags runs it starts with the commit of the entry-point script (``sys.argv[0]``), which for
    ``.venv/bin/argbench`` or pytest is git-ignored and gets no tag: argbench asks about its own package folder.
    """
    return get_git_commit(str(repo)) or "unknown"


# --- where runs are stored ---------------------------------------------------------------------------------------

def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])


def artifact_root(tracking_uri: str) -> Path | None:
    """Folder for the artifacts of experiments argbench creates: ``artifacts/`` beside a SQLite store file
    (``<repo>/mlruns/artifacts`` by default); None for other stores (the server's default applies)."""
    db = sqlite_path(tracking_uri)
    return None if db is None else db.resolve().parent / "artifacts"


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created if missing (artifacts under :func:`artifact_root`/<name>)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        root = artifact_root(client.tracking_uri)
        location = None if root is None else (root / re.sub(r"[^\w.\-]", "_", name)).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND: MODEL_TRAINING})
        except MlflowException:  # created meanwhile by a concurrent process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {name!r} at {redact(client.tracking_uri)} is deleted; expected an "
                         "active experiment (restore it with `mlflow experiments restore` or pick another name)")
    if EXPERIMENT_KIND not in found.tags:  # made before argbench set the kind: the UI would guess GenAI
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return found.experiment_id


def save_run_id(out_dir: Path, run_id: str) -> Path:
    """Write ``run_id`` to ``out_dir/mlflow_run_id`` (so ``--resume`` continues the same MLflow run)."""
    path = Path(out_dir) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return path


def load_run_id(out_dir: Path) -> str | None:
    """The MLflow run id saved in ``out_dir``, or None if that run folder has none."""
    path = Path(out_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


# --- the hook ----------------------------------------------------------------------------------------------------

class MlflowTracker:
    """Trainer hook logging to MLflow run ``run_id``; build it with :func:`tracked_run`.

    Never logs a step twice: epochs up to the last one already in the run (found from its ``perf/epoch_seconds``,
    ``train/loss`` and primary-metric histories) are ignored, and :meth:`finish` back-fills epochs of the history
    that never reached MLflow (e.g. an interruption between checkpoint and hook). The evaluations of the running
    epoch are kept until it ends, when the selected epoch is decided (module doc); a resumed run starts from the
    selection its ``selected_epoch`` tag records.
    """

    def __init__(self, store: Store, run_id: str, *, config: Config | None = None,
                 tags: dict | None = None, out_dir: Path | None = None, log_model: bool = False):
        self.store, self.client, self.run_id, self.config = store, store.client, run_id, config
        self.extra_tags = dict(tags or {})
        self.out_dir, self.log_model = (None if out_dir is None else Path(out_dir)), log_model
        self.rows: list[dict] = []  # one flat row per epoch logged by this process
        self.negatives: list[dict] = []
        self.evaluated: dict[str, tuple[int, object]] = {}  # first-stage split -> (epoch, its last Evaluation)
        self.reranked: dict[str, tuple[int, object]] = {}  # "<split>/reranked" -> (epoch, the second stage's)
        self.selection: tuple[int, str] | None = None  # (selected epoch, how) as logged in the run's tags
        self.best_logged: dict[str, float] = {}  # the best/ values logged for that epoch
        self.logged_steps = self._steps_in_run()
        self.resumed_from: int | None = None
        self.finished = False
        self.heartbeat: stale.Heartbeat | None = None  # set by tracked_run; beats at every epoch's end

    @property
    def primary_key(self) -> str:
        return self.config.eval.primary if self.config else PRIMARY

    def _steps_in_run(self) -> set[int]:
        keys = {EPOCH_MARKER, "train/loss", self.primary_key}
        return {m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)}

    # hooks ------------------------------------------------------------------------------------------------------
    @stops_deferred()  # a Ctrl-C never cuts a store write in half (argbench.errors)
    def on_train_start(self, info: dict) -> None:
        self.config = info.get("config", self.config)
        self.resumed_from = info.get("resumed_from")
        tags = {key: info[key] for key in ("data.source", "data.hash", "device", "world_size", "train_pairs",
                                           "train_pairs_before", "train_pairs_cleaned", "params_trainable",
                                           "params_total") if key in info}
        tags[MLFLOW_GIT_COMMIT] = git_commit()
        if self.resumed_from is not None:
            tags["resumed_from"] = self.resumed_from
            self._restore(info.get("history") or [])
        params = {}
        if self.config is None:
            warnings.warn(f"MLflow run {self.run_id}: no config, so no params, seed or encoder tags; "
                          "pass config= to tracked_run", stacklevel=2)
        else:
            tags.update({"seed": self.config.train.seed, "encoder": self.config.model.encoder})
            params = self._new_params(param_values(self.config))
        self.log(params=params, tags={**tags, **self.extra_tags})
        if info.get("corpus") is not None:
            from argbench.track.lineage import log_dataset

            log_dataset(self.client, self.run_id, info["corpus"])

    @stops_deferred()
    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """Log the epoch's metrics at ``step=epoch`` in one batch, unless the run already has that step, then the
        selected epoch (:meth:`select`) and the artifacts so far (all but the model), and beat the heartbeat."""
        if not self.logged_steps or epoch > max(self.logged_steps):
            self._log_epoch(epoch, _row(metrics))
            self.select()
            self.log_artifacts(self.rows, with_model=False)
        if self.heartbeat is not None:
            self.heartbeat.beat()

    def on_negatives(self, epoch: int, examples: list[dict]) -> None:
        self.negatives.extend({"epoch": epoch, "point": e["point"], "negative": e["negative"],
                               "source": e["source"]} for e in examples)

    def on_evaluation(self, epoch: int, split: str, evaluation) -> None:
        """Keep ``evaluation`` (its per-query ranks) until its epoch ends; a ``/reranked`` split's describes the
        selected epoch's model, whatever ``epoch`` it came with."""
        (self.reranked if split.endswith(RERANKED) else self.evaluated)[split] = (epoch, evaluation)

    # the selected epoch -----------------------------------------------------------------------------------------
    def select(self) -> None:
        """Decide the selected epoch over the epochs logged so far (module doc). When it changes: log its per-query
        ranks (those this process holds), its ``best/`` metrics, then the tags ``selected_epoch`` and ``selection``
        (last: a run with the tag has the rest); ``best/`` values not yet logged for it are logged in any case."""
        epoch, how = self._selection()
        if epoch is None:
            return
        new_epoch = self.selection is None or self.selection[0] != epoch
        if new_epoch:
            self.best_logged = {}
            for split, (evaluated_at, evaluation) in self.evaluated.items():
                if evaluated_at == epoch:
                    self._log_ranks(RANKS, split, evaluated_at, evaluation)
        values = best_metrics(self.rows, epoch)
        unlogged = {k: v for k, v in values.items() if self.best_logged.get(k) != v}
        if unlogged:
            self.store.log_metrics(self.run_id, unlogged, step=epoch)
        self.best_logged = values
        if self.selection != (epoch, how):
            self.log(tags={SELECTED_TAG: epoch, SELECTION_TAG: how})
            self.selection = (epoch, how)

    def _selection(self) -> tuple[int | None, str]:
        """(selected epoch, how it was chosen): the best primary, else the last evaluated epoch; None before any
        evaluation."""
        epoch = selected_epoch(self.rows, self.primary_key)
        if epoch is not None:
            return epoch, f"best {self.primary_key}"
        evaluated = [row["epoch"] for row in self.rows if any(k.startswith(RESULT_SPLITS) for k in row)]
        return max(evaluated + [e for e, _ in self.evaluated.values()], default=None), FALLBACK

    # end of run -------------------------------------------------------------------------------------------------
    def finish(self, history: list[dict] | None = None, config: Config | None = None) -> None:
        """Back-fill missing epochs of ``history`` (the trainer's return value; the epochs seen by this process
        when None), then log the artifacts (``config``, if given, replaces the one the run started with).
        Called by :func:`tracked_run` on exit if the caller did not."""
        self.config = config or self.config
        if history is not None:
            for row in history:
                if row["epoch"] not in self.logged_steps:
                    self._log_epoch(row["epoch"], _row(row))
            self.rows = [dict(m) for m in history]
        self.select()
        self.log_artifacts(self.rows)
        self.finished = True

    def log_artifacts(self, rows: list[dict], with_model: bool = True) -> None:
        """config.yaml, metrics.csv, negatives.csv, learning_curve.html, the last epoch's per-query ranks, the second
        stage's (and the model). The selected epoch's ranks are logged by :meth:`select`."""
        from argbench.track.curve import learning_curve  # plotly is imported only when a run ends

        if self.config is not None:
            self.client.log_text(self.run_id, to_yaml(self.config), "config.yaml")
        if rows:
            table = pd.DataFrame(rows).sort_values("epoch")
            self.client.log_text(self.run_id, table.to_csv(index=False), "metrics.csv")
            figure = learning_curve(rows, primary=self.primary_key)
            # plotly.js from its CDN: inlined it is 4.7 MB per run, and the MLflow UI draws these curves anyway
            self.client.log_text(self.run_id, figure.to_html(include_plotlyjs="cdn"), "learning_curve.html")
        negatives = pd.DataFrame(self.negatives, columns=["epoch", "point", "negative", "source"])
        if len(negatives):
            self.client.log_text(self.run_id, negatives.to_csv(index=False), "negatives.csv")
        for split, (epoch, evaluation) in self.evaluated.items():
            self._log_ranks(LAST_RANKS, split, epoch, evaluation)
        for split, (epoch, evaluation) in self.reranked.items():
            self._log_ranks(RANKS, split, epoch, evaluation)
        if with_model and self.log_model and self.out_dir is not None and (self.out_dir / "checkpoint").is_dir():
            self._log_export()

    def _log_ranks(self, artifact: str, split: str, epoch: int, evaluation) -> None:
        self.client.log_text(self.run_id, per_query_table(epoch, evaluation).to_csv(index=False),
                             artifact.format(split=split))

    def _log_export(self) -> None:
        """The run folder's selected model (``best/``; ``checkpoint/`` where it has none) as an export folder,
        logged as the run's pyfunc model at the step of its epoch (see :mod:`argbench.track.model_log`)."""
        from argbench.track.model_log import log_export
        from argbench.train.trained_run import export_run

        with tempfile.TemporaryDirectory() as scratch:
            log_export(self.client, self.run_id, export_run(self.out_dir, Path(scratch) / "export"))

    def _restore(self, history: list[dict]) -> None:
        """A resumed run's rows, selection and negatives before this process: the epochs of the checkpoint's
        ``history``, the selection its tags record (with the ``best/`` values logged with it) and the examples of
        the run's negatives.csv up to the checkpoint's epoch, so that the artifacts rewritten at each epoch hold
        the whole run."""
        self.rows = [dict(m) for m in history]
        tags = self.client.get_run(self.run_id).data.tags
        if SELECTED_TAG in tags:
            epoch = int(tags[SELECTED_TAG])
            self.selection = (epoch, tags.get(SELECTION_TAG, ""))
            self.best_logged = best_metrics(self.rows, epoch)
        try:
            with tempfile.TemporaryDirectory() as scratch:
                earlier = pd.read_csv(self.client.download_artifacts(self.run_id, "negatives.csv", scratch))
        except (MlflowException, OSError):
            return
        self.negatives = earlier[earlier["epoch"] <= self.resumed_from].to_dict("records")

    # logging helpers --------------------------------------------------------------------------------------------
    def _log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.store.log_metrics(self.run_id, values, step=epoch)
        self.logged_steps.add(epoch)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [{"epoch": epoch, **values}]

    def _new_params(self, params: dict[str, str]) -> dict[str, str]:
        """``params`` not yet in the run (a resumed run already has them); those a resume changed (``train.epochs``
        extended: the checkpoint allows only resumable keys to change) get their new values in place."""
        existing = self.client.get_run(self.run_id).data.params
        changed = {k: params[k] for k in sorted(params) if k in existing and existing[k] != params[k]}
        if changed and not self.store.update_params(self.run_id, changed):
            warnings.warn(f"MLflow run {self.run_id}: the tracking server keeps the first values of "
                          f"{', '.join(changed)}; the new ones are tags param.<key>", stacklevel=3)
        return {k: v for k, v in params.items() if k not in existing}

    def log(self, params: dict | None = None, tags: dict | None = None) -> None:
        """Log ``params`` and ``tags`` (values redacted) in batches MLflow accepts: :meth:`Store.log`."""
        self.store.log(self.run_id, params, tags)


def per_query_table(epoch: int, evaluation) -> pd.DataFrame:
    """The long per-query table of an Evaluation (anything with ``ranks``; ``dedup_ranks`` and ``unseen`` are
    optional): epoch, query, task, rank (official), rank_dedup (the dedup view; the official rank where the
    evaluation has none) and unseen (the query is in the unseen view; False where unknown)."""
    dedup = getattr(evaluation, "dedup_ranks", None) or {}
    flags = getattr(evaluation, "unseen", None)
    frames = []
    for task, ranks in evaluation.ranks.items():
        unseen = flags if flags is not None else np.zeros(len(ranks), dtype=bool)
        frames.append(pd.DataFrame({"epoch": epoch, "query": np.arange(len(ranks)), "task": task, "rank": ranks,
                                    "rank_dedup": dedup.get(task, ranks), "unseen": unseen}))
    return pd.concat(frames, ignore_index=True)


# --- the run -----------------------------------------------------------------------------------------------------

def open_run(*, run_name: str, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
             tags: dict | None = None, params: dict | None = None) -> str:
    """Create a RUNNING run that outlives this process and return its id: a parent that workers on several
    machines add children to (a grid study's), closed by whoever finishes it (``Store.end_if_running``). Tags and
    params are redacted."""
    store = Store(tracking_uri or default_tracking_uri())  # a new SQLite store: made under its first-use lock
    run = store.client.create_run(experiment_id(store.client, experiment), run_name=run_name,
                                  tags={k: redact(str(v)) for k, v in (tags or {}).items()})
    store.log(run.info.run_id, params=params)
    return run.info.run_id


@contextmanager
def tracked_run(*, run_name: str, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
                tags: dict | None = None, resume_run_id: str | None = None, nested: bool = False,
                parent_run_id: str | None = None, system_metrics: bool = True, config: Config | None = None,
                out_dir: Path | None = None, log_model: bool = False) -> Iterator[MlflowTracker]:
    """Open an MLflow run and yield its :class:`MlflowTracker`; the run never stays RUNNING.

    ``resume_run_id`` re-opens that run (same id; ``experiment`` is then ignored). ``nested`` puts the run under
    the innermost enclosing ``tracked_run`` (or ``parent_run_id``). ``config`` supplies the params when the
    trainer's info does not carry one; ``out_dir`` receives ``mlflow_run_id`` and, with ``log_model``, holds the
    checkpoint logged at the end. Tags ``ablation`` (default ``run_name``) and ``group`` (default "none") are set.
    On exit: FINISHED (after ``finish``; an ``error`` tag left by an earlier failed session is removed);
    KeyboardInterrupt or another BaseException -> KILLED; an Exception -> FAILED with tag ``error`` =
    "Type: message" (redacted, <= 5000 chars); the exception is re-raised. A process killed outright cannot say
    so: its process tags and heartbeat let :func:`argbench.track.stale.sweep` close the run later.
    """
    uri = tracking_uri or default_tracking_uri()
    store = Store(uri)  # a new SQLite store: one process creates its tables, concurrent ones wait
    client = store.client
    all_tags = {"ablation": run_name, "group": "none", **(tags or {})}
    if resume_run_id:
        run_id = _reopen(client, resume_run_id)
    else:
        parent = parent_run_id or (_enclosing_run() if nested else None)
        start_tags = {**{k: redact(str(v)) for k, v in all_tags.items()}, **stale.process_tags()}
        if parent:
            start_tags[MLFLOW_PARENT_RUN_ID] = parent
        run_id = client.create_run(experiment_id(client, experiment), run_name=run_name,
                                   tags=resolve_tags(start_tags)).info.run_id
    tracker = MlflowTracker(store, run_id, config=config, tags=all_tags, out_dir=out_dir, log_model=log_model)
    monitor = _system_monitor(run_id, uri, resumed=bool(resume_run_id)) if system_metrics else None
    tracker.heartbeat = stale.Heartbeat(client, run_id).start()
    status, token = "KILLED", _open_runs.set(_open_runs.get() + (run_id,))
    try:
        if out_dir is not None:  # inside the try: a folder that cannot be written leaves the run FAILED, not RUNNING
            save_run_id(out_dir, run_id)
        yield tracker
        if not tracker.finished:
            tracker.finish()
        status = "FINISHED"
        if "error" in client.get_run(run_id).data.tags:  # from a failed session of this resumed run
            client.delete_tag(run_id, "error")
    except Exception as err:
        status = "FAILED"
        _salvage(tracker)
        client.set_tag(run_id, "error", redact(f"{type(err).__name__}: {err}")[:MAX_ERROR_CHARS])
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: stopped, not broken
        _salvage(tracker)
        raise
    finally:
        _open_runs.reset(token)
        tracker.heartbeat.stop()
        if monitor is not None:
            monitor.finish()
        client.set_terminated(run_id, status)


def _reopen(client: MlflowClient, run_id: str) -> str:
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise UserError(f"cannot resume MLflow run {run_id!r}: not found at {redact(client.tracking_uri)} "
                        f"({err.message}); expected the id saved in the run folder's {RUN_ID_FILE} (is "
                        "MLFLOW_TRACKING_URI the store the run was tracked in?)") from None
    if run.info.lifecycle_stage == "deleted":
        raise UserError(f"cannot resume MLflow run {run_id!r}: it is deleted; restore it or start a new run")
    # Where it runs now, before it is RUNNING again: a sweep meanwhile must not see the dead process's tags.
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in stale.process_tags().items()])
    for tag in (stale.STALE_TAG, stale.LAST_HEARTBEAT_TAG):
        if tag in run.data.tags:
            client.delete_tag(run_id, tag)
    client.update_run(run_id, status="RUNNING")
    return run_id


def _enclosing_run() -> str:
    if _open_runs.get():
        return _open_runs.get()[-1]
    import mlflow

    active = mlflow.active_run()
    if active is None:
        raise ValueError("nested=True needs an enclosing tracked_run (or mlflow.start_run), or a parent_run_id")
    return active.info.run_id


def _system_monitor(run_id: str, uri: str, resumed: bool):
    """MLflow's system-metrics sampler (``system/*`` metrics) for the run, started; None without psutil.

    It samples every 10 s unless ``mlflow.set_system_metrics_sampling_interval`` (or its environment variable)
    says otherwise; ``set_system_metrics_samples_before_logging`` and ``set_system_metrics_node_id`` apply too.
    A resumed run continues the ``system/*`` steps after the last one it holds.
    """
    # MLflow's public switch (``mlflow.start_run(log_system_metrics=True)``, ``enable_system_metrics_logging``)
    # builds this same sampler, but only inside the fluent ``mlflow.start_run``: that samples against the
    # process-wide tracking URI and pushes the run onto the process's active-run stack, while a tracked run is
    # opened by an MlflowClient bound to its own store and leaves global MLflow state alone (module doc). The
    # fluent path also raises without psutil, where a tracked run warns and trains on. So the sampler is built
    # here as ``mlflow.start_run`` builds it, with the run's own tracking URI.
    if find_spec("psutil") is None:
        warnings.warn("psutil is not installed: MLflow system metrics are not logged (pip install psutil)",
                      stacklevel=3)
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def _salvage(tracker: MlflowTracker) -> None:
    """Log what a stopped run has so far (metrics.csv, negatives...); never masks the exception in flight."""
    try:
        tracker.log_artifacts(tracker.rows)
    except Exception as err:  # noqa: BLE001 - the original exception matters more
        warnings.warn(f"could not log the artifacts of stopped MLflow run {tracker.run_id}: {err}", stacklevel=3)
