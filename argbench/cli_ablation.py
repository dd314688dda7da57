"""``argbench ablation {list,show,run}`` and ``argbench report``: the registry, tracked in MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from argbench.corpus import REPO_ROOT

RUNS_DIR = REPO_ROOT / "mlruns" / "runs"


def add_commands(sub, data_args, run_args) -> None:
    ab = sub.add_parser("ablation", help="the registry of named ablations").add_subparsers(title="ablation commands")
    ls = ab.add_parser("list", help="every named ablation: name, group, question")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--group", help="only this group")
    ls.add_argument("--names", action="store_true",
                    help="names only, one per line (for scripts; aliases only when --group is given)")
    ls.set_defaults(func=cmd_list)
    show = ab.add_parser("show", help="the resolved configuration of an ablation, as YAML")
    show.add_argument("name")
    show.add_argument("--embedded", action="store_true", help="as run on the generated sample corpus")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_show)
    run = ab.add_parser("run", help="train an ablation and track it in MLflow")
    run.add_argument("name")
    run_args(run)
    run.add_argument("--experiment", default="argbench", help="MLflow experiment (default: argbench)")
    run.add_argument("--out", type=Path, help="run folder (default: mlruns/runs/<name>-s<seed>)")
    run.add_argument("--log-model", action="store_true", help="log the final weights as an MLflow artifact")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="one HTML page of plotly comparisons, read from MLflow")
    rep.add_argument("--experiment", default="argbench")
    rep.add_argument("--runs", nargs="*", help="run names (default: every run of the experiment)")
    rep.add_argument("--metric", default="val/epa/acc_at_1")
    rep.add_argument("-o", "--out", type=Path, default=Path("mlruns/report.html"))
    rep.set_defaults(func=cmd_report)


def cmd_list(args) -> int:
    from argbench.registry import RegistryError, list_ablations

    entries = list_ablations()
    if args.group:
        entries = [a for a in entries if a.group == args.group]
        if not entries:
            groups = sorted({a.group for a in list_ablations()})
            raise RegistryError(f"no ablation in group {args.group!r}: groups are {', '.join(groups)}")
    if args.names:
        print("\n".join(a.name for a in entries if args.group or not a.alias_of))
        return 0
    if args.json:
        print(json.dumps([{"name": a.name, "group": a.group, "question": a.question, "alias_of": a.alias_of}
                          for a in entries], indent=2))
        return 0
    width = max(len(a.name) for a in entries)
    for a in entries:
        alias = f"  (alias of {a.alias_of})" if a.alias_of else ""
        print(f"{a.name:<{width}}  {a.group:<10}  {a.question}{alias}")
    print(f"\n{len(entries)} ablations; run one with: make ablation NAME=<name>", file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    from argbench.registry import resolved_yaml

    print(resolved_yaml(args.name, args.overrides, embedded=args.embedded), end="")
    return 0


def cmd_run(args) -> int:
    from argbench.cli import shortcut_overrides
    from argbench.config import flatten
    from argbench.console import EpochPrinter
    from argbench.corpus import load_corpus, resolve_data
    from argbench.registry import get, resolve
    from argbench.tracking import load_run_id, save_run_id, tracked_run
    from argbench.train import best, fit

    ablation = get(args.name)
    source = resolve_data(args.data)
    embedded = source.kind == "sample"
    cfg, _ = resolve(args.name, shortcut_overrides(args), embedded=embedded)
    corpus = load_corpus(source)
    out = args.out or RUNS_DIR / f"{args.name}-s{cfg.train.seed}"
    resume_id = load_run_id(out) if args.resume else None
    tags = {"ablation": args.name, "group": ablation.group, "seed": str(cfg.train.seed),
            "encoder": cfg.model.encoder, "profile": "embedded" if embedded else "research"}
    if ablation.alias_of:
        tags["alias_of"] = ablation.alias_of
    with tracked_run(run_name=args.name, experiment=args.experiment, tags=tags, resume_run_id=resume_id) as tracker:
        save_run_id(out, tracker.run_id)
        tracker.log_model = args.log_model
        tracker.out_dir = out
        history = fit(cfg, corpus, [tracker, EpochPrinter(cfg.eval.primary)], out_dir=out, resume=args.resume,
                      progress=True)
        tracker.finish(history, cfg)
    result = {"run_id": tracker.run_id, "ablation": args.name, "experiment": args.experiment,
              "best": {cfg.eval.primary: best(history, cfg.eval.primary)}, "last": history[-1],
              "params": {k: v for k, v in flatten(cfg).items()}}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"run {tracker.run_id} ({args.name}) finished: best {cfg.eval.primary} "
              f"{result['best'][cfg.eval.primary]:.3f}")
        print("compare runs: make ui   (MLflow UI on http://127.0.0.1:5000)   or   make report")
    return 0


def cmd_report(args) -> int:
    from argbench.report import report

    path = report(args.experiment, args.runs, args.metric, args.out)
    print(f"wrote {path}")
    return 0
