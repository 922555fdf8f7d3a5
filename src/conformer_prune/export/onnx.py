"""ONNX export of a recognizer, its verification against PyTorch, and int8 quantization.

Usage:
    conformer-prune export runs/pruned-50/model.pt --onnx pruned.onnx [--int8] [--data corpus/test]

The graph maps waveforms (B, N) and their lengths to CTC log-probabilities (B, T', V) and output
lengths, with the log-mel front end inside (the `LogMelFeatures` that training and evaluation use,
its spectrum as matrix products, `MatmulDFTLogMel`, or on request as an ONNX STFT), so that ONNX
Runtime alone can transcribe audio; `frontend=False` exports
features (B, T, n_mels) to log-probabilities instead. Batch and time axes are dynamic. The file's
metadata carries the tokenizer, the model and feature config, the sparsity against the teacher and
the versions. Export uses PyTorch's `torch.export`-based exporter (`dynamo=True`).
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from conformer_prune import __version__
from conformer_prune.config import to_dict
from conformer_prune.data.features import MatmulDFTLogMel
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.model.checkpoint import Recognizer
from conformer_prune.utils import atomic_write, atomic_write_bytes

__all__ = [
    "CALIBRATED_MODES",
    "INT8_DEFAULTS",
    "INT8_MODES",
    "INT8_MODULES",
    "INT8_OP_TYPES",
    "ExportCheck",
    "Int8Mode",
    "check_int8_choices",
    "export_onnx",
    "exported_proto",
    "int8_nodes",
    "onnx_metadata",
    "quantize_int8",
    "verify_onnx",
]

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


def _graph(rec: Recognizer, frontend: bool, matmul_frontend: bool = False) -> nn.Module:
    """The module that `export_onnx` exports: `rec` itself, or with `matmul_frontend` its front
    end's STFT as matrix products (`MatmulDFTLogMel`; ONNX Runtime's STFT costs 3x PyTorch's FFT)."""
    if not frontend:
        return rec.model.eval().cpu()
    features = MatmulDFTLogMel(rec.features.config) if matmul_frontend else None
    return _WaveformGraph(rec, features).eval().cpu()


class _ExactFeatures(nn.Module):
    """A front end computed in float64 and returned as float32: the features both float32 front
    ends approximate (on 10 s of noise, PyTorch's float32 STFT lands up to 1.1e-4 from them and
    the matrix products 5e-5; tests/test_export.py)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(features).double().eval()

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, out_lengths = self.inner(waveforms.double(), lengths)
        return feats.float(), out_lengths


def _reference(rec: Recognizer, frontend: bool) -> nn.Module:
    """What the export must agree with: `rec` as PyTorch runs it, its front end computed exactly
    (`_ExactFeatures`), so that the check measures the exported graph's error and not the sum of
    two float32 front ends' errors."""
    if not frontend:
        return rec.model.eval().cpu()
    return _WaveformGraph(rec, _ExactFeatures(rec.features)).eval().cpu()


def _example(rec: Recognizer, frontend: bool, seconds: float, batch: int = 2) -> tuple[Tensor, Tensor]:
    """A padded example batch whose second item is shorter than the first."""
    gen = torch.Generator().manual_seed(0)
    if frontend:
        n = int(seconds * rec.features.config.sample_rate)
        x = 0.1 * torch.randn(batch, n, generator=gen)
    else:
        n = int(seconds * rec.model.config.feature_rate)
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
    matmul_frontend: bool = True,
) -> Path:
    """Export `rec` to `path` (written atomically) with dynamic batch and time axes.

    `matmul_frontend` (the default) writes the front end's spectrum as matrix products
    (`MatmulDFTLogMel`): 5x faster than the ONNX STFT in ONNX Runtime (4.3 against 21.4 ms for
    10 s, 2 threads; benchmarks/latency.py) and closer to the exact spectrum; False exports
    `torch.stft` as an ONNX STFT."""

    path = Path(path)
    graph = _graph(rec, frontend, matmul_frontend)
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


Int8Mode = Literal["dynamic", "static", "hybrid"]
INT8_MODES: tuple[Int8Mode, ...] = ("dynamic", "static", "hybrid")
CALIBRATED_MODES = ("static", "hybrid")  # the modes that need calibration inputs
INT8_OP_TYPES = ("MatMul", "Gemm", "Conv")
INT8_MODULES = ("subsampling", "feed_forward", "attention", "convolution", "head")
# What each mode quantizes unless told otherwise, chosen by latency and WER on the pruned model
# (benchmarks/int8.py, docs/benchmark.md): dynamic int8 convolutions (ConvInteger) run slower than
# fp32, so dynamic keeps to the Linear layers; static gains most from the convolutions (the
# subsampling's above all): 1.36-1.53x over fp32 at 2 threads in two runs on shared cores, against
# 1.1x for its Linear layers alone; test WER +0.6 and +1.5 points on 40.0 (335 words, both 95%
# intervals include 0). On a quiet machine with the reference 50% model (20.7% WER, 1,863 test
# utterances): static 1.11x against 0.98x for its Linear layers alone, dynamic 1.15x, every
# variant within 0.2 WER points. With a later 50% model (14.6% WER), hybrid (the convolutions
# static, the Linear layers dynamic) was fastest: 1.28x at 1 thread and 1.12x at 2, +0.16 points.
INT8_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dynamic": (("MatMul", "Gemm"), INT8_MODULES),
    "static": (("MatMul", "Gemm", "Conv"), INT8_MODULES),
    "hybrid": (("MatMul", "Gemm", "Conv"), INT8_MODULES),
}


def _module_of(node: Any) -> str | None:
    """Which part of the recognizer an exported node belongs to (one of `INT8_MODULES`,
    "frontend", or None), from the module path the exporter records on it."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if scopes is None:
        return None
    parts = set(".".join(ast.literal_eval(scopes)).split("."))
    if "features" in parts:
        return "frontend"
    if "pre_encode" in parts:  # before "conv": the subsampling holds a `conv` Sequential
        return "subsampling"
    for name, module in (
        ("feed_forward1", "feed_forward"),
        ("feed_forward2", "feed_forward"),
        ("self_attn", "attention"),
        ("conv", "convolution"),
        ("decoder", "head"),
    ):
        if name in parts:
            return module
    return None


def check_int8_choices(op_types: Sequence[str], modules: Sequence[str]) -> None:
    """Raise ValueError unless `op_types` and `modules` are non-empty subsets of `INT8_OP_TYPES`
    and `INT8_MODULES`."""
    if not op_types or set(op_types) - set(INT8_OP_TYPES):
        raise ValueError(f"int8 op types must be some of {list(INT8_OP_TYPES)}, found {list(op_types)}")
    if not modules or set(modules) - set(INT8_MODULES):
        raise ValueError(f"int8 modules must be some of {list(INT8_MODULES)}, found {list(modules)}")


def int8_nodes(model: Any, op_types: Sequence[str], modules: Sequence[str]) -> list[str]:
    """Names of the nodes of an exported ModelProto that int8 quantization touches: those of
    `op_types` inside `modules`. The front end is never among them: one int8 scale cannot hold a
    power spectrum that spans ten orders of magnitude before its log.

    Raises:
        ValueError: an unknown op type or module, or no node to quantize.
    """
    check_int8_choices(op_types, modules)
    nodes = [n.name for n in model.graph.node if n.op_type in op_types and _module_of(n) in modules]
    if not nodes:
        raise ValueError(
            f"no {'/'.join(op_types)} node in the modules {list(modules)} of this graph; expected a "
            "file written by `conformer-prune export` that has such layers"
        )
    return nodes


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    mode: Int8Mode = "dynamic",
    op_types: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> Path:
    """Quantize an exported graph to int8 with ONNX Runtime; the front end stays fp32.

    Args:
        src: the fp32 file from `export_onnx`.
        dst: the int8 file (written atomically).
        mode: "dynamic" (int8 weights, activations quantized at run time, `quantize_dynamic`),
            "static" (weights and activations in QDQ form with activation ranges calibrated on
            `calibration`, `quantize_static`, per-channel weights), or "hybrid": the chosen
            convolutions static and the chosen matrix products dynamic (ONNX Runtime's fastest
            kernel of each: QLinearConv and DynamicQuantizeMatMul).
        op_types: which operators to quantize (of `INT8_OP_TYPES`); Linear layers export as
            MatMul (Gemm when 2-D), the convolution module's and the subsampling's convolutions
            as Conv. None: the mode's default (`INT8_DEFAULTS`).
        modules: which parts of the model to quantize (of `INT8_MODULES`); None: the mode's
            default. Static mode also quantizes the activation products of chosen attention.
        calibration: static and hybrid only: graph inputs (`{"waveforms" or "features": (1, N...),
            "lengths": (1,)}`), typically a few dozen real utterances.

    Weights are quantized to 7 bits (ONNX Runtime's ``reduce_range``): on x86 CPUs without VNNI
    (AVX2 alone, e.g. AMD Zen 3, or AVX-512 before Cascade Lake), ONNX Runtime's u8 x s8 kernel
    (VPMADDUBSW) saturates with full 8-bit weights. There, without it, the dynamic int8 tiny model
    agreed with fp32 on 67% of its frames (tests/test_export.py asks 95%); a model is deployed on
    CPUs its exporter does not know, so every export takes the range that is right on all of them.

    Raises:
        ValueError: an unknown mode, op type or module, no node to quantize, or static or hybrid
            without calibration inputs.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {list(INT8_MODES)}, found {mode!r}")
    if mode in CALIBRATED_MODES and not calibration:
        raise ValueError(f"{mode} int8 needs calibration inputs (a few real utterances), found none")
    op_types = INT8_DEFAULTS[mode][0] if op_types is None else op_types
    modules = INT8_DEFAULTS[mode][1] if modules is None else modules
    model = onnx.load(str(src), load_external_data=False)
    nodes = int8_nodes(model, op_types, modules)
    op_of = {n.name: n.op_type for n in model.graph.node}
    # hybrid: the convolutions static, the matrix products dynamic
    static_nodes = {"static": nodes, "dynamic": [], "hybrid": [n for n in nodes if op_of[n] == "Conv"]}[mode]
    dynamic_nodes = [n for n in nodes if n not in static_nodes]

    class Calibration(CalibrationDataReader):
        """Feeds the calibrator one prepared input dict at a time."""

        def __init__(self, inputs: list[dict[str, np.ndarray]]) -> None:
            self._inputs = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._inputs, None)

    def static(tmp: str) -> None:
        quantize_static(
            str(src),
            tmp,
            Calibration(list(calibration or [])),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=sorted({op_of[n] for n in static_nodes}),
            nodes_to_quantize=static_nodes,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            reduce_range=True,
        )

    def dynamic(source: str, tmp: str) -> None:
        quantize_dynamic(
            source,
            tmp,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            op_types_to_quantize=sorted({op_of[n] for n in dynamic_nodes}),
            nodes_to_quantize=dynamic_nodes,
        )

    dst = Path(dst)
    if not static_nodes:
        atomic_write(dst, lambda tmp: dynamic(str(src), tmp))
    elif not dynamic_nodes:
        atomic_write(dst, static)
    else:  # the static pass first, calibrated on the fp32 graph, then the dynamic one on its output
        with tempfile.TemporaryDirectory() as work:
            staged = str(Path(work) / "static.onnx")
            static(staged)
            atomic_write(dst, lambda tmp: dynamic(staged, tmp))
    return dst
