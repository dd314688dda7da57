"""``argbench search``: an Optuna search over one ablation's hyperparameters
(:mod:`argbench.search.hyperparameter_search`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from argbench.cli.options import shortcut_overrides
from argbench.search.hyperparameter_search import PRUNERS, run_search
from argbench.search.storage import DEFAULT_STORAGE

# --- command line --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ablation", default="baseline", help="registry entry whose config is searched")
    parser.add_argument("--profile", help="overlay ablations/profiles/PROFILE.yaml under the searched values (cpu, "
                        "gpu, smoke; default embedded on the sample corpus, none on a real one)")
    parser.add_argument("--space", default="default", help="search space name (ablations/search/) or YAML path")
    parser.add_argument("--trials", type=int, default=8, help="trials to add to the study")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--study", dest="study_name", help="study name (default <ablation>-<space>)")
    parser.add_argument("--storage", help=f"Optuna storage URL or journal:///file.log (default {DEFAULT_STORAGE})")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once, in threads of this process")
    parser.add_argument("--pruner", default="median", choices=PRUNERS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (not train.seed)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_worker_arguments(parser, "trial")
    parser.set_defaults(on_interrupt="running trials end FAIL and their MLflow runs KILLED; the same command "
                                     "continues the study with new trials")


def add_worker_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """The options every study worker shares (``search`` trials, ``study`` cells): data, config overrides, MLflow
    destination, and the heartbeat settings that fail and retry a dead worker's `unit`."""
    parser.add_argument("--data", help="corpus root, or 'sample'")
    parser.add_argument("--encoder", help="shortcut for --set model.encoder=NAME")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value of every {unit}, e.g. --set train.batch_size=16 (repeatable)")
    parser.add_argument("--experiment", default="argbench", help="MLflow experiment")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--heartbeat-interval", type=int, default=10, help=f"seconds between {unit} heartbeats")
    parser.add_argument("--grace-period", type=int, default=30, help="seconds without heartbeat = worker dead")
    parser.add_argument("--max-retry", type=int, default=2, help=f"retries of a {unit} whose worker died")


def cmd_search(args: argparse.Namespace) -> int:
    keys = ("ablation", "profile", "space", "trials", "timeout", "study_name", "storage", "jobs", "pruner", "seed",
            "data", "experiment", "tracking_uri", "heartbeat_interval", "grace_period", "max_retry")
    # Only --encoder/--epochs are shortcuts here: this command's --seed seeds the sampler, not train.seed.
    shortcuts = argparse.Namespace(encoder=args.encoder, epochs=args.epochs, overrides=args.overrides)
    result = run_search(**{k: getattr(args, k) for k in keys}, overrides=shortcut_overrides(shortcuts))
    from argbench.track.ui import run_link

    result["parent_url"] = run_link(result["parent_run_id"], args.tracking_uri)
    print(json.dumps(result, indent=2, default=str) if args.json else format_summary(result))
    return 0


def format_summary(result: dict) -> str:
    """The :func:`summary` dict as a few lines for a terminal, ending with how to watch the study."""
    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    states = ", ".join(f"{n} {state.lower()}" for state, n in result["n_trials"].items()) or "none"
    pace = f"{result['seconds_per_trial']:.1f} s per trial" if result["seconds_per_trial"] is not None else \
        "no trial finished"
    lines = [f"study {result['study']}  storage {result['storage']}",
             f"trials: {states} ({result['trials_run']} run now, {pace})"]
    if result["best_value"] is None:
        lines.append("best: none yet (no complete trial)")
    else:
        params = ", ".join(f"{k}={shown(v)}" for k, v in result["best_params"].items())
        lines.append(f"best: {shown(result['best_value'])} (trial {result['best_trial']}) {params}")
    dashboard = f"optuna-dashboard {result['storage']}"
    lines += [f"MLflow parent run {result['parent_run_id']}" + (f": {result['parent_url']}" if "parent_url" in result
                                                                 else ""),
              f"watch it: {'make dashboard, or ' if result['storage'] == DEFAULT_STORAGE else ''}{dashboard}"]
    return "\n".join(lines)
