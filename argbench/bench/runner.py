"""Run argbench's benchmarks by name and print their rows as a table or JSON.

Every benchmark times argbench and a reference in one process on the same inputs and returns rows
``{"case", "argbench_s", "reference_s", "ratio" (= reference_s / argbench_s), "agree" (True/False, or None when
the two do not compute the same thing), ...extra}``; times are medians in seconds.

========= =============================================================================================
name      what
========= =============================================================================================
load      load_corpus + the eight pools of the three splits vs per-query DataFrame filtering
mining    hard-negative mining vs BallTree + Python loop (N = 4,065 and 40,000)
eval      top-10 + classifier rerank on the test split, batched vs one classifier call per candidate
train     training sequences/s vs sentence-transformers' trainer (same encoder, triplets, batch, steps)
frozen    frozen_encoder epochs with the encoder's outputs computed once vs at every use (same config, metrics)
recipe    seconds per epoch and peak memory of each recipe switch vs its base (ratio = cost, not speed-up)
partial   epochs training the top N layers on cached states of the frozen bottom vs training every layer
precision bf16 autocast vs fp32: training sequences/s, embedding texts/s, and the metrics' difference
========= =============================================================================================

    argbench bench all [--json] [--device cuda]
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Callable

BENCHES = ("load", "mining", "eval", "train", "frozen", "recipe", "partial", "precision")
# Defaults sized for 2 CPU cores: load, eval and train take ~3 minutes together on an idle machine; mining's
# reference (BallTree, 128-d) at N = 40,000 alone takes far longer (~20 minutes measured under load).
DEFAULTS: dict[str, dict] = {
    "load": {"repeats": 3, "reference_queries": 200},
    "mining": {"ns": (4065, 40000), "repeats": 3},
    "eval": {"repeats": 5},
    "train": {"steps": 10, "rounds": 2, "batch_size": 8, "max_length": 128},
    "frozen": {"epochs": 3, "max_train_pairs": 256, "max_length": 128},
    "recipe": {"pairs": 128},
    "partial": {"pairs": 128},
    "precision": {"pairs": 128},
}


def bench_function(name: str) -> Callable[..., list[dict]]:
    """The ``run_*_bench`` function of benchmark ``name`` (imported on demand: some need heavy packages)."""
    if name == "load":
        from argbench.bench.load import run_load_bench as fn
    elif name == "mining":
        from argbench.bench.mining import run_mining_bench as fn
    elif name == "eval":
        from argbench.bench.original_eval import run_eval_bench as fn
    elif name == "train":
        from argbench.bench.train import run_train_bench as fn
    elif name == "frozen":
        from argbench.bench.frozen import run_frozen_bench as fn
    elif name == "recipe":
        from argbench.bench.recipe import run_recipe_bench as fn
    elif name == "partial":
        from argbench.bench.partial import run_partial_bench as fn
    elif name == "precision":
        from argbench.bench.precision import run_precision_bench as fn
    else:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHES)} or all")
    return fn


def run_benches(names: list[str], progress: bool = False, **opts) -> dict[str, list[dict]]:
    """Rows of each named benchmark (``"all"`` = every one), in :data:`BENCHES` order.

    ``opts`` go to every benchmark whose function takes them (e.g. ``data``, ``repeats``, ``device``, ``steps``)
    and override :data:`DEFAULTS`; an option that no selected benchmark takes is an error. ``None`` values are
    ignored, so command-line flags left unset keep the defaults. ``progress`` names each benchmark on stderr as it
    starts and ends.
    """
    selected = list(BENCHES) if "all" in names else list(dict.fromkeys(names))
    functions = {name: bench_function(name) for name in selected}
    opts = {k: v for k, v in opts.items() if v is not None}
    accepted = {name: set(inspect.signature(fn).parameters) for name, fn in functions.items()}
    unused = set(opts) - set().union(*accepted.values())
    if unused:
        raise ValueError(f"option(s) {', '.join(sorted(unused))} are taken by none of the benchmarks "
                         f"{', '.join(selected)}; see each run_*_bench signature")
    results = {}
    for name, fn in functions.items():
        kwargs = {**DEFAULTS[name], **{k: v for k, v in opts.items() if k in accepted[name]}}
        start = time.perf_counter()
        if progress:
            print(f"bench {name}: running with {kwargs}", file=sys.stderr, flush=True)
        results[name] = fn(**kwargs)
        if progress:
            print(f"bench {name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def format_table(results: dict[str, list[dict]]) -> str:
    """A plain-text table per benchmark: case, both times, ratio, agreement, then any extra fields as key=value."""
    lines = []
    for name, rows in results.items():
        width = max([len("case"), *(len(row["case"]) for row in rows)])
        lines.append(f"== {name}")
        lines.append(f"{'case':<{width}} {'argbench_s':>11} {'reference_s':>12} {'ratio':>8} {'agree':>6}")
        for row in rows:
            lines.append(f"{row['case']:<{width}} {_num(row['argbench_s']):>11} {_num(row['reference_s']):>12} "
                         f"{_num(row['ratio'], 'x'):>8} {str(row['agree']):>6}")
            extra = {k: v for k, v in row.items() if k not in ("case", "argbench_s", "reference_s", "ratio", "agree")}
            if extra:
                lines.append("    " + ", ".join(f"{k}={_num(v)}" for k, v in extra.items()))
    return "\n".join(lines)


def _num(value, suffix: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.4g}{suffix}"
    return "-" if value is None else str(value)


def run(benches: list[str], json_output: bool = False, **opts) -> int:
    """Run ``benches`` and print the rows: JSON (``{name: rows}``) or the table. Returns 1 if a check disagreed."""
    results = run_benches(benches, progress=True, **opts)
    print(json.dumps(results, indent=2) if json_output else format_table(results))
    return int(any(row.get("agree") is False for rows in results.values() for row in rows))
