"""Closed-form parameter and MAC counts of a Conformer-CTC, for dense, gated and pruned models.

The counts are polynomials in the number of kept units per structure, each written by the module
that owns the units (`Prunable.size` in `conformer_prune.model.conformer`), so feeding them
expected counts (sums of gate probabilities, with the probability that the enclosing module and
layer are kept) gives the differentiable expected cost of the L0 budget; feeding them 0/1 mask
sums gives the exact cost of the physically pruned model. Tests check both against ``numel()`` and
against `torch.utils.flop_counter` on the pruned model.

MACs are counted for one utterance of `seconds` of audio (10 s by default: 1001 feature frames,
251 encoder frames) and divided by `seconds`, as `conformer_prune.evaluate.macs_per_second` does.
The self-attention score and context terms grow with the square of the length, so the figure
depends on that reference length.

Given a `LatencyModel` (a profile table of one runtime), the cost also carries the predicted
latency, a third metric that a budget can constrain in the same way (``prune --target-latency``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, Num, feature_frames

if TYPE_CHECKING:
    from conformer_prune.prune.latency import LatencyModel

__all__ = ["Cost", "Metric", "as_float", "conformer_cost"]

Metric = Literal["params", "macs", "latency"]


@dataclass
class Cost:
    params: Num
    macs_per_second: Num
    latency_ms: Num | None = None  # predicted, when a latency model was given

    def value(self, metric: Metric) -> Num:
        """The count a budget on `metric` constrains."""
        if metric == "latency":
            if self.latency_ms is None:
                raise ValueError("a latency budget needs a latency table (conformer-prune profile)")
            return self.latency_ms
        return self.params if metric == "params" else self.macs_per_second


def conformer_cost(
    cfg: ConformerConfig,
    kept: Mapping[str, Num] | None = None,
    seconds: float = 10.0,
    latency: LatencyModel | None = None,
) -> Cost:
    """Parameters and MACs per second of audio of `cfg` with `kept` units by gate name (mask sums,
    expected counts or presence probabilities; see `ConformerCTC.named_prunable`), and with a
    `latency` model the predicted latency (ms, at the table's own utterance length). Names that
    are absent count as in `cfg`, so ``conformer_cost(cfg)`` is the dense model's cost."""
    size = ConformerCTC.size(cfg, kept or {}, feature_frames(seconds, cfg.feature_rate))
    predicted = None if latency is None else latency.predict(cfg, kept or {})
    return Cost(size.params, size.macs / seconds, predicted)


def as_float(x: Num) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
