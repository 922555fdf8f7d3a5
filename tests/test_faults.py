"""Faults through the command line: `train` and `prune` started as the README starts them, killed
with SIGKILL in the middle of an epoch, resumed with the README's resume command, must end with
the model and the log of an uninterrupted run.

Only wall-clock fields are left out of the log comparison: ``train_seconds``,
``elapsed_seconds`` and ``audio_seconds_per_second``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import conformer_prune
from conformer_prune.cli import main
from conformer_prune.data.corpus import read_corpus, write_manifest

WALL_CLOCK = {"train_seconds", "elapsed_seconds", "audio_seconds_per_second"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "conformer_prune.cli", *args]


def _env() -> dict[str, str]:
    """This checkout's package first; as many threads as the in-process runs (conftest)."""
    src = str(Path(conformer_prune.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "2"}


def _kill_in_second_epoch(argv: list[str], state: Path, marker: str, timeout: float = 120.0) -> None:
    """Start `argv` and SIGKILL it inside its second epoch: shortly after the progress bar of
    that epoch (`marker`, e.g. ``epoch 2/2``) appears on stderr, before the epoch's state is
    written."""
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    fd, seen = proc.stderr.fileno(), bytearray()

    def drain() -> None:  # keep the pipe empty, so the process never blocks on its progress bars
        while chunk := os.read(fd, 65536):
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no '{marker}' from {argv}: {seen.decode(errors='replace')[-3000:]}")
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.returncode == -signal.SIGKILL
    # killed inside the second epoch: the state is the first epoch's
    assert torch.load(state, weights_only=True)["epoch"] == 1


def _resume(argv: list[str]) -> None:
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def _log(run: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


def _assert_same_model(a: Path, b: Path) -> None:
    ckpt_a, ckpt_b = (torch.load(p, weights_only=True) for p in (a, b))
    assert ckpt_a["config"] == ckpt_b["config"]
    assert ckpt_a["meta"] == ckpt_b["meta"]
    assert ckpt_a["state_dict"].keys() == ckpt_b["state_dict"].keys()
    for key, value in ckpt_a["state_dict"].items():
        torch.testing.assert_close(ckpt_b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_run(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """`tiny_run` is the uninterrupted run of the same command (conftest)."""
    run = tmp_path / "run"
    corpora = ["--data", str(tiny_corpus / "train"), "--dev", str(tiny_corpus / "dev")]
    start = _cli("train", *corpora, "--out", str(run), "--config", "tiny")
    _kill_in_second_epoch(start, run / "train_state.pt", "epoch 2/2")
    assert len(_log(run)) == 1
    _resume(_cli("train", *corpora, "--out", str(run), "--resume"))  # the run's own config.yaml
    assert _log(run) == _log(tiny_run)
    _assert_same_model(run / "model.pt", tiny_run / "model.pt")


def test_prune_killed_mid_epoch_resumes_to_the_uninterrupted_run(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path
) -> None:
    # parts of the tiny corpus as manifests, to keep the three runs short
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    write_manifest(train, read_corpus(tiny_corpus / "train")[:10])
    write_manifest(dev, read_corpus(tiny_corpus / "dev")[:3])

    def argv(out: Path) -> list[str]:
        return [
            "prune",
            "--teacher",
            str(tiny_run / "model.pt"),
            "--data",
            str(train),
            "--dev",
            str(dev),
            "--target-params",
            "0.5",
            "--out",
            str(out),
            "--set",
            "prune_epochs=2",
            "finetune_epochs=1",
            "device=cpu",
        ]

    whole, run = tmp_path / "whole", tmp_path / "run"
    assert main(argv(whole)) == 0
    _kill_in_second_epoch(_cli(*argv(run)), run / "prune_state.pt", "prune 2/3")
    _resume(_cli(*argv(run), "--resume"))
    log = _log(run)
    assert [r.get("epoch") for r in log] == [1, 2, None, 3]  # None: the masks are frozen
    assert log == _log(whole)
    _assert_same_model(run / "model.pt", whole / "model.pt")


@pytest.mark.parametrize("command", [[], ["train"], ["prune"]])
def test_help_in_a_fresh_process(command: list[str]) -> None:
    done = subprocess.run(_cli(*command, "--help"), env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr
    assert done.stdout.startswith("usage: conformer-prune")
