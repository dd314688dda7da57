"""``argbench study``: a group × seeds grid as one resumable Optuna study (:mod:`argbench.search.study`)."""

from __future__ import annotations

import argparse
import json

from argbench.cli.ablation import _quiet_downloads
from argbench.cli.options import add_epoch_argument, shortcut_overrides
from argbench.cli.search import add_worker_arguments
from argbench.data.copies import RANK_SPLITS
from argbench.search.grid_plan import GridError, plan
from argbench.search.storage import missing_storage
from argbench.search.study import report, run_study, spec_of_study


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="registry entries to compare with the base (or --group); `report STUDY` prints the "
                             "table of an existing study")
    parser.add_argument("--group", help="every distinct member of this registry group")
    parser.add_argument("--base", help="the recipe the members' deltas apply to, compared with each (default "
                                       "baseline)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per entry: train.seed and the next N-1")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--storage", help="Optuna storage URL or journal:///file.log (default "
                                          "mlruns/optuna.db; postgresql://… for several machines)")
    parser.add_argument("--study", help="study name (default GROUP@BASE-Nseeds)")
    parser.add_argument("--profile", help="overlay ablations/profiles/PROFILE.yaml (cpu, gpu; default embedded on "
                                          "the sample corpus)")
    parser.add_argument("--split", default="test", choices=[k for k in RANK_SPLITS if k != "train"],
                        help="split of the table; test/reranked: final rankings (a run's second stage, its pair "
                             "classifier's or cross-encoder's, where it has one, else its first stage)")
    add_epoch_argument(parser, "the table pairs the per-query ranks")
    parser.add_argument("--json", action="store_true", help="print the summary and table as JSON on stdout")
    add_worker_arguments(parser, "cell")
    parser.set_defaults(on_interrupt="cells in training end FAIL and their MLflow runs KILLED; the same command "
                                     "resumes the study, retrying each once")


def cmd_study(args) -> int:
    _quiet_downloads()  # before workers spawn: they inherit the environment
    settings = {"experiment": args.experiment, "tracking_uri": args.tracking_uri, "split": args.split,
                "epoch": args.epoch, "heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period,
                "max_retry": args.max_retry}
    if args.names[:1] == ["report"]:  # "report" is no registry entry, so it cannot be meant as one
        if len(args.names) != 2:
            raise GridError("usage: argbench study report STUDY [--storage URL] [--json]")
        missing = missing_storage(args.storage)
        if missing is not None:  # opening it would create an empty one
            raise GridError(f"no study {args.names[1]!r}: there is no Optuna storage at {missing}; expected the "
                            "--storage the study was run with")
        result = report(spec_of_study(args.names[1], storage=args.storage, **settings))
    else:
        overrides = shortcut_overrides(_shortcuts(args))
        spec = plan(args.names, group=args.group, base=args.base, seeds=args.seeds, study=args.study,
                    overrides=overrides, profile=args.profile, data=args.data, storage=args.storage, **settings)
        result = run_study(spec, jobs=args.jobs)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "text"}, indent=2, default=str))
    else:
        print(format_summary(result))
    return 0


def _shortcuts(args):
    """Only --encoder/--epochs are shortcuts here (``--seeds`` counts seeds; the first is the config's)."""
    return argparse.Namespace(encoder=args.encoder, epochs=args.epochs, overrides=args.overrides)


def format_summary(result: dict) -> str:
    """The summary for a terminal: cell counts, then each view's table (or what is still open)."""
    head = (f"study {result['study']}: {result['complete']}/{result['cells']} cells done, {result['failed']} "
            f"failed, {result['running']} running ({result.get('ran_now', 0)} run now); MLflow parent run "
            f"{result['parent_run_id']}" + (f"\n  {result['parent_url']}" if result.get("parent_url") else ""))
    lines = [head]
    if result["text"]:
        lines += result["text"]
    else:
        lines.append("the table comes when every cell is done: rerun this command to resume, or "
                     f"`argbench study report {result['study']}` once the other workers finish")
    return "\n".join(lines)
