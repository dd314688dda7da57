"""Run a named ablation end to end: resolve its config, train it, track it in MLflow — once, or once per seed.

With several seeds the run is an MLflow *parent* (named after the ablation, tag ``seeds``) with one child run per
seed, and the parent carries, for every final metric, its mean, standard deviation and 95 % bootstrap interval over
seeds (``<metric>/mean``, ``/std``, ``/ci_lo``, ``/ci_hi``). ``argbench compare`` pools the children's per-query
ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from argbench.config import Config, replace
from argbench.train.console import EpochPrinter
from argbench.data.corpus import Corpus, load_corpus, resolve_data
from argbench.paths import runs_dir
from argbench.experiments.registry import get, resolve
from argbench.analysis.stats import seed_summary
from argbench.track.tracker import epoch_metrics, load_run_id, tracked_run
from argbench.train.trainer import best, fit



@dataclass
class RunResult:
    run_id: str
    name: str
    config: Config
    history: list[dict]
    best: float

    def summary(self) -> dict:
        return {"run_id": self.run_id, "ablation": self.name, "seed": self.config.train.seed,
                "best": {self.config.eval.primary: self.best}, "last": self.history[-1]}


def run_ablation(name: str, overrides=(), *, data=None, seeds: int = 1, experiment: str = "argbench",
                 out: Path | None = None, resume: bool = False, log_model: bool = False, hooks=(),
                 tracking_uri: str | None = None, progress: bool = True) -> dict:
    """Train ablation ``name`` (``seeds`` runs with seeds base, base+1, …) and return a JSON-ready summary.

    The data source decides the profile: the generated sample corpus applies ``ablations/profiles/embedded.yaml``
    (visible in the resolved config, the params and the ``profile`` tag); a real corpus runs the research config.
    """
    ablation = get(name)
    source = resolve_data(data)
    embedded = source.kind == "sample"
    cfg, _ = resolve(name, overrides, embedded=embedded)
    corpus = load_corpus(source)
    tags = {"ablation": name, "group": ablation.group, "profile": "embedded" if embedded else "research"}
    if ablation.alias_of:
        tags["alias_of"] = ablation.alias_of
    base_out = out or runs_dir() / name
    common = dict(experiment=experiment, tracking_uri=tracking_uri, hooks=hooks, resume=resume,
                  log_model=log_model, progress=progress)
    if seeds == 1:
        result = _one_seed(name, cfg, corpus, tags, base_out / f"seed{cfg.train.seed}", **common)
        return {**result.summary(), "experiment": experiment, "profile": tags["profile"]}
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri, system_metrics=False,
                     tags={**tags, "seeds": ",".join(map(str, seed_list))}, config=cfg) as parent:
        results = [_one_seed(name, replace(cfg, **{"train.seed": s}), corpus, tags, base_out / f"seed{s}",
                             parent_run_id=parent.run_id, **common) for s in seed_list]
        summary = _log_seed_summary(parent, results)
    return {"run_id": parent.run_id, "ablation": name, "experiment": experiment, "profile": tags["profile"],
            "seeds": [r.summary() for r in results], "over_seeds": summary}


def _one_seed(name, cfg: Config, corpus: Corpus, tags: dict, out: Path, *, experiment, tracking_uri, hooks,
              resume, log_model, progress, parent_run_id=None) -> RunResult:
    resume_id = load_run_id(out) if resume else None
    if resume and resume_id is None:
        raise FileNotFoundError(f"--resume: {out}/mlflow_run_id is missing: nothing to resume for {name} "
                                f"seed {cfg.train.seed} (run it once without --resume)")
    printer = [EpochPrinter(cfg.eval.primary)] if progress else []
    with tracked_run(run_name=name, experiment=experiment, tracking_uri=tracking_uri,
                     tags={**tags, "seed": str(cfg.train.seed)}, resume_run_id=resume_id,
                     parent_run_id=parent_run_id, config=cfg, out_dir=out, log_model=log_model) as tracker:
        history = fit(cfg, corpus, [tracker, *hooks, *printer], out_dir=out, resume=resume, progress=progress)
        tracker.finish(history, cfg)
    return RunResult(tracker.run_id, name, cfg, history, best(history, cfg.eval.primary))


def _log_seed_summary(parent, results: list[RunResult]) -> dict:
    """Mean, std and bootstrap CI over seeds of every final-epoch metric, logged on the parent run."""
    finals = [epoch_metrics(r.history[-1]) for r in results]
    keys = sorted(set.intersection(*(set(f) for f in finals)))
    summary, flat = {}, {}
    for key in keys:
        s = seed_summary([f[key] for f in finals])
        summary[key] = s
        flat.update({f"{key}/mean": s["mean"], f"{key}/std": s["std"], f"{key}/ci_lo": s["ci"][0],
                     f"{key}/ci_hi": s["ci"][1]})
    primary = f"best/{results[0].config.eval.primary.replace('@', '_at_')}"
    s = seed_summary([r.best for r in results])
    summary[primary] = s
    flat.update({f"{primary}/mean": s["mean"], f"{primary}/std": s["std"], f"{primary}/ci_lo": s["ci"][0],
                 f"{primary}/ci_hi": s["ci"][1]})
    parent.store.log_metrics(parent.run_id, flat)
    return summary
