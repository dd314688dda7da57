"""``argbench baseline mnrl``: the sentence-transformers fine-tuning a practitioner would run instead of argbench's
recipe (:mod:`argbench.train.sentence_transformers_mnrl`), evaluated in the three views and, with ``--track``,
logged as the MLflow run ``st_mnrl`` (group baselines) that ``argbench compare`` pairs query by query with any run
on the same data."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from argbench.train.sentence_transformers_mnrl import RUN_NAME, MnrlSettings


def add_commands(sub, data_args) -> None:
    group = sub.add_parser("baseline", help="trained baselines, evaluated and tracked like argbench's runs")
    mnrl = group.add_subparsers(title="baseline commands").add_parser(
        "mnrl", help="sentence-transformers MultipleNegativesRankingLoss fine-tuning on the cleaned training pairs; "
                     "the epoch with the best val/epa/acc_at_1 is kept and evaluated on test")
    _settings_args(mnrl)
    mnrl.add_argument("--out", type=Path,
                      help=f"folder of the selected epoch's SentenceTransformer (default: mlruns/runs/{RUN_NAME}/"
                           "seed<seed>)")
    mnrl.add_argument("--track", action="store_true",
                      help=f"log the run to MLflow as {RUN_NAME!r} (group baselines), per-query test ranks included")
    mnrl.add_argument("--experiment", default="argbench", help="MLflow experiment of --track (default: argbench)")
    data_args(mnrl)
    mnrl.set_defaults(func=cmd_mnrl)


def _settings_args(parser) -> None:
    """One flag per :class:`MnrlSettings` field, its help and default from the field (absent flags keep it)."""
    for f in fields(MnrlSettings):
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} (default: {f.default})"
        if f.type is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, type=f.type, help=text)


def cmd_mnrl(args) -> int:
    from argbench.config import PRIMARY
    from argbench.data.corpus import load_corpus
    from argbench.paths import runs_dir
    from argbench.train.console import EpochPrinter, view_queries, view_table
    from argbench.train.sentence_transformers_mnrl import train_mnrl

    settings = MnrlSettings(**{f.name: getattr(args, f.name) for f in fields(MnrlSettings)
                               if getattr(args, f.name) is not None})
    corpus = load_corpus(args.data)
    out = args.out or runs_dir() / RUN_NAME / f"seed{settings.seed}"
    result = train_mnrl(corpus, settings, out, [EpochPrinter(PRIMARY)])
    views = result.test.views()
    if args.track:
        _track(result, corpus, args.experiment)
    if args.json:
        short = {view: {task: {k: m[k] for k in ("acc@1", "acc@5", "mrr")} for task, m in metrics.items()}
                 for view, metrics in views.items()}
        print(json.dumps({"selected_epoch": result.selected_epoch, "seconds": result.seconds,
                          "train_pairs": result.train_pairs, "out": str(result.out_dir), "history": result.history,
                          **{"test" if view == "official" else f"test_{view}": m for view, m in short.items()}},
                         indent=2))
    else:
        print(view_table(views, title=f"{RUN_NAME} ({settings.encoder}, epoch {result.selected_epoch} of "
                                      f"{settings.epochs}, selected on validation) on test "
                                      f"({corpus.source.describe()})", queries=view_queries(result.test)))
        print(f"{result.train_pairs} training pairs, {result.seconds:.1f} s; model in {result.out_dir}")
    return 0


def _track(result, corpus, experiment: str) -> None:
    from argbench.cli.ablation import open_store
    from argbench.track.baseline_log import log_baseline
    from argbench.train.trainer import SPLIT_KEYS

    open_store()
    params = {**asdict(result.settings), "train_pairs": result.train_pairs, "loss": "MultipleNegativesRankingLoss"}
    tags = {"data.source": corpus.source.describe(), "data.hash": corpus.hash,
            "selected_epoch": result.selected_epoch, "train_pairs_before": result.pair_counts["corpus"]}
    run_id = log_baseline(result.test, name=RUN_NAME, split_key=SPLIT_KEYS["test"], params=params, tags=tags,
                          experiment=experiment, history=result.history, epoch=result.selected_epoch)
    print(f"argbench baseline mnrl: logged MLflow run {run_id} ({RUN_NAME})", file=sys.stderr)
