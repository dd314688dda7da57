"""The bi-encoder with classification: encoder(s), projection head, pair classifier.

Every ablation switch of the original experiments is an argument here and changes the network it names:

* ``sharing``: ``shared`` encodes points and candidates with one encoder; ``separate`` with two (same initial
  weights), both trained — the original built the second one and never optimised it.
* ``proj_dim``: size of the retrieval embedding (``None``: the pooled vector itself), optionally followed by
  ``layernorm`` and ``relu``.
* ``fusion``: the pair classifier's input for (a, b) is [a, b, |a − b|] over the projection embeddings
  (``only_embedding``), the pooled vectors (``only_cls``) or both (``concatenated``), then Linear(·, 2).
* ``classifier=False`` drops the classifier (triplet loss only); ``freeze_encoder`` trains the heads only, and
  keeps the encoders in eval mode (no dropout): a frozen encoder is a fixed function of the text, so the trainer can
  compute its outputs once and feed the pooled vectors to :meth:`BiEncoder.forward`.
* ``train_layers=N`` trains only the upper N transformer layers (:mod:`argbench.model.partial`); the frozen bottom
  stays in eval mode, so the trainer can compute its token states once and feed ``(states, mask)`` instead of
  ``(input_ids, mask)``: only the top runs.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from argbench.model.encoders import encode, hidden_size, load_encoder, pool
from argbench.model.partial import LayerSplit, split_layers

FUSIONS = ("concatenated", "only_cls", "only_embedding")
SHARINGS = ("shared", "separate")


class Encoded(NamedTuple):
    """``pooled`` [b, hidden] encoder output after pooling; ``emb`` [b, proj_dim or hidden] retrieval embedding."""

    pooled: torch.Tensor
    emb: torch.Tensor


class TripletOutput(NamedTuple):
    anchor: Encoded
    positive: Encoded
    negative: Encoded
    logits_pos: torch.Tensor | None  # [b, 2], class 1 = true pair
    logits_neg: torch.Tensor | None


def classifier_width(fusion: str, hidden: int, emb_dim: int) -> int:
    """Input width of the pair classifier: 3·emb + 3·hidden, 3·hidden or 3·emb."""
    widths = {"concatenated": 3 * (emb_dim + hidden), "only_cls": 3 * hidden, "only_embedding": 3 * emb_dim}
    if fusion not in widths:
        raise ValueError(f"unknown fusion {fusion!r}: expected one of {', '.join(FUSIONS)}")
    return widths[fusion]


class BiEncoder(nn.Module):
    """Points go through ``point_encoder``, candidates (counters, or points as negatives) through
    ``candidate_encoder``; with ``sharing="shared"`` they are the same module."""

    def __init__(self, encoder: nn.Module, *, pooling: str = "pooler", sharing: str = "shared",
                 proj_dim: int | None = 128, layernorm: bool = False, relu: bool = False,
                 classifier: bool = True, fusion: str = "concatenated", freeze_encoder: bool = False,
                 train_layers: int | None = None):
        super().__init__()
        if sharing not in SHARINGS:
            raise ValueError(f"unknown sharing {sharing!r}: expected one of {', '.join(SHARINGS)}")
        self.pooling, self.sharing, self.fusion = pooling, sharing, fusion
        self.point_encoder = encoder
        self.candidate_encoder = copy.deepcopy(encoder) if sharing == "separate" else encoder
        hidden = hidden_size(encoder)
        self.emb_dim = proj_dim or hidden
        head: list[nn.Module] = [nn.Linear(hidden, proj_dim)] if proj_dim else []
        head += [nn.LayerNorm(self.emb_dim)] if layernorm else []
        head += [nn.ReLU()] if relu else []
        self.head = nn.Sequential(*head)
        width = classifier_width(fusion, hidden, self.emb_dim)  # checks `fusion` even without a classifier
        self.classifier = nn.Linear(width, 2) if classifier else None
        self.frozen = freeze_encoder
        if freeze_encoder:
            for encoder_module in self.encoders():
                encoder_module.requires_grad_(False)
        # Not submodules (they share the encoders' modules): side -> its encoder's frozen bottom and trained top
        self.splits: dict[str, LayerSplit] = {}
        if train_layers is not None:
            point = split_layers(self.point_encoder, train_layers)
            candidate = point if sharing == "shared" else split_layers(self.candidate_encoder, train_layers)
            self.splits = {side: s for side, s in (("point", point), ("candidate", candidate)) if s is not None}
            for split in self.splits.values():
                for frozen in split.frozen:
                    frozen.requires_grad_(False)

    @torch.no_grad()
    def init_projection(self, kind: str, pooled: torch.Tensor | None = None) -> None:
        """Start the projection (``model.proj_init``): ``random`` leaves PyTorch's init; ``orthogonal`` sets
        orthonormal rows (or columns, when proj_dim > hidden) and a zero bias, so euclidean and cosine geometry of
        the pooled vectors is kept exactly when proj_dim >= hidden; ``pca`` sets the first rows to the principal
        directions of ``pooled`` [n, hidden], largest first (as many as proj_dim, hidden and n - 1 allow; any
        further rows start orthogonal), and the bias to minus the projected mean (centred)."""
        if kind == "random" or not len(self.head) or not isinstance(self.head[0], nn.Linear):
            return
        if kind not in ("orthogonal", "pca"):
            raise ValueError(f"unknown proj_init {kind!r}: expected random, orthogonal or pca")
        linear = self.head[0]
        nn.init.orthogonal_(linear.weight)
        linear.bias.zero_()
        if kind == "orthogonal":
            return
        if pooled is None or len(pooled) < 2:
            raise ValueError(f"proj_init pca needs the pooled vectors of at least 2 texts; got "
                             f"{None if pooled is None else tuple(pooled.shape)}")
        data = pooled.float()
        mean = data.mean(dim=0)
        _, _, components = torch.linalg.svd(data - mean, full_matrices=False)
        top = components[:min(linear.out_features, len(data) - 1)]
        linear.weight[:len(top)] = top.to(linear.weight.device, linear.weight.dtype)
        linear.bias.copy_(-(linear.weight @ mean.to(linear.weight.device, linear.weight.dtype)))

    def train(self, mode: bool = True) -> BiEncoder:
        """Train/eval mode as usual, except that frozen encoders stay in eval mode: their dropout would make a
        fixed feature extractor noisy, and their outputs could not be computed once."""
        super().train(mode)
        if self.frozen:
            for encoder in self.encoders():
                encoder.eval()
        for split in self.splits.values():
            for frozen in split.frozen:
                frozen.eval()
        return self

    def split(self, side: str) -> LayerSplit | None:
        """The bottom/top views of the encoder of ``side`` (``point`` or ``candidate``), None if it trains whole."""
        return self.splits.get(side)

    def encoders(self) -> list[nn.Module]:
        """The distinct encoder modules (one when shared, two when separate)."""
        return [self.point_encoder] if self.sharing == "shared" else [self.point_encoder, self.candidate_encoder]

    def project(self, pooled: torch.Tensor) -> Encoded:
        return Encoded(pooled, self.head(pooled))

    def encode(self, inputs, attention_mask, side: str) -> Encoded:
        """Encode a padded batch as a point (``side="point"``) or a candidate (``"candidate"``): ``inputs`` are token
        ids [b, t], or a frozen bottom's token states [b, t, hidden] (then only the top layers run)."""
        if inputs.is_floating_point():
            top = self.split(side).top
            return self.project(pool(top(inputs_embeds=inputs, attention_mask=attention_mask), attention_mask,
                                     self.pooling))
        encoder = self.point_encoder if side == "point" else self.candidate_encoder
        return self.project(encode(encoder, inputs, attention_mask, self.pooling))

    def classify(self, a: Encoded, b: Encoded) -> torch.Tensor:
        """[b, 2] logits that (a, b) is a true (point, counter) pair; class 1 = true."""
        if self.classifier is None:
            raise RuntimeError("this model has no pair classifier (classifier: false)")
        parts = []
        for u, v in zip(self._fused(a), self._fused(b)):
            parts += [u, v, (u - v).abs()]
        return self.classifier(torch.cat(parts, dim=-1))

    def _fused(self, x: Encoded) -> list[torch.Tensor]:
        """The vectors of ``x`` the classifier sees, in its input order (each as [x_a, x_b, |x_a - x_b|])."""
        if self.fusion == "concatenated":
            return [x.emb, x.pooled]
        return [x.emb] if self.fusion == "only_embedding" else [x.pooled]

    @torch.no_grad()
    def pair_scorer(self, queries: Encoded, candidates: Encoded, chunk: int = 256):
        """``scorer(query_rows [q], cand_rows [q, k]) -> [q, k]``: P(true pair) = softmax(classify(a, b))[:, 1] for
        every (query, candidate) pair, without building the [a, b, |a - b|] rows.

        The classifier is linear, so its true-minus-false logit splits as w_a·F(a) + w_b·F(b) + w_d·|F(a) − F(b)| + c
        (F = the fused vectors): the first two terms are computed once per query and per candidate, and only the
        |F(a) − F(b)| term per pair, in chunks of ``chunk`` queries that stay in cache. The sigmoid of that logit is
        the softmax's class-1 probability. Rows index ``queries`` and ``candidates``; the result is on the CPU.
        """
        if self.classifier is None:
            raise RuntimeError("this model has no pair classifier (classifier: false)")
        device, query_parts = self.classifier.weight.device, self._fused(queries)
        f_query = torch.cat(query_parts, dim=-1).to(device, torch.float32)
        f_cand = torch.cat(self._fused(candidates), dim=-1).to(device, torch.float32)
        w_a, w_b, w_d, bias = self._margin_weights([v.shape[-1] for v in query_parts])
        s_query, s_cand = f_query @ w_a + bias, f_cand @ w_b

        @torch.no_grad()
        def scorer(query_rows: torch.Tensor, cand_rows: torch.Tensor) -> torch.Tensor:
            query_rows, cand_rows = query_rows.to(device), cand_rows.to(device)
            margin = torch.empty(cand_rows.shape, device=device)
            for s in range(0, len(query_rows), chunk):
                q, c = query_rows[s:s + chunk], cand_rows[s:s + chunk]
                diff = (f_query[q][:, None, :] - f_cand[c]).abs_()
                margin[s:s + chunk] = s_query[q][:, None] + s_cand[c] + diff @ w_d
            return margin.sigmoid_().cpu()
        return scorer

    def _margin_weights(self, widths: list[int]) -> tuple[torch.Tensor, ...]:
        """(w_a, w_b, w_d, c) of the true-minus-false logit over fused vectors of ``widths`` (see pair_scorer)."""
        weight, bias = self.classifier.weight.float(), self.classifier.bias.float()
        u, blocks, start = weight[1] - weight[0], ([], [], []), 0
        for width in widths:
            for i, block in enumerate(blocks):
                block.append(u[start + i * width:start + (i + 1) * width])
            start += 3 * width
        return (*(torch.cat(b) for b in blocks), bias[1] - bias[0])

    def forward(self, anchor, positive, negative) -> TripletOutput:
        """One training step's forward: each argument is ``(input_ids, attention_mask)`` [b, len] (lengths may
        differ), or the encoder's pooled vectors [b, hidden] (a frozen encoder's, computed once: only the heads
        run). Candidates share one encoder call; with a shared encoder all three do."""
        if isinstance(anchor, torch.Tensor):
            a, p, n = self.project(anchor), self.project(positive), self.project(negative)
        elif self.sharing == "shared":
            a, p, n = _split3(self.encode(*_stack(anchor, positive, negative), side="point"), len(anchor[0]))
        else:
            a = self.encode(*anchor, side="point")
            p, n = _split2(self.encode(*_stack(positive, negative), side="candidate"), len(positive[0]))
        if self.classifier is None:
            return TripletOutput(a, p, n, None, None)
        return TripletOutput(a, p, n, self.classify(a, p), self.classify(a, n))


def build_model(model_cfg) -> tuple[BiEncoder, object]:
    """The :class:`BiEncoder` and tokenizer for a ``config.ModelConfig``."""
    encoder, tokenizer = load_encoder(model_cfg.encoder)
    model = BiEncoder(
        encoder, pooling=model_cfg.pooling, sharing=model_cfg.sharing, proj_dim=model_cfg.proj_dim,
        layernorm=model_cfg.layernorm, relu=model_cfg.relu, classifier=model_cfg.classifier,
        fusion=model_cfg.fusion, freeze_encoder=model_cfg.freeze_encoder, train_layers=model_cfg.train_layers,
    )
    return model, tokenizer


def _stack(*batches: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate padded batches (ids [b, t] or token states [b, t, h]) along rows, right-padding to the longest."""
    width = max(ids.shape[1] for ids, _ in batches)
    ids = torch.cat([nn.functional.pad(i, (0, 0) * (i.dim() - 2) + (0, width - i.shape[1])) for i, _ in batches])
    mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for _, m in batches])
    return ids, mask


def _split2(x: Encoded, b: int) -> tuple[Encoded, Encoded]:
    return Encoded(x.pooled[:b], x.emb[:b]), Encoded(x.pooled[b:], x.emb[b:])


def _split3(x: Encoded, b: int) -> tuple[Encoded, Encoded, Encoded]:
    first, rest = _split2(x, b)
    return (first, *_split2(rest, b))
