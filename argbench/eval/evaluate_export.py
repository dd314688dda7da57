"""An export folder evaluated as the trainer evaluates a run, and compared with the metrics the run recorded:
``argbench eval --encoder EXPORT_DIR``."""

from __future__ import annotations

import torch

from argbench.data.tasks import SplitData
from argbench.eval.evaluate import Evaluation, evaluate
from argbench.model.bi_encoder import Encoded
from argbench.model.exported_model import ExportedModel


@torch.no_grad()
def evaluate_export(exported: ExportedModel, split: SplitData, batch_size: int = 64) -> Evaluation:
    """The export's :class:`~argbench.eval.evaluate.Evaluation` on ``split``, as the trainer evaluates a run: every
    argument embedded as a candidate, the queries by the point encoder (the candidates' rows when shared)."""
    candidates = exported.embed(split.texts, "candidate", batch_size=batch_size)
    if exported.model.sharing == "shared":
        queries = Encoded(candidates.pooled[split.query_idx], candidates.emb[split.query_idx])
    else:
        texts = split.texts
        queries = exported.embed([texts[i] for i in split.query_idx], "point", batch_size=batch_size)
    scorer = exported.model.pair_scorer(queries, candidates) if exported.model.classifier is not None else None
    return evaluate(split, queries.emb, candidates.emb, metric=exported.config.eval.metric, scorer=scorer,
                    rerank_depth=exported.config.eval.rerank_depth)


def recorded_difference(exported: ExportedModel, split_key: str, evaluation: Evaluation) -> float | None:
    """Largest |difference| between ``evaluation`` (the :class:`~argbench.eval.evaluate.Evaluation` of split key
    ``split_key``: "val", "test", "train") and the run's recorded metrics of the same names at the exported epoch;
    None when the run recorded none of them then (it did not evaluate that split at that epoch)."""
    metrics = evaluation.flat(split_key)
    shared = [k for k in exported.info["metrics"] if k in metrics]
    return max((abs(metrics[k] - exported.info["metrics"][k]) for k in shared), default=None)
