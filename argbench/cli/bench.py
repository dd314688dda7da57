"""``argbench bench``: side-by-side benchmarks against the original's methods (:mod:`argbench.bench`), and ``argbench
bench gpu``, the check to run first on a GPU machine (:mod:`argbench.bench.gpu`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from argbench.bench.runner import BENCHES, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benches", nargs="+", choices=(*BENCHES, "all", "gpu"),
                        help="benchmark names, 'all' of them, or 'gpu': the GPU machine's check (alone)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--data", help="corpus path or 'sample' (default: $ARGBENCH_DATA, else the sample)")
    parser.add_argument("--device", help="train: cpu (default) or cuda (random BERT-base, bf16 autocast)")
    parser.add_argument("--steps", type=int, help="train: optimizer steps per contender and round")
    parser.add_argument("--batch-size", type=int, help="train: triplets per step")
    parser.add_argument("--peak-tflops", type=float, help="train on cuda: the GPU's dense bf16 peak, for MFU "
                                                          "(default: looked up from the device name)")
    parser.add_argument("--ns", type=int, nargs="+", help="mining: numbers of pairs N (default 4065 40000)")
    parser.add_argument("--repeats", type=int, help="timed runs per contender (median reported)")
    parser.add_argument("--pairs", type=int, help="recipe: training pairs of the one timed epoch (default 128)")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--epochs", type=int, help="gpu: epochs of each of the bf16 and fp32 runs (default 3)")
    gpu.add_argument("--out", type=Path, help="gpu: folder of gpu_check.json and the two run folders "
                                              "(default mlruns/runs/gpu-check/<time>)")
    gpu.add_argument("--dry-run", action="store_true", help="gpu: check the command on this CPU (tiny model, "
                                                            "sample corpus, a few steps)")


def cmd_bench(args: argparse.Namespace) -> int:
    """``argbench bench``: exit 1 when a correctness check disagreed, 2 on bad options."""
    gpu_opts = ("epochs", "out", "dry_run")
    if "gpu" in args.benches:
        return _cmd_gpu(args) if args.benches == ["gpu"] else _usage("gpu runs alone: argbench bench gpu [...]")
    if any(getattr(args, k) for k in gpu_opts):
        return _usage(f"--epochs, --out and --dry-run are options of 'gpu' only, not of {' '.join(args.benches)}")
    opts = {k: v for k, v in vars(args).items() if k not in ("benches", "json", "func", "debug", *gpu_opts)}
    try:
        return run(args.benches, args.json, **opts)
    except (ValueError, ImportError) as err:
        print(f"argbench bench: error: {err}", file=sys.stderr)
        return 2


def _cmd_gpu(args: argparse.Namespace) -> int:
    """``argbench bench gpu``: the summary (or the report as JSON); exit 1 when bf16 and fp32 disagree."""
    from argbench.bench.gpu import EPOCHS, run_gpu_check, summary

    report = run_gpu_check(args.data, args.out, args.epochs or EPOCHS, dry_run=args.dry_run)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return int(not report["agreement"]["agree"])


def _usage(message: str) -> int:
    print(f"argbench bench: error: {message}", file=sys.stderr)
    return 2
