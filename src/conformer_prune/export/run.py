"""The `conformer-prune export` job: export, verify, optionally quantize, and measure WER.

Usage:
    report = export_with_report(Path("model.pt"), Path("model.onnx"), int8=True, data=Path("corpus/test"))
    report = export_with_report(
        Path("model.pt"), Path("model.onnx"), int8="static", calibration=Path("corpus/train")
    )
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import Utterance, read_corpus
from conformer_prune.evaluate.metrics import count_params, error_rates, interleaved_medians_ms
from conformer_prune.export.onnx import (
    CALIBRATED_MODES,
    INT8_DEFAULTS,
    Int8Mode,
    check_int8_choices,
    export_onnx,
    quantize_int8,
    verify_onnx,
)
from conformer_prune.export.runtime import OnnxRecognizer
from conformer_prune.model.checkpoint import Recognizer, load_recognizer
from conformer_prune.model.conformer import FEATURE_FRAMES_PER_SECOND

__all__ = ["calibration_inputs", "export_with_report", "int8_path", "onnx_error_rates", "onnx_latency_ms"]

BATCH = 8
CALIBRATION_UTTERANCES = 32


def int8_path(path: Path) -> Path:
    """`model.onnx` -> `model.int8.onnx`."""
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


def calibration_inputs(
    rec: Recognizer, utts: list[Utterance], frontend: bool = True, count: int = CALIBRATION_UTTERANCES
) -> list[dict[str, np.ndarray]]:
    """Graph inputs for static int8 calibration: the first `count` utterances of `utts`, one per
    batch (as deployed), as waveforms or, for a graph without front end, as `rec`'s features.

    Raises:
        ValueError: no utterances.
    """
    if not utts:
        raise ValueError("static int8 calibration needs utterances, found an empty corpus")
    sr = rec.features.config.sample_rate
    inputs: list[dict[str, np.ndarray]] = []
    for utt in utts[:count]:
        wave = load_audio(utt.audio_path, sr)[None, :].astype(np.float32)  # (1, N)
        lengths = np.array([wave.shape[1]], dtype=np.int64)
        if frontend:
            inputs.append({"waveforms": wave, "lengths": lengths})
            continue
        with torch.no_grad():
            feats, feat_lengths = rec.features.eval()(torch.from_numpy(wave), torch.from_numpy(lengths))
        inputs.append({"features": feats.numpy(), "lengths": feat_lengths.numpy()})
    return inputs


def _batches(utts: list[Utterance], sample_rate: int) -> list[tuple[list[str], list[np.ndarray]]]:
    ordered = sorted(utts, key=lambda u: u.duration)
    out = []
    for i in range(0, len(ordered), BATCH):
        chunk = ordered[i : i + BATCH]
        out.append(([u.text for u in chunk], [load_audio(u.audio_path, sample_rate) for u in chunk]))
    return out


def _error_rates(
    transcribe: Callable[[list[np.ndarray]], list[str]], utts: list[Utterance], sample_rate: int
) -> dict[str, float]:
    refs, hyps = [], []
    for texts, audio in _batches(utts, sample_rate):
        refs += texts
        hyps += transcribe(audio)
    return error_rates(refs, hyps)


def onnx_error_rates(rec: OnnxRecognizer, utts: list[Utterance]) -> dict[str, float]:
    """WER and CER of an ONNX model (with its front end) on a corpus, batches of 8."""
    return _error_rates(rec.transcribe, utts, rec.sample_rate)


def onnx_latency_ms(
    paths: dict[str, Path], threads: int | None, seconds: float = 10.0, rounds: int = 5
) -> dict[str, float]:
    """Median latency (ms) of each ONNX file on one `seconds`-long input (audio or features),
    measured in alternation so that a noisy machine slows them alike."""
    recs = {name: OnnxRecognizer(path, threads=threads) for name, path in paths.items()}
    gen = np.random.default_rng(0)
    inputs = {}
    for name, rec in recs.items():
        if rec.input == "waveforms":
            inputs[name] = [0.1 * gen.standard_normal(int(seconds * rec.sample_rate)).astype(np.float32)]
        else:
            n_mels = int(rec.config["model"]["n_mels"])
            # exports from before the model recorded its feature rate had a 10 ms hop
            rate = float(rec.config["model"].get("feature_rate", FEATURE_FRAMES_PER_SECOND))
            frames = int(seconds * rate)
            inputs[name] = [gen.standard_normal((frames, n_mels)).astype(np.float32)]
    runs = {name: functools.partial(rec.log_probs, inputs[name]) for name, rec in recs.items()}
    return interleaved_medians_ms(runs, rounds)


def export_with_report(
    model: Path,
    onnx_path: Path,
    frontend: bool = True,
    int8: bool | Int8Mode = False,
    data: Path | None = None,
    threads: int | None = 2,
    teacher: Path | None = None,
    int8_ops: Sequence[str] | None = None,
    int8_modules: Sequence[str] | None = None,
    calibration: Path | None = None,
    calibration_utterances: int = CALIBRATION_UTTERANCES,
    matmul_frontend: bool = True,
) -> dict[str, Any]:
    """Export `model`, check ONNX Runtime against PyTorch (random inputs, and the first 8
    utterances of `data`), quantize when asked, and report WER of each runtime on `data` and the
    latency of each ONNX file on a 10 s input with `threads` threads.

    Args:
        int8: False, or the quantization mode ("dynamic", "static", "hybrid"; True means
            "dynamic").
        int8_ops, int8_modules: what to quantize (None: the mode's default, see `quantize_int8`).
        calibration: a corpus whose first `calibration_utterances` calibrate static or hybrid int8.
        matmul_frontend: the front end's spectrum as matrix products (False: an ONNX STFT).

    Raises:
        ValueError: the export differs from PyTorch by more than 1e-4 (the file is kept for
            inspection) or the inputs are unusable.
    """
    mode: Int8Mode | None = "dynamic" if int8 is True else (int8 or None)
    if mode is not None:
        int8_ops = INT8_DEFAULTS[mode][0] if int8_ops is None else int8_ops
        int8_modules = INT8_DEFAULTS[mode][1] if int8_modules is None else int8_modules
        check_int8_choices(int8_ops, int8_modules)
    if mode in CALIBRATED_MODES and calibration is None:
        raise ValueError(f"{mode} int8 needs a calibration corpus, found none")
    rec = load_recognizer(model)
    teacher_params = count_params(load_recognizer(teacher).model) if teacher else None
    utts = read_corpus(data) if data else []
    start = time.perf_counter()
    export_onnx(
        rec, onnx_path, frontend=frontend, teacher_params=teacher_params, matmul_frontend=matmul_frontend
    )
    report: dict[str, Any] = {
        "model": str(model),
        "onnx": str(onnx_path),
        "input": "waveforms" if frontend else "features",
        "frontend_spectrum": ("matrix products" if matmul_frontend else "ONNX STFT") if frontend else None,
        "export_seconds": round(time.perf_counter() - start, 1),
    }
    sr = rec.features.config.sample_rate
    real = [load_audio(u.audio_path, sr) for u in utts[:BATCH]] or None
    check = verify_onnx(rec, onnx_path, real, threads=threads)
    report["max_abs_diff"] = check.max_abs_diff
    if not check.passed():
        raise ValueError(
            f"ONNX Runtime output of {onnx_path} differs from PyTorch: max abs diff "
            f"{check.max_abs_diff}, lengths equal {check.lengths_equal}; expected at most 1e-4"
        )
    if utts and frontend:
        report["wer_torch"] = _error_rates(rec.transcribe, utts, sr)["wer"]
        report["wer_ort_fp32"] = onnx_error_rates(OnnxRecognizer(onnx_path, threads), utts)["wer"]
    if mode is not None:
        inputs = (
            calibration_inputs(rec, read_corpus(calibration), frontend, calibration_utterances)
            if mode in CALIBRATED_MODES and calibration is not None
            else None
        )
        q_path = quantize_int8(onnx_path, int8_path(onnx_path), mode, int8_ops, int8_modules, inputs)
        report |= {"onnx_int8": str(q_path), "int8_mode": mode, "int8_ops": list(int8_ops or [])}
        report["int8_modules"] = list(int8_modules or [])
        if utts and frontend:
            wer = onnx_error_rates(OnnxRecognizer(q_path, threads), utts)["wer"]
            report["wer_ort_int8"] = wer
            base = report["wer_ort_fp32"]
            report["int8_wer_change_relative"] = (wer - base) / base if base else None
    files = {"ort_fp32": onnx_path} | ({"ort_int8": Path(report["onnx_int8"])} if mode else {})
    latency = onnx_latency_ms(files, threads)
    report |= {f"latency_ms_10s_{name}": ms for name, ms in latency.items()}
    report["threads"] = threads
    return report
