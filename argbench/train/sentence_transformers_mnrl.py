"""The row a practitioner would pick instead of argbench's recipe: plain sentence-transformers fine-tuning with
``MultipleNegativesRankingLoss`` on argbench's cleaned training pairs, selected and evaluated as argbench's own runs.

``train_mnrl(corpus, settings, out_dir, hooks) -> MnrlResult``:

* pairs: the corpus's training (point, counter) pairs less those whose point or counter text occurs in validation or
  test, and less text-identical repeats (:func:`argbench.data.copies.training_frame`, the trainer's defaults); the
  point is the anchor, its counter the positive, the batch's other counters its negatives, and no text occurs twice
  in a batch (``BatchSamplers.NO_DUPLICATES``);
* model: ``Transformer(encoder folder, max_seq_length=max_length)`` + mean ``Pooling``, built offline;
* optimisation: ``SentenceTransformerTrainer``'s defaults (AdamW, linear decay, gradient norm clipped at 1) with a
  linear warmup over :data:`WARMUP_RATIO` of all steps; no reporting integrations, no HF checkpoints;
* selection: after each epoch the validation split is ranked with :func:`argbench.eval.evaluate.evaluate` (cosine);
  the epoch with the best ``val/epa/acc_at_1`` (:func:`argbench.train.selection.selected_epoch`: earliest on ties)
  is saved to ``out_dir`` with ``SentenceTransformer.save``, and that saved model alone is evaluated on test, once.

Like the trainer it knows nothing of MLflow: each epoch's metrics go to the hooks' ``on_epoch_end(epoch, metrics)``.
"""

# No `from __future__ import annotations`: MnrlSettings' fields are checked against their annotations at run time.

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transformers import PrinterCallback, TrainerCallback

from argbench.config import PRIMARY, ModelConfig, TrainConfig, check_value, option
from argbench.data.copies import training_frame
from argbench.data.corpus import Corpus
from argbench.data.tasks import SplitData, build_split
from argbench.errors import UserError
from argbench.eval.evaluate import Evaluation, evaluate
from argbench.model.encoders import MINILM, load_encoder
from argbench.train.selection import selected_epoch
from argbench.train.trainer import SPLIT_KEYS

RUN_NAME = "st_mnrl"
WARMUP_RATIO = 0.1  # sentence-transformers' training examples warm up over the first 10% of the steps
SUMMARY = "st_mnrl.json"  # beside the model in out_dir: settings, pair counts, history and selected epoch


@dataclass(frozen=True)
class MnrlSettings:
    """What :func:`train_mnrl` trains; each field's help is also its ``argbench baseline mnrl`` flag's."""

    encoder: str = option(MINILM, "encoder to fine-tune: a name argbench.model.encoders resolves offline, or a local "
                                  "model folder")
    epochs: int = option(1, "passes over the training pairs; the one with the best val/epa/acc_at_1 is kept", min=1)
    batch_size: int = option(32, "(point, counter) pairs per step; each point's negatives are the batch's other "
                                 "counters", min=2)
    lr: float = option(2e-5, "peak learning rate (AdamW; linear warmup, then linear decay to 0)",
                       min=0, min_exclusive=True)
    max_length: int = option(ModelConfig.max_length, "tokens kept per text (argbench's model.max_length)", min=1)
    seed: int = option(TrainConfig.seed, "seed of the batch order, dropout and every other random draw")
    bf16: bool = option(False, "train under bf16 mixed precision (a GPU, or a CPU that computes bf16)")
    embed_batch_size: int = option(128, "texts per forward pass when embedding validation and test", min=1)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_value(f, getattr(self, f.name), f.name, source=RUN_NAME))


@dataclass
class MnrlResult:
    """``history``: one metrics dict per epoch (``epoch``, ``train/loss``, the ``val/...`` names of
    :meth:`Evaluation.flat`, ``perf/train_seconds``, ``perf/epoch_seconds`` = training + validation); ``test``: the
    selected epoch's model on test; ``pair_counts``: training pairs before and after each cleaning step."""

    settings: MnrlSettings
    history: list[dict]
    selected_epoch: int
    test: Evaluation
    pair_counts: dict[str, int]
    seconds: float
    out_dir: Path

    @property
    def train_pairs(self) -> int:
        return self.pair_counts["deduped"]


def training_pairs(corpus: Corpus) -> tuple[SplitData, dict[str, int]]:
    """The training split argbench's recipe trains on (decontaminated, deduplicated) and its pair counts."""
    rows, counts = training_frame(corpus.frame, decontaminate_pairs=True, dedupe=True)
    split = build_split(rows, "training")
    if len(split.query_idx) < 2:
        raise UserError(f"{RUN_NAME}: cleaning left {len(split.query_idx)} training pairs ({counts}); "
                        "in-batch negatives need at least 2")
    return split, counts


def pair_dataset(split: SplitData):
    """``datasets.Dataset`` with columns anchor (the point) and positive (its counter), in pair order."""
    from datasets import Dataset

    texts = split.args["text"].to_numpy()
    return Dataset.from_dict({"anchor": texts[split.points_idx].tolist(),
                              "positive": texts[split.counters_idx].tolist()})


def build_model(encoder: str, max_length: int, scratch: Path):
    """``SentenceTransformer([Transformer(folder, max_seq_length=max_length), Pooling(mean)])``. A local folder is
    used as is; any other name is loaded with :func:`load_encoder` (offline) and saved to ``scratch`` first, so
    the model starts from the weights argbench's own runs start from."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    folder = Path(encoder).expanduser()
    if not folder.is_dir():
        model, tokenizer = load_encoder(encoder)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        folder = scratch
    transformer = Transformer(str(folder), max_seq_length=max_length)
    return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])


def evaluate_model(model, split: SplitData, batch_size: int = 128) -> Evaluation:
    """Cosine retrieval on ``split`` with a SentenceTransformer: every argument embedded once, queries are their
    rows (as :func:`argbench.eval.baselines.zero_shot`)."""
    emb = model.encode(split.texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    emb = emb.float().cpu()
    return evaluate(split, emb[split.query_idx], emb, metric="cosine")


def train_mnrl(corpus: Corpus, settings: MnrlSettings, out_dir: Path, hooks: Sequence = ()) -> MnrlResult:
    """Fine-tune ``settings.encoder`` with MultipleNegativesRankingLoss on :func:`training_pairs`, keep the epoch
    selected on validation in ``out_dir`` (a SentenceTransformer folder, plus :data:`SUMMARY`) and evaluate it on
    test. ``hooks``: objects with ``on_epoch_end(epoch, metrics)``, called once per epoch."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    start = time.perf_counter()
    out_dir = Path(out_dir)
    split, counts = training_pairs(corpus)
    selection = _SelectOnValidation(corpus.split("validation"), out_dir, hooks, settings.embed_batch_size)
    with tempfile.TemporaryDirectory(prefix=f"{RUN_NAME}-") as scratch:
        model = build_model(settings.encoder, settings.max_length, Path(scratch) / "encoder")
        trainer = SentenceTransformerTrainer(
            model=model, args=_arguments(settings, Path(scratch) / "trainer", cpu=model.device.type == "cpu"),
            train_dataset=pair_dataset(split), loss=MultipleNegativesRankingLoss(model), callbacks=[selection])
        trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout
        trainer.train()
    epoch = selected_epoch(selection.history, PRIMARY)
    best = SentenceTransformer(str(out_dir), device=str(model.device), local_files_only=True)
    test = evaluate_model(best, corpus.split("test"), settings.embed_batch_size)
    result = MnrlResult(settings, selection.history, epoch, test, counts, time.perf_counter() - start, out_dir)
    (out_dir / SUMMARY).write_text(json.dumps(
        {"settings": asdict(settings), "pair_counts": counts, "selected_epoch": epoch, "history": result.history,
         "test": test.flat(SPLIT_KEYS["test"]), "seconds": result.seconds}, indent=2))
    return result


def _arguments(settings: MnrlSettings, output_dir: Path, cpu: bool):
    """One log per epoch (its mean loss; :class:`_SelectOnValidation` acts on it); nothing saved, reported or
    evaluated by the trainer itself."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr, warmup_steps=WARMUP_RATIO, seed=settings.seed, bf16=settings.bf16, use_cpu=cpu,
        batch_sampler=BatchSamplers.NO_DUPLICATES, logging_strategy="epoch", eval_strategy="no", save_strategy="no",
        report_to="none", disable_tqdm=True)


class _SelectOnValidation(TrainerCallback):
    """At each epoch's loss log (``logging_strategy="epoch"`` logs once per epoch, after the epoch's last step):
    rank the validation split, append the epoch's row to ``history``, save the model to ``out_dir`` when this epoch
    is the selected one so far, and call the hooks."""

    def __init__(self, validation: SplitData, out_dir: Path, hooks: Sequence, batch_size: int):
        self.validation, self.out_dir, self.hooks, self.batch_size = validation, out_dir, hooks, batch_size
        self.history: list[dict] = []
        self.epoch_start = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if "loss" not in (logs or {}):  # the end-of-training summary (train_loss, train_runtime, ...)
            return
        train_seconds = time.perf_counter() - self.epoch_start
        epoch = round(state.epoch)
        row = {"epoch": epoch, "train/loss": float(logs["loss"]),
               **evaluate_model(model, self.validation, self.batch_size).flat(SPLIT_KEYS["validation"]),
               "perf/train_seconds": train_seconds, "perf/epoch_seconds": time.perf_counter() - self.epoch_start}
        self.history.append(row)
        if selected_epoch(self.history, PRIMARY) == epoch:
            model.save(str(self.out_dir))
        for hook in self.hooks:
            if hasattr(hook, "on_epoch_end"):
                hook.on_epoch_end(epoch, row)
