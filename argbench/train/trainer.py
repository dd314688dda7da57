"""The one trainer every ablation launches: ``fit(config, corpus, hooks) -> history``.

One module on purpose: the epoch loop and the steps it runs share the run's state; read top to bottom, it is the run.

Per run: tokenise every text once; epoch 0 evaluates the untrained model; then each epoch mines negatives with the
current model (random rate r(epoch - 1) of the schedule, so the first epoch trains on the round mined before it),
trains one pass over the training pairs (learning rate per ``train.scheduler``), evaluates, checkpoints (the last
epoch, and the epoch selected on ``eval.primary`` when it changes), and calls the hooks; ``train.patience`` stops it
early. With ``model.train_layers`` the frozen bottom's token states are computed once per text
(:mod:`argbench.train.frozen_states`).

The trainer knows nothing of MLflow or Optuna. A hook is any object with some of these methods (all optional):

* ``on_train_start(info: dict)`` — ``config`` (the resolved :class:`Config`), ``corpus``, data source and hash,
  device, parameter counts, training pairs (``train_pairs_before`` in the corpus, ``train_pairs_cleaned`` after
  ``data.decontaminate`` / ``data.dedupe_pairs``, ``train_pairs`` trained on, after ``data.max_train_pairs``),
  ``resumed_from`` (the checkpoint's epoch, or ``None``) and, when resumed, ``history`` (the metrics of the epochs
  up to the checkpoint's);
* ``on_epoch_end(epoch: int, metrics: dict) -> bool | None`` — return ``True`` to stop (pruning);
* ``on_evaluation(epoch: int, split: str, evaluation: Evaluation)`` — per-query ranks, for paired comparisons;
* ``on_negatives(epoch: int, examples: list[dict])`` — a few mined (point, negative, source) texts.

``metrics`` per epoch: one flat dict of MLflow-safe names, logged as is by the tracker: ``epoch``; ``train/loss``,
``train/loss_{triplet,ce_pos,ce_neg,in_batch}`` (:data:`LOSS_NAMES`), ``negatives/{point,counter,random}_frac``,
``negatives/{same_debate,same_theme,copy}_frac``, ``negatives/mean_distance`` and ``negatives/ratio_skipped`` of the
negatives trained on (:data:`NEGATIVE_NAMES`; a figure that does not apply is absent), ``schedule/random_rate`` and
``perf/train_seq_per_s`` (all absent at epoch 0); per evaluated split key (``val``, ``test``, ``train``) the names of
:meth:`argbench.eval.evaluate.Evaluation.flat` (``val/epa/acc_at_1``, ``val/dedup/epa/mrr``, ``val/rerank/acc_at_1``,
...; the views of :mod:`argbench.data.copies`, unseen only where a query is unseen in training); and
``perf/epoch_seconds``. The final epoch also carries the second stage's two-stage metrics of the selected epoch's
model, ``{key}/reranked/...`` (the pair classifier's, or the cross-encoder's; ``eval.rerank``). A name that is
absent was not measured that epoch (``eval.every``, ``eval.at_start``).

Training pairs are the corpus's, less (by default) those whose texts occur in validation or test and the
text-identical repeats (:mod:`argbench.data.copies`); a training split in ``data.eval_splits`` is evaluated on the pairs
trained on.

The step is written for an accelerator: its batch is padded ahead by a background thread (:mod:`argbench.train.batches`;
pinned memory and asynchronous copies on CUDA), and nothing is read back to the host inside the step loop (loss sums and
the non-finite check stay on the device, :mod:`argbench.train.step_totals`; the progress bar reads them every
:data:`PROGRESS_EVERY` steps, and only when shown). Under ``torchrun`` every rank embeds a share of the texts for
mining and evaluation (:func:`argbench.train.distributed.gather_batches`: the same embeddings as one process); the
main process alone ranks, checkpoints, calls the hooks and trains the cross-encoder stage, while the others wait up
to ``train.ddp_timeout``.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_scheduler

from argbench.config import Config, ConfigError, to_yaml
from argbench.data.copies import training_frame
from argbench.data.corpus import Corpus
from argbench.data.tasks import SplitData, build_split
from argbench.errors import RunError, UserError, raise_if_stopped
from argbench.eval.evaluate import evaluate
from argbench.eval.rerank import classifier_rerank, rerank
from argbench.model import cross_encoder
from argbench.model import loss as losses
from argbench.model.bi_encoder import BiEncoder, Encoded, build_model
from argbench.model.encoders import embed, hidden_size, pool
from argbench.model.loss import combined_loss
from argbench.model.tokens import TokenizedTexts, bucketed_batches, length_sorted_batches, pad_batch, tokenize_texts
from argbench.train import checkpoint
from argbench.train.batches import host_batch, in_batch_masks, prefetch, to_device
from argbench.train.distributed import (
    Runtime,
    broadcast_flag,
    gather_batches,
    mean_over_ranks,
    setup,
    shard,
    teardown,
)
from argbench.train.frozen_states import FrozenStates
from argbench.train.grad_cache import cached_step
from argbench.train.metric_names import LOSS_NAMES, NEGATIVE_NAMES
from argbench.train.negatives import mine
from argbench.train.reranker import fit_cross_encoder, training_groups
from argbench.train.schedule import schedule_from_config
from argbench.train.selection import patience_exhausted, selected_epoch
from argbench.train.step_totals import StepTotals, Totals

SPLIT_KEYS = {"training": "train", "validation": "val", "test": "test"}
SIDES = ("point", "candidate", "candidate")  # the encoder side of a step's anchors, positives and negatives
# Steps between the progress bar's readings of the running loss (each waits for the device; none when no bar).
PROGRESS_EVERY = 25


class NonFiniteLoss(RunError, FloatingPointError):
    """The loss became NaN or infinite; the message names epoch, step, the loss components and what to try."""


def fit(cfg: Config, corpus: Corpus, hooks=(), *, out_dir: Path | None = None, resume: bool = False,
        progress: bool = False) -> list[dict]:
    """Train ``cfg`` on ``corpus`` and return one metrics dict per epoch (epoch 0 = untrained).

    With ``out_dir``: writes ``config.yaml``, ``data.json`` (corpus source and hash), ``metrics.jsonl``,
    ``checkpoint/`` (the last epoch's) and ``best/`` (the epoch selected on ``eval.primary``,
    :mod:`argbench.train.selection`) there; ``resume`` continues from the last checkpoint (same seed on CPU gives the
    same final metrics as an uninterrupted run). ``train.patience`` ends the run early."""
    runtime = setup(cfg.train.device, cfg.train.precision, cfg.train.ddp_timeout)
    try:
        history = Trainer(cfg, corpus, hooks, runtime, out_dir, progress).run(resume)
    except BaseException:  # Ctrl-C, a hook's exception (pruning) or NonFiniteLoss: leave without a barrier
        teardown(runtime, failed=True)
        raise
    teardown(runtime)
    return history


class Trainer:
    # A frozen encoder's pooled outputs (model.freeze_encoder), or a frozen bottom's token states
    # (model.train_layers), are computed once per text and reused by every epoch's mining, training and evaluation;
    # False computes them at every use, as an unfrozen encoder does (the bench and the equality tests compare both).
    cache_frozen_encoder = True

    def __init__(self, cfg: Config, corpus: Corpus, hooks, runtime: Runtime, out_dir: Path | None, progress: bool):
        self.cfg, self.hooks, self.runtime, self.out_dir = cfg, list(hooks), runtime, out_dir
        if cfg.train.mini_batch_size and runtime.world_size > 1:
            raise UserError(f"train.mini_batch_size={cfg.train.mini_batch_size}: the gradient cache runs in one "
                            f"process only, not under torchrun ({runtime.world_size} processes); expected null")
        self.progress = progress and sys.stderr.isatty() and runtime.is_main
        _seed_everything(cfg.train.seed, cfg.train.num_threads)
        self.np_rng = np.random.default_rng(cfg.train.seed)
        self.miner_rng = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.schedule = schedule_from_config(cfg.negatives.schedule, cfg.negatives.start, cfg.negatives.step,
                                             cfg.negatives.floor, cfg.negatives.rate)
        self.model, tokenizer = build_model(cfg.model)
        self.model.to(runtime.device)
        if cfg.train.compile:
            for encoder in self.model.encoders():
                encoder.compile()  # in place: the state dict keeps its names (checkpoints, export)
        self.train_split, pair_counts = _clean_training_split(corpus, cfg)
        self.pairs = _training_pairs(self.train_split, cfg.data.max_train_pairs, self.np_rng)
        self.eval_splits = {SPLIT_KEYS[s]: self.train_split if s == "training" else corpus.split(s)
                            for s in cfg.data.eval_splits}
        self.tokens = {key: tokenize_texts(tokenizer, split.texts, cfg.model.max_length)
                       for key, split in [("train", self.train_split), *self.eval_splits.items()]}
        self.optimizer = _optimizer(self.model, cfg.train)
        # as many as each rank's share of an epoch's batches (train.distributed.shard); the rng only counts them
        self.steps_per_epoch = -(-len(bucketed_batches(self.tokens["train"].lengths[self.pairs], cfg.train.batch_size,
                                                       np.random.default_rng(0))) // runtime.world_size)
        self.scheduler = _scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        self.ddp_model = _wrap_ddp(self.model, runtime, self._gradientless_parameters() if runtime.distributed
                                   else [])
        self.history: list[dict] = []
        self.frozen_outputs: dict[tuple[str, str], tuple[torch.Tensor, np.ndarray]] = {}
        self.frozen_states: dict[tuple[str, str], FrozenStates] = {}
        # split key -> (query, candidate) embeddings of the last evaluation, and of the selected epoch's
        self.first_stage: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.selected_first_stage: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.selected_state: dict[str, torch.Tensor] | None = None  # the selected epoch's weights (CPU copies)
        # split key -> the pair classifier's two-stage evaluation (eval.rerank: classifier), last and selected
        self.classifier_stage: dict[str, object] = {}
        self.selected_classifier_stage: dict[str, object] = {}
        self.reranker: torch.nn.Module | None = None  # the cross-encoder, once trained (eval.rerank)
        self.info = {"config": cfg, "corpus": corpus,
                     "data.source": corpus.source.describe(), "data.hash": corpus.hash,
                     "device": str(runtime.device), "world_size": runtime.world_size,
                     "train_pairs_before": pair_counts["corpus"],
                     "train_pairs_cleaned": len(self.train_split.query_idx),
                     "train_pairs": len(self.pairs), "params_trainable": _count(self.model, trainable=True),
                     "params_total": _count(self.model, trainable=False)}

    # ------------------------------------------------------------------------------------------- epochs
    def run(self, resume: bool) -> list[dict]:
        start = self._resume() if resume else self._fresh()
        for epoch in range(start, self.cfg.train.epochs + 1):
            raise_if_stopped()
            metrics = self._epoch(epoch)
            if self._finish_epoch(epoch, metrics):
                break
        return self.history

    def _fresh(self) -> int:
        if self.out_dir is not None and self.runtime.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(to_yaml(self.cfg))
            (self.out_dir / "metrics.jsonl").write_text("")
            (self.out_dir / "data.json").write_text(json.dumps({"source": self.info["data.source"],
                                                                "hash": self.info["data.hash"]}) + "\n")
        self._init_projection()
        self._call("on_train_start", {**self.info, "resumed_from": None})
        return 0

    def _init_projection(self) -> None:
        """``model.proj_init``: PCA is fitted on the pooled vectors of the distinct training texts (points and
        counters of the pairs trained on), computed by the untrained encoder."""
        kind = self.cfg.model.proj_init
        pooled = None
        if kind == "pca":
            split = self.train_split
            rows = np.unique(np.concatenate([split.points_idx[self.pairs], split.counters_idx[self.pairs]]))
            pooled = self._embed(self.tokens["train"], rows, "point").pooled
        self.model.init_projection(kind, pooled)

    def _resume(self) -> int:
        if self.out_dir is None:
            raise ValueError("resume needs the run folder (out_dir) that holds the checkpoint")
        state = checkpoint.load(self.out_dir, self.model, self.runtime.device, self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints written before the schedule existed trained at a constant rate
            self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.restore_rng(state["rng"], self.np_rng, self.miner_rng)
        self.history = [json.loads(row) for row in state["history"]]
        if checkpoint.exists(self.out_dir, checkpoint.BEST):
            selected = copy.deepcopy(self.model)
            checkpoint.load(self.out_dir, selected, self.runtime.device, self.cfg, name=checkpoint.BEST)
            self.selected_state = _cpu_state(selected)
        if self.runtime.is_main:
            (self.out_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.history))
        self._call("on_train_start", {**self.info, "resumed_from": state["epoch"], "history": list(self.history)})
        return state["epoch"] + 1

    def _epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        metrics: dict = {"epoch": epoch}
        if epoch > 0:
            rate = self.schedule.rate(epoch - 1)
            negatives, stats = self._mine(epoch, rate)
            t_train = time.perf_counter()
            loss = self._train_epoch(epoch, negatives)
            metrics["perf/train_seq_per_s"] = 3 * len(self.pairs) / (time.perf_counter() - t_train)
            metrics.update({name: float(loss[part]) for part, name in LOSS_NAMES.items() if part in loss})
            metrics.update({name: float(stats[part]) for part, name in NEGATIVE_NAMES.items()
                            if stats.get(part) is not None})
            metrics["schedule/random_rate"] = rate
        if self._evaluates(epoch):
            for key, split in self.eval_splits.items():
                evaluation = self._evaluate(key, split)  # every rank embeds its share; the main process ranks
                if evaluation is not None:
                    metrics.update(evaluation.flat(key))
                    self._call("on_evaluation", epoch, key, evaluation)
        if self.runtime.is_main and self._evaluates(epoch):
            if self._is_selected(epoch, metrics):
                self.selected_first_stage = dict(self.first_stage)
                self.selected_classifier_stage = dict(self.classifier_stage)
                self.selected_state = _cpu_state(self.model)
            if self.cfg.eval.rerank == "classifier" and self.model.classifier and self._is_final(epoch, metrics):
                metrics.update(self._classifier_second_stage(epoch))
            if self.cfg.eval.rerank == "cross_encoder" and self._is_final(epoch, metrics):
                with self._selected_weights():
                    metrics.update(self._second_stage(epoch))
        metrics["perf/epoch_seconds"] = time.perf_counter() - t0
        return metrics

    def _is_selected(self, epoch: int, metrics: dict) -> bool:
        """Whether ``epoch`` (its ``metrics`` not yet in the history) is the run's selected epoch so far."""
        return selected_epoch([*self.history, metrics], self.cfg.eval.primary) == epoch

    def _is_final(self, epoch: int, metrics: dict) -> bool:
        """The last epoch, or the one after which early stopping (``train.patience``) ends the run."""
        return epoch == self.cfg.train.epochs or patience_exhausted([*self.history, metrics], self.cfg.eval.primary,
                                                                    self.cfg.train.patience)

    @contextmanager
    def _selected_weights(self):
        """The model holds the selected epoch's weights inside the block (the last epoch's again after it)."""
        if self.selected_state is None:
            yield
            return
        last = _cpu_state(self.model)
        self.model.load_state_dict(self.selected_state)
        try:
            yield
        finally:
            self.model.load_state_dict(last)

    def _finish_epoch(self, epoch: int, metrics: dict) -> bool:
        """Record the epoch, write the last checkpoint (and the selected one, when this epoch is selected or the
        second stage was trained on it), call the hooks; True when the run stops here (a hook, or patience)."""
        selected = self._is_selected(epoch, metrics)
        self.history.append(metrics)
        if self.out_dir is not None and self.runtime.is_main:
            extra = {checkpoint.RERANKER: self.reranker} if self.reranker is not None else None
            state = {"epoch": epoch, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "rng": checkpoint.rng_state(self.np_rng, self.miner_rng),
                     "history": [json.dumps(m) for m in self.history]}
            checkpoint.save(self.out_dir, self.model, state, self.cfg, extra=extra)
            chosen = selected_epoch(self.history, self.cfg.eval.primary)
            if selected:
                checkpoint.save(self.out_dir, self.model, {"epoch": epoch}, self.cfg, extra=extra,
                                name=checkpoint.BEST)
            elif extra is not None and chosen is not None:  # the second stage reranks the selected model
                with self._selected_weights():
                    checkpoint.save(self.out_dir, self.model, {"epoch": chosen}, self.cfg, extra=extra,
                                    name=checkpoint.BEST)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        stop = any(self._call("on_epoch_end", epoch, metrics)) if self.runtime.is_main else False
        stop = stop or patience_exhausted(self.history, self.cfg.eval.primary, self.cfg.train.patience)
        return broadcast_flag(stop, self.runtime)

    def _evaluates(self, epoch: int) -> bool:
        """Whether ``epoch`` evaluates: every ``eval.every``-th epoch and the last; epoch 0 with ``eval.at_start``."""
        if epoch == 0:
            return self.cfg.eval.at_start
        return epoch % self.cfg.eval.every == 0 or epoch == self.cfg.train.epochs

    # ------------------------------------------------------------------------------------------- parts
    def _mine(self, epoch: int, rate: float):
        """Embed the training pairs with the current model and mine one negative per pair."""
        split, tok = self.train_split, self.tokens["train"]
        points = self._embed(tok, split.points_idx[self.pairs], "point").emb
        counters = self._embed(tok, split.counters_idx[self.pairs], "candidate").emb
        groups = split.args["copy_group"].to_numpy()
        result = mine(points.to(self.runtime.device), counters.to(self.runtime.device), rate=rate,
                      generator=self.miner_rng, backend=self.cfg.negatives.backend, k=self.cfg.negatives.k,
                      copy_groups=(groups[split.points_idx[self.pairs]], groups[split.counters_idx[self.pairs]]),
                      exclude_copies=self.cfg.negatives.exclude_copies, max_ratio=self.cfg.negatives.max_ratio)
        labels = split.args.loc[split.points_idx[self.pairs]]
        stats = result.stats((labels["theme"] + "/" + labels["debate"]).to_numpy(), labels["theme"].to_numpy())
        negative_rows = _negative_rows(split, self.pairs, result)
        if self.runtime.is_main and self.cfg.negatives.examples:
            # Own generator: drawing from np_rng on rank 0 only would desynchronise the ranks' batch orders
            # (their shards would overlap), and the number of examples shown would change the training.
            shown = np.random.default_rng([self.cfg.train.seed, epoch]).choice(
                len(self.pairs), min(self.cfg.negatives.examples, len(self.pairs)), replace=False)
            texts = split.texts
            self._call("on_negatives", epoch, [
                {"point": texts[split.points_idx[self.pairs][i]], "negative": texts[negative_rows[i]],
                 "source": str(result.source[i])} for i in shown])
        return negative_rows, stats

    def _train_epoch(self, epoch: int, negative_rows: np.ndarray) -> dict:
        """One pass over the training pairs; returns the mean of each loss component over the batches of every
        rank (each rank has the same number of batches, so the mean of the ranks' means). A non-finite loss is
        found on the device and raised after the pass (:meth:`_check_finite`), naming its first step, before
        anything of this epoch is saved."""
        split, tok, device = self.train_split, self.tokens["train"], self.runtime.device
        sides = (split.points_idx[self.pairs], split.counters_idx[self.pairs], negative_rows)
        groups = split.args["copy_group"].to_numpy() if self.cfg.loss.in_batch_weight != 0 else None
        batches = shard(bucketed_batches(tok.lengths[sides[0]], self.cfg.train.batch_size, self.np_rng), self.runtime)
        self.ddp_model.train()
        cached, layers = self._caches_encoder(), self._caches_layers()
        pad, pin = not (cached or layers), device.type == "cuda"
        totals = StepTotals()
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}", unit="batch", disable=not self.progress, leave=False)

        def make(rows: np.ndarray):  # the host's part of a step, done by the prefetching thread
            return host_batch(tok, rows, sides, groups, pad=pad, pin_memory=pin)

        with closing(prefetch(make, batches)) as ready:  # closed on any exit: the thread stops with the loop
            for step, batch in enumerate(ready, start=1):
                raise_if_stopped()  # a Ctrl-C whose first raise a finaliser swallowed stops the run here
                masks = (in_batch_masks(*to_device(batch.groups, device), self.cfg.loss.in_batch_symmetric)
                         if batch.groups is not None else (None, None))
                if cached:  # the frozen encoder's pooled vectors: only the heads run
                    inputs = [self._frozen_pooled(tok, rows[batch.rows], side).to(device)
                              for rows, side in zip(sides, SIDES)]
                elif layers:  # the frozen bottom's token states: only the top layers run
                    inputs = [self._states(tok, side).get(rows[batch.rows]) for rows, side in zip(sides, SIDES)]
                else:
                    inputs = to_device(batch.padded, device)
                if self.cfg.train.mini_batch_size and not cached:  # gradient cache: same step, less memory
                    parts, backward = cached_step(self.model, *inputs, self.cfg.train.mini_batch_size,
                                                  lambda out: combined_loss(out, self.cfg.loss, *masks), self._autocast)
                else:
                    with self._autocast():
                        parts = combined_loss(self.ddp_model(*inputs), self.cfg.loss, *masks)
                    backward = parts["total"].backward
                totals.add(parts)
                self.optimizer.zero_grad(set_to_none=True)
                backward()
                if self.cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                if self.progress and (step % PROGRESS_EVERY == 0 or step == len(batches)):
                    so_far = totals.read()
                    self._check_finite(so_far, epoch)
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{so_far.sums['total'] / step:.4f}")
        bar.close()
        done = totals.read()
        self._check_finite(done, epoch)
        return mean_over_ranks({k: v / max(len(batches), 1) for k, v in done.sums.items()}, self.runtime)

    @staticmethod
    def _check_finite(totals: Totals, epoch: int) -> None:
        """NonFiniteLoss naming the epoch, the first step whose loss was not finite and that step's components."""
        if not totals.bad_step:
            return
        parts = totals.bad_parts
        raise NonFiniteLoss(f"non-finite loss {parts['total']} at epoch {epoch}, step {totals.bad_step} "
                            f"(components: { {k: round(v, 4) for k, v in parts.items()} }); "
                            f"the checkpoint of epoch {epoch - 1} is kept; try a smaller train.lr or loss "
                            "weights in a new run")

    def _gradientless_parameters(self) -> list[str]:
        """Names of the trainable parameters the training loss gives no gradient (the pooler layer unless pooling
        uses it; the classifier without its loss terms), found by one forward and backward pass over two training
        pairs. The random state and the gradients are left as they were."""
        split, tok, device = self.train_split, self.tokens["train"], self.runtime.device
        rows = self.pairs[:2]
        anchors, positives = split.points_idx[rows], split.counters_idx[rows]
        inputs = [pad_batch(tok, r, device) for r in (anchors, positives, positives[::-1])]
        masks = (None, None)
        if self.cfg.loss.in_batch_weight != 0:
            groups = split.args["copy_group"].to_numpy()
            masks = in_batch_masks(torch.from_numpy(groups[anchors]).to(device),
                                   torch.from_numpy(groups[positives]).to(device), self.cfg.loss.in_batch_symmetric)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with self._autocast():  # the loss module's own function: this pass is no training step
                parts = losses.combined_loss(self.model(*inputs), self.cfg.loss, *masks)
            parts["total"].backward()
        names = [name for name, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        return names

    def _second_stage(self, epoch: int) -> dict:
        """After the last epoch: train the cross-encoder (:mod:`argbench.train.reranker`) and evaluate every split
        two-stage (:mod:`argbench.eval.rerank`) under ``{key}/reranked/...``; also ``train/rerank_loss`` and
        ``perf/rerank_{train,eval}_seconds``. Main process only (the others wait at the epoch's end)."""
        tok, device = self.tokens["train"], self.runtime.device
        groups = training_groups(self.train_split, self.pairs,
                                 lambda rows, side: self._embed(tok, rows, side, shard=False).emb,
                                 self.cfg.reranker.negatives, self.cfg.eval.metric)
        self.reranker, metrics = fit_cross_encoder(self.cfg, self.model.point_encoder, tok, *groups,
                                                   seed=self.cfg.train.seed, device=device, autocast=self._autocast,
                                                   progress=self.progress)
        t0 = time.perf_counter()
        for key, split in self.eval_splits.items():
            score = cross_encoder.scorer(self.reranker, self.tokens[key], batch_size=self.cfg.train.embed_batch_size,
                                         device=device, autocast_dtype=self.runtime.autocast_dtype)
            first_stage = self.selected_first_stage.get(key, self.first_stage[key])
            evaluation = rerank(split, *first_stage, score, metric=self.cfg.eval.metric,
                                depth=self.cfg.eval.rerank_depth, reranked=self.cfg.eval.rerank_tasks)
            metrics.update(evaluation.flat(f"{key}/reranked"))
            self._call("on_evaluation", epoch, f"{key}/reranked", evaluation)
        metrics["perf/rerank_eval_seconds"] = time.perf_counter() - t0
        return metrics

    def _classifier_second_stage(self, epoch: int) -> dict:
        """After the last epoch, the pair classifier as the second stage of the selected epoch's model: every split's
        two-stage ranks (:func:`argbench.eval.rerank.classifier_rerank`) under ``{key}/reranked/...``, kept from
        that epoch's evaluation (embedded again with its weights where a resumed run did not evaluate it)."""
        metrics = {}
        for key, split in self.eval_splits.items():
            evaluation = self.selected_classifier_stage.get(key)
            if evaluation is None:
                with self._selected_weights():
                    queries, candidates = self._split_embeddings(key, split, shard=False)
                    evaluation = self._classifier_stage(split, queries, candidates,
                                                        self.model.pair_scorer(queries, candidates))
            metrics.update(evaluation.flat(f"{key}/reranked"))
            self._call("on_evaluation", epoch, f"{key}/reranked", evaluation)
        return metrics

    def _classifier_stage(self, split: SplitData, queries: Encoded, candidates: Encoded, scorer):
        return classifier_rerank(split, queries.emb, candidates.emb, scorer,
                                 metric=self.cfg.eval.metric, depth=self.cfg.eval.rerank_depth,
                                 reranked=self.cfg.eval.rerank_tasks)

    def _split_embeddings(self, key: str, split: SplitData, shard: bool = True) -> tuple[Encoded, Encoded]:
        """(queries, candidates) of split ``key`` by the current model: every argument as a candidate, the queries
        by the point encoder (the candidates' rows when the encoder is shared)."""
        tok = self.tokens[key]
        candidates = self._embed(tok, np.arange(len(split.args)), "candidate", shard=shard)
        if self.model.sharing == "shared":
            return Encoded(candidates.pooled[split.query_idx], candidates.emb[split.query_idx]), candidates
        return self._embed(tok, split.query_idx, "point", shard=shard), candidates

    def _evaluate(self, key: str, split: SplitData):
        """The evaluation of split ``key`` by the current model; every rank embeds its share of the texts, the main
        process ranks (None on the others)."""
        queries, candidates = self._split_embeddings(key, split)
        if self.cfg.eval.rerank == "cross_encoder":
            self.first_stage[key] = (queries.emb, candidates.emb)
        if not self.runtime.is_main:
            return None
        scorer = self.model.pair_scorer(queries, candidates) if self.model.classifier else None
        if scorer is not None and self.cfg.eval.rerank == "classifier":
            self.classifier_stage[key] = self._classifier_stage(split, queries, candidates, scorer)
        return evaluate(split, queries.emb, candidates.emb, metric=self.cfg.eval.metric, scorer=scorer,
                        rerank_depth=self.cfg.eval.rerank_depth)

    @torch.no_grad()
    def _embed(self, tok: TokenizedTexts, rows: np.ndarray, side: str, shard: bool = True) -> Encoded:
        """Pooled vectors and retrieval embeddings (float32, CPU) of ``rows`` of ``tok``. Under torchrun with
        ``shard`` (every rank calls it with the same rows) each rank encodes every N-th of the inference batches
        and all ranks get every row; ``shard=False`` when the main process embeds alone."""
        pooled_of = self._frozen_pooled if self._caches_encoder() else self._encoder_pooled
        rows = np.asarray(rows)
        if shard and self.runtime.distributed:
            batches = length_sorted_batches(tok.lengths[rows], self.cfg.train.embed_batch_size)
            pooled = gather_batches(lambda positions: pooled_of(tok, rows[positions], side), batches, len(rows),
                                    self.runtime)
        else:
            pooled = pooled_of(tok, rows, side)
        was_training = self.model.training
        self.model.eval()
        emb = self.model.head(pooled.to(self.runtime.device)).float().cpu()
        self.model.train(was_training)
        return Encoded(pooled, emb)

    def _encoder_pooled(self, tok: TokenizedTexts, rows: np.ndarray, side: str) -> torch.Tensor:
        if self._caches_layers():
            return self._top_pooled(tok, rows, side)
        encoder = self.model.point_encoder if side == "point" else self.model.candidate_encoder
        return embed(encoder, tok, pooling=self.cfg.model.pooling, batch_size=self.cfg.train.embed_batch_size,
                     device=self.runtime.device, rows=rows, autocast_dtype=self.runtime.autocast_dtype,
                     progress=self.progress)

    def _caches_encoder(self) -> bool:
        return self.cfg.model.freeze_encoder and self.cache_frozen_encoder

    def _caches_layers(self) -> bool:
        return bool(self.model.splits) and self.cache_frozen_encoder

    def _states(self, tok: TokenizedTexts, side: str) -> FrozenStates:
        """The frozen bottom's token-state cache of ``tok``'s split for ``side`` (one per side when separate)."""
        side = side if self.model.sharing == "separate" else "point"
        key = (next(k for k, t in self.tokens.items() if t is tok), side)
        if key not in self.frozen_states:
            self.frozen_states[key] = FrozenStates(
                self.model.split(side).bottom, tok, hidden_size(self.model.point_encoder), device=self.runtime.device,
                batch_size=self.cfg.train.embed_batch_size, autocast_dtype=self.runtime.autocast_dtype)
        return self.frozen_states[key]

    @torch.no_grad()
    def _top_pooled(self, tok: TokenizedTexts, rows: np.ndarray, side: str) -> torch.Tensor:
        """Pooled vectors (float32, CPU) of ``rows``: the top layers on the cached states of the frozen bottom."""
        rows = np.asarray(rows)
        states, top = self._states(tok, side), self.model.split(side).top
        out = torch.zeros(len(rows), hidden_size(self.model.point_encoder))
        was_training = self.model.training
        self.model.eval()
        with self._autocast():
            for batch in length_sorted_batches(tok.lengths[rows], self.cfg.train.embed_batch_size):
                x, mask = states.get(rows[batch])
                out[batch] = pool(top(inputs_embeds=x, attention_mask=mask), mask, self.cfg.model.pooling).float().cpu()
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def _frozen_pooled(self, tok: TokenizedTexts, rows: np.ndarray, side: str) -> torch.Tensor:
        """The frozen encoder's pooled vectors of ``rows`` (float32, CPU), each text encoded once per run: rows not
        seen yet are embedded and kept (one cache per split and, with separate encoders, per side)."""
        side = side if self.model.sharing == "separate" else "point"
        key = (next(k for k, t in self.tokens.items() if t is tok), side)
        if key not in self.frozen_outputs:
            width = hidden_size(self.model.point_encoder)
            self.frozen_outputs[key] = (torch.zeros(len(tok), width), np.zeros(len(tok), dtype=bool))
        cache, have = self.frozen_outputs[key]
        rows = np.asarray(rows)
        missing = rows[~have[rows]]
        # Unique rows in the order asked: the same batches as the uncached path's first call, so the same numbers.
        missing = missing[np.sort(np.unique(missing, return_index=True)[1])]
        if len(missing):
            cache[missing] = self._encoder_pooled(tok, missing, side)
            have[missing] = True
        return cache[rows]

    def _autocast(self):
        dtype = self.runtime.autocast_dtype
        return torch.autocast(self.runtime.device.type, dtype=dtype, enabled=dtype is not None)

    def _call(self, method: str, *args) -> list:
        return [getattr(h, method)(*args) for h in self.hooks if hasattr(h, method)]


def _negative_rows(split: SplitData, pairs: np.ndarray, result) -> np.ndarray:
    """Argument rows (in ``split.args``) of the mined negatives; indices in ``result`` refer to ``pairs``."""
    points, counters = split.points_idx[pairs], split.counters_idx[pairs]
    return np.where(result.neg_kind == "point", points[result.neg_index], counters[result.neg_index])


def _clean_training_split(corpus: Corpus, cfg: Config) -> tuple[SplitData, dict]:
    """The training split after ``data.decontaminate`` / ``data.dedupe_pairs``, and the pair counts of each step.
    ConfigError when fewer than 2 pairs are left (mining needs another pair's arguments)."""
    rows, counts = training_frame(corpus.frame, decontaminate_pairs=cfg.data.decontaminate,
                                  dedupe=cfg.data.dedupe_pairs)
    split = build_split(rows, "training")
    if len(split.query_idx) < 2:
        raise ConfigError("data.decontaminate", f"cleaning left {len(split.query_idx)} of the corpus's "
                          f"{counts['corpus']} training pairs ({counts}); expected at least 2: set "
                          "data.decontaminate=false or data.dedupe_pairs=false")
    return split, counts


def _training_pairs(split: SplitData, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Pair numbers used for training: all, or a seeded sample of ``limit`` (sorted)."""
    n = len(split.points_idx)
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _optimizer(model: BiEncoder, train_cfg) -> torch.optim.Optimizer:
    """Adam/AdamW over every trainable parameter: encoders at ``lr``, heads at ``head_lr`` (default ``lr``).

    The fused implementation on CPU and CUDA: one kernel over all tensors instead of a Python loop over ~100 of
    them (one CPU core: 16 ms instead of 120 ms a step for all-MiniLM-L6-v2, ~4 % of a step at batch 8)."""
    encoder_ids = {id(p) for e in model.encoders() for p in e.parameters()}
    encoder_params = [p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids]
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": encoder_params, "lr": train_cfg.lr},
              {"params": head_params, "lr": train_cfg.head_lr or train_cfg.lr}]
    cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return cls([g for g in groups if g["params"]], weight_decay=train_cfg.weight_decay, fused=fused or None)


def _scheduler(optimizer: torch.optim.Optimizer, train_cfg, steps_per_epoch: int):
    """transformers' schedule ``train.scheduler`` over ``train.epochs`` epochs of ``steps_per_epoch`` steps, after a
    linear warmup over ``train.warmup_ratio`` of them (constant = constant after the warmup)."""
    total = max(1, train_cfg.epochs * steps_per_epoch)
    name = "constant_with_warmup" if train_cfg.scheduler == "constant" else train_cfg.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=round(train_cfg.warmup_ratio * total),
                         num_training_steps=total)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _wrap_ddp(model: BiEncoder, runtime: Runtime, gradientless: list[str]):
    """``model`` under DistributedDataParallel when distributed; ``gradientless``: names of the parameters the loss
    never reaches, which DDP leaves out (rather than searching the graph for unused parameters at every step)."""
    if not runtime.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, gradientless)
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def _seed_everything(seed: int, threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def _count(model: torch.nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
