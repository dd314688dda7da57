"""What argbench prints for people: metric tables and one line per epoch (the trainer's console hook)."""

from __future__ import annotations

import sys

from argbench.data.tasks import TASKS


def view_table(views: dict[str, dict[str, dict[str, float]]], columns=("acc@1", "mrr"), title: str = "",
               queries: dict[str, int] | None = None) -> str:
    """A fixed-width table of the views of one evaluation (official, dedup, unseen; see :mod:`argbench.data.copies`):
    one row per task, each metric once per view, so the views read side by side; ``queries``: queries per view."""
    names, width = list(views), 10
    head = [" " * 6 + "".join(f"{c:^{width * len(names)}}" for c in columns),
            f"{'task':<6}" + "".join(f"{v:>{width}}" for _ in columns for v in names)]
    rows = [f"{task:<6}" + "".join(f"{views[v][task][c]:>{width}.3f}" for c in columns for v in names)
            for task in TASKS if task in views[names[0]]]
    note = [] if not queries else ["queries: " + ", ".join(f"{v} {queries[v]}" for v in names)]
    return "\n".join(([title] if title else []) + head + rows + note)


def view_queries(evaluation) -> dict[str, int]:
    """How many queries each view of an Evaluation ranks (``view_table``'s ``queries``)."""
    n = len(next(iter(evaluation.ranks.values())))
    unseen = int(evaluation.unseen.sum()) if evaluation.unseen is not None else 0
    return {"official": n, "dedup": n, "unseen": unseen}


def epoch_line(metrics: dict, primary: str) -> str:
    """``epoch 3  loss 2.3091  val/epa/acc_at_1 0.458  rerank 0.125  random 0.76  31.2 s`` of the trainer's flat
    ``metrics`` (rerank: that of the primary metric's split key)."""
    parts = [f"epoch {metrics['epoch']:>3}"]
    if "train/loss" in metrics:
        parts.append(f"loss {metrics['train/loss']:.4f}")
    if primary in metrics:
        parts.append(f"{primary} {metrics[primary]:.3f}")
        rerank = f"{primary.split('/')[0]}/rerank/acc_at_1"
        if rerank in metrics:
            parts.append(f"rerank {metrics[rerank]:.3f}")
    if "negatives/random_frac" in metrics:
        parts.append(f"random {metrics['negatives/random_frac']:.2f}")
    parts.append(f"{metrics['perf/epoch_seconds']:.1f} s")
    return "  ".join(parts)


class EpochPrinter:
    """Trainer hook: one line per epoch on stderr (under any progress bar), so logs stay readable."""

    def __init__(self, primary: str, stream=None):
        self.primary, self.stream = primary, stream or sys.stderr

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        print(epoch_line(metrics, self.primary), file=self.stream, flush=True)
