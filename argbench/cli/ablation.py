"""``argbench ablation {list,show,run}``, ``argbench compare`` and ``argbench report``: the registry, tracked in
MLflow, and its runs compared with significance tests."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from argbench.cli.options import add_epoch_argument
from argbench.data.copies import RANK_SPLITS, VIEWS

HTML_METRIC = "val/epa/acc_at_1"

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
    _base_args(show)
    show.add_argument("--json", action="store_true",
                      help='print {"name", "base", "alias_of", "layers", "config": {sections}} as JSON')
    show.set_defaults(func=cmd_show)
    defaults = ab.add_parser("defaults", help="every config default as commented YAML (ablations/base.yaml is "
                                              "this output)")
    defaults.set_defaults(func=cmd_defaults)
    run = ab.add_parser("run", help="train an ablation and track it in MLflow", conflict_handler="resolve")
    run.add_argument("name")
    run_args(run)
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_ID",
                     help="continue the newest run folder of this name and seed(s) that has a checkpoint, or the "
                          "one of MLflow run RUN_ID (a multi-seed run: its parent's id)")
    run.add_argument("--experiment", default="argbench", help="MLflow experiment (default: argbench)")
    run.add_argument("--out", type=Path,
                     help="folder of this ablation's run folders (default: mlruns/runs/<name>); each run gets its "
                          "own: seed<S>, then seed<S>-2, ... (several seeds: seeds<S>-<S+N-1>/seed<S>/...), and "
                          "seed<S>-latest points at the newest")
    run.add_argument("--log-model", action="store_true", help="log the final weights as an MLflow artifact")
    run.add_argument("--seeds", type=int, default=1,
                     help="train N seeds (seed, seed+1, ...) as child runs of one parent with mean/std/CI")
    _base_args(run)
    run.set_defaults(func=cmd_run)

    imp = ab.add_parser("import", help="log a run folder trained without MLflow (config.yaml + metrics.jsonl) "
                                       "as a FINISHED MLflow run")
    imp.add_argument("run_dir", type=Path, help="folder written by `argbench train --out` / fit(out_dir=...)")
    imp.add_argument("--name", required=True, help="run name: usually the registry entry it trained")
    imp.add_argument("--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                     help="extra MLflow tag, e.g. device=H100 (repeatable)")
    imp.add_argument("--experiment", default="argbench", help="MLflow experiment (default: argbench)")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import)

    cmp = sub.add_parser("compare", help="paired comparison of two tracked systems per task: Δ, 95%% CI, p")
    cmp.add_argument("a", help="reference system: an ablation name (its latest FINISHED run and its seeds), a run "
                     "id, or run ids joined by commas (one system's seeds run separately)")
    cmp.add_argument("b", help="the system compared with it (Δ = b − a)")
    _comparison_args(cmp)
    cmp.add_argument("--task", dest="tasks", action="extend", nargs="+", metavar="T",
                     help="only these tasks (repeatable; default: every task logged)")
    cmp.add_argument("--base", help="registry entry both were run over (`ablation run --base`): compares the "
                                    "runs named A@BASE and B@BASE (the base's own runs for BASE itself)")
    cmp.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="one HTML page of plotly comparisons, or (--table) significance tables")
    rep.add_argument("--runs", nargs="*", help="run names or ids for the page (default: what was trained: the "
                                               "top-level runs, then each study's or search's runs under its name); "
                                               "a multi-seed entry shows the mean of its seeds")
    rep.add_argument("--metric", help=f"page: metric per epoch (default {HTML_METRIC}); --table: acc@1 or mrr "
                                      "(default acc@1; the page's significance part uses mrr for an mrr metric)")
    rep.add_argument("-o", "--out", type=Path, default=Path("mlruns/report.html"))
    rep.add_argument("--table", action="store_true",
                     help="print each group's ablations vs the baseline (Holm-corrected) instead of the page")
    rep.add_argument("--group", help="registry group of the table (default: every group with runs); with the "
                                     "page, adds that group's significance figure and table to it")
    rep.add_argument("--baseline", default="baseline", help="the run every group member is compared with")
    rep.add_argument("--base", help="registry entry the members were run over (`ablation run --base`): compares "
                                    "the runs MEMBER@BASE with BASE's own (members that equal BASE left out)")
    _comparison_args(rep)
    rep.set_defaults(func=cmd_report)


def _comparison_args(p) -> None:
    p.add_argument("--split", default="test", choices=RANK_SPLITS,
                   help="evaluated split (val = validation); test/reranked pairs final rankings: a run's second stage "
                        "(its pair classifier's or cross-encoder's) where it has one, else its first stage")
    p.add_argument("--view", default="official", choices=VIEWS,
                   help="which ranks are paired: official pools; dedup = pools without copies of the query; "
                        "unseen = only queries whose texts do not occur in training (default: official)")
    add_epoch_argument(p, "per-query ranks and (report page) metrics")
    p.add_argument("--experiment", default="argbench", help="MLflow experiment (default: argbench)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def _base_args(p) -> None:
    p.add_argument("--base", help="apply the entry's delta over this registry entry instead of baseline "
                                  "(run name NAME@BASE, tag base)")
    p.add_argument("--profile", help="overlay ablations/profiles/PROFILE.yaml (default: embedded on the sample "
                                     "corpus, none on a real one)")


def cmd_list(args) -> int:
    from argbench.experiments.registry import RegistryError, list_ablations

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
    from argbench.experiments.registry import resolution, resolved_yaml

    kw = {"embedded": args.embedded, "base": args.base, "profile": args.profile}
    if args.json:
        print(json.dumps(resolution(args.name, args.overrides, **kw), indent=2))
    else:
        print(resolved_yaml(args.name, args.overrides, **kw), end="")
    return 0


def cmd_defaults(args) -> int:
    from argbench.config import defaults_yaml
    from argbench.experiments.registry import BASE_HEADER

    print(defaults_yaml(BASE_HEADER), end="")
    return 0


def cmd_run(args) -> int:
    from argbench.cli.options import shortcut_overrides
    from argbench.experiments.runner import run_ablation
    from argbench.track.store_faults import store_faults

    with store_faults():
        open_store()
        result = run_ablation(args.name, shortcut_overrides(args), data=args.data, seeds=args.seeds,
                              experiment=args.experiment, out=args.out, resume=args.resume,
                              log_model=args.log_model, base=args.base, profile=args.profile)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    if "over_seeds" in result:
        key = next(k for k in result["over_seeds"] if k.startswith("best/"))
        s = result["over_seeds"][key]
        print(f"run {result['run_id']} ({args.name}, {args.seeds} seeds): {key} mean {s['mean']:.3f} "
              f"± {s['std']:.3f} (95% CI {s['ci'][0]:.3f}–{s['ci'][1]:.3f})")
    else:
        (metric, value), = result["best"].items()
        test = {k: v for k, v in result["selected"].items() if k in ("test/epa/acc_at_1", "test/unseen/epa/acc_at_1")}
        shown = "".join(f", {k} {v:.3f}" for k, v in test.items())
        print(f"run {result['run_id']} ({args.name}, {result['profile']} profile) finished: selected epoch "
              f"{result['selected'].get('epoch')} of {result['last']['epoch']}, best {metric} {value:.3f}{shown}")
    from argbench.track.ui import run_link

    print(f"see it in the MLflow UI (make ui): {run_link(result['run_id'])}  or  make report")
    return 0


def cmd_import(args) -> int:
    from argbench.experiments.run_import import import_run

    open_store()
    result = import_run(args.run_dir, name=args.name, experiment=args.experiment, tags=dict(args.tags))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        (metric, value), = result["best"].items()
        print(f"imported {args.run_dir} as run {result['run_id']} ({args.name}): {result['epochs']} epochs, "
              f"best {metric} {value:.3f}")
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE, e.g. --tag device=H100")
    return key, value


def open_store(must_exist: bool = False) -> None:
    """What a command does first with the MLflow store: close the runs whose process is gone
    (:func:`argbench.track.stale.sweep`); ``must_exist``: a missing store is an error, not created."""
    from argbench.track.stale import sweep
    from argbench.track.tracker import default_tracking_uri

    sweep(default_tracking_uri(), must_exist=must_exist)


def _quiet_downloads() -> None:
    """MLflow draws a progress bar for every per-query file it fetches: dozens of lines, no information."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def cmd_compare(args) -> int:
    from argbench.analysis.significance import compare_systems, format_comparison
    from argbench.experiments.registry import run_name

    _quiet_downloads()
    open_store(must_exist=True)
    a, b = (run_name(ref, args.base) for ref in (args.a, args.b)) if args.base else (args.a, args.b)
    result = compare_systems(a, b, split=args.split, tasks=args.tasks, experiment=args.experiment, view=args.view,
                             epoch=args.epoch)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def cmd_report(args) -> int:
    _quiet_downloads()
    open_store(must_exist=True)
    if args.table:
        return _print_tables(args)
    from argbench.analysis.report import report

    metric = args.metric or HTML_METRIC
    extra = None
    if args.group:
        from argbench.analysis import significance

        result = significance.group_table(args.group, baseline=args.baseline, base=args.base, split=args.split,
                                          metric="mrr" if metric.endswith("mrr") else "acc@1",
                                          experiment=args.experiment, view=args.view, epoch=args.epoch)
        extra = {"fig-significance": significance.figure(result),
                 "fig-significance-table": significance.table_figure(result)}
    path = report(args.experiment, args.runs, metric, args.out, extra_figures=extra, epoch=args.epoch)
    print(json.dumps({"path": str(path)}) if args.json else f"wrote {path}")
    return 0


def _print_tables(args) -> int:
    """``report --table``: one group's table (JSON: its dict) or every group's with runs (JSON: a list)."""
    from argbench.analysis.significance import format_table, group_table, group_tables

    kw = {"baseline": args.baseline, "base": args.base, "split": args.split, "experiment": args.experiment,
          "view": args.view, "epoch": args.epoch,
          "metric": (args.metric or "acc@1").replace("_at_", "@")}
    results = [group_table(args.group, **kw)] if args.group else group_tables(**kw)
    if args.json:
        print(json.dumps(results[0] if args.group else results, indent=2))
    elif not results:
        print(f"no group has a run to compare with {args.baseline!r} in experiment {args.experiment!r}",
              file=sys.stderr)
    else:
        print("\n\n".join(format_table(r) for r in results))
    return 0
