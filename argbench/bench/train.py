"""Benchmark: training throughput of argbench's trainer against sentence-transformers' own trainer.

Both train the same encoder (loaded from one local folder) on the same (point, counter, random negative) triplets
of the training split, with the same batch size, maximum length and number of steps, in one process:

* argbench: :class:`argbench.train.trainer.Trainer`'s epoch loop (texts tokenised once, length-bucketed batches,
  BiEncoder forward with projection and classifier, :func:`argbench.model.loss.combined_loss`, backward,
  clipping, Adam step);
* reference: ``SentenceTransformerTrainer`` with ``losses.TripletLoss`` (tokenises each batch in its collator,
  mean pooling, triplet loss only), with the hub, logging integrations, saving and progress bars off.

The two take turns for a few rounds (argbench, reference, reference, argbench, ...) so that load from other
processes and warm caches favour neither; each round's time counts steady-state steps only: a global
optimizer-step hook stamps the end of every step, and sequences/s = 3 · batch · (steps − 1) / (last stamp − first
stamp), so the first step (lazy initialisation) counts for neither. Memory is measured apart, in one fresh process
per contender that sets it up and trains ``steps`` steps: its peak RSS (CUDA: peak allocated GPU memory).

On CUDA (``device="cuda"``) the default encoder is a random-weight BERT-base (768 wide, 12 layers) under bf16
autocast, and the rows add model FLOP utilisation: 6 · non-embedding encoder parameters · real (unpadded) tokens
per second, over the GPU's dense bf16 peak.

    argbench bench train [--device cuda]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from argbench.config import load_config
from argbench.data.corpus import Corpus, load_corpus, resolve_data
from argbench.data.tasks import SplitData
from argbench.model.encoders import MINILM, load_encoder
from argbench.train.distributed import setup
from argbench.train.trainer import Trainer

BERT_BASE_RANDOM = "bert-base-random"
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; matched on the device name,
# most specific first.
PEAK_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("A100", 312.0))


def run_train_bench(data: str | None = None, encoder: str | None = None, steps: int = 10, rounds: int = 2,
                    batch_size: int = 8, max_length: int = 128, device: str = "cpu", seed: int = 0,
                    peak_tflops: float | None = None) -> list[dict]:
    """One row: {"case", "argbench_s", "reference_s" (median seconds of a round's steady-state steps), "ratio",
    "agree": None, "argbench_seq_per_s", "reference_seq_per_s", "argbench_peak_mb", "reference_peak_mb", ...}.

    The contenders take turns for ``rounds`` rounds of ``steps`` optimizer steps each. ``encoder``: a name
    :func:`argbench.model.encoders.load_encoder` knows, or ``"bert-base-random"``; default MiniLM on CPU, BERT-base on
    CUDA. ``steps`` is lowered when the training split has fewer than ``steps · batch_size`` pairs. Without CUDA,
    ``device="cuda"`` returns one row saying it was skipped.
    """
    encoder = encoder or (BERT_BASE_RANDOM if device.startswith("cuda") else MINILM)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return [{"case": f"{encoder} on {device}", "argbench_s": None, "reference_s": None, "ratio": None,
                 "agree": None, "skipped": "no CUDA device"}]
    _check_reference_installed()
    corpus = load_corpus(resolve_data(data, announce=False))
    with _quiet(), tempfile.TemporaryDirectory(prefix="argbench-bench-") as tmp:
        folder = _materialise(encoder, Path(tmp) / "encoder")
        trainer = _argbench_trainer(folder, corpus, steps, batch_size, max_length, device, seed)
        steps = len(trainer.pairs) // batch_size
        split = trainer.train_split
        negatives = _random_negatives(split, trainer.pairs, np.random.default_rng(seed))
        triplets = _texts(split, trainer.pairs, negatives)
        reference = _sentence_transformers_run(folder, triplets, steps, batch_size, max_length, trainer.cfg.train.lr,
                                               device, seed, Path(tmp) / "st")
        contenders = {"argbench": lambda epoch: trainer._train_epoch(epoch, negatives),
                      "reference": lambda epoch: reference()}
        seconds = {who: [] for who in contenders}
        for r in range(rounds):  # ABBA...: load from other processes and warm caches favour neither
            for who in (contenders if r % 2 == 0 else reversed(contenders)):
                seconds[who].append(_steady_seconds(lambda: contenders[who](r + 1), device))
        rows = np.concatenate([split.points_idx[trainer.pairs], split.counters_idx[trainer.pairs], negatives])
        tokens_per_seq = float(np.mean(trainer.tokens["train"].lengths[rows]))
        params = _non_embedding_params(trainer.model.point_encoder)
        memory = {who: _peak_memory_mb(who, folder, str(corpus.source.path), steps, batch_size, max_length, device,
                                       seed, negatives, triplets) for who in contenders}
    ours_s, ref_s = (statistics.median(seconds[who]) for who in contenders)
    seqs = 3 * batch_size * (steps - 1)
    row = {"case": f"{encoder} bs={batch_size} max_len={max_length} steps={steps}x{rounds} device={device} "
                   f"threads={torch.get_num_threads()}",
           "argbench_s": ours_s, "reference_s": ref_s, "ratio": ref_s / ours_s, "agree": None,
           "argbench_seq_per_s": seqs / ours_s, "reference_seq_per_s": seqs / ref_s, "timed_sequences": seqs,
           "tokens_per_seq": tokens_per_seq, "encoder_params_non_embedding": params,
           "argbench_peak_mb": memory["argbench"], "reference_peak_mb": memory["reference"],
           "memory": "peak GPU memory allocated" if device.startswith("cuda") else
                     "peak RSS of a fresh process that sets up and runs the steps (VmHWM)"}
    if device.startswith("cuda"):
        row.update(_utilisation(row, tokens_per_seq, params, peak_tflops))
    return [row]


# ------------------------------------------------------------------------------------------------ inputs
def _materialise(encoder: str, folder: Path) -> Path:
    """Save ``encoder`` (model and tokenizer) to ``folder`` so that both trainers load the same weights from it."""
    if encoder == BERT_BASE_RANDOM:
        from transformers import BertConfig, BertModel

        _, tokenizer = load_encoder(MINILM)  # BERT's uncased vocabulary
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = BertModel(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    else:
        model, tokenizer = load_encoder(encoder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _argbench_trainer(folder: Path, corpus: Corpus, steps: int, batch_size: int, max_length: int, device: str,
                      seed: int) -> Trainer:
    """argbench's Trainer on ``steps`` full batches of training pairs (fewer if the split is smaller), mean pooling
    to match sentence-transformers' default."""
    n_pairs = len(corpus.split("training").query_idx)
    pairs = min(steps, n_pairs // batch_size) * batch_size
    if pairs < 2 * batch_size:
        raise ValueError(f"the training split has {n_pairs} pairs: need at least 2 batches of {batch_size}")
    cfg = load_config(overrides=[
        f"model.encoder={folder}", "model.pooling=mean", f"model.max_length={max_length}",
        f"train.batch_size={batch_size}", f"data.max_train_pairs={pairs}", "train.epochs=1",
        f"train.device={device}", f"train.seed={seed}"])
    return Trainer(cfg, corpus, (), setup(device, cfg.train.precision), None, False)


def _random_negatives(split: SplitData, pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random argument row per pair, never the pair's own point or counter."""
    own = np.stack([split.points_idx[pairs], split.counters_idx[pairs]], axis=1)
    rows = rng.integers(0, len(split.args), len(pairs))
    while (bad := (rows[:, None] == own).any(1)).any():
        rows[bad] = rng.integers(0, len(split.args), int(bad.sum()))
    return rows


def _texts(split: SplitData, pairs: np.ndarray, negatives: np.ndarray) -> dict[str, list[str]]:
    texts = split.args["text"].to_numpy()
    return {"anchor": texts[split.points_idx[pairs]].tolist(), "positive": texts[split.counters_idx[pairs]].tolist(),
            "negative": texts[negatives].tolist()}


# ------------------------------------------------------------------------------------------------ reference
def _check_reference_installed() -> None:
    missing = [m for m in ("sentence_transformers", "datasets", "accelerate") if not _importable(m)]
    if missing:
        raise ImportError(f"the train benchmark's reference needs {', '.join(missing)}: "
                          "pip install 'sentence-transformers[train]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _sentence_transformers_run(folder: Path, triplets: dict[str, list[str]], steps: int, batch_size: int,
                               max_length: int, lr: float, device: str, seed: int,
                               out_dir: Path, loss: str = "triplet") -> Callable[[], None]:
    """A function that trains the SentenceTransformer of ``folder`` (built once, here) for ``steps`` steps of
    SentenceTransformerTrainer + ``loss`` (``triplet``: TripletLoss; ``mnrl``: MultipleNegativesRankingLoss, the
    triplet's negative as a hard negative beside the batch's other positives) on ``triplets``, offline and silent,
    with a fresh trainer per call."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss, TripletLoss
    from transformers import PrinterCallback

    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    model.max_seq_length = max_length
    dataset = Dataset.from_dict(triplets)
    cuda = device.startswith("cuda")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        seed=seed, report_to="none", disable_tqdm=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", use_cpu=not cuda, bf16=cuda, dataloader_num_workers=0)

    def train() -> None:
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=(MultipleNegativesRankingLoss if loss == "mnrl"
                                                   else TripletLoss)(model))
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict to stdout
        trainer.train()

    return train


@contextlib.contextmanager
def _quiet():
    """No progress bars or info logs from transformers inside the block (the reference's "no sentence-transformers
    model found, creating mean pooling" notice is expected)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------------ measuring
def _steady_seconds(fn: Callable[[], object], device: str) -> float:
    """Seconds from the end of ``fn``'s first optimizer step to the end of its last (CUDA: synchronised)."""
    stamps: list[float] = []
    cuda = device.startswith("cuda")

    def stamp(optimizer, args, kwargs):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(stamp)
    try:
        fn()
    finally:
        handle.remove()
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} optimizer step(s) were taken; need at least 2 to time steady state")
    return stamps[-1] - stamps[0]


def _peak_memory_mb(who: str, *args) -> float:
    """Peak memory (MiB) of a fresh process that sets ``who`` up and trains it (see :func:`_train_once`).

    A fresh process because the one that timed both holds both models and keeps the memory the first one freed.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_train_once, who, *args).result()


def _train_once(who: str, folder: Path, corpus_path: str, steps: int, batch_size: int, max_length: int, device: str,
                seed: int, negatives: np.ndarray, triplets: dict[str, list[str]]) -> float:
    """Set up ``who`` ("argbench" or "reference") and train ``steps`` steps; returns this process's peak RSS in MiB,
    or on CUDA its peak allocated GPU memory."""
    with _quiet():
        if who == "argbench":
            trainer = _argbench_trainer(folder, load_corpus(corpus_path), steps, batch_size, max_length, device, seed)
            trainer._train_epoch(1, negatives)
        else:
            lr = load_config().train.lr
            _sentence_transformers_run(folder, triplets, steps, batch_size, max_length, lr, device, seed,
                                       folder.parent / "st-memory")()
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` where /proc has it, since ``ru_maxrss`` of a spawned process also
    counts its parent's RSS at the fork."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def _non_embedding_params(encoder: torch.nn.Module) -> int:
    """Encoder parameters outside its embedding tables (lookups, not matrix multiplications)."""
    embeddings = getattr(encoder, "embeddings", None)
    skip = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    return sum(p.numel() for p in encoder.parameters() if id(p) not in skip)


def _utilisation(row: dict, tokens_per_seq: float, params: int, peak_tflops: float | None) -> dict:
    """Model FLOP utilisation of both contenders: 6 · params · tokens/s over the dense bf16 peak."""
    name = torch.cuda.get_device_name()
    peak = peak_tflops or next((p for key, p in PEAK_BF16_TFLOPS if key in name), None)
    out = {"gpu": name, "peak_bf16_tflops": peak}
    for who in ("argbench", "reference"):
        tflops = 6 * params * tokens_per_seq * row[f"{who}_seq_per_s"] / 1e12
        out[f"{who}_tflops"] = tflops
        out[f"{who}_mfu"] = tflops / peak if peak else None
    return out
