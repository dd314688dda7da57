"""MLflow tracking of one training run, plugged into the trainer's hooks (the trainer never imports mlflow).

``tracked_run`` opens (or, with ``resume_run_id``, re-opens) an MLflow run and yields an :class:`MlflowTracker`,
the hook passed to ``argbench.train.fit``. What one run holds:

* params: the flattened resolved config (None -> "none", lists comma-joined), logged once;
* tags: ablation, group, seed, data.source, data.hash, encoder, device, git.commit, any extra tags; every tag,
  param and error message goes through :func:`redact`, so a password in a URL is never stored;
* metrics, ``step = epoch`` (0 = untrained model), names from :func:`epoch_metrics`: ``train/loss*``,
  ``{split}/{task}/acc_at_{1,3,5,10}``, ``{split}/{task}/mrr``, ``{split}/rerank/acc_at_1``, ``negatives/*``,
  ``schedule/random_rate``, ``perf/*``; plus MLflow's own ``system/*`` metrics when psutil is installed;
* artifacts: config.yaml, metrics.csv (one row per epoch), negatives.csv, learning_curve.html,
  per_query/{split}.csv (long format: epoch, query, task, rank), rewritten at the end of every epoch (a kill loses
  at most the running epoch), and, with ``log_model``, model/model.safetensors at the end;
* where it runs: tags ``process.host``, ``process.pid`` and a ``process.heartbeat`` refreshed by a thread and
  every epoch, so that :mod:`argbench.stale` can close it as KILLED once its process is gone.

Every call goes through one ``MlflowClient`` bound to the run's tracking URI; no global MLflow state (active run,
global tracking URI) is read or changed, so runs on different stores can coexist in one process.
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Iterator

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from argbench import stale
from argbench.config import Config, flatten, to_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = "argbench"
RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_ERROR_CHARS = 5000
BATCH = 100  # MLflow's limit on params + tags per log_batch call
LOSS_KEYS = {"total": "train/loss", "triplet": "train/loss_triplet", "ce_pos": "train/loss_ce_pos",
             "ce_neg": "train/loss_ce_neg", "in_batch": "train/loss_in_batch"}
NEGATIVE_KEYS = {"point": "negatives/point_frac", "counter": "negatives/counter_frac",
                 "random": "negatives/random_frac", "same_debate": "negatives/same_debate_frac",
                 "same_theme": "negatives/same_theme_frac", "mean_distance": "negatives/mean_distance"}
SCALAR_KEYS = {"random_rate": "schedule/random_rate", "epoch_seconds": "perf/epoch_seconds",
               "train_seq_per_s": "perf/train_seq_per_s"}
EPOCH_MARKER = "perf/epoch_seconds"  # logged at every epoch, so its steps are the epochs already logged

# Run ids of the tracked_run blocks open in this context, innermost last (parents of nested runs).
_open_runs: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("argbench_open_runs", default=())


# --- names and values --------------------------------------------------------------------------------------------

# scheme://user:PASSWORD@ -- the password runs to the last "@" of the token, so one containing "@" or "/" is
# hidden whole (a rare "host:port/path@x" is over-redacted rather than a password leaked).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"<>]*:)[^\s'\"<>]*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&#\s'\"<>]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:pw@host``) and every secret query
    parameter (``?password=``, ``token=``...) replaced by ``***``; anything else unchanged."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", str(text))
    return _QUERY_SECRET.sub(r"\g<head>***", text)


def metric_key(name: str) -> str:
    """MLflow name of an argbench metric name: ``val/epa/acc@1`` -> ``val/epa/acc_at_1`` (MLflow forbids "@")."""
    return name.replace("@", "_at_")


def epoch_metrics(metrics: dict) -> dict[str, float]:
    """The MLflow metrics of one epoch's trainer ``metrics`` dict (see argbench.train), None values left out.

    Every dict-valued key other than ``loss`` and ``negatives`` is an evaluated split ({task: {metric: value}}).
    """
    out: dict[str, float | None] = {}
    for part, key in LOSS_KEYS.items():
        out[key] = (metrics.get("loss") or {}).get(part)
    for name, key in NEGATIVE_KEYS.items():
        out[key] = (metrics.get("negatives") or {}).get(name)
    for name, key in SCALAR_KEYS.items():
        out[key] = metrics.get(name)
    for split, tasks in metrics.items():
        if split in ("loss", "negatives") or not isinstance(tasks, dict):
            continue
        for task, values in tasks.items():
            out.update({f"{split}/{task}/{metric_key(m)}": v for m, v in values.items()})
        out[f"{split}/rerank/acc_at_1"] = metrics.get(f"{split}_rerank_acc@1")
    return {k: float(v) for k, v in out.items() if v is not None}


def param_values(cfg: Config) -> dict[str, str]:
    """MLflow params of ``cfg``: one per config key, None -> "none", lists comma-joined, redacted, <= 6000 chars."""
    def text(value) -> str:
        if value is None:
            return "none"
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return {key: redact(text(value))[:MAX_PARAM_CHARS] for key, value in flatten(cfg).items()}


def git_commit(repo: Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of ``repo``, or "unknown" when it is not a git checkout (or git is missing)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


# --- where runs are stored ---------------------------------------------------------------------------------------

def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the repo's SQLite store (MLflow >= 3.13 no longer opens ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}"


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])


def artifact_root(tracking_uri: str) -> Path | None:
    """Folder for the artifacts of experiments argbench creates: ``artifacts/`` beside a SQLite store file
    (``<repo>/mlruns/artifacts`` by default); None for other stores (the server's default applies)."""
    db = _sqlite_file(tracking_uri)
    return None if db is None else db.resolve().parent / "artifacts"


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created if missing (artifacts under :func:`artifact_root`/<name>)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        root = artifact_root(client.tracking_uri)
        location = None if root is None else (root / re.sub(r"[^\w.\-]", "_", name)).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a concurrent process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {name!r} at {redact(client.tracking_uri)} is deleted; expected an "
                         "active experiment (restore it with `mlflow experiments restore` or pick another name)")
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
    that never reached MLflow (e.g. an interruption between checkpoint and hook).
    """

    def __init__(self, client: MlflowClient, run_id: str, *, config: Config | None = None,
                 tags: dict | None = None, out_dir: Path | None = None, log_model: bool = False):
        self.client, self.run_id, self.config = client, run_id, config
        self.extra_tags = dict(tags or {})
        self.out_dir, self.log_model = (None if out_dir is None else Path(out_dir)), log_model
        self.rows: list[dict] = []  # one flat row per epoch logged by this process
        self.negatives: list[dict] = []
        self.ranks: dict[str, tuple[int, dict]] = {}  # split -> (epoch, {task: ranks [Q]})
        self.logged_steps = self._steps_in_run()
        self.resumed_from: int | None = None
        self.finished = False
        self.heartbeat: stale.Heartbeat | None = None  # set by tracked_run; beats at every epoch's end

    @property
    def primary_key(self) -> str:
        return metric_key(self.config.eval.primary if self.config else "val/epa/acc@1")

    def _steps_in_run(self) -> set[int]:
        keys = {EPOCH_MARKER, "train/loss", self.primary_key}
        return {m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)}

    # hooks ------------------------------------------------------------------------------------------------------
    def on_train_start(self, info: dict) -> None:
        self.config = info.get("config", self.config)
        self.resumed_from = info.get("resumed_from")
        tags = {key: info[key] for key in ("data.source", "data.hash", "device", "world_size", "train_pairs",
                                           "params_trainable", "params_total") if key in info}
        tags["git.commit"] = git_commit()
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

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """Log the epoch's metrics at ``step=epoch`` in one batch, unless the run already has that step, then the
        artifacts so far (all but the model), and beat the heartbeat."""
        if not self.logged_steps or epoch > max(self.logged_steps):
            self._log_epoch(epoch, epoch_metrics(metrics))
            self.log_artifacts(self.rows, with_model=False)
        if self.heartbeat is not None:
            self.heartbeat.beat()

    def on_negatives(self, epoch: int, examples: list[dict]) -> None:
        self.negatives.extend({"epoch": epoch, "point": e["point"], "negative": e["negative"],
                               "source": e["source"]} for e in examples)

    def on_evaluation(self, epoch: int, split: str, evaluation) -> None:
        self.ranks[split] = (epoch, dict(evaluation.ranks))

    # end of run -------------------------------------------------------------------------------------------------
    def finish(self, history: list[dict] | None = None, config: Config | None = None) -> None:
        """Back-fill missing epochs of ``history`` (the trainer's return value; the epochs seen by this process
        when None), then log the artifacts (``config``, if given, replaces the one the run started with).
        Called by :func:`tracked_run` on exit if the caller did not."""
        self.config = config or self.config
        rows = self.rows if history is None else [{"epoch": m["epoch"], **epoch_metrics(m)} for m in history]
        for row in list(rows):
            if row["epoch"] not in self.logged_steps:
                self._log_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
        self.log_artifacts(rows)
        self.finished = True

    def log_artifacts(self, rows: list[dict], with_model: bool = True) -> None:
        """config.yaml, metrics.csv, negatives.csv, learning_curve.html, per_query/*.csv (and the model)."""
        from argbench.report import learning_curve  # plotly is imported on first use; report imports us

        if self.config is not None:
            self.client.log_text(self.run_id, to_yaml(self.config), "config.yaml")
        if rows:
            table = pd.DataFrame(rows).sort_values("epoch")
            self.client.log_text(self.run_id, table.to_csv(index=False), "metrics.csv")
            figure = learning_curve(rows, primary=self.primary_key)
            self.client.log_text(self.run_id, figure.to_html(include_plotlyjs=True), "learning_curve.html")
        negatives = pd.DataFrame(self.negatives, columns=["epoch", "point", "negative", "source"])
        if len(negatives):
            self.client.log_text(self.run_id, negatives.to_csv(index=False), "negatives.csv")
        for split, (epoch, ranks) in self.ranks.items():
            table = pd.DataFrame([{"epoch": epoch, "query": q, "task": task, "rank": int(r)}
                                  for task, values in ranks.items() for q, r in enumerate(values)])
            self.client.log_text(self.run_id, table.to_csv(index=False), f"per_query/{split}.csv")
        model = None if self.out_dir is None else self.out_dir / "checkpoint" / "model.safetensors"
        if with_model and self.log_model and model is not None and model.is_file():
            self.client.log_artifact(self.run_id, str(model), "model")

    def _restore(self, history: list[dict]) -> None:
        """A resumed run's rows and negatives before this session: the epochs of the checkpoint's ``history`` and
        the examples of the run's negatives.csv up to the checkpoint's epoch, so that the artifacts rewritten at
        each epoch hold the whole run."""
        self.rows = [{"epoch": m["epoch"], **epoch_metrics(m)} for m in history]
        try:
            with tempfile.TemporaryDirectory() as scratch:
                earlier = pd.read_csv(self.client.download_artifacts(self.run_id, "negatives.csv", scratch))
        except (MlflowException, OSError):
            return
        self.negatives = earlier[earlier["epoch"] <= self.resumed_from].to_dict("records")

    # logging helpers --------------------------------------------------------------------------------------------
    def _log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])
        self.logged_steps.add(epoch)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [{"epoch": epoch, **values}]

    def _new_params(self, params: dict[str, str]) -> dict[str, str]:
        """``params`` not yet in the run (a resumed run already has them); warns about changed values."""
        existing = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k in params if k in existing and existing[k] != params[k])
        if changed:
            warnings.warn(f"MLflow run {self.run_id} was logged with other values of {', '.join(changed)}; "
                          "keeping the logged values (MLflow params cannot change)", stacklevel=3)
        return {k: v for k, v in params.items() if k not in existing}

    def log(self, params: dict | None = None, tags: dict | None = None) -> None:
        """Log ``params`` and ``tags`` (values redacted) in batches MLflow accepts."""
        entries = [Param(k, redact(str(v))) for k, v in (params or {}).items()] + \
                  [RunTag(k, redact(str(v))) for k, v in (tags or {}).items()]
        for start in range(0, len(entries), BATCH):
            chunk = entries[start:start + BATCH]
            self.client.log_batch(self.run_id, params=[e for e in chunk if isinstance(e, Param)],
                                  tags=[e for e in chunk if isinstance(e, RunTag)])


# --- the run -----------------------------------------------------------------------------------------------------

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
    so: its process tags and heartbeat let :func:`argbench.stale.sweep` close the run later.
    """
    uri = tracking_uri or default_tracking_uri()
    db = _sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
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
    if out_dir is not None:
        save_run_id(out_dir, run_id)
    tracker = MlflowTracker(client, run_id, config=config, tags=all_tags, out_dir=out_dir, log_model=log_model)
    monitor = _system_monitor(run_id, uri, resumed=bool(resume_run_id)) if system_metrics else None
    tracker.heartbeat = stale.Heartbeat(client, run_id).start()
    status, token = "KILLED", _open_runs.set(_open_runs.get() + (run_id,))
    try:
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
        raise ValueError(f"cannot resume MLflow run {run_id!r}: not found at {redact(client.tracking_uri)} "
                         f"({err.message}); expected the id saved in the run folder's {RUN_ID_FILE}") from None
    if run.info.lifecycle_stage == "deleted":
        raise ValueError(f"cannot resume MLflow run {run_id!r}: it is deleted; restore it or start a new run")
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
    """MLflow's system-metrics sampler (``system/*`` metrics) for the run, started; None without psutil."""
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
