"""The demo on a tiny teacher (trained by `conformer-prune train`, as the README's path to a
teacher of one's own): its stages, its resume, its report, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformer_prune.cli import main
from conformer_prune.demo import DEFAULT_TEACHER, run_demo
from conformer_prune.evaluate import count_params
from conformer_prune.evaluate.report import format_interval
from conformer_prune.model import load_recognizer, save_recognizer

# a few utterances per split: about 70 s to prune on, 6 s of test, 4 s of test-unseen
_TINY = {"hours": 0.022, "unseen_hours": 0.001, "workers": 2}
_PRUNE = ["prune_epochs=1", "finetune_epochs=1", "max_frames=2000", "warmup_steps=2", "precision=fp32"]
_SPLITS = ("test", "test-unseen", "dev")


def _epoch_records(pruned: Path) -> int:
    return sum('"epoch"' in line for line in (pruned / "log.jsonl").read_text().splitlines())


def test_demo_prunes_reports_side_by_side_and_resumes(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, work = tiny_run / "model.pt", tmp_path / "demo"
    record = run_demo(work, teacher=teacher, prune_overrides=_PRUNE, **_TINY)
    out = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in out
    # both models on every split, with its size and the interval of pruned minus teacher
    teacher_eval, pruned_eval = record["teacher_eval"], record["pruned_eval"]
    for name in _SPLITS:
        d = record["pruned_minus_teacher"][name]
        assert d["utterances"] == teacher_eval[f"utterances_{name}"] == pruned_eval[f"utterances_{name}"] > 0
        assert d["words"] >= d["utterances"]
        assert d["low"] <= d["delta"] <= d["high"]
        assert pytest.approx(d["delta"]) == pruned_eval[f"wer_{name}"] - teacher_eval[f"wer_{name}"]
        row = f"  {name:<12} {d['utterances']:>6,} utterances {d['words']:>7,} words   {format_interval(d)}"
        assert row in out
        assert f"  wer_{name} " in out
    # and against the equal-training control: the teacher unpruned, trained for the same steps
    control_eval = record["continued_eval"]
    assert control_eval["params"] == teacher_eval["params"]
    assert _epoch_records(work / "continued") == _epoch_records(work / "pruned-50")
    for name in _SPLITS:
        d = record["pruned_minus_continued"][name]
        assert d["utterances"] == control_eval[f"utterances_{name}"]
        assert pytest.approx(d["delta"]) == pruned_eval[f"wer_{name}"] - control_eval[f"wer_{name}"]
        assert f"{100 * control_eval[f'wer_{name}']:.2f}%   {format_interval(d)}" in out
    for key in ("params", "macs_per_second", "latency_ms_10s"):
        assert f"  {key} " in out
    assert pruned_eval["params"] < teacher_eval["params"]
    assert record["corpus"]["splits"]["test-unseen"]["utterances"] > 0
    assert (work / "pruned-50.onnx").is_file() and (work / "pruned-50.int8.onnx").is_file()
    assert json.loads((work / "demo.json").read_text()) == json.loads(json.dumps(record))

    # a second run reuses every stage: no new pruning epoch, the same figures
    epochs = {stage: _epoch_records(work / stage) for stage in ("pruned-50", "continued")}
    model_mtime = (work / "pruned-50" / "model.pt").stat().st_mtime
    again = run_demo(work, teacher=teacher, prune_overrides=_PRUNE, **_TINY)
    assert {stage: _epoch_records(work / stage) for stage in epochs} == epochs
    assert (work / "pruned-50" / "model.pt").stat().st_mtime == model_mtime
    for key in ("teacher_eval", "pruned_eval", "pruned_minus_teacher", "continued_eval", "export"):
        assert again[key] == record[key]

    # another teacher into the same working directory would mix two demos
    other = tmp_path / "other.pt"
    save_recognizer(other, load_recognizer(teacher), note="another teacher")
    with pytest.raises(ValueError, match="another teacher"):
        run_demo(work, teacher=other, prune_overrides=_PRUNE, **_TINY)


def test_demo_without_its_teacher_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "models" / "teacher.pt"
    assert main(["demo", "--work", str(tmp_path / "demo"), "--teacher", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "benchmarks/models/teacher.pt" in err and "conformer-prune train" in err
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_the_default_teacher_is_the_committed_checkpoint() -> None:
    repo = Path(__file__).resolve().parents[1]
    assert repo / "benchmarks" / "models" / "teacher.pt" == DEFAULT_TEACHER
    rec = load_recognizer(DEFAULT_TEACHER)  # carries its config and tokenizer
    assert count_params(rec.model) > 1_000_000  # the reference teacher, not a test's tiny one
