"""The trainer as written for an accelerator, checked on the CPU: the non-finite check deferred to the epoch's end,
mining and evaluation shared by two gloo processes (the same negatives and ranks as one process, no training row
dropped), and ``train.compile``."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from argbench.config import load_config
from argbench.data.corpus import load_corpus
from argbench.train import trainer
from argbench.train.distributed import setup
from argbench.train.trainer import NonFiniteLoss, Trainer, fit
from tests.conftest import single_torch_thread
from tests.factories import run_torchrun

TINY = ["model.encoder=tiny-random-bert", "model.max_length=64", "train.batch_size=16", "data.max_train_pairs=32",
        "train.device=cpu", "train.precision=fp32"]

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)


def tiny(*overrides: str):
    return load_config(overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sample")


# ------------------------------------------------------------------------------------------------ non-finite loss
def test_a_non_finite_loss_is_raised_at_the_epochs_end_naming_its_first_step_and_the_last_checkpoint_stays(
        corpus, tmp_path, monkeypatch):
    real_loss, calls = trainer.combined_loss, []

    def loss_nan_at_epoch_2_step_2(out, loss_cfg, *masks):  # 3 steps an epoch: call 5 is epoch 2, step 2
        parts = real_loss(out, loss_cfg, *masks)
        calls.append(1)
        if len(calls) == 5:
            parts = {k: v * float("nan") if k in ("triplet", "total") else v for k, v in parts.items()}
        return parts

    monkeypatch.setattr(trainer, "combined_loss", loss_nan_at_epoch_2_step_2)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss nan at epoch 2, step 2 \(components: \{'triplet': nan, "
                                            r".*the checkpoint of epoch 1 is kept"):
        fit(tiny("train.epochs=3", "data.max_train_pairs=48"), corpus, out_dir=run)
    assert len(calls) == 6  # read once, after the epoch's last step
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]


# ------------------------------------------------------------------------------------------------ two processes
SHARED_WORK = """
    import json, os, sys
    from pathlib import Path

    from argbench.config import load_config
    from argbench.data.corpus import load_corpus
    from argbench.train import trainer
    from argbench.train.distributed import setup, teardown

    rows = []
    real_shard = trainer.shard

    def recording_shard(batches, runtime):  # the training rows of this rank
        mine = real_shard(batches, runtime)
        rows.append([int(r) for b in mine for r in b])
        return mine

    trainer.shard = recording_shard
    cfg = load_config(overrides=OVERRIDES)
    corpus = load_corpus("sample")
    runtime = setup("cpu", "fp32", 120)
    loop = trainer.Trainer(cfg, corpus, (), runtime, None, False)
    negatives, _ = loop._mine(1, 0.5)
    evaluation = loop._evaluate("val", corpus.split("validation"))
    loop._train_epoch(1, negatives)
    out = {"negatives": negatives.tolist(), "rows": rows[0], "steps": loop.steps_per_epoch}
    if evaluation is not None:
        out["ranks"] = {t: r.tolist() for t, r in evaluation.ranks.items()}
        out["dedup_ranks"] = {t: r.tolist() for t, r in evaluation.dedup_ranks.items()}
    Path(sys.argv[1], f"rank{runtime.rank}.json").write_text(json.dumps(out))
    teardown(runtime)
"""
# 36 pairs at batch 8: 5 batches (the last of 4 rows) for 2 ranks; mean pooling leaves the pooler without gradient
# (DDP must leave it out); the in-batch term's masks are built on the device.
SHARED_OVERRIDES = [*TINY, "data.max_train_pairs=36", "train.batch_size=8", "train.embed_batch_size=16",
                    "model.pooling=mean", "loss.in_batch_weight=1.0", "train.epochs=1"]


def torchrun_script(tmp_path: Path, script: str, timeout: float) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script).replace("OVERRIDES", repr(SHARED_OVERRIDES)))
    return run_torchrun(path, str(tmp_path), timeout=timeout)


@pytest.mark.slow
def test_two_processes_mine_and_rank_as_one_and_train_every_row(corpus, tmp_path):
    proc = torchrun_script(tmp_path, SHARED_WORK, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    alone = Trainer(load_config(overrides=SHARED_OVERRIDES), corpus, (), setup("cpu", "fp32"), None, False)
    negatives, _ = alone._mine(1, 0.5)
    evaluation = alone._evaluate("val", corpus.split("validation"))
    for shared in ranks:  # every rank trains on the negatives one process mines
        assert shared["negatives"] == negatives.tolist()
    assert ranks[0]["ranks"] == {t: r.tolist() for t, r in evaluation.ranks.items()}
    assert ranks[0]["dedup_ranks"] == {t: r.tolist() for t, r in evaluation.dedup_ranks.items()}
    # 5 batches for 2 ranks: 3 steps each (the odd batch cut in two), and all 36 pairs trained once
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    assert sorted(ranks[0]["rows"] + ranks[1]["rows"]) == list(range(36))


def test_the_pooler_is_found_gradientless_only_when_pooling_does_not_use_it(corpus):
    runtime = setup("cpu", "fp32")
    mean = Trainer(tiny("model.pooling=mean"), corpus, (), runtime, None, False)
    assert mean._gradientless_parameters() == ["point_encoder.pooler.dense.weight", "point_encoder.pooler.dense.bias"]
    state = torch.get_rng_state()
    pooler = Trainer(tiny("model.pooling=pooler"), corpus, (), runtime, None, False)
    assert pooler._gradientless_parameters() == []
    assert torch.equal(torch.get_rng_state(), state)  # the probe leaves the random state as it was
    assert all(p.grad is None for p in pooler.model.parameters())


# ------------------------------------------------------------------------------------------------ compile
def _can_compile() -> bool:
    import torch._dynamo

    return torch._dynamo.is_dynamo_supported() and any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _can_compile(), reason="torch.compile needs dynamo support and a C++ compiler here")
def test_a_compiled_encoder_embeds_as_the_eager_one_and_trains(corpus, tmp_path):
    runtime = setup("cpu", "fp32")
    eager, compiled = (Trainer(tiny(*extra), corpus, (), runtime, None, False)
                       for extra in ([], ["train.compile=true"]))
    rows = np.arange(len(eager.tokens["val"]))
    # no dropout when embedding: the same vectors up to float rounding (not ranks: the tiny random model's vectors
    # lie so close together that rounding alone reorders them)
    assert torch.allclose(compiled._embed(compiled.tokens["val"], rows, "point").pooled,
                          eager._embed(eager.tokens["val"], rows, "point").pooled, atol=1e-5, rtol=0)
    history = fit(tiny("train.epochs=1", "eval.at_start=false", "train.compile=true"), corpus, out_dir=tmp_path / "run")
    reference = fit(tiny("train.epochs=1", "eval.at_start=false"), corpus)
    # training draws its dropout masks from the compiled kernels' own random stream: close, not equal
    assert history[-1]["train/loss"] == pytest.approx(reference[-1]["train/loss"], rel=0.05)
    from safetensors.torch import load_file

    assert not any("_orig_mod" in k for k in load_file(tmp_path / "run" / "checkpoint" / "model.safetensors"))
