"""A trained model as a sentence-transformers model folder: writing it, and the ``run.json`` it carries.

``write_export(run, DIR)`` writes DIR from a :class:`TrainedRun` (a run folder is read into one by
:mod:`argbench.train.trained_run`), which ``SentenceTransformer(DIR)`` loads offline and whose ``encode`` gives
argbench's retrieval embeddings (float32 on CPU: equal to ``BiEncoder.head(pool(encoder(text)))`` within 1e-5). The
run's network maps to sentence-transformers modules one to one:

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

The weights exported are those the :class:`TrainedRun` holds: a run's selected epoch's or its last's
(:mod:`argbench.model.epoch_names`); ``run.json`` and the model card record which epoch and which selection the
folder holds, and :func:`check_holds` checks an export against the epoch a command asks for.

With ``sharing: separate`` the folder holds one ``Router`` with two routes: ``query`` = the point encoder (encode the
arguments you want countered with ``encode_query``) and ``document`` = the candidate encoder (the counters,
``encode_document``; plain ``encode`` uses it too). Beside the modules, ``argbench/`` holds ``run.json`` (the run's
config, data source and hash, the exported epoch, its selection and metrics, which route is which) and
``pair_classifier.safetensors``; README.md is the model card. A run trained with ``eval.rerank: cross_encoder`` also has
``cross_encoder/``, a standard cross-encoder folder (:mod:`argbench.model.cross_encoder`:
``AutoModelForSequenceClassification`` or sentence-transformers' ``CrossEncoder`` load it) that ``argbench retrieve
--rerank`` uses: the run trains it once, at its final epoch, on the selected epoch's model. The folder is loaded back
by :mod:`argbench.model.exported_model`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from argbench.config import Config, flatten, from_dict, to_dict
from argbench.data.copies import RERANKED
from argbench.data.tasks import TASKS
from argbench.errors import UserError
from argbench.model.bi_encoder import BiEncoder
from argbench.model.epoch_names import EPOCHS, LAST, SELECTED

ARGBENCH_DIR = "argbench"  # argbench's files inside an export folder
RUN_FILE = "run.json"
CLASSIFIER_FILE = "pair_classifier.safetensors"
CROSS_ENCODER_DIR = "cross_encoder"  # the second stage of a run with eval.rerank: cross_encoder
FORMAT = 1
ROUTES = {"point": "query", "candidate": "document"}  # argbench side -> sentence-transformers task


class ExportError(UserError):
    """A run folder or export folder that cannot be read; the message names the path and what is expected."""


@dataclass
class TrainedRun:
    """A trained model and what its export records: the network with the weights of epoch ``epoch`` (None: the
    history's last), ``selection`` :data:`~argbench.model.epoch_names.SELECTED` (the run's selected epoch) or
    ``LAST``, ``note`` saying why the last epoch stands in for the selected one (None when it does not), its
    tokenizer and config, the per-epoch metrics and the corpus it was trained on (``data`` {source, hash}; "unknown"
    when the run folder predates ``data.json``), the folder it came from (``path``) and its cross-encoder
    (``reranker``; None unless the run trained one). :func:`argbench.train.trained_run.load_run_dir` reads one from
    a run folder."""

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
    """ExportError unless ``epoch`` is one of :data:`~argbench.model.epoch_names.EPOCHS` or None (the default)."""
    if epoch is not None and epoch not in EPOCHS:
        raise ExportError(f"--epoch {epoch!r}: expected one of {', '.join(EPOCHS)}")


def check_destination(out: Path) -> None:
    """ExportError unless ``out`` is free for an export folder: absent, an empty folder, or an earlier export."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export(out))):
        raise ExportError(f"--to {out}: exists and is not an empty folder or an earlier export; expected a new "
                          "folder name")


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


def write_export(run: TrainedRun, out: str | Path) -> Path:
    """Write the export folder of ``run`` to ``out``; returns ``out``.

    ``out`` must not exist, be empty, or be an earlier export (replaced). Written to a sibling and renamed, so a
    failure leaves no half-written folder."""
    out = Path(out)
    check_destination(out)
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
    (tmp / "README.md").write_text(model_card(st, info))
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


CARD_TITLE = "argbench counterargument retriever"
CARD_EXAMPLES = ("School uniforms stop bullying over clothes.",  # a point, then two candidate counters
                 "Bullies pick on pupils for their shoes, hair or phones just as well.",
                 "A ban would push the trade underground, where nobody checks safety.")
CITATION = """
@inproceedings{wachsmuth-etal-2018-retrieval,
    title = "Retrieval of the Best Counterargument without Prior Topic Knowledge",
    author = "Wachsmuth, Henning and Syed, Shahbaz and Stein, Benno",
    booktitle = "Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics",
    year = "2018",
    publisher = "Association for Computational Linguistics",
}
"""


@dataclass(frozen=True)
class OfficialPoolMetrics:
    """One task's metrics on one split, in the form sentence-transformers' model card takes an evaluator's results
    (argbench's come from its own evaluation): ``name`` is the task (a column of the split's table), ``description``
    the table's heading; ``split`` and ``epoch`` keep the test and validation tables apart."""

    name: str
    description: str
    split: str
    epoch: int | None

    def get_config_dict(self) -> dict:
        return {"split": self.split, "epoch": self.epoch}


def model_card(st, info: dict) -> str:
    """README.md of an export with ``run.json`` ``info``: sentence-transformers' generated card of ``st``
    (architecture, similarity function = the retrieval distance, usage, framework versions) carrying argbench's
    fields: the corpus and its content hash as the training dataset, the loss and its weights, the config as
    hyperparameters (those that differ from the base recipe listed first), the exported epoch's test and validation
    metrics as evaluation tables and ``model-index`` metadata, the task's paper as citation. A section of argbench's
    own, before Usage, holds what the card has no field for: where the export came from, which epoch it holds and
    why, argbench's files and commands."""
    from sentence_transformers.base.model_card import generate_model_card

    cfg, data = info["config"], info["data"]
    card = st.model_card_data
    card.local_files_only = True  # written offline: no look-up of the base model or datasets on the Hub
    card.model_name, card.task_name = CARD_TITLE, "retrieving the best counterargument for an argument"
    card.add_tags(["argbench", "counterargument-retrieval"])
    card.usage_examples = list(CARD_EXAMPLES)
    loss = json.dumps(cfg["loss"], indent=4).replace("\n", "\n  ")
    card.train_datasets = [{"name": f"{data.get('source')} (content hash `{data.get('hash')}`)",
                            "columns": ["point", "counter"],
                            "loss": {"fullname": "argbench.model.loss.combined_loss",
                                     "config_code": f"  ```json\n  {loss}\n  ```"}}]
    card.all_hyperparameters, base = flatten(from_dict(cfg)), flatten(Config())
    card.non_default_hyperparameters = {k: v for k, v in card.all_hyperparameters.items() if base.get(k) != v}
    card.citations = {"counterargs-18": CITATION}
    for evaluator, metrics in _card_metrics(info):
        card.set_evaluation_metrics(evaluator, metrics)
    head, usage, tail = generate_model_card(st).partition("\n## Usage\n")
    return head + "\n" + _argbench_section(info, bool(card.eval_results_dict)) + usage + tail


def _card_metrics(info: dict):
    """(evaluator record, {metric: value}) of each table of the card, test first: every task's acc@1, acc@5 and MRR
    on its official pool, then the pair classifier's rerank acc@1 (epa) where it was recorded."""
    metrics, epoch, depth = info["metrics"], info["epoch"], info["config"]["eval"]["rerank_depth"]
    for key, name in (("test", "Test"), ("val", "Validation")):
        for task in (t for t in TASKS if f"{key}/{t}/acc_at_1" in metrics):
            yield (OfficialPoolMetrics(task, f"{name} metrics of epoch {epoch} (official pools)", key, epoch),
                   {m.replace("_at_", "@"): metrics[f"{key}/{task}/{m}"] for m in ("acc_at_1", "acc_at_5", "mrr")})
        if metrics.get(f"{key}/rerank/acc_at_1"):
            yield (OfficialPoolMetrics("epa", f"{name}: top-{depth} reranked by the pair classifier, epoch {epoch}",
                                       key, epoch), {"acc@1": metrics[f"{key}/rerank/acc_at_1"]})


def _argbench_section(info: dict, evaluated: bool) -> str:
    """The card's argbench section (markdown)."""
    lines = ["## argbench", "", "Exported by `argbench export` from the run folder `" + info["source"] + "`"
             + (f" (MLflow run `{info['mlflow_run_id']}`)" if info["mlflow_run_id"] else "") + ".", "",
             f"- these weights: {selection_text(info)}; trained {info.get('last_epoch', info['epoch'])} epochs "
             f"(planned {info['config']['train']['epochs']})",
             "- the full configuration: `argbench/run.json` (`config`)"]
    if info["classifier"]:
        lines.append(f"- the pair classifier (fusion `{info['fusion']}`, Linear(·, 2) over [a, b, |a − b|]): "
                     "`argbench/pair_classifier.safetensors`; argbench uses it to score and rerank candidates")
    lines.append("- with argbench: `argbench retrieve --model PATH \"an argument\"` prints its top counters from the "
                 "corpus; `argbench eval --encoder PATH --split test` recomputes its test metrics")
    if not evaluated:
        lines += ["", f"No evaluated split was recorded for epoch {info['epoch']}."]
    return "\n".join(lines) + "\n"


def _is_retrieval_metric(name: str) -> bool:
    """Whether trainer metric ``name`` is an evaluated split's (``val/epa/acc_at_1``, ``val/dedup/epa/mrr``,
    ``val/rerank/acc_at_1``), not a loss, negatives or timing figure."""
    return name.rsplit("/", 1)[-1].startswith("acc_at_") or name.endswith("/mrr")


# --- an export folder's record -----------------------------------------------------------------------------------

def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_export`."""
    return (Path(path) / ARGBENCH_DIR / RUN_FILE).is_file()


def run_info(path: str | Path) -> dict:
    """The ``argbench/run.json`` of export folder ``path``: the run's config, data, exported epoch and metrics."""
    return json.loads((Path(path) / ARGBENCH_DIR / RUN_FILE).read_text())
