from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.model import load_recognizer
from conformer_prune.train import loop


def test_end_to_end_tiny_run(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.perf_counter()
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(r["ctc"] > 0 and r["audio_seconds_per_second"] > 0 for r in log)
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        str(tiny_run / "model.pt"),
        "--data",
        str(tiny_corpus / "dev"),
        str(tiny_corpus / "test"),
        "--json",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads(out.read_text())
    for key in (
        "wer_dev",
        "wer_test",
        "cer_test",
        "params",
        "macs_per_second",
        "latency_ms_10s",
        "rtf",
    ):
        assert key in results
    assert results["cer_test"] >= 0 and results["params"] == sum(
        p.numel() for p in load_recognizer(tiny_run / "model.pt").model.parameters()
    )
    assert (tmp_path / "recogs-test.txt").exists()
    flac = next((tiny_corpus / "test").glob("*/*/*.flac"))
    assert main(["transcribe", str(tiny_run / "model.pt"), str(flac)]) == 0
    assert str(flac) in capsys.readouterr().out
    assert time.perf_counter() - start < 120


def test_resume_matches_an_uninterrupted_run(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_epoch = loop.train_one_epoch
    calls = []

    def interrupted_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the machine stopped during the second epoch
        return real_epoch(*args, **kwargs)

    argv = [
        "train",
        "--data",
        str(tiny_corpus / "train"),
        "--dev",
        str(tiny_corpus / "dev"),
        "--config",
        "tiny",
        "--out",
        str(tmp_path / "run"),
    ]
    monkeypatch.setattr(loop, "train_one_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    assert main([*argv, "--resume"]) == 0
    full = torch.load(tiny_run / "train_state.pt", weights_only=True)
    resumed = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 2
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)


def test_existing_run_needs_resume(
    tiny_corpus: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--data",
        str(tiny_corpus / "train"),
        "--dev",
        str(tiny_corpus / "dev"),
        "--out",
        str(tiny_run),
        "--config",
        "tiny",
    ]
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_cli_error(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--data",
        str(tiny_corpus / "train"),
        "--dev",
        str(tiny_corpus / "dev"),
        "--out",
        str(tmp_path / "r"),
        "--config",
        "tiny",
        "--set",
        "optim.learning_rate=1",
    ]
    assert main(args) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
