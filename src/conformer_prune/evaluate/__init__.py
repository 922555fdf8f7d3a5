"""Measurements: error rates, parameters, MACs, latency."""

from conformer_prune.evaluate.metrics import (
    count_params,
    cpu_latency_ms,
    error_rates,
    macs_per_second,
    paired_bootstrap_wer,
)
from conformer_prune.evaluate.run import cost_report, evaluate_recognizer, recognize_dataset

__all__ = [
    "cost_report",
    "count_params",
    "cpu_latency_ms",
    "error_rates",
    "evaluate_recognizer",
    "macs_per_second",
    "paired_bootstrap_wer",
    "recognize_dataset",
]
