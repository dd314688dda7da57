"""``argbench`` command line: data stats, zero-shot eval, train, ablations, reports.

Every command takes ``--json`` for machine-readable output on stdout; human-readable text goes to stdout, progress
and notices to stderr. Errors in user input exit with status 2 and one message naming what is wrong; a run stopped
for a known reason (diverged loss, full disk) exits with status 1 and one line; ``argbench --debug ...`` shows the
traceback of either.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from argbench.errors import RunError, Terminated, UserError, stop_signals  # noqa: E402

USER_ERRORS = (UserError, FileNotFoundError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _quiet_libraries() -> None:
    """Library chatter (MLflow's system-metrics INFO lines, transformers' weight-loading bars) buries the one line
    per epoch that matters; warnings and errors still show."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by mlflow when it configures its loggers
    # With a tracking server MLflow writes "View run … at: http://…" on stdout when a run ends, which breaks --json.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not sys.stderr.isatty():  # a log file gets no "Downloading artifacts" bars, redrawn per file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # nor other libraries' tqdm bars (sentence-transformers' "Computing widget examples"): tqdm reads its
        # defaults from TQDM_* when it is first imported, which is after this
        os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if not args.debug:  # MLflow logs a store's SQL error with its traceback before raising it; the raise is one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    with stop_signals():  # Ctrl-C, and SIGTERM (kill, docker stop, scancel) as Ctrl-C
        try:
            return run_command(args.func, args)
        except BrokenPipeError:  # `argbench ... | head`: the reader left; that is not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt as err:
            stopped = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            hint = getattr(args, "on_interrupt", "the last epoch's checkpoint is kept; --resume continues")
            print(f"argbench: {stopped} ({hint})", file=sys.stderr)
            return 143 if isinstance(err, Terminated) else 130


def run_command(func, args, prog: str = "argbench") -> int:
    """``func(args)``, with every known failure as one line on stderr: exit 2 for bad input (:class:`UserError`,
    a missing file), 1 for a run stopped for a known reason (:class:`RunError`, a full disk); with ``args.debug``
    the exception propagates with its traceback. Anything else is a bug and always keeps its traceback."""
    try:
        return func(args) or 0
    except (*USER_ERRORS, RunError, OSError) as err:
        user = isinstance(err, USER_ERRORS)
        if getattr(args, "debug", False) or not (user or isinstance(err, RunError) or err.errno in DISK_FULL):
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2 if user else 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, (*USER_ERRORS, RunError)) else f"{type(err).__name__}: {text}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="argbench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(title="commands")

    data = sub.add_parser("data", help="corpus information").add_subparsers(title="data commands")
    stats = data.add_parser("stats", help="arguments, pairs, debates, themes and mean pool sizes per split")
    _data_args(stats)
    stats.set_defaults(func=cmd_data_stats)

    ev = sub.add_parser("eval", help="retrieval with an untrained encoder, TF-IDF or an exported model")
    ev.add_argument("--encoder", required=True,
                    help="encoder name, local path, 'tfidf', or an `argbench export` folder (evaluated as trained: "
                         "its own pooling, length and classifier; --pooling/--max-length do not apply)")
    ev.add_argument("--pooling", default="mean", choices=("pooler", "cls", "mean"))
    ev.add_argument("--max-length", type=int, default=256)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--split", default="test", choices=("training", "validation", "test"))
    ev.add_argument("--track", action="store_true",
                    help="also log the result as an MLflow run (tfidf or zero_shot:<encoder>, group baselines)")
    ev.add_argument("--experiment", default="argbench", help="MLflow experiment of --track (default: argbench)")
    _data_args(ev)
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="train one configuration (no tracking; see `ablation run`)")
    tr.add_argument("--config", type=Path, help="YAML config (defaults: the research recipe)")
    _run_args(tr)
    tr.add_argument("--out", type=Path, default=Path("mlruns/runs/train"), help="run folder")
    tr.set_defaults(func=cmd_train)

    from argbench.cli import ablation as cli_ablation
    from argbench.cli import baseline, bench, search, study
    from argbench.cli import model as cli_model

    cli_ablation.add_commands(sub, _data_args, _run_args)
    cli_model.add_commands(sub, _data_args)
    baseline.add_commands(sub, _data_args)
    sp = sub.add_parser("search", help="Optuna search over an ablation's hyperparameters, tracked in MLflow")
    search.add_arguments(sp)
    sp.set_defaults(func=search.cmd_search)
    st = sub.add_parser("study", help="a group × seeds grid as one resumable Optuna study shared by many workers, "
                                      "with its significance table")
    study.add_arguments(st)
    st.set_defaults(func=study.cmd_study)
    ln = sub.add_parser("link", help="the MLflow UI address of an experiment or run, opening on its training runs")
    ln.add_argument("run", nargs="?", help="a run id (default: the experiment's page)")
    ln.add_argument("--experiment", default="argbench", help="MLflow experiment (default: argbench)")
    ln.add_argument("--ui", help="the UI's address (default: the tracking server, else $ARGBENCH_UI_URL or "
                                 "http://127.0.0.1:5000, what `make ui` serves)")
    ln.set_defaults(func=cmd_link)
    bp = sub.add_parser("bench", help="side-by-side benchmarks against the original's methods")
    bench.add_arguments(bp)
    bp.set_defaults(func=bench.cmd_bench)
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="corpus root or 'sample' (default: $ARGBENCH_DATA, data/counterargs-18, sample)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    _data_args(p)
    p.add_argument("--encoder", help="shortcut for --set model.encoder=NAME")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=S")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")


def cmd_data_stats(args) -> int:
    from argbench.data.corpus import load_corpus, stats

    result = stats(load_corpus(args.data))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"source {result['source']}  hash {result['hash']}")
    print(f"{'split':<11}{'arguments':>10}{'pairs':>7}{'debates':>9}{'themes':>8}{'skipped':>9}")
    for split, row in result["splits"].items():
        print(f"{split:<11}{row['arguments']:>10}{row['pairs']:>7}{row['debates']:>9}{row['themes']:>8}"
              f"{len(row['skipped']):>9}")
    print("\nmean pool size per task")
    tasks = list(next(iter(result["splits"].values()))["pools"])
    print(f"{'split':<11}" + "".join(f"{t:>9}" for t in tasks))
    for split, row in result["splits"].items():
        print(f"{split:<11}" + "".join(f"{row['pools'][t]:>9.2f}" for t in tasks))
    print("\ncopies (whitespace-normalised texts of paired arguments)")
    print(_copies_table(result["splits"], tasks))
    return 0


def _copies_table(splits: dict, tasks: list[str]) -> str:
    """The copies part of ``data stats``: one line per statistic, one column per split ("–" where it does not
    apply)."""
    lines = [("pairs", lambda row: row["pairs"]),
             ("points with a twin among the split's points", lambda row: row["copies"]["points_with_twin"]),
             ("counters with a twin among the split's counters", lambda row: row["copies"]["counters_with_twin"]),
             ("pairs whose point and counter both occur in training", lambda row: row["copies"]["pairs_in_training"]),
             ("training pairs whose point or counter occurs in validation or test",
              lambda row: row["copies"].get("pairs_in_heldout")),
             ("distinct training pairs (by text)", lambda row: row["copies"].get("distinct_pairs"))]
    lines += [(f"queries with a copy of themselves in the {task} pool",
               lambda row, task=task: row["copies"]["query_copy_in_pool"][task]) for task in tasks]
    width = max(len(label) for label, _ in lines) + 2
    out = [f"{'':<{width}}" + "".join(f"{split:>12}" for split in splits)]
    for label, value in lines:
        cells = [value(row) for row in splits.values()]
        out.append(f"{label:<{width}}" + "".join(f"{'–' if v is None else f'{v:,}':>12}" for v in cells))
    return "\n".join(out)


def cmd_eval(args) -> int:
    from argbench.data.corpus import load_corpus
    from argbench.eval.baselines import run_baseline
    from argbench.train.console import view_queries, view_table

    corpus = load_corpus(args.data)
    from argbench.model.export import is_export

    if is_export(args.encoder):
        return _eval_export(args, corpus)
    kwargs = {} if args.encoder == "tfidf" else {
        "pooling": args.pooling, "max_length": args.max_length, "batch_size": args.batch_size,
        "progress": sys.stderr.isatty()}
    evaluation = run_baseline(corpus.split(args.split), args.encoder, **kwargs)
    views = evaluation.views()
    short = {view: {task: {k: m[k] for k in ("acc@1", "acc@5", "mrr")} for task, m in metrics.items()}
             for view, metrics in views.items()}
    if args.track:
        from argbench.cli.ablation import open_store
        from argbench.track.baseline_log import log_baseline, run_name
        from argbench.train.trainer import SPLIT_KEYS

        open_store()

        params = {"encoder": args.encoder, "split": args.split, **kwargs}
        params.pop("progress", None)
        run_id = log_baseline(evaluation, name=run_name(args.encoder), split_key=SPLIT_KEYS[args.split],
                              params=params, experiment=args.experiment,
                              tags={"data.source": corpus.source.describe(), "data.hash": corpus.hash})
        from argbench.track.ui import run_link

        print(f"argbench eval: logged MLflow run {run_id} ({run_name(args.encoder)}): {run_link(run_id)}",
              file=sys.stderr)
    if args.json:  # the official view under the split's name, the others beside it: {"test", "test_dedup", ...}
        print(json.dumps({args.split if view == "official" else f"{args.split}_{view}": metrics
                          for view, metrics in short.items()}, indent=2))
    else:
        print(view_table(views, title=f"{args.encoder} on {args.split} ({corpus.source.describe()})",
                         queries=view_queries(evaluation)))
    if not sys.stderr.isatty():
        print(f"argbench eval: {args.encoder} {args.split} epa acc@1 "
              + ", ".join(f"{view} {m['epa']['acc@1']:.3f}" for view, m in short.items()), file=sys.stderr)
    return 0


def _eval_export(args, corpus) -> int:
    """``eval --encoder EXPORT_DIR``: the exported model's metrics, and how far they are from the run's own."""
    from argbench.eval.evaluate_export import evaluate_export, recorded_difference
    from argbench.model.exported_model import load_export
    from argbench.train.console import view_table
    from argbench.train.trainer import SPLIT_KEYS

    if args.track:
        from argbench.errors import UserError

        raise UserError(f"--track: {args.encoder} is an exported run, already tracked; expected a zero-shot encoder")
    exported = load_export(args.encoder)
    evaluation = evaluate_export(exported, corpus.split(args.split), batch_size=args.batch_size)
    difference = recorded_difference(exported, SPLIT_KEYS[args.split], evaluation)
    if args.json:
        print(json.dumps({args.split: evaluation.metrics, f"{args.split}_rerank_acc@1": evaluation.rerank_acc1,
                          "max_abs_difference_from_run": difference}, indent=2))
        return 0
    print(view_table(evaluation.views(), title=f"{args.encoder} on {args.split} ({corpus.source.describe()})"))
    if difference is None:
        print(f"the run recorded no {args.split} metrics at the exported epoch ({exported.info.get('epoch')}) to "
              "compare with")
    else:
        print(f"largest difference from the run's recorded {args.split} metrics: {difference:.2e}")
    return 0


def cmd_train(args) -> int:
    from argbench.cli.options import shortcut_overrides
    from argbench.config import load_config
    from argbench.data.corpus import load_corpus
    from argbench.train.console import EpochPrinter
    from argbench.train.selection import selected_metrics
    from argbench.train.trainer import fit

    cfg = load_config(args.config, shortcut_overrides(args))
    corpus = load_corpus(args.data if args.data is not None else cfg.data.path)
    history = fit(cfg, corpus, [EpochPrinter(cfg.eval.primary)], out_dir=args.out, resume=args.resume,
                  progress=True)
    chosen = selected_metrics(history, cfg.eval.primary)
    if args.json:  # the run's result: the selected epoch's metrics, "epoch" says which
        print(json.dumps(chosen, indent=2))
    else:
        print(f"selected epoch {chosen.get('epoch')} of {history[-1]['epoch']} (best {cfg.eval.primary}); run folder "
              f"{args.out}: config.yaml, metrics.jsonl, checkpoint/ (last epoch), best/ (selected epoch)")
    return 0


def cmd_link(args) -> int:
    """``argbench link``: one URL on stdout, ``?workflowType=machine_learning`` included (argbench.track.ui)."""
    from argbench.track.ui import experiment_link, run_link

    root = args.ui.rstrip("/") if args.ui else None
    print(experiment_link(args.experiment, root=root) if args.run is None else run_link(args.run, root=root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
