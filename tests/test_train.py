from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conformer_prune.cli import main
from conformer_prune.data.dataset import Batch
from conformer_prune.evaluate import run as evaluate_run
from conformer_prune.evaluate.metrics import macs_per_second
from conformer_prune.model import build_model, load_recognizer
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.train import loop
from conformer_prune.train.config import InterCTCConfig
from tests.conftest import hetero_config, interrupt_within_epoch, log_without_wall_clock


def _tiny_epoch(corpus: Path, out: Path, *overrides: str) -> list[str]:
    """`train` arguments for one epoch of the `tiny` recipe on `corpus` with `overrides`."""
    data = ["--data", str(corpus / "train"), "--dev", str(corpus / "dev")]
    return ["train", *data, "--config", "tiny", "--out", str(out), "--set", "epochs=1", *overrides]


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


def test_cost_report_without_latency_times_nothing(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def timed(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("timed although the cores are shared")

    monkeypatch.setattr(evaluate_run, "cpu_latency_ms", timed)
    rec = load_recognizer(tiny_run / "model.pt")
    report = evaluate_run.cost_report(rec, latency=False)
    assert report["params"] == sum(p.numel() for p in rec.model.parameters())
    assert not {"latency_ms_10s", "rtf"} & set(report)


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


def test_resume_within_an_epoch_matches_an_uninterrupted_run(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state written within an epoch (every step here) resumes to the uninterrupted run's
    weights and log: the batches already trained on are skipped, and dropout and SpecAugment
    continue from their generators' states."""

    def argv(out: Path) -> list[str]:
        data = ["--data", str(tiny_corpus / "train"), "--dev", str(tiny_corpus / "dev")]
        knobs = ["model.dropout=0.1", "max_frames=2000", "checkpoint_minutes=1e-9"]
        return ["train", *data, "--config", "tiny", "--out", str(out), "--set", *knobs]

    assert main(argv(tmp_path / "straight")) == 0
    interrupt_within_epoch(monkeypatch, epoch=1, steps=1)
    with pytest.raises(KeyboardInterrupt):
        main(argv(tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["progress"]["steps"] == 1
    monkeypatch.undo()
    assert main(["train", *argv(tmp_path / "run")[1:5], "--out", str(tmp_path / "run"), "--resume"]) == 0
    straight = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    resumed = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2 and "partial" not in resumed
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    assert log_without_wall_clock(tmp_path / "run") == log_without_wall_clock(tmp_path / "straight")


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


def test_speed_perturbation_reaches_the_training_loop(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """`speeds` makes each epoch read every utterance once per factor: its audio adds up to the
    plain epoch's over each factor."""
    out = tmp_path / "run"
    assert main(_tiny_epoch(tiny_corpus, out, "speeds=[0.9,1.1]")) == 0
    plain = json.loads((tiny_run / "log.jsonl").read_text().splitlines()[0])
    perturbed = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    ratio = perturbed["audio_seconds"] / plain["audio_seconds"]
    assert ratio == pytest.approx(1 / 0.9 + 1 / 1.1, rel=0.002)  # not 2: each copy resampled


def test_a_front_end_with_another_hop_counts_audio_and_macs_at_its_own_rate(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """An 8 ms hop (125 feature frames per second): the model records the rate, the log's audio
    seconds are the audio's own, and MACs per second of audio and the closed-form cost use 10 s at
    125 frames per second (a model counted at 100 frames per second would show 8 s of audio)."""
    out = tmp_path / "run"
    assert main(_tiny_epoch(tiny_corpus, out, "features.hop_length=128")) == 0
    plain = json.loads((tiny_run / "log.jsonl").read_text().splitlines()[0])
    fine = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    # the same audio; the frame counts differ by at most one frame per utterance
    assert fine["audio_seconds"] == pytest.approx(plain["audio_seconds"], rel=0.01)
    model = load_recognizer(out / "model.pt").model
    assert model.config.feature_rate == 125.0
    assert model.config.frames_per_second == 125.0 / model.config.subsampling_factor
    macs = macs_per_second(model)
    assert as_float(conformer_cost(model.config).macs_per_second) == pytest.approx(macs, rel=1e-9)
    at_10_ms = macs_per_second(build_model(dataclasses.replace(model.config, feature_rate=100.0)))
    # 10 s gives 1,251 frames at 8 ms against 1,001: linear parts grow with the encoder frames,
    # attention's scores with their square
    frames = model.config.encoder_frames(1251) / model.config.encoder_frames(1001)
    assert frames < macs / at_10_ms < frames**2


def test_intermediate_ctc_adds_the_ctc_head_on_earlier_blocks(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loss is (1 - sum w) CTC(last block) + sum w_k CTC(block k) through the same head,
    computed here from a plain forward and a hook; training logs both parts; bad settings are
    refused by name."""
    torch.manual_seed(0)
    cfg = hetero_config()
    model = build_model(cfg).eval()
    lengths = torch.tensor([61, 50, 40])
    batch = Batch(
        torch.randn(3, 61, cfg.n_mels),
        lengths,
        torch.randint(0, cfg.vocab_size, (3, 4)),
        torch.tensor([4, 3, 2]),
        torch.arange(3),
    )
    seen: list[torch.Tensor] = []
    hook = model.encoder.layers[0].register_forward_hook(lambda m, i, out: seen.append(out))

    def reference(log_probs: torch.Tensor, lengths: torch.Tensor) -> float:
        args = (batch.targets, lengths, batch.target_lengths)
        return float(F.ctc_loss(log_probs.transpose(0, 1), *args, blank=model.blank, zero_infinity=True))

    with torch.no_grad():
        log_probs, lengths = model(batch.feats, batch.feat_lengths)
        hook.remove()
        plain, parts = loop.ctc_loss(model, batch)
        assert float(plain) == pytest.approx(reference(log_probs, lengths))
        assert set(parts) == {"ctc"}
        first = reference(model.log_probs(seen[0]), lengths)
        loss, parts = loop.ctc_loss(model, batch, InterCTCConfig(layers=[1], weights=[0.3]))
    assert float(loss) == pytest.approx(0.7 * float(plain) + 0.3 * first, rel=1e-6)
    assert parts == pytest.approx({"ctc": float(plain), "inter_ctc": first}, rel=1e-6)
    assert first != pytest.approx(float(plain), rel=1e-3)  # another block's output

    out = tmp_path / "run"
    assert main(_tiny_epoch(tiny_corpus, out, "inter_ctc.layers=[1]", "inter_ctc.weights=[0.3]")) == 0
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert logged["inter_ctc"] > 0 and logged["ctc"] > 0
    capsys.readouterr()
    for bad, message in [
        (["inter_ctc.layers=[2]", "inter_ctc.weights=[0.3]"], "inter_ctc.layers must be blocks 1 to 1"),
        (["inter_ctc.layers=[1]", "inter_ctc.weights=[1.0]"], "sum below 1"),
        (["inter_ctc.layers=[1]", "inter_ctc.weights=[]"], "one weight per layer"),
    ]:
        assert main(_tiny_epoch(tiny_corpus, tmp_path / "bad", *bad)) == 2
        assert message in capsys.readouterr().err


INTEL_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD_MILAN = "processor\t: 0\nflags\t\t: fpu sse2 fma avx2 sha_ni vaes\n"
ARM_V9 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_bf16_runs_in_fp32_on_a_cpu_that_only_emulates_it(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = torch.device("cpu")
    assert loop.native_bf16(cpu, INTEL_SPR) and loop.native_bf16(cpu, ARM_V9)
    assert not loop.native_bf16(cpu, AMD_MILAN)
    assert loop.resolve_precision("bf16", cpu, INTEL_SPR) == "bf16"
    assert capsys.readouterr().out == ""
    assert loop.resolve_precision("bf16", cpu, AMD_MILAN) == "fp32"
    assert "bf16 asked, fp32 used" in capsys.readouterr().out
    assert loop.resolve_precision("fp32", cpu, INTEL_SPR) == "fp32"


def test_a_run_reuses_the_memory_it_frees() -> None:
    """After `keep_freed_memory` (which every run calls), glibc serves a 64 MB block from its heap
    and keeps it there when freed, where before it mapped the block on its own and unmapped it on
    free (so the next step's block was mapped and zeroed afresh). Read from glibc's own counters
    (`mallinfo2`), in a new process, as the setting holds for the rest of the process."""
    import subprocess
    import sys

    script = """
import ctypes, torch
from conformer_prune.utils import keep_freed_memory
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
try:
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
except (OSError, AttributeError):
    raise SystemExit(0)  # prints nothing: no glibc 2.33 or later
mallinfo2.restype = Info
def mapped_alone():  # the bytes malloc mapped on their own for a live 64 MB tensor
    x = torch.ones(16 * 2**20)
    alive = mallinfo2().hblkhd
    del x
    return alive - mallinfo2().hblkhd
print(mapped_alone(), keep_freed_memory(), mapped_alone(), mallinfo2().arena)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    fields = out.stdout.split()
    if len(fields) != 4 or fields[1] != "True":
        pytest.skip("not glibc's malloc (2.33 or later)")
    before, after, heap = int(fields[0]), int(fields[2]), int(fields[3])
    block = 16 * 2**20 * 4
    assert before >= block  # mapped on its own, and unmapped when freed
    assert after == 0  # from the heap
    assert heap >= block  # which keeps it once freed


def test_a_run_of_padded_batches_keeps_every_lengths_compiled_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Padded batches meet few lengths, so their CPU kernels are worth keeping: the run raises
    oneDNN's cache unless the user set it; unpadded batches leave oneDNN's default alone."""
    from conformer_prune.train.loop import PADDED_KERNEL_CACHE, start_run

    key = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
    environ = {k: v for k, v in os.environ.items() if k != key}
    monkeypatch.setattr(os, "environ", environ)  # this process's own stays as it is
    threads = torch.get_num_threads()
    start_run(threads, 0)
    assert key not in environ
    start_run(threads, 0, pad_frames_to=64)
    assert environ[key] == str(PADDED_KERNEL_CACHE)
    environ[key] = "100"
    start_run(threads, 0, pad_frames_to=64)
    assert environ[key] == "100"
