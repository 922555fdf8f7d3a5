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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, Num, feature_frames

__all__ = ["Cost", "Metric", "as_float", "conformer_cost"]

Metric = Literal["params", "macs"]


@dataclass
class Cost:
    params: Num
    macs_per_second: Num

    def value(self, metric: Metric) -> Num:
        """The count a budget on `metric` constrains."""
        return self.params if metric == "params" else self.macs_per_second


def conformer_cost(
    cfg: ConformerConfig, kept: Mapping[str, Num] | None = None, seconds: float = 10.0
) -> Cost:
    """Parameters and MACs per second of audio of `cfg` with `kept` units by gate name (mask sums,
    expected counts or presence probabilities; see `ConformerCTC.named_prunable`). Names that are
    absent count as in `cfg`, so ``conformer_cost(cfg)`` is the dense model's cost."""
    size = ConformerCTC.size(cfg, kept or {}, feature_frames(seconds))
    return Cost(size.params, size.macs / seconds)


def as_float(x: Num) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
