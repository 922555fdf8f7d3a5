"""Deployment: ONNX export with verification, int8 quantization, and the ONNX Runtime recognizer.

`conformer_prune.export.runtime` imports no PyTorch; names are imported lazily (PEP 562) so that
importing it does not pull in the PyTorch side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conformer_prune.lazy import lazy_getattr

if TYPE_CHECKING:
    from conformer_prune.export.onnx import (
        ExportCheck,
        export_onnx,
        onnx_metadata,
        quantize_int8,
        verify_onnx,
    )
    from conformer_prune.export.run import (
        export_with_report,
        int8_path,
        onnx_error_rates,
        onnx_latency_ms,
    )
    from conformer_prune.export.runtime import OnnxRecognizer
    from conformer_prune.export.sherpa import export_sherpa, export_sherpa_with_report

_HOME = {
    "ExportCheck": "onnx",
    "export_onnx": "onnx",
    "onnx_metadata": "onnx",
    "quantize_int8": "onnx",
    "verify_onnx": "onnx",
    "export_with_report": "run",
    "int8_path": "run",
    "onnx_error_rates": "run",
    "onnx_latency_ms": "run",
    "OnnxRecognizer": "runtime",
    "export_sherpa": "sherpa",
    "export_sherpa_with_report": "sherpa",
}

__all__ = [
    "ExportCheck",
    "OnnxRecognizer",
    "export_onnx",
    "export_sherpa",
    "export_sherpa_with_report",
    "export_with_report",
    "int8_path",
    "onnx_error_rates",
    "onnx_latency_ms",
    "onnx_metadata",
    "quantize_int8",
    "verify_onnx",
]


__getattr__ = lazy_getattr(__name__, _HOME)
