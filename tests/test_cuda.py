"""The engine on a CUDA device, which CPU-only CI cannot check: skipped without one.

On a GPU machine: `pytest tests/test_cuda.py` (set `CONFORMER_PRUNE_TINY_CORPUS` to a tiny corpus
made elsewhere where the speech synthesizers are missing, see `tests/conftest.py`). Training and
pruning run under the recipes' bf16 autocast; what they write must load and agree on the CPU.
CUDA kernels are not bit-reproducible (CTC's backward adds with atomics), so resuming is checked
for finishing with the same steps and close weights, not for equal ones as on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.model import load_recognizer
from tests.conftest import interrupt_within_epoch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = ["device=cuda", "precision=bf16"]


def _train_argv(corpus: Path, out: Path) -> list[str]:
    return [
        "train",
        *("--data", str(corpus / "train"), "--dev", str(corpus / "dev"), "--out", str(out)),
        *("--config", "tiny", "--set", *CUDA),
    ]


def _prune_argv(corpus: Path, teacher: Path, out: Path, *settings: str) -> list[str]:
    return [
        "prune",
        *("--teacher", str(teacher), "--data", str(corpus / "train"), "--dev", str(corpus / "dev")),
        *("--test", str(corpus / "test"), "--target-params", "0.5", "--out", str(out)),
        *("--set", "prune_epochs=2", "finetune_epochs=1", "max_frames=2000", *CUDA, *settings),
    ]


@pytest.fixture(scope="module")
def cuda_teacher(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cuda-teacher")
    assert main(_train_argv(tiny_corpus, out)) == 0
    return out


def test_training_on_cuda_in_bf16_writes_a_model_the_cpu_reads(cuda_teacher: Path) -> None:
    log = [json.loads(line) for line in (cuda_teacher / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["precision"] == "bf16" for r in log)
    assert all(torch.isfinite(torch.tensor(r["ctc"])) for r in log)
    rec = load_recognizer(cuda_teacher / "model.pt")  # on the CPU by default
    assert all(p.device.type == "cpu" for p in rec.model.parameters())


def test_pruning_on_cuda_meets_the_target_and_its_model_agrees_with_the_cpu(
    tiny_corpus: Path, cuda_teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    assert main(_prune_argv(tiny_corpus, cuda_teacher / "model.pt", out)) == 0
    report = json.loads((out / "eval.json").read_text())
    teacher, pruned = report["teacher"], report["pruned"]
    assert abs(pruned["params"] / (0.5 * teacher["params"]) - 1) <= 0.01
    assert 0 <= pruned["wer_test"] < float("inf")
    cpu = load_recognizer(out / "model.pt").model.eval()
    gpu = load_recognizer(out / "model.pt", device="cuda").model.eval()
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}
    feats = torch.randn(2, 300, cpu.config.n_mels)
    lengths = torch.tensor([300, 211])
    with torch.no_grad():
        y_cpu, l_cpu = cpu(feats, lengths)
        y_gpu, l_gpu = gpu(feats.cuda(), lengths.cuda())
    assert torch.equal(l_cpu, l_gpu.cpu())
    for i, n in enumerate(l_cpu.tolist()):  # fp32 on both: only the kernels' summation orders differ
        torch.testing.assert_close(y_gpu[i, :n].cpu(), y_cpu[i, :n], rtol=1e-3, atol=1e-3)


def test_an_interrupted_pruning_run_on_cuda_resumes_where_it_stopped(
    tiny_corpus: Path, cuda_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = _prune_argv(tiny_corpus, cuda_teacher / "model.pt", tmp_path / "a", "checkpoint_minutes=1e-9")
    interrupt_within_epoch(monkeypatch, epoch=2, steps=1)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    state = torch.load(tmp_path / "a" / "prune_state.pt", weights_only=True)  # written on the GPU
    assert state["epoch"] == 2 and state["partial"]["progress"]["steps"] == 1
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2, 3]
    assert (tmp_path / "a" / "model.pt").exists()


def test_torchrun_trains_with_nccl_on_one_gpu(tiny_corpus: Path, tmp_path: Path) -> None:
    """One process under torchrun: the NCCL group, DistributedDataParallel on the device, rank 0's
    checkpoint. (Two processes need two GPUs: NCCL refuses two ranks on one device.)"""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += ["-m", "conformer_prune.cli", *_train_argv(tiny_corpus, out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert load_recognizer(out / "model.pt").model is not None
