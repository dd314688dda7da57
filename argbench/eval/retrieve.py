"""``argbench retrieve``: the best counterarguments for any argument text, from an exported model and a corpus split.

The split's counters are the candidates (what the model was trained to find); they are embedded once and cached on
disk under ``<cache>/<weights digest>-<data hash>-<split>.safetensors``, so later queries embed only themselves. A
candidate whose text equals the query (whitespace collapsed) is left out: a counter asked about itself is no
answer. Candidates are ranked by the run's retrieval distance (euclidean, or cosine distance 1 − cos); with
``rerank`` the nearest ``max(k, eval.rerank_depth)`` are reordered by the run's second stage, as in the original
protocol: its cross-encoder when it trained one (``eval.rerank: cross_encoder``), else the pair classifier's P(true
pair). Every hit carries its debate, theme, stance, distance, classifier score (None without one) and, with a
cross-encoder rerank, ``cross_encoder_score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from argbench.data.tasks import SplitData
from argbench.errors import UserError
from argbench.model import cross_encoder
from argbench.model.bi_encoder import Encoded
from argbench.model.export import ExportedModel
from argbench.model.tokens import tokenize_texts
from argbench.paths import mlruns_dir


@dataclass
class Candidates:
    """The split's counters: rows of ``split.args`` (``rows``) and their embeddings (``encoded``)."""

    split: SplitData
    rows: torch.Tensor
    encoded: Encoded


def cache_dir() -> Path:
    """Where candidate embeddings are cached: ``<project>/mlruns/cache/retrieve`` (see :mod:`argbench.paths`)."""
    return mlruns_dir() / "cache" / "retrieve"


def candidates(exported: ExportedModel, split: SplitData, data_hash: str, cache_dir: Path | None = None,
               batch_size: int = 64) -> Candidates:
    """Embed ``split``'s counters with the candidate encoder, or read them from ``cache_dir`` (None: no cache)."""
    rows = torch.from_numpy(split.counters_idx).long()
    path = None if cache_dir is None else \
        Path(cache_dir) / f"{exported.info['weights_digest']}-{data_hash}-{split.name}.safetensors"
    if path is not None and path.is_file():
        cached = load_file(path)
        if torch.equal(cached["rows"], rows):
            return Candidates(split, rows, Encoded(cached["pooled"], cached["emb"]))
    all_texts = split.texts
    texts = [all_texts[i] for i in rows.tolist()]
    encoded = exported.embed(texts, "candidate", batch_size=batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"rows": rows, "pooled": encoded.pooled.contiguous(), "emb": encoded.emb.contiguous()}, tmp)
        tmp.replace(path)
    return Candidates(split, rows, encoded)


def distances(queries: torch.Tensor, cands: torch.Tensor, metric: str) -> torch.Tensor:
    """[q, n] distance, lower is closer: euclidean, or 1 − cosine similarity."""
    if metric == "euclidean":
        return torch.cdist(queries.double(), cands.double()).float()
    q, c = torch.nn.functional.normalize(queries, dim=-1), torch.nn.functional.normalize(cands, dim=-1)
    return 1 - q @ c.T


@torch.no_grad()
def retrieve(exported: ExportedModel, cands: Candidates, texts: list[str], *, k: int = 5,
             rerank: bool = False) -> list[dict]:
    """For each query text, its ``k`` best counters: ``{"query", "counters": [{rank, text, theme, debate, stance,
    distance, classifier_score, path}]}``, best first."""
    if k < 1:
        raise UserError(f"--k {k}: expected a positive number of counters")
    if rerank and exported.model.classifier is None and exported.cross_encoder is None:
        raise UserError(f"--rerank: the model at {exported.path} has no second stage: no pair classifier "
                        "(classifier: false) and no cross-encoder (eval.rerank: classifier)")
    queries = exported.embed(texts, "point")
    dist = distances(queries.emb, cands.encoded.emb, exported.config.eval.metric)
    args = cands.split.args.iloc[cands.rows.numpy()]
    same_text = [_collapsed(t) for t in args["text"]]
    for i, text in enumerate(texts):
        query = _collapsed(text)
        dist[i, [j for j, t in enumerate(same_text) if t == query]] = float("inf")
    depth = min(max(k, exported.config.eval.rerank_depth) if rerank else k, dist.shape[1])
    nearest = dist.topk(depth, dim=1, largest=False).indices  # [q, depth], nearest first
    scores = cross = None
    if exported.model.classifier is not None:
        scorer = exported.model.pair_scorer(queries, cands.encoded)
        scores = scorer(torch.arange(len(texts)), nearest)
    if rerank:
        cross = None if exported.cross_encoder is None else _cross_scores(exported, texts, list(args["text"]), nearest)
        by = (cross if cross is not None else scores).masked_fill(~dist.gather(1, nearest).isfinite(), float("-inf"))
        order = by.argsort(dim=1, descending=True, stable=True)
        nearest = nearest.gather(1, order)
        scores, cross = (None if x is None else x.gather(1, order) for x in (scores, cross))
    results = []
    for i, text in enumerate(texts):
        hits = []
        for rank, j in enumerate(nearest[i, :k].tolist(), start=1):
            if not torch.isfinite(dist[i, j]):
                break  # fewer candidates than k besides copies of the query
            row = args.iloc[j]
            hits.append({"rank": rank, "text": row["text"], "theme": row["theme"], "debate": row["debate"],
                         "stance": row["stance"], "distance": float(dist[i, j]),
                         "classifier_score": None if scores is None else float(scores[i, rank - 1]),
                         **({} if cross is None else {"cross_encoder_score": float(cross[i, rank - 1])}),
                         "path": row["path"]})
        results.append({"query": text, "counters": hits})
    return results


def _cross_scores(exported: ExportedModel, texts: list[str], cand_texts: list[str],
                  nearest: torch.Tensor) -> torch.Tensor:
    """[q, depth] cross-encoder scores of (query text i, candidate ``nearest[i, j]``), texts cut to the run's
    ``model.max_length`` as in training."""
    chosen = sorted(set(nearest.reshape(-1).tolist()))
    tok = tokenize_texts(exported.tokenizer, texts + [cand_texts[j] for j in chosen], exported.config.model.max_length)
    position = {j: len(texts) + n for n, j in enumerate(chosen)}
    b_rows = np.array([position[j] for j in nearest.reshape(-1).tolist()])
    a_rows = np.repeat(np.arange(len(texts)), nearest.shape[1])
    return cross_encoder.scorer(exported.cross_encoder, tok)(a_rows, b_rows).reshape(nearest.shape)


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def format_results(results: list[dict], width: int = 100) -> str:
    """The human-readable listing: per query, one block of ranked counters."""
    blocks = []
    for result in results:
        lines = [f"query: {_short(result['query'], width)}"]
        for hit in result["counters"]:
            score = "-" if hit["classifier_score"] is None else f"{hit['classifier_score']:.3f}"
            lines.append(f"  {hit['rank']:>2}. distance {hit['distance']:.4f}  P(counter) {score}  "
                         f"{hit['theme']} / {hit['debate']} / {hit['stance']}")
            lines.append(f"      {_short(hit['text'], width - 6)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _short(text: str, width: int) -> str:
    text = _collapsed(text)
    return text if len(text) <= width else text[:width - 1] + "…"
