"""A trained run as a sentence-transformers model folder, and such a folder loaded back for evaluation and retrieval.

``export_run(RUN_DIR, DIR)`` reads a run folder (``config.yaml``, ``best/``, ``checkpoint/``, ``data.json``) and
writes DIR, which ``SentenceTransformer(DIR)`` loads offline and whose ``encode`` gives argbench's retrieval
embeddings (float32 on CPU: equal to ``BiEncoder.head(pool(encoder(text)))`` within 1e-5). The run's network maps to
sentence-transformers modules one to one:

================================ ===================================================================================
argbench                         sentence-transformers module
================================ ===================================================================================
encoder (a Hugging Face model)   ``Transformer`` (max_seq_length = the run's ``model.max_length``)
pooling ``cls`` / ``mean``       ``Pooling`` with that mode
pooling ``pooler`` (BERT)        ``Pooling("cls")`` + ``Dense(hidden, hidden, Tanh)`` holding the pooler's weights
projection ``Linear``            ``Dense(hidden, proj_dim, Identity)``
``LayerNorm``                    ``LayerNorm``
``ReLU``                         the activation of the ``Dense`` before it; after a LayerNorm (which has no
                                 activation) an identity ``Dense(d, d, ReLU)`` (weight I, bias 0: exact)
================================ ===================================================================================

The weights exported are the run's selected epoch's (``best/``: the best ``eval.primary`` on validation, see
:mod:`argbench.train.selection`), or with ``epoch="last"`` its last epoch's (``checkpoint/``); a run folder without
``best/`` (written before argbench selected epochs, or whose run never evaluated ``eval.primary``) gives its last
epoch, and :attr:`TrainedRun.note` says so. ``run.json`` and the model card record which epoch and which selection
the folder holds.

With ``sharing: separate`` the folder holds one ``Router`` with two routes: ``query`` = the point encoder (encode the
arguments you want countered with ``encode_query``) and ``document`` = the candidate encoder (the counters,
``encode_document``; plain ``encode`` uses it too). Beside the modules, ``argbench/`` holds ``run.json`` (the run's
config, data source and hash, the exported epoch, its selection and metrics, which route is which) and
``pair_classifier.safetensors``; README.md is the model card. A run trained with ``eval.rerank: cross_encoder`` also has
``cross_encoder/``, a standard cross-encoder folder (:mod:`argbench.model.cross_encoder`:
``AutoModelForSequenceClassification`` or sentence-transformers' ``CrossEncoder`` load it) that ``argbench retrieve
--rerank`` uses: the run trains it once, at its final epoch, on the selected epoch's model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from argbench.config import Config, from_dict, load_config, to_dict
from argbench.data.copies import RERANKED
from argbench.data.tasks import TASKS, SplitData
from argbench.errors import UserError
from argbench.model.bi_encoder import BiEncoder, Encoded, build_model
from argbench.model.cross_encoder import build_cross_encoder
from argbench.model.encoders import embed
from argbench.model.tokens import tokenize_texts
from argbench.train import checkpoint
from argbench.train.selection import EPOCHS, LAST, SELECTED

ARGBENCH_DIR = "argbench"  # argbench's files inside an export folder
RUN_FILE = "run.json"
CLASSIFIER_FILE = "pair_classifier.safetensors"
CROSS_ENCODER_DIR = "cross_encoder"  # the second stage of a run with eval.rerank: cross_encoder
DATA_FILE = "data.json"  # written by the trainer into a run folder: the corpus source and hash
FORMAT = 1
ROUTES = {"point": "query", "candidate": "document"}  # argbench side -> sentence-transformers task


class ExportError(UserError):
    """A run folder or export folder that cannot be read; the message names the path and what is expected."""


@dataclass
class TrainedRun:
    """A run folder's model, read back: the network with the weights of epoch ``epoch`` (None: the history's last),
    ``selection`` :data:`~argbench.train.selection.SELECTED` (from ``best/``) or ``LAST`` (from ``checkpoint/``),
    ``note`` saying why the last epoch stands in for the selected one (None when it does not), its tokenizer and
    config, the per-epoch metrics and the corpus it was trained on (``data`` {source, hash}; "unknown" when the
    folder predates ``data.json``), and its cross-encoder (``reranker``; None unless the run trained one)."""

    path: Path
    model: BiEncoder
    tokenizer: object
    config: Config
    history: list[dict]
    data: dict
    mlflow_run_id: str | None
    reranker: nn.Module | None = None
    epoch: int | None = None
    selection: str = LAST
    note: str | None = None


def check_epoch(epoch: str | None) -> None:
    """ExportError unless ``epoch`` is one of :data:`~argbench.train.selection.EPOCHS` or None (the default)."""
    if epoch is not None and epoch not in EPOCHS:
        raise ExportError(f"--epoch {epoch!r}: expected one of {', '.join(EPOCHS)}")


def load_run_dir(run_dir: str | Path, epoch: str | None = None) -> TrainedRun:
    """Read a run folder written by ``argbench train --out`` / ``argbench ablation run`` with the weights of
    ``epoch``: "selected" (``best/``; ExportError when the folder has none), "last" (``checkpoint/``) or None (the
    selected where the folder has ``best/``, else the last, with :attr:`TrainedRun.note` saying so)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not checkpoint.exists(run_dir):
        raise ExportError(f"{run_dir} is not a trained run folder: expected config.yaml and checkpoint/ "
                          "(written by `argbench train --out DIR` or `argbench ablation run`)")
    cfg = load_config(run_dir / "config.yaml")
    name, note = _checkpoint_name(run_dir, epoch, cfg.eval.primary)
    model, tokenizer = build_model(cfg.model)
    history = [json.loads(row) for row in checkpoint.load(run_dir, model, torch.device("cpu"))["history"]]
    weights_epoch = history[-1]["epoch"] if history else None
    if name == checkpoint.BEST:  # its state holds only {"epoch": N}; the history is the last checkpoint's
        weights_epoch = checkpoint.load(run_dir, model, torch.device("cpu"), name=checkpoint.BEST)["epoch"]
    model.eval()
    reranker = build_cross_encoder(model.point_encoder) if cfg.eval.rerank == "cross_encoder" else None
    if reranker is not None and not checkpoint.load_extra(run_dir, checkpoint.RERANKER, reranker, name=name):
        reranker = None  # stopped before the last epoch: no second stage yet
    data_file = run_dir / DATA_FILE
    data = json.loads(data_file.read_text()) if data_file.is_file() else {"source": "unknown", "hash": "unknown"}
    run_id_file = run_dir / "mlflow_run_id"
    run_id = (run_id_file.read_text().strip() or None) if run_id_file.is_file() else None
    return TrainedRun(run_dir, model, tokenizer, cfg, history, data, run_id,
                      reranker.eval() if reranker is not None else None, epoch=weights_epoch,
                      selection=SELECTED if name == checkpoint.BEST else LAST, note=note)


def _checkpoint_name(run_dir: Path, epoch: str | None, primary: str) -> tuple[str, str | None]:
    """(the checkpoint folder holding ``epoch``'s weights, the note when the last epoch stands in for the selected
    one); ExportError for an unknown epoch, or "selected" of a folder without ``best/``."""
    check_epoch(epoch)
    if epoch == LAST:
        return checkpoint.DIRNAME, None
    if checkpoint.exists(run_dir, checkpoint.BEST):
        return checkpoint.BEST, None
    missing = (f"{run_dir} has no {checkpoint.BEST}/, the selected epoch's model (a run folder written before "
               f"argbench selected epochs, or no epoch evaluated {primary})")
    if epoch == SELECTED:
        raise ExportError(f"--epoch {SELECTED}: {missing}; use --epoch {LAST} for its {checkpoint.DIRNAME}/")
    return checkpoint.DIRNAME, f"{missing}: using {checkpoint.DIRNAME}/, the last epoch's"


# --- argbench -> sentence-transformers ---------------------------------------------------------------------------

def _pipeline(encoder: nn.Module, tokenizer, model: BiEncoder, cfg: Config, scratch: Path) -> list[nn.Module]:
    """The sentence-transformers modules that compute ``model.head(pool(encoder(text)))`` (see the module doc)."""
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Pooling, Transformer

    encoder.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    modules: list[nn.Module] = [Transformer(str(scratch), max_seq_length=cfg.model.max_length)]
    hidden = int(encoder.config.hidden_size)
    modules.append(Pooling(hidden, pooling_mode="cls" if cfg.model.pooling == "pooler" else cfg.model.pooling))
    if cfg.model.pooling == "pooler":
        modules.append(_dense(encoder.pooler.dense, nn.Tanh()))
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            modules.append(_dense(layer, nn.Identity()))
        elif isinstance(layer, nn.LayerNorm):
            norm = LayerNorm(layer.normalized_shape[0])
            norm.norm.load_state_dict(layer.state_dict())
            modules.append(norm)
        elif isinstance(layer, nn.ReLU):
            last = modules[-1]
            if isinstance(last, Dense) and isinstance(last.activation_function, nn.Identity):  # the projection
                last.activation_function = nn.ReLU()
            else:  # after a LayerNorm, or on the pooled vector itself
                width = model.emb_dim
                modules.append(Dense(width, width, activation_function=nn.ReLU(), init_weight=torch.eye(width),
                                     init_bias=torch.zeros(width)))
        else:
            raise TypeError(f"export: no sentence-transformers module for head layer {layer!r}")
    return modules


def _dense(linear: nn.Linear, activation: nn.Module):
    from sentence_transformers.sentence_transformer.modules import Dense

    return Dense(linear.in_features, linear.out_features, activation_function=activation,
                 init_weight=linear.weight.detach().clone(), init_bias=linear.bias.detach().clone())


def sentence_transformer(model: BiEncoder, tokenizer, cfg: Config, scratch: Path):
    """A ``SentenceTransformer`` computing ``model``'s retrieval embeddings (a Router of query/document routes when
    the encoders are separate). ``scratch`` receives the encoders' files while it is built."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router

    similarity = "euclidean" if cfg.eval.metric == "euclidean" else "cosine"
    routes = {side: _pipeline(getattr(model, f"{side}_encoder"), tokenizer, model, cfg, scratch / side)
              for side in (ROUTES if model.sharing == "separate" else ["point"])}
    if model.sharing == "shared":
        modules = routes["point"]
    else:
        modules = [Router.for_query_document(query_modules=routes["point"], document_modules=routes["candidate"])]
    return SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=similarity)


def export_run(run: TrainedRun | str | Path, out: str | Path, epoch: str | None = None) -> Path:
    """Write the export folder of ``run`` (a :class:`TrainedRun`, or a run folder read at ``epoch``: see
    :func:`load_run_dir`) to ``out``; returns ``out``.

    ``out`` must not exist, be empty, or be an earlier export (replaced). Written to a sibling and renamed, so a
    failure leaves no half-written folder."""
    run = run if isinstance(run, TrainedRun) else load_run_dir(run, epoch)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export(out))):
        raise ExportError(f"--to {out}: exists and is not an empty folder or an earlier export; expected a new "
                          "folder name")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        st = sentence_transformer(run.model, run.tokenizer, run.config, Path(scratch))
        st.save(str(tmp), create_model_card=False)
    (tmp / ARGBENCH_DIR).mkdir()
    if run.model.classifier is not None:
        save_file({k: v.detach().contiguous() for k, v in run.model.classifier.state_dict().items()},
                  tmp / ARGBENCH_DIR / CLASSIFIER_FILE)
    if run.reranker is not None:
        run.reranker.save_pretrained(tmp / CROSS_ENCODER_DIR)
        run.tokenizer.save_pretrained(tmp / CROSS_ENCODER_DIR)
    info = _run_info(run, weights_digest(tmp))
    (tmp / ARGBENCH_DIR / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(info))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def weights_digest(folder: Path) -> str:
    """SHA-256 (16 hex digits) over the relative paths and bytes of every file of an export's modules (argbench's
    own files and the card excluded): the key of cached candidate embeddings."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(ARGBENCH_DIR + "/") or rel == "README.md":
            continue
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _run_info(run: TrainedRun, digest: str) -> dict:
    last = run.history[-1] if run.history else {}
    epoch = last.get("epoch") if run.epoch is None else run.epoch
    cfg = run.config
    routes = ({"query": "point encoder: the arguments you want countered (encode_query)",
               "document": "candidate encoder: the counters searched (encode_document; plain encode too)"}
              if cfg.model.sharing == "separate" else None)
    return {
        "format": FORMAT, "source": str(run.path), "mlflow_run_id": run.mlflow_run_id,
        "data": run.data, "epoch": epoch, "last_epoch": last.get("epoch"), "selection": run.selection,
        "primary": cfg.eval.primary, "note": run.note, "weights_digest": digest, "dimension": run.model.emb_dim,
        "sharing": cfg.model.sharing, "routes": routes, "pooling": cfg.model.pooling, "metric": cfg.eval.metric,
        "classifier": cfg.model.classifier, "fusion": cfg.model.fusion,
        "metrics": _epoch_metrics(run.history, epoch, run.selection), "config": to_dict(cfg),
    }


def _epoch_metrics(history: list[dict], epoch: int | None, selection: str) -> dict[str, float]:
    """The retrieval metrics recorded at ``epoch``, plus, for the selected model, its second stage's (recorded with
    the final epoch: the cross-encoder reranks the selected model)."""
    row = next((m for m in history if m["epoch"] == epoch), {})
    metrics = {k: v for k, v in row.items() if _is_retrieval_metric(k) and RERANKED + "/" not in k}
    if selection == SELECTED and history:
        metrics.update({k: v for k, v in history[-1].items() if _is_retrieval_metric(k) and RERANKED + "/" in k})
    return metrics


def selection_text(info: dict) -> str:
    """Which epoch an export's ``run.json`` ``info`` holds, in words: "epoch 3, the best val/epa/acc_at_1 on
    validation" or "epoch 5, the last" (with the note of a fallback)."""
    if info.get("selection") == SELECTED:
        return f"epoch {info['epoch']}, the best {info.get('primary')} on validation"
    return f"epoch {info.get('epoch')}, the last" + (f" ({info['note']})" if info.get("note") else "")


def check_holds(info: dict, epoch: str | None, where: str | Path) -> None:
    """ExportError unless the export with ``run.json`` ``info`` holds ``epoch`` (None: any): the selected model,
    or the last epoch's (an export made before argbench selected epochs holds the last)."""
    check_epoch(epoch)
    if epoch == SELECTED:
        holds = info.get("selection") == SELECTED
    else:
        holds = epoch is None or info.get("epoch") == info.get("last_epoch", info.get("epoch"))
    if not holds:
        raise ExportError(f"{where} holds {selection_text(info)}, not the {epoch} epoch's model; export the run "
                          f"folder with --epoch {epoch}")


def model_card(info: dict) -> str:
    """README.md of an export: what was trained on what, its final metrics, and how to load it."""
    cfg, model = info["config"], info["config"]["model"]
    head = " → ".join([f"Linear({model['proj_dim']})"] * bool(model["proj_dim"])
                      + ["LayerNorm"] * model["layernorm"] + ["ReLU"] * model["relu"]) or "none"
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, argbench, counterargument-retrieval]", "---", "",
        "# argbench counterargument retriever", "",
        "Retrieves the best counterargument for an argument (Wachsmuth, Syed & Stein, ACL 2018). Exported by "
        "`argbench export` from the run folder `" + info["source"] + "`"
        + (f" (MLflow run `{info['mlflow_run_id']}`)" if info["mlflow_run_id"] else "") + ".", "",
        "## Recipe", "",
        f"- encoder `{model['encoder']}`, pooling `{model['pooling']}`, max length {model['max_length']}, "
        f"sharing `{model['sharing']}`, head {head}",
        f"- trained {info.get('last_epoch', info['epoch'])} epochs (planned {cfg['train']['epochs']}), lr "
        f"{cfg['train']['lr']}, "
        f"batch {cfg['train']['batch_size']}, seed {cfg['train']['seed']}; loss weights triplet "
        f"{cfg['loss']['triplet_weight']} (margin {cfg['loss']['margin']}), in-batch {cfg['loss']['in_batch_weight']}"
        f", classifier {cfg['loss']['ce_pos_weight']}/{cfg['loss']['ce_neg_weight']}",
        f"- data `{info['data'].get('source')}`, content hash `{info['data'].get('hash')}`",
        f"- retrieval distance: {info['metric']} (the model's `similarity_fn_name`)",
        f"- these weights: {selection_text(info)}", "",
        "The full configuration is `argbench/run.json` (`config`).", "",
    ]
    lines += _metric_lines(info["metrics"], info["epoch"])
    lines += ["## Load it", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              "model = SentenceTransformer(\"PATH/TO/THIS/FOLDER\")"]
    if info["routes"]:
        lines += ["points = model.encode_query([\"an argument to counter\"])   # the point encoder",
                  "counters = model.encode_document([\"a candidate counter\"])  # the candidate encoder"]
    else:
        lines += ["embeddings = model.encode([\"an argument to counter\", \"a candidate counter\"])"]
    lines += ["model.similarity(embeddings[:1], embeddings[1:])" if not info["routes"]
              else "model.similarity(points, counters)", "```", "",
              "With argbench: `argbench retrieve --model PATH \"an argument\"` prints its top counters from the "
              "corpus; `argbench eval --encoder PATH --split test` recomputes the metrics above."]
    if info["classifier"]:
        lines += ["", f"The pair classifier (fusion `{info['fusion']}`, Linear(·, 2) over [a, b, |a − b|]) is "
                      "`argbench/pair_classifier.safetensors`; argbench uses it to score and rerank candidates."]
    return "\n".join(lines) + "\n"


def _is_retrieval_metric(name: str) -> bool:
    """Whether trainer metric ``name`` is an evaluated split's (``val/epa/acc_at_1``, ``val/dedup/epa/mrr``,
    ``val/rerank/acc_at_1``), not a loss, negatives or timing figure."""
    return name.rsplit("/", 1)[-1].startswith("acc_at_") or name.endswith("/mrr")


def _metric_lines(metrics: dict, epoch: int | None) -> list[str]:
    """The model card's tables of the official-pool metrics of ``metrics`` (flat trainer names) of ``epoch``."""
    lines = []
    for key, name in (("test", "Test"), ("val", "Validation")):
        tasks = [t for t in TASKS if f"{key}/{t}/acc_at_1" in metrics]
        if not tasks:
            continue
        lines += [f"## {name} metrics of epoch {epoch} (official pools)", "",
                  "| metric | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for metric in ("acc_at_1", "acc_at_5", "mrr"):
            lines.append(f"| {metric.replace('_at_', '@')} | "
                         + " | ".join(f"{metrics[f'{key}/{t}/{metric}']:.4f}" for t in tasks) + " |")
        rerank = metrics.get(f"{key}/rerank/acc_at_1")
        lines += [""] + ([f"Top-10 reranked by the pair classifier (epa): acc@1 {rerank:.4f}.", ""] if rerank else [])
    return lines or [f"No evaluated split was recorded for epoch {epoch}.", ""]


# --- an export folder, loaded back -------------------------------------------------------------------------------

def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_run`."""
    return (Path(path) / ARGBENCH_DIR / RUN_FILE).is_file()


def run_info(path: str | Path) -> dict:
    """The ``argbench/run.json`` of export folder ``path``: the run's config, data, exported epoch and metrics."""
    return json.loads((Path(path) / ARGBENCH_DIR / RUN_FILE).read_text())


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
    """argbench's head from the sentence-transformers modules after pooling (the inverse of :func:`_pipeline`)."""
    layers: list[nn.Module] = []
    for module in modules:
        if hasattr(module, "linear"):  # Dense
            layers += [module.linear] + ([] if isinstance(module.activation_function, nn.Identity)
                                         else [module.activation_function])
        else:  # LayerNorm
            layers.append(module.norm)
    return nn.Sequential(*layers)


@torch.no_grad()
def evaluate_export(exported: ExportedModel, split: SplitData, batch_size: int = 64):
    """The export's :class:`argbench.eval.evaluate.Evaluation` on ``split``, as the trainer evaluates a run: every
    argument embedded as a candidate, the queries by the point encoder (the candidates' rows when shared)."""
    from argbench.eval.evaluate import evaluate

    candidates = exported.embed(split.texts, "candidate", batch_size=batch_size)
    if exported.model.sharing == "shared":
        queries = Encoded(candidates.pooled[split.query_idx], candidates.emb[split.query_idx])
    else:
        texts = split.texts
        queries = exported.embed([texts[i] for i in split.query_idx], "point", batch_size=batch_size)
    scorer = exported.model.pair_scorer(queries, candidates) if exported.model.classifier is not None else None
    return evaluate(split, queries.emb, candidates.emb, metric=exported.config.eval.metric, scorer=scorer,
                    rerank_depth=exported.config.eval.rerank_depth)


def recorded_difference(exported: ExportedModel, split_key: str, evaluation) -> float | None:
    """Largest |difference| between ``evaluation`` (an :class:`argbench.eval.evaluate.Evaluation` of split key
    ``split_key``: "val", "test", "train") and the run's recorded metrics of the same names at the exported epoch;
    None when the run recorded none of them then (it did not evaluate that split at that epoch)."""
    metrics = evaluation.flat(split_key)
    shared = [k for k in exported.info["metrics"] if k in metrics]
    return max((abs(metrics[k] - exported.info["metrics"][k]) for k in shared), default=None)

