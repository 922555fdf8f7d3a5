"""ONNX export of a recognizer, its verification against PyTorch, and int8 quantization.

Usage:
    conformer-prune export runs/pruned-50/model.pt --onnx pruned.onnx [--int8] [--data corpus/test]

The graph maps waveforms (B, N) and their lengths to CTC log-probabilities (B, T', V) and output
lengths, with the log-mel front end inside (the `LogMelFeatures` that training and evaluation use,
its STFT written as a strided convolution: `ConvDFTLogMel`), so that ONNX Runtime alone can
transcribe audio; `frontend=False` exports
features (B, T, n_mels) to log-probabilities instead. Batch and time axes are dynamic. The file's
metadata carries the tokenizer, the model and feature config, the sparsity against the teacher and
the versions. Export uses PyTorch's `torch.export`-based exporter (`dynamo=True`).
"""

from __future__ import annotations

import base64
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from conformer_prune import __version__
from conformer_prune.config import to_dict
from conformer_prune.data.features import ConvDFTLogMel
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.model.checkpoint import Recognizer
from conformer_prune.model.conformer import FEATURE_FRAMES_PER_SECOND
from conformer_prune.utils import atomic_write, atomic_write_bytes

__all__ = ["ExportCheck", "export_onnx", "exported_proto", "onnx_metadata", "quantize_int8", "verify_onnx"]

OPSET = 18


class _WaveformGraph(nn.Module):
    """Front end and model in one graph: waveforms (B, N), lengths -> log_probs, lengths.

    Args:
        rec: the recognizer.
        features: its front end as the graph computes it (default `rec.features`).
    """

    def __init__(self, rec: Recognizer, features: nn.Module | None = None) -> None:
        super().__init__()
        self.features = rec.features if features is None else features
        self.model = rec.model

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, feat_lengths = self.features(waveforms, lengths)
        return self.model(feats, feat_lengths)


def _graph(rec: Recognizer, frontend: bool) -> nn.Module:
    """The module that `export_onnx` exports: the front end's STFT becomes a strided convolution
    (`ConvDFTLogMel`; ONNX Runtime's STFT costs 3x PyTorch's FFT), the rest is `rec` itself."""
    if not frontend:
        return rec.model.eval().cpu()
    return _WaveformGraph(rec, ConvDFTLogMel(rec.features.config)).eval().cpu()


def _reference(rec: Recognizer, frontend: bool) -> nn.Module:
    """What the export must agree with: `rec` as PyTorch runs it (its own `LogMelFeatures`)."""
    return (_WaveformGraph(rec) if frontend else rec.model).eval().cpu()


def _example(rec: Recognizer, frontend: bool, seconds: float, batch: int = 2) -> tuple[Tensor, Tensor]:
    """A padded example batch whose second item is shorter than the first."""
    gen = torch.Generator().manual_seed(0)
    if frontend:
        n = int(seconds * rec.features.config.sample_rate)
        x = 0.1 * torch.randn(batch, n, generator=gen)
    else:
        n = int(seconds * FEATURE_FRAMES_PER_SECOND)
        x = torch.randn(batch, n, rec.model.config.n_mels, generator=gen)
    lengths = torch.tensor([n] + [n * 2 // 3] * (batch - 1))
    return x, lengths


def onnx_metadata(rec: Recognizer, frontend: bool, teacher_params: int | None = None) -> dict[str, str]:
    """String metadata stored in the ONNX file (read back by `OnnxRecognizer`)."""
    tok = rec.tokenizer
    params = count_params(rec.model)
    teacher_params = teacher_params or rec.meta.get("teacher_params")
    meta = {
        "producer": "conformer-prune",
        "conformer_prune_version": __version__,
        "torch_version": torch.__version__,
        "input": "waveforms" if frontend else "features",
        "sample_rate": str(rec.features.config.sample_rate),
        "blank": str(rec.model.blank),
        "vocabulary": json.dumps(tok.pieces),
        "tokenizer": base64.b64encode(tok.to_bytes()).decode("ascii"),
        "config": json.dumps({"model": to_dict(rec.model.config), "features": to_dict(rec.features.config)}),
        "params": str(params),
    }
    if teacher_params:
        meta["teacher_params"] = str(int(teacher_params))
        meta["sparsity"] = f"{1.0 - params / int(teacher_params):.6f}"
    return meta


def exported_proto(
    graph: torch.nn.Module,
    example: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
    metadata: dict[str, str],
) -> Any:
    """`graph` exported by PyTorch's `torch.export`-based exporter (opset `OPSET`) as a checked
    ONNX ModelProto carrying `metadata`."""
    import onnx

    # the exporter logs one line per torchvision operator it cannot register; we need none
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    rec: Recognizer,
    path: str | Path,
    frontend: bool = True,
    teacher_params: int | None = None,
    example_seconds: float = 3.0,
) -> Path:
    """Export `rec` to `path` (written atomically) with dynamic batch and time axes."""

    path = Path(path)
    graph = _graph(rec, frontend)
    example = _example(rec, frontend, example_seconds)
    name = "waveforms" if frontend else "features"
    # the time axis must allow at least one output frame after subsampling (by up to 16)
    min_time = 1600 if frontend else 16
    dims = (
        {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("time", min=min_time)},
        {0: torch.export.Dim("batch", min=1, max=1024)},
    )
    proto = exported_proto(
        graph,
        example,
        [name, "lengths"],
        ["log_probs", "out_lengths"],
        dims,
        onnx_metadata(rec, frontend, teacher_params),
    )
    atomic_write_bytes(path, proto.SerializeToString())
    return path


@dataclass
class ExportCheck:
    """Largest absolute difference of log-probabilities (real frames only) between ONNX Runtime
    and PyTorch, per kind of input, and whether the output lengths agree."""

    max_abs_diff: dict[str, float]
    lengths_equal: bool

    def passed(self, tol: float = 1e-4) -> bool:
        # every difference is compared on its own: max() would skip a NaN that is not first, and
        # a NaN difference (an output that is NaN) is a failure
        return self.lengths_equal and all(d <= tol for d in self.max_abs_diff.values())


def verify_onnx(
    rec: Recognizer, path: str | Path, real: list[np.ndarray] | None = None, threads: int | None = None
) -> ExportCheck:
    """Compare ONNX Runtime with PyTorch on random batches (several lengths, with padding) and,
    when given, on real waveforms (batched together)."""
    from conformer_prune.export.runtime import OnnxRecognizer

    ort_rec = OnnxRecognizer(path, threads=threads)
    frontend = ort_rec.input == "waveforms"
    graph = _reference(rec, frontend)
    cases: dict[str, tuple[Tensor, Tensor]] = {
        "random_b1": _example(rec, frontend, 1.3, batch=1),
        "random_b3": _example(rec, frontend, 2.1, batch=3),
    }
    if real:
        if frontend:
            tensors = [torch.as_tensor(w, dtype=torch.float32) for w in real]
        else:
            waves = [torch.as_tensor(w, dtype=torch.float32) for w in real]
            lengths = torch.tensor([w.numel() for w in waves])
            padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
            with torch.no_grad():
                feats, feat_lengths = rec.features.eval()(padded, lengths)
            tensors = [f[:n] for f, n in zip(feats, feat_lengths.tolist(), strict=True)]
        cases["real"] = (
            torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True),
            torch.tensor([t.shape[0] for t in tensors]),
        )
    diffs, lengths_equal = {}, True
    for name, (x, lengths) in cases.items():
        with torch.no_grad():
            ref, ref_lengths = graph(x, lengths)
        items = [x[i, : int(n)].numpy() for i, n in enumerate(lengths)]
        out, out_lengths = ort_rec.log_probs(items)
        lengths_equal &= bool(np.array_equal(out_lengths, ref_lengths.numpy()))
        real_frames = np.arange(ref.shape[1])[None, :] < ref_lengths.numpy()[:, None]
        diffs[name] = float(np.abs(out - ref.numpy())[real_frames].max())
    return ExportCheck(diffs, lengths_equal)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights of every MatMul/Gemm (the Linear layers),
    activations quantized at run time; convolutions and the front end stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    atomic_write(
        dst,
        lambda tmp: quantize_dynamic(
            str(src), tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        ),
    )
    return dst
