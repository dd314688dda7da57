"""``argbench retrieve``: the best counterarguments for any argument text, from an exported model and a corpus split.

The candidates are the split's counters (what the model was trained to find), or with ``arguments="all"`` every
paired argument of the split, points too. Each text is a candidate once: the corpus files some texts under several
themes or debates (a *copy group*, :mod:`argbench.data.copies`), and a copy group is one candidate, shown with its
first filing and listing every filing (``filed_under``), so the top k never holds one text twice. Candidates are
embedded once and cached on disk under ``<cache>/<weights digest>-<data hash>-<split>-<arguments>.safetensors``, so
later queries embed only themselves. A candidate whose text equals the query (whitespace collapsed) is left out: a
counter asked about itself is no answer. Candidates are ranked by the run's retrieval distance (euclidean, or
cosine distance 1 − cos); with ``rerank`` the nearest ``max(k, eval.rerank_depth)`` are reordered by the run's
second stage, as in the original protocol: its cross-encoder when it trained one (``eval.rerank: cross_encoder``),
else the pair classifier's P(true pair). Every hit carries its debate, theme, stance, distance, classifier score
(None without one) and, with a cross-encoder rerank, ``cross_encoder_score``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from argbench.data.tasks import SplitData
from argbench.errors import UserError
from argbench.model import cross_encoder
from argbench.model.bi_encoder import Encoded
from argbench.model.exported_model import ExportedModel
from argbench.model.tokens import tokenize_texts
from argbench.paths import mlruns_dir

ARGUMENTS = ("counters", "all")  # what the candidates are: the split's counters, or every paired argument
CHUNK = 512  # texts embedded between two progress reports


@dataclass
class Candidates:
    """The candidate texts of a split: ``rows`` of ``split.args`` (one per copy group, its first filing), their
    embeddings (``encoded``), per row every filing of its text (``filings``, rows of ``split.args``), and
    ``arguments``: "counters" or "all"."""

    split: SplitData
    rows: torch.Tensor
    encoded: Encoded
    filings: list[list[int]]
    arguments: str = "counters"

    def describe(self) -> str:
        """The candidate set in words: "the 1,234 distinct counters of the test split (12 texts filed twice or more
        shown once)"."""
        what = "counters" if self.arguments == "counters" else "arguments (points and counters)"
        copies = sum(len(f) > 1 for f in self.filings)
        note = f" ({copies:,} {'text' if copies == 1 else 'texts'} filed more than once, shown once)" if copies \
            else ""
        return f"the {len(self.rows):,} distinct {what} of the {self.split.name} split{note}"


def candidate_rows(split: SplitData, arguments: str = "counters") -> list[list[int]]:
    """The filings of each candidate text, in split order: ``[[row, row of a copy, ...], ...]`` over the split's
    counters (``arguments="counters"``) or all its paired arguments ("all"), one list per copy group."""
    if arguments not in ARGUMENTS:
        raise UserError(f"candidates {arguments!r}: expected one of {', '.join(ARGUMENTS)}")
    rows = split.counters_idx if arguments == "counters" else np.arange(len(split.args))
    groups: dict[int, list[int]] = {}
    for row, group in zip(rows.tolist(), split.args["copy_group"].to_numpy()[rows].tolist()):
        groups.setdefault(group, []).append(row)
    return list(groups.values())


def cache_dir() -> Path:
    """Where candidate embeddings are cached: ``<project>/mlruns/cache/retrieve`` (see :mod:`argbench.paths`)."""
    return mlruns_dir() / "cache" / "retrieve"


def candidates(exported: ExportedModel, split: SplitData, data_hash: str, cache_dir: Path | None = None,
               batch_size: int = 64, arguments: str = "counters",
               progress: Callable[[int, int], None] | None = None) -> Candidates:
    """Embed ``split``'s candidate texts (:func:`candidate_rows`) with the candidate encoder, or read them from
    ``cache_dir`` (None: no cache). ``progress(done, total)`` is called before the first text and after each chunk
    embedded; not at all when the embeddings come from the cache."""
    filings = candidate_rows(split, arguments)
    rows = torch.tensor([f[0] for f in filings], dtype=torch.long)
    path = None if cache_dir is None else \
        Path(cache_dir) / f"{exported.info['weights_digest']}-{data_hash}-{split.name}-{arguments}.safetensors"
    if path is not None and path.is_file():
        cached = load_file(path)
        if torch.equal(cached["rows"], rows):
            return Candidates(split, rows, Encoded(cached["pooled"], cached["emb"]), filings, arguments)
    all_texts = split.texts
    texts = [all_texts[i] for i in rows.tolist()]
    encoded = _embed(exported, texts, batch_size, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"rows": rows, "pooled": encoded.pooled.contiguous(), "emb": encoded.emb.contiguous()}, tmp)
        tmp.replace(path)
    return Candidates(split, rows, encoded, filings, arguments)


def _embed(exported: ExportedModel, texts: list[str], batch_size: int,
           progress: Callable[[int, int], None] | None) -> Encoded:
    """The candidate embeddings of ``texts``, in chunks of :data:`CHUNK` so that ``progress`` can be told; the same
    numbers as one call (each text is embedded on its own)."""
    report = progress or (lambda done, total: None)
    report(0, len(texts))
    parts = []
    for start in range(0, len(texts), CHUNK):
        parts.append(exported.embed(texts[start:start + CHUNK], "candidate", batch_size=batch_size))
        report(min(start + CHUNK, len(texts)), len(texts))
    return Encoded(torch.cat([p.pooled for p in parts]), torch.cat([p.emb for p in parts]))


def distances(queries: torch.Tensor, cands: torch.Tensor, metric: str) -> torch.Tensor:
    """[q, n] distance, lower is closer: euclidean, or 1 − cosine similarity."""
    if metric == "euclidean":
        return torch.cdist(queries.double(), cands.double()).float()
    q, c = torch.nn.functional.normalize(queries, dim=-1), torch.nn.functional.normalize(cands, dim=-1)
    return 1 - q @ c.T


@torch.no_grad()
def retrieve(exported: ExportedModel, cands: Candidates, texts: list[str], *, k: int = 5,
             rerank: bool = False) -> list[dict]:
    """For each query text, its ``k`` best candidates, each text once: ``{"query", "candidates" (the set in words,
    :meth:`Candidates.describe`), "counters": [{rank, text, kind, theme, debate, stance, filed_under, distance,
    classifier_score, path}]}``, best first; ``filed_under`` lists every "theme / debate / stance" the text is filed
    under (the first is the one shown)."""
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
            filed = cands.split.args.iloc[cands.filings[j]]
            hits.append({"rank": rank, "text": row["text"], "kind": row["kind"], "theme": row["theme"],
                         "debate": row["debate"], "stance": row["stance"],
                         "filed_under": [f"{f.theme} / {f.debate} / {f.stance}" for f in filed.itertuples()],
                         "distance": float(dist[i, j]),
                         "classifier_score": None if scores is None else float(scores[i, rank - 1]),
                         **({} if cross is None else {"cross_encoder_score": float(cross[i, rank - 1])}),
                         "path": row["path"]})
        results.append({"query": text, "candidates": cands.describe(), "counters": hits})
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
    blocks = [f"candidates: {results[0]['candidates']}"] if results else []
    for result in results:
        lines = [f"query: {_short(result['query'], width)}"]
        for hit in result["counters"]:
            score = "-" if hit["classifier_score"] is None else f"{hit['classifier_score']:.3f}"
            kind = "" if hit["kind"] == "counter" else f"{hit['kind']}  "
            also = len(hit["filed_under"]) - 1
            filed = f" (also filed under {also} more)" if also else ""
            lines.append(f"  {hit['rank']:>2}. distance {hit['distance']:.4f}  P(counter) {score}  {kind}"
                         f"{hit['theme']} / {hit['debate']} / {hit['stance']}{filed}")
            lines.append(f"      {_short(hit['text'], width - 6)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _short(text: str, width: int) -> str:
    text = _collapsed(text)
    return text if len(text) <= width else text[:width - 1] + "…"
