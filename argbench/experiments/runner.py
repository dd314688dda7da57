"""Run a named ablation end to end: resolve its config, train it, track it in MLflow — once, or once per seed.

With several seeds the run is an MLflow *parent* (named after the ablation, tag ``seeds``) with one child run per
seed, and the parent carries, for every final metric, its mean, standard deviation and 95 % bootstrap interval over
seeds (``<metric>/mean``, ``/std``, ``/ci_lo``, ``/ci_hi``). ``argbench compare`` pools the children's per-query
ranks.

Every run gets a run folder of its own (:mod:`argbench.experiments.run_folders`: ``seed42``, ``seed42-2``…, or
``seeds42-44`` holding one folder per seed), locked while it trains; ``resume`` continues the newest one (or the
one of a given run id). Bad input — an unknown name, key, encoder, a seed count below 1, nothing to resume — is
refused before any folder or MLflow run is made.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from argbench.config import Config, replace
from argbench.data.corpus import Corpus, load_corpus, resolve_data
from argbench.errors import UserError
from argbench.eval.stats import seed_summary
from argbench.experiments import run_folders
from argbench.experiments.registry import DEFAULT_BASE, alias_under, get, resolve, run_name
from argbench.model.encoders import ALIASES, EncoderError, available_encoders
from argbench.paths import default_tracking_uri, runs_dir
from argbench.track.store_faults import connect
from argbench.track.tracker import load_run_id, tracked_run
from argbench.train import checkpoint
from argbench.train.console import EpochPrinter
from argbench.train.selection import best, selected_metrics
from argbench.train.trainer import fit


@dataclass
class RunResult:
    run_id: str
    name: str
    config: Config
    history: list[dict]
    best: float

    @property
    def selected(self) -> dict:
        """The metrics of the epoch selected on ``eval.primary`` (``epoch`` says which): the run's result."""
        return selected_metrics(self.history, self.config.eval.primary)

    def summary(self) -> dict:
        return {"run_id": self.run_id, "ablation": self.name, "seed": self.config.train.seed,
                "best": {self.config.eval.primary: self.best}, "selected": self.selected, "last": self.history[-1]}


def run_ablation(name: str, overrides=(), *, data=None, seeds: int = 1, experiment: str = "argbench",
                 out: Path | None = None, resume: bool | str = False, log_model: bool = False, hooks=(),
                 tracking_uri: str | None = None, progress: bool = True, base: str | None = None,
                 profile: str | None = None) -> dict:
    """Train ablation ``name`` (``seeds`` runs with seeds base, base+1, …) and return a JSON-ready summary.

    ``base``: apply the entry's delta over that registry entry instead of ``baseline`` (run name ``name@base``,
    tag ``base``; an entry whose config equals the base's is tagged ``alias_of``). The profile is ``profile``
    if given, else the data source decides: the generated sample corpus applies ``ablations/profiles/embedded.yaml``
    (visible in the resolved config, the params and the ``profile`` tag); a real corpus runs the research config.

    ``out``: the folder of this ablation's run folders (default ``mlruns/runs/<name>``). ``resume``: True continues
    the newest resumable run folder of this name and seed(s), a run id the folder holding that run (a multi-seed
    run: its parent's id); the same parent and children go on.
    """
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected at least 1 (the number of seeds to train)")
    get(name)  # an unknown name fails here, before any data is read
    source = resolve_data(data)
    profile = data_profile(source, profile)
    cfg, _ = resolve(name, overrides, base=base, profile=profile)
    check_encoder(cfg.model.encoder)
    corpus = load_corpus(source)
    tags = cell_tags(name, base, profile)
    name = run_name(name, base)
    root = Path(out) if out is not None else runs_dir() / name
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    stem = run_folders.stem(seed_list)
    if resume:
        folder = run_folders.resumable(root, stem, run_id=resume if isinstance(resume, str) else None,
                                       multi=seeds > 1)
    else:
        connect(tracking_uri or default_tracking_uri())  # an unreachable store: one line before any folder
        folder = run_folders.new_folder(root, stem)
    common = dict(experiment=experiment, tracking_uri=tracking_uri, hooks=hooks, log_model=log_model,
                  progress=progress)
    if seeds == 1:
        result = train_seed(name, cfg, corpus, tags, folder, resume=bool(resume), **common)
        return {**result.summary(), "experiment": experiment, "profile": tags["profile"], "run_dir": str(folder)}
    with run_folders.locked(folder):
        parent_id = load_run_id(folder) if resume else None
        with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri, system_metrics=False,
                         tags={**tags, "seeds": ",".join(map(str, seed_list))}, config=cfg,
                         resume_run_id=parent_id, out_dir=folder) as parent:
            results = []
            for s in seed_list:
                child = folder / f"seed{s}"
                results.append(train_seed(name, replace(cfg, **{"train.seed": s}), corpus, tags, child,
                                          resume=load_run_id(child) is not None, parent_run_id=parent.run_id,
                                          **common))
            summary = _log_seed_summary(parent, results)
    return {"run_id": parent.run_id, "ablation": name, "experiment": experiment, "profile": tags["profile"],
            "run_dir": str(folder), "seeds": [r.summary() for r in results], "over_seeds": summary}


def check_encoder(name: str) -> None:
    """EncoderError (bad input) unless ``name`` (``model.encoder``) is an alias, a local folder or a model of the
    local Hugging Face cache: checked before a run is made, so a typo makes no FAILED run."""
    if name in ALIASES or Path(name).expanduser().is_dir():
        return
    available = available_encoders()
    if name not in available:
        raise EncoderError(f"unknown encoder {name!r} (model.encoder): not an alias, not a local folder, and not "
                           f"in the local Hugging Face cache (downloads are disabled); available offline: "
                           f"{', '.join(available)}")


def data_profile(source, profile: str | None) -> str | None:
    """`profile` if given, else ``embedded`` for the generated sample corpus (data source `source`), else None."""
    return profile or ("embedded" if source.kind == "sample" else None)


def cell_tags(name: str, base: str | None, profile: str | None) -> dict:
    """MLflow tags of a run of entry ``name`` over ``base``: ablation, group, base, profile and, for an entry
    whose config is its base's, alias_of."""
    alias = alias_under(name, base)
    return {"ablation": name, "group": get(name).group, "base": base or DEFAULT_BASE,
            "profile": profile or "research", **({"alias_of": alias} if alias else {})}


def train_seed(name, cfg: Config, corpus: Corpus, tags: dict, out: Path, *, experiment, tracking_uri, hooks,
               resume, log_model, progress, parent_run_id=None, on_open=None) -> RunResult:
    """Train ``cfg`` as one tracked MLflow run named ``name`` (a child of ``parent_run_id`` if given) in run
    folder ``out`` (None: no folder), locked while it trains (:class:`run_folders.FolderInUse` if another process
    holds it); ``resume`` reopens the folder's run and continues from its checkpoint (from the start where it has
    none yet). ``on_open(run_id)`` is called once the run exists, before training (e.g. to record the id where a
    reaper of dead workers finds it)."""
    with run_folders.locked(out) if out is not None else nullcontext():
        resume_id = load_run_id(out) if resume else None
        if resume and resume_id is None:
            raise FileNotFoundError(f"--resume: {out}/mlflow_run_id is missing: nothing to resume for {name} "
                                    f"seed {cfg.train.seed} (run it once without --resume)")
        from_checkpoint = resume and checkpoint.exists(out)
        if from_checkpoint:  # before the run is reopened: a damaged checkpoint leaves the run as it was, not FAILED
            checkpoint.verify(out, cfg)
        printer = [EpochPrinter(cfg.eval.primary)] if progress else []
        with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri,
                         tags={**tags, "seed": str(cfg.train.seed)}, resume_run_id=resume_id,
                         parent_run_id=parent_run_id, config=cfg, out_dir=out, log_model=log_model) as tracker:
            if on_open is not None:
                on_open(tracker.run_id)
            history = fit(cfg, corpus, [tracker, *hooks, *printer], out_dir=out, resume=from_checkpoint,
                          progress=progress)
            tracker.finish(history, cfg)
    return RunResult(tracker.run_id, name, cfg, history, best(history, cfg.eval.primary))


def _log_seed_summary(parent, results: list[RunResult]) -> dict:
    """Mean, std and bootstrap CI over seeds of every metric at each seed's selected epoch, logged on the parent
    run."""
    finals = [{k: v for k, v in r.selected.items() if k != "epoch"} for r in results]
    keys = sorted(set.intersection(*(set(f) for f in finals)))
    summary, flat = {}, {}
    for key in keys:
        s = seed_summary([f[key] for f in finals])
        summary[key] = s
        flat.update({f"{key}/mean": s["mean"], f"{key}/std": s["std"], f"{key}/ci_lo": s["ci"][0],
                     f"{key}/ci_hi": s["ci"][1]})
    primary = f"best/{results[0].config.eval.primary}"
    s = seed_summary([r.best for r in results])
    summary[primary] = s
    flat.update({f"{primary}/mean": s["mean"], f"{primary}/std": s["std"], f"{primary}/ci_lo": s["ci"][0],
                 f"{primary}/ci_hi": s["ci"][1]})
    parent.store.log_metrics(parent.run_id, flat)
    return summary
