"""``argbench bench gpu``: its dry run on the CPU end to end, the bf16/fp32 agreement rule, and the command line."""

import json

import pytest

from argbench.bench.gpu import TRAINED_TOLERANCE, agreement, run_gpu_check, summary
from argbench.cli.app import main
from argbench.experiments.run_import import read_run_folder


def _rows(acc_0: float, acc_last: float, loss: float) -> list[dict]:
    return [{"epoch": 0, "val/epa/acc_at_1": acc_0, "val/epa/mrr": acc_0},
            {"epoch": 1, "val/epa/acc_at_1": acc_last, "val/epa/mrr": acc_last, "train/loss": loss}]


def test_agreement_holds_within_the_stated_tolerances_and_names_what_broke():
    fp32 = _rows(0.30, 0.40, 2.0)
    assert agreement(_rows(0.305, 0.42, 2.05), fp32)["agree"]
    broken = agreement(_rows(0.30, 0.40 + TRAINED_TOLERANCE + 0.01, 2.0), fp32)
    assert not broken["agree"]
    assert [c["agree"] for c in broken["checks"]] == [True, False, True]
    assert not agreement(_rows(0.30, 0.40, 2.5), fp32)["agree"]  # the loss moved 25 %
    assert not agreement(_rows(0.33, 0.40, 2.0), fp32)["agree"]  # the untrained model ranks differently


def test_without_cuda_the_gpu_check_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["bench", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--dry-run" in err[0]
    assert main(["bench", "load", "--dry-run"]) == 2  # gpu's options belong to gpu


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])  # 2: both runs under torchrun, as on a machine with several GPUs
def test_the_dry_run_writes_the_report_and_two_importable_run_folders(tmp_path, nproc):
    report = run_gpu_check(out=tmp_path, dry_run=True, nproc=nproc)
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["runs"].keys() == {"bf16", "fp32"} and written["device"] == "cpu (dry run)"
    assert all(run["processes"] == nproc for run in written["runs"].values())
    assert isinstance(written["agreement"]["agree"], bool) and len(written["agreement"]["checks"]) == 3
    throughput = written["throughput"]
    assert throughput["argbench_seq_per_s"] > 0 and throughput["sentence_transformers_seq_per_s"] > 0
    for precision in ("bf16", "fp32"):
        cfg, rows = read_run_folder(tmp_path / precision)  # what `argbench ablation import` reads
        assert cfg.train.precision == precision and [r["epoch"] for r in rows] == [0, 1]
    assert "sequences/s" in summary(report) and str(tmp_path) in summary(report)
