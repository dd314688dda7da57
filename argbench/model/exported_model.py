"""An export folder (:mod:`argbench.model.export`) loaded back, offline and on the CPU: the SentenceTransformer it
holds and argbench's network rebuilt around the same modules, for evaluation (:mod:`argbench.eval.evaluate_export`)
and retrieval (:mod:`argbench.eval.retrieve`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from argbench.config import Config, from_dict
from argbench.model.bi_encoder import BiEncoder, Encoded
from argbench.model.encoders import embed
from argbench.model.export import (
    ARGBENCH_DIR,
    CLASSIFIER_FILE,
    CROSS_ENCODER_DIR,
    ROUTES,
    RUN_FILE,
    ExportError,
    is_export,
    run_info,
)
from argbench.model.tokens import tokenize_texts


@dataclass
class ExportedModel:
    """An export folder loaded: ``st`` (the SentenceTransformer) and ``model``, argbench's network rebuilt around
    the same modules (its encoders are ``st``'s transformers, its head ``st``'s Dense/LayerNorm layers, plus the
    pair classifier), for the pooled vectors and classifier scores that sentence-transformers does not compute;
    ``cross_encoder`` the run's second stage (None when it trained none)."""

    path: Path
    st: object
    model: BiEncoder
    tokenizer: object
    config: Config
    info: dict
    cross_encoder: nn.Module | None = None

    def embed(self, texts: list[str], side: str, *, batch_size: int = 64) -> Encoded:
        """``emb`` [n, d] from sentence-transformers (``side`` "point" = query route, "candidate" = document
        route); ``pooled`` [n, hidden] from the same encoder when the classifier needs it, else ``emb``."""
        emb = self.st.encode(texts, task=ROUTES[side], batch_size=batch_size, convert_to_tensor=True).float().cpu()
        pooled = emb
        if self.model.classifier is not None and self.model.fusion != "only_embedding":
            encoder = self.model.point_encoder if side == "point" else self.model.candidate_encoder
            tok = tokenize_texts(self.tokenizer, texts, self.config.model.max_length)
            pooled = embed(encoder, tok, pooling=self.config.model.pooling, batch_size=batch_size)
        return Encoded(pooled, emb)


def load_export(path: str | Path) -> ExportedModel:
    """Load an export folder offline, on the CPU (raises :class:`ExportError` if ``path`` is not one)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router

    path = Path(path)
    if not is_export(path):
        raise ExportError(f"{path} is not an argbench export: expected {ARGBENCH_DIR}/{RUN_FILE} in it "
                          "(write one with `argbench export RUN_DIR --to DIR`)")
    info = run_info(path)
    cfg = from_dict(info["config"], str(path / ARGBENCH_DIR / RUN_FILE))
    st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    first = st[0]
    routes = {side: list(first.sub_modules[task]) for side, task in ROUTES.items()} if isinstance(first, Router) \
        else {side: list(st) for side in ROUTES}
    encoders = {side: modules[0].auto_model.eval() for side, modules in routes.items()}
    model = BiEncoder(encoders["point"], pooling=cfg.model.pooling, sharing="shared", proj_dim=cfg.model.proj_dim,
                      layernorm=cfg.model.layernorm, relu=cfg.model.relu, classifier=cfg.model.classifier,
                      fusion=cfg.model.fusion)
    model.sharing, model.candidate_encoder = cfg.model.sharing, encoders["candidate"]
    model.head = _head(routes["point"][2 + (cfg.model.pooling == "pooler"):])
    if model.classifier is not None:
        model.classifier.load_state_dict(load_file(path / ARGBENCH_DIR / CLASSIFIER_FILE))
    cross = None
    if (path / CROSS_ENCODER_DIR).is_dir():
        from transformers import AutoModelForSequenceClassification

        cross = AutoModelForSequenceClassification.from_pretrained(path / CROSS_ENCODER_DIR, local_files_only=True)
    return ExportedModel(path, st, model.eval(), routes["point"][0].tokenizer, cfg, info,
                         cross.eval() if cross is not None else None)


def _head(modules: list[nn.Module]) -> nn.Sequential:
    """argbench's head from the sentence-transformers modules after pooling (the inverse of the head's modules in
    :func:`argbench.model.export.sentence_transformer`)."""
    layers: list[nn.Module] = []
    for module in modules:
        if hasattr(module, "linear"):  # Dense
            layers += [module.linear] + ([] if isinstance(module.activation_function, nn.Identity)
                                         else [module.activation_function])
        else:  # LayerNorm
            layers.append(module.norm)
    return nn.Sequential(*layers)
