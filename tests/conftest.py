"""Shared fixtures: a tiny synthetic corpus and a tiny trained run, built once per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conformer_prune.model import ConformerConfig
from conformer_prune.train.loop import RunDir

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About a minute and a half of synthetic speech in LibriSpeech layout (train/dev/test).

    On a machine without the speech synthesizers (a GPU machine whose image we cannot install
    into), `CONFORMER_PRUNE_TINY_CORPUS` names this corpus synthesised elsewhere by the same call."""
    from conformer_prune.data.synth import synthesize

    out = tmp_path_factory.mktemp("corpus")
    if made := os.environ.get("CONFORMER_PRUNE_TINY_CORPUS"):
        shutil.copytree(made, out, dirs_exist_ok=True)
        return out
    synthesize(out, 0.025, seed=1, dev_fraction=0.2, test_fraction=0.2, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for two epochs with the `tiny` recipe; returns its run directory."""
    from conformer_prune.cli import main

    out = tmp_path_factory.mktemp("run")
    argv = [
        "train",
        "--data",
        str(tiny_corpus / "train"),
        "--dev",
        str(tiny_corpus / "dev"),
        "--out",
        str(out),
        "--config",
        "tiny",
    ]
    assert main(argv) == 0
    return out


def write_recogs(path: Path, pairs: list[tuple[str, str]]) -> None:
    """A recogs-NAME.txt as `evaluate_recognizer` writes it: (reference, hypothesis) per utterance,
    with LibriSpeech-style ids (speaker 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# run_id test"]
    for i, (ref, hyp) in enumerate(pairs):
        lines += [f"1-1-{i:04d}\tref={ref}", f"1-1-{i:04d}\thyp={hyp}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def hetero_config(**overrides: object) -> ConformerConfig:
    """A small config with different sizes in every layer and absent modules."""
    fields: dict[str, object] = dict(
        n_mels=80,
        vocab_size=20,
        d_model=32,
        n_layers=3,
        head_dim=8,
        heads=[4, 0, 1],
        ffn1=[64, 16, 0],
        ffn2=[0, 32, 8],
        conv_channels=[32, 8, 0],
        conv_kernel=7,
        subsampling_channels=[8, 6],
        dropout=0.0,
        dropout_att=0.0,
    )
    fields.update(overrides)
    return ConformerConfig.create(**fields)


@torch.no_grad()
def assert_same_real_frames(
    a: torch.nn.Module, b: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor, atol: float = 1e-4
) -> None:
    """Two models give the same output lengths, and outputs within `atol` on real frames."""
    ya, la = a(feats, lengths)
    yb, lb = b(feats, lengths)
    assert torch.equal(la, lb)
    for i, n in enumerate(la.tolist()):
        assert (ya[i, :n] - yb[i, :n]).abs().max() <= atol


# what a run's log records of wall-clock time, which a resumed run cannot reproduce
WALL_CLOCK = frozenset({"train_seconds", "elapsed_seconds", "audio_seconds_per_second"})


def log_without_wall_clock(run: Path) -> list[dict[str, Any]]:
    """A run directory's log.jsonl records, without their wall-clock times."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


def interrupt_within_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, steps: int) -> None:
    """Stop the run (KeyboardInterrupt) just after it writes the state of `steps` steps into
    epoch `epoch` (from 0), as if the machine stopped there."""
    real_save = RunDir.save_state

    def save_then_stop(self: RunDir, cfg: Any, done: int, *args: Any, **kwargs: Any) -> None:
        real_save(self, cfg, done, *args, **kwargs)
        partial = kwargs.get("partial")
        if done == epoch and partial is not None and partial["progress"]["steps"] == steps:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_state", save_then_stop)


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path, Path]:
    """For the benchmarks' run bookkeeping (`benchmarks/common.py`): its run cache and records in
    `tmp_path`; the reference pruning config, a teacher file and a corpus record."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import common

    from conformer_prune.config import load_config, recipe_path
    from conformer_prune.prune.config import PruneConfig

    monkeypatch.setattr(common, "RUNS", tmp_path / "cache" / "runs")
    monkeypatch.setattr(common, "RUN_RECORDS", tmp_path / "results" / "runs")
    teacher, corpus = tmp_path / "teacher.pt", tmp_path / "corpus"
    teacher.write_bytes(b"weights")
    corpus.mkdir()
    (corpus / "corpus.json").write_text("{}")
    return load_config(PruneConfig, recipe_path("prune")), teacher, corpus
