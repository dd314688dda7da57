"""Online hard-negative mining (research protocol, "Online hard-negative mining").

Works on plain embedding tensors, so it is tested without a model: the trainer embeds the training points and
counters with the current model, calls `mine` with the epoch's random rate (`argbench.train.schedule`), and uses
`MiningResult.neg_kind` / `neg_index` to pick the negative text of each pair for the next epoch.

Row i of the point and counter embeddings is true pair i. For each point i the hard negative is the closer of
its nearest *other* point and its nearest counter that is *not its own*; with probability r it is replaced by a
uniformly random argument (any of the 2N points and counters except point i and counter i). The positive is
never returned, whatever the embeddings (duplicates included). Given the arguments' copy groups
(`argbench.data.copies`), "other" means *another text*: no copy of point i's or counter i's text is returned, hard or
random (`exclude_copies`), and each result says which negatives are such copies (its `copy` statistic).

Positive-aware mining (`max_ratio`, NV-Retriever's TopK-PercPos, Moreira et al. 2024): a hard candidate whose cosine
similarity to point i is above `max_ratio` × the cosine similarity of point i to counter i is probably another
valid counter (a false negative) and is passed over for the next one; the result counts how many were passed over
(`ratio_skipped`). A row left with no candidate below the threshold gets a random negative instead.

Nearest neighbours are exact Euclidean with one deterministic order — ascending float64 distance, then lower
index — whichever backend ("torch", "balltree", "faiss") found the candidates; see `nearest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from argbench.train.schedule import check_rate

BACKENDS = ("torch", "balltree", "faiss")
POINT, COUNTER, RANDOM = "point", "counter", "random"

# Backends return this many candidates beyond k by default; the float64 re-rank then fixes their order.
_CANDIDATE_SLACK = 8
# Work is done a block of query rows at a time: memory stays bounded and blocks stay cache-sized (measured:
# 16 MiB [rows, m] float32 blocks search ~1.5x faster than 4096-row ones; 2 MiB re-rank blocks ~5x).
_SEARCH_BLOCK = 2**22  # elements of the [rows, m] distance block
_RERANK_BLOCK = 2**18  # elements of the [rows, candidates, d] float64 difference block
_MAX_CHUNK_ROWS = 4096


# ------------------------------------------------------------------------------------ nearest neighbours
@torch.no_grad()
def nearest(
    index_emb: torch.Tensor,
    query_emb: torch.Tensor,
    k: int,
    backend: str = "torch",
    *,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean k nearest rows of `index_emb` [m, d] for each row of `query_emb` [q, d].

    Returns (dist float64 [q, k'], idx int64 [q, k']) with k' = min(k, m), on `query_emb`'s device, sorted by
    (distance, index). The backend only proposes `candidates` rows per query (default k + 8); their distances
    are recomputed in float64 and re-sorted, so every backend gives identical output. A query whose k-th and last
    candidate are closer than the backend's rounding error could bound (near-ties, duplicates) is asked again
    with twice the candidates, up to all m rows — so the result equals a float64 brute force, not just usually.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; expected one of {BACKENDS}")
    _check_matrix(index_emb, "index_emb")
    _check_matrix(query_emb, "query_emb")
    if index_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"index_emb has d={index_emb.shape[1]} but query_emb has d={query_emb.shape[1]}")
    if k < 1:
        raise ValueError(f"k={k!r} must be >= 1")
    m = index_emb.shape[0]
    k = min(k, m)
    width = min(m, max(k, candidates if candidates is not None else k + _CANDIDATE_SLACK))
    search = _SEARCHERS[backend]
    margin = _rounding_margin(index_emb, query_emb, torch.finfo(_search_dtype(backend, index_emb)).eps / 2)

    q = query_emb.shape[0]
    dist = torch.empty(q, k, dtype=torch.float64, device=query_emb.device)
    idx = torch.empty(q, k, dtype=torch.int64, device=query_emb.device)
    pending = torch.arange(q, device=query_emb.device)
    while pending.numel():
        cand = search(index_emb, query_emb[pending], width).to(query_emb.device)
        cand_dist, cand_idx = _rerank(index_emb, query_emb[pending], cand)
        if width == m:
            settled = torch.ones_like(pending, dtype=torch.bool)
        else:  # a row outside the candidates lies at least (last − 2·error) away: it cannot beat the k-th
            gap = cand_dist[:, -1] ** 2 - cand_dist[:, k - 1] ** 2
            settled = gap > 2 * margin[pending]
        dist[pending[settled]] = cand_dist[settled, :k]
        idx[pending[settled]] = cand_idx[settled, :k]
        pending = pending[~settled]
        width = min(m, 2 * width)
    return dist, idx


def _check_matrix(emb: torch.Tensor, name: str) -> None:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or not emb.is_floating_point():
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"{name} must be a 2-D floating-point torch.Tensor [rows, d]; got {got}")
    if emb.shape[0] == 0:
        raise ValueError(f"{name} has no rows")


def _rounding_margin(index_emb: torch.Tensor, query_emb: torch.Tensor, unit: float) -> torch.Tensor:
    """Per-query bound on a backend's squared-distance error: 3·d·u·(|q|² + max|x|²), the worst case of the
    |q|² + |x|² − 2·q·x form with length-d dot products at unit roundoff u (input casts included)."""
    scale = query_emb.double().pow(2).sum(1) + index_emb.double().pow(2).sum(1).max()
    return 3 * (query_emb.shape[1] + 2) * unit * scale


def _rerank(index_emb: torch.Tensor, query_emb: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 distances of the candidate rows [p, c], sorted by (distance, index)."""
    cand, _ = cand.sort(dim=1)
    dist = torch.empty(cand.shape, dtype=torch.float64, device=query_emb.device)
    rows = max(1, _RERANK_BLOCK // max(1, cand.shape[1] * query_emb.shape[1]))
    for lo in range(0, cand.shape[0], rows):
        diff = index_emb[cand[lo : lo + rows]].double() - query_emb[lo : lo + rows, None, :].double()
        dist[lo : lo + rows] = torch.linalg.vector_norm(diff, dim=-1)
    dist, order = dist.sort(dim=1, stable=True)  # stable: equal distances keep ascending index
    return dist, cand.gather(1, order)


def _torch_search(index_emb: torch.Tensor, query_emb: torch.Tensor, width: int) -> torch.Tensor:
    """Candidate indices [q, width] by |x|² − 2·q·x (the squared distance less the per-row constant |q|²,
    which cannot change a row's order: dropping it saves a pass over each block)."""
    dtype = _search_dtype("torch", index_emb)
    index = index_emb.to(dtype)
    index_sq = index.pow(2).sum(1)
    rows = max(1, min(_MAX_CHUNK_ROWS, _SEARCH_BLOCK // index.shape[0]))
    out = []
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32/bf16 products would break the rounding bound
    try:
        for lo in range(0, query_emb.shape[0], rows):
            query = query_emb[lo : lo + rows].to(dtype)
            shifted = torch.addmm(index_sq[None, :], query, index.T, alpha=-2)
            out.append(shifted.topk(width, dim=1, largest=False).indices)  # sqrt is monotone: skipped
    finally:
        torch.set_float32_matmul_precision(saved)
    return torch.cat(out)


def _balltree_search(index_emb: torch.Tensor, query_emb: torch.Tensor, width: int) -> torch.Tensor:
    from sklearn.neighbors import BallTree

    tree = BallTree(index_emb.detach().double().cpu().numpy(), leaf_size=2)  # the original's settings
    _, idx = tree.query(query_emb.detach().double().cpu().numpy(), k=width)
    return torch.from_numpy(idx.astype(np.int64))


def _faiss_search(index_emb: torch.Tensor, query_emb: torch.Tensor, width: int) -> torch.Tensor:
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu); "
                          f"use backend 'torch' or 'balltree' instead ({err})") from err
    index = faiss.IndexFlatL2(index_emb.shape[1])
    index.add(np.ascontiguousarray(index_emb.detach().float().cpu().numpy()))
    _, idx = index.search(np.ascontiguousarray(query_emb.detach().float().cpu().numpy()), width)
    return torch.from_numpy(idx.astype(np.int64))


_SEARCHERS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "torch": _torch_search, "balltree": _balltree_search, "faiss": _faiss_search,
}


def _search_dtype(backend: str, emb: torch.Tensor) -> torch.dtype:
    """The precision a backend computes distances in (it bounds the backend's rounding error)."""
    if backend == "balltree" or (backend == "torch" and emb.dtype == torch.float64):
        return torch.float64
    return torch.float32


# ------------------------------------------------------------------------------------------------ mining
@dataclass(frozen=True)
class MiningResult:
    """One negative per query point i (arrays of length N).

    neg_kind: "point"|"counter" — which array the negative text comes from; neg_index: row in that array;
    source: "point"|"counter" (hard) or "random"; distance: Euclidean distance (float64) from point i's
    embedding to the negative's; rate: the random rate used; copy: whether the negative's text is that of point i
    or of counter i (None when mined without copy groups); ratio_skipped: hard candidates passed over per query,
    point and counter searches together, for being too similar to the query (`max_ratio`; None when off).
    """

    neg_kind: np.ndarray
    neg_index: np.ndarray
    source: np.ndarray
    distance: np.ndarray
    rate: float
    copy: np.ndarray | None = None
    ratio_skipped: float | None = None

    def stats(self, debate: np.ndarray, theme: np.ndarray) -> dict:
        """Summary for logging. `debate` / `theme`: per-pair labels [N] (a pair's point and counter share them;
        debate labels must be unique across themes, e.g. "theme/debate").

        Keys: "point", "counter", "random" (fractions of sources, sum to 1), "same_debate", "same_theme"
        (fraction of negatives from the query's own debate / theme), "mean_distance" (mean over the hard
        negatives; None when every negative is random), "copy" (fraction of negatives that are a copy of the
        query's point or counter; None without copy groups), "ratio_skipped" (None unless mined with max_ratio),
        "rate".
        """
        debate, theme = np.asarray(debate), np.asarray(theme)
        for name, labels in (("debate", debate), ("theme", theme)):
            if labels.shape != self.neg_index.shape:
                raise ValueError(f"stats: {name} has shape {labels.shape}; expected ({len(self.neg_index)},)")
        hard = self.source != RANDOM
        return {
            POINT: float(np.mean(self.source == POINT)),
            COUNTER: float(np.mean(self.source == COUNTER)),
            RANDOM: float(np.mean(~hard)),
            "same_debate": float(np.mean(debate[self.neg_index] == debate)),
            "same_theme": float(np.mean(theme[self.neg_index] == theme)),
            "mean_distance": float(self.distance[hard].mean()) if hard.any() else None,
            "copy": float(np.mean(self.copy)) if self.copy is not None else None,
            "ratio_skipped": self.ratio_skipped,
            "rate": float(self.rate),
        }

    def negative_texts(self, points_text: list[str], counters_text: list[str]) -> list[str]:
        """The negative text of each query point, in pair order."""
        pools = {POINT: points_text, COUNTER: counters_text}
        return [pools[kind][j] for kind, j in zip(self.neg_kind, self.neg_index.tolist())]

    def examples(self, points_text: list[str], counters_text: list[str], n: int = 5, seed: int = 0) -> list[dict]:
        """`n` random (point, negative, source) examples for inspection (query rows drawn with `seed`)."""
        rows = np.random.default_rng(seed).choice(len(self.neg_index), size=min(n, len(self.neg_index)), replace=False)
        negatives = self.negative_texts(points_text, counters_text)
        return [{"point": points_text[i], "negative": negatives[i], "source": str(self.source[i])} for i in rows]


def mine(
    point_emb: torch.Tensor,
    counter_emb: torch.Tensor,
    *,
    rate: float,
    generator: torch.Generator,
    backend: str = "torch",
    k: int = 3,
    candidate_pool_size: int | None = None,
    copy_groups: tuple[np.ndarray, np.ndarray] | None = None,
    exclude_copies: bool = True,
    max_ratio: float | None = None,
) -> MiningResult:
    """Mine one negative per true pair from `point_emb` / `counter_emb` [N, d] (row i of each = pair i).

    Hard negative: the closer of point i's nearest point other than i and nearest counter other than counter i
    (a tie goes to the point). With probability `rate` it is replaced by a uniformly random argument that is
    neither point i nor counter i. All randomness comes from `generator` (a CPU torch.Generator), so a run is
    reproducible and resumable from the generator's state. `k` is the first number of neighbours asked for (more
    are asked where the first k are all excluded); `candidate_pool_size` is how many candidates the backend
    proposes before the exact re-rank (see `nearest`). Embeddings may be on any device; results are numpy.

    `copy_groups` = (point groups [N], counter groups [N]): the copy group of each pair's point and counter
    (`argbench.data.copies.copy_group_ids`). With them the result's `copy` flags the negatives that are copies of point
    i's or counter i's text, and with `exclude_copies` no such copy is returned, hard or random (without groups,
    or with `exclude_copies` False, only point i and counter i themselves are excluded, as in the original).
    ValueError when a row has no allowed argument left.

    `max_ratio` (None = off): hard candidates c with cos(point i, c) > max_ratio · cos(point i, counter i) are passed
    over (module docstring); a row with none left below the threshold is drawn at random like a random row.
    """
    n = check_pairs(point_emb, counter_emb)
    point_emb, counter_emb = point_emb.detach(), counter_emb.detach()
    check_rate(rate, "rate")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator; got {generator!r}")
    groups = _checked_groups(copy_groups, n)
    # Exclusion works on groups: index groups (every argument its own pair number) exclude point i and counter i.
    own = np.arange(n, dtype=np.int64)
    point_ex, counter_ex = groups if groups is not None and exclude_copies else (own, own)
    point_ex_t, counter_ex_t = (torch.from_numpy(g).to(point_emb.device) for g in (point_ex, counter_ex))
    forbidden = torch.stack([point_ex_t, counter_ex_t], dim=1)
    ceiling = None if max_ratio is None else max_ratio * F.cosine_similarity(point_emb.double(),
                                                                             counter_emb.double(), dim=-1)
    p_dist, p_idx, p_skip = _nearest_excluding(point_emb, point_emb, point_ex_t, forbidden, k, backend,
                                               candidate_pool_size, ceiling)
    c_dist, c_idx, c_skip = _nearest_excluding(counter_emb, point_emb, counter_ex_t, forbidden, k, backend,
                                               candidate_pool_size, ceiling)
    is_point = (p_dist <= c_dist).cpu().numpy()
    neg_kind = np.where(is_point, POINT, COUNTER)
    neg_index = np.where(is_point, p_idx.cpu().numpy(), c_idx.cpu().numpy())
    source = neg_kind.copy()

    is_random = torch.rand(n, generator=generator) < rate  # one draw per row, whatever the rate
    is_random |= torch.from_numpy(~np.isfinite(np.minimum(p_dist.cpu().numpy(), c_dist.cpu().numpy())))
    rows = torch.nonzero(is_random).squeeze(1)
    argument = _draw_arguments(rows, np.concatenate([point_ex, counter_ex]), forbidden.cpu(), generator).numpy()
    rows = rows.numpy()
    neg_kind[rows] = np.where(argument < n, POINT, COUNTER)
    neg_index[rows] = argument % n
    source[rows] = RANDOM
    distance = _distances_to(point_emb, counter_emb, neg_kind, neg_index)
    copy = None
    if groups is not None:
        negative = np.where(neg_kind == POINT, groups[0][neg_index], groups[1][neg_index])
        copy = (negative == groups[0]) | (negative == groups[1])
    skipped = None if max_ratio is None else float((p_skip + c_skip).double().mean())
    return MiningResult(neg_kind, neg_index.astype(np.int64), source, distance, float(rate), copy, skipped)


def _checked_groups(copy_groups, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    if copy_groups is None:
        return None
    point_groups, counter_groups = (np.asarray(g, dtype=np.int64) for g in copy_groups)
    if point_groups.shape != (n,) or counter_groups.shape != (n,):
        raise ValueError(f"copy_groups have shapes {point_groups.shape} and {counter_groups.shape}; expected "
                         f"({n},) each: the copy group of each pair's point and counter")
    return point_groups, counter_groups


def check_pairs(point_emb: torch.Tensor, counter_emb: torch.Tensor) -> int:
    _check_matrix(point_emb, "point_emb")
    _check_matrix(counter_emb, "counter_emb")
    if point_emb.shape != counter_emb.shape:
        raise ValueError(f"point_emb {tuple(point_emb.shape)} and counter_emb {tuple(counter_emb.shape)} must "
                         "have the same shape [N, d]: row i of each is true pair i")
    if point_emb.device != counter_emb.device:
        raise ValueError(f"point_emb is on {point_emb.device} but counter_emb on {counter_emb.device}")
    if point_emb.shape[0] < 2:
        raise ValueError(f"mining needs at least 2 pairs (a negative is another pair's argument); "
                         f"got N={point_emb.shape[0]}")
    return point_emb.shape[0]


def _nearest_excluding(
    index_emb: torch.Tensor, query_emb: torch.Tensor, index_groups: torch.Tensor, forbidden: torch.Tensor, k: int,
    backend: str, candidates: int | None, ceiling: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance, index and skipped count [q] of each query's nearest index row whose group (`index_groups` [m]) is
    not one of the query's `forbidden` groups [q, 2] and, with `ceiling` [q], whose cosine similarity to the query
    is at most the query's ceiling. Skipped: the rows passed over for the ceiling alone. A query with no row under
    its ceiling gets distance inf (index 0); a query with no allowed group at all is a ValueError."""
    q, m = len(forbidden), index_emb.shape[0]
    dist = torch.empty(q, dtype=torch.float64, device=query_emb.device)
    idx = torch.empty(q, dtype=torch.int64, device=query_emb.device)
    skipped = torch.zeros(q, dtype=torch.int64, device=query_emb.device)
    pending = torch.arange(q, device=query_emb.device)
    while pending.numel():
        d, i = nearest(index_emb, query_emb[pending], k, backend, candidates=candidates)
        group = index_groups[i]
        other = (group != forbidden[pending, 0, None]) & (group != forbidden[pending, 1, None])
        allowed = other
        if ceiling is not None:
            cos = F.cosine_similarity(query_emb[pending, None].double(), index_emb[i].double(), dim=-1)
            allowed = other & (cos <= ceiling[pending, None])
        found = allowed.any(1)
        first = allowed.int().argmax(1, keepdim=True)  # first allowed column in (distance, index) order
        dist[pending[found]] = d.gather(1, first).squeeze(1)[found]
        idx[pending[found]] = i.gather(1, first).squeeze(1)[found]
        before = torch.arange(i.shape[1], device=i.device)[None, :] < first
        skipped[pending] = (other & ~allowed & before).sum(1)
        if k >= m and not found.all():  # every row seen: the rest has none under its ceiling, or no allowed group
            none_other = ~other.any(1) & ~found
            if none_other.any():
                raise ValueError(f"no allowed neighbour among all {m} index rows for queries "
                                 f"{pending[none_other].tolist()[:5]}")
            dist[pending[~found]], idx[pending[~found]] = math.inf, 0
            skipped[pending[~found]] = other[~found].sum(1)
            break
        pending = pending[~found]  # every neighbour excluded: ask these rows for more
        k *= 2
    return dist, idx, skipped


def _draw_arguments(rows: torch.Tensor, groups: np.ndarray, forbidden: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """A uniform argument id in [0, 2N) for each query row (ids < N are points, N + j is counter j) whose group
    (`groups` [2N]) is not one of the row's `forbidden` groups [N, 2]: masked draws are redrawn until none is
    left. Every row has an allowed argument: `mine` found it a hard negative first (or raised)."""
    n2 = len(groups)
    groups = torch.from_numpy(groups)
    chosen = torch.empty(len(rows), dtype=torch.int64)
    todo = torch.arange(len(rows))
    while todo.numel():
        draw = torch.randint(0, n2, (len(todo),), generator=generator)
        ok = (groups[draw] != forbidden[rows[todo], 0]) & (groups[draw] != forbidden[rows[todo], 1])
        chosen[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return chosen


def _distances_to(point_emb, counter_emb, neg_kind: np.ndarray, neg_index: np.ndarray) -> np.ndarray:
    """float64 Euclidean distance from each point i to its negative (computed as `nearest`'s re-rank does)."""
    index = torch.as_tensor(neg_index, device=point_emb.device)
    is_point = torch.as_tensor(neg_kind == POINT, device=point_emb.device)[:, None]
    negative = torch.where(is_point, point_emb[index], counter_emb[index])
    return torch.linalg.vector_norm(negative.double() - point_emb.double(), dim=-1).cpu().numpy()
