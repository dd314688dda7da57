"""``argbench`` command line: data stats, zero-shot eval, train, ablations, reports.

Every command takes ``--json`` for machine-readable output on stdout; human-readable text goes to stdout, progress
and notices to stderr. Errors in user input exit with status 2 and one message naming what is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from argbench.errors import UserError  # noqa: E402

USER_ERRORS = (UserError, FileNotFoundError)


def _quiet_libraries() -> None:
    """Library chatter (MLflow's system-metrics INFO lines, transformers' weight-loading bars) buries the one line
    per epoch that matters; warnings and errors still show."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by mlflow when it configures its loggers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except USER_ERRORS as err:
        print(f"argbench: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `argbench ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("argbench: interrupted (the last epoch's checkpoint is kept; --resume continues)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="argbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(title="commands")

    data = sub.add_parser("data", help="corpus information").add_subparsers(title="data commands")
    stats = data.add_parser("stats", help="arguments, pairs, debates, themes and mean pool sizes per split")
    _data_args(stats)
    stats.set_defaults(func=cmd_data_stats)

    ev = sub.add_parser("eval", help="zero-shot retrieval with an untrained encoder or TF-IDF")
    ev.add_argument("--encoder", required=True, help="encoder name, local path, or 'tfidf'")
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
    from argbench.search import study as search

    cli_ablation.add_commands(sub, _data_args, _run_args)
    sp = sub.add_parser("search", help="Optuna search over an ablation's hyperparameters, tracked in MLflow")
    search.add_arguments(sp)
    sp.set_defaults(func=search.cmd_search)

    from argbench.bench import runner as bench

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
    return 0


def cmd_eval(args) -> int:
    from argbench.eval.baselines import run_baseline
    from argbench.train.console import task_table
    from argbench.data.corpus import load_corpus

    corpus = load_corpus(args.data)
    kwargs = {} if args.encoder == "tfidf" else {
        "pooling": args.pooling, "max_length": args.max_length, "batch_size": args.batch_size,
        "progress": sys.stderr.isatty()}
    evaluation = run_baseline(corpus.split(args.split), args.encoder, **kwargs)
    short = {task: {k: m[k] for k in ("acc@1", "acc@5", "mrr")} for task, m in evaluation.metrics.items()}
    if args.track:
        from argbench.eval.baselines import log_baseline, run_name
        from argbench.train.trainer import SPLIT_KEYS

        params = {"encoder": args.encoder, "split": args.split, **kwargs}
        params.pop("progress", None)
        run_id = log_baseline(evaluation, name=run_name(args.encoder), split_key=SPLIT_KEYS[args.split],
                              params=params, experiment=args.experiment,
                              tags={"data.source": corpus.source.describe(), "data.hash": corpus.hash})
        print(f"argbench eval: logged MLflow run {run_id} ({run_name(args.encoder)})", file=sys.stderr)
    if args.json:
        print(json.dumps({args.split: short}, indent=2))
    else:
        print(task_table(evaluation.metrics, title=f"{args.encoder} on {args.split} ({corpus.source.describe()})"))
    if not sys.stderr.isatty():
        print(f"argbench eval: {args.encoder} {args.split} epa acc@1 {short['epa']['acc@1']:.3f}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from argbench.cli.options import shortcut_overrides
    from argbench.config import load_config
    from argbench.train.console import EpochPrinter
    from argbench.data.corpus import load_corpus
    from argbench.train.trainer import fit

    cfg = load_config(args.config, shortcut_overrides(args))
    corpus = load_corpus(args.data if args.data is not None else cfg.data.path)
    history = fit(cfg, corpus, [EpochPrinter(cfg.eval.primary)], out_dir=args.out, resume=args.resume,
                  progress=True)
    if args.json:
        print(json.dumps(history[-1], indent=2))
    else:
        print(f"run folder {args.out}: config.yaml, metrics.jsonl, checkpoint/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
