"""``argbench bench``: side-by-side benchmarks against the original's methods (:mod:`argbench.bench`)."""

from __future__ import annotations

import argparse
import sys

from argbench.bench.runner import BENCHES, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benches", nargs="+", choices=(*BENCHES, "all"))
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


def cmd_bench(args: argparse.Namespace) -> int:
    """``argbench bench``: exit 1 when a correctness check disagreed, 2 on bad options."""
    opts = {k: v for k, v in vars(args).items() if k not in ("benches", "json", "func", "debug")}
    try:
        return run(args.benches, args.json, **opts)
    except (ValueError, ImportError) as err:
        print(f"argbench bench: error: {err}", file=sys.stderr)
        return 2
