"""One-shot structured magnitude pruning: the `magnitude` and `magnitude-distill` baselines.

Every head, feed-forward neuron, convolution channel, front-end channel and model dimension is
scored by the L1 norm of all the weights that belong to it (the rows it writes and the columns it
reads); every gate then keeps the same fraction of its units, its best by score, with the fraction
chosen by bisection so that the exact cost of the pruned model is at or just under the target. Whole
modules are kept. Because a common fraction rounds differently in gates of different widths, the
remaining gap to the target is filled with the best-scoring removed units (relative to their gate's
mean score) that still fit, as the learned masks are in `ConformerGates.deterministic_masks`.

Usage:
    masks = magnitude_masks(gates, target=0.5 * teacher_params, metric="params")
    gates.freeze(masks)        # then fine-tune, and physically prune
"""

from __future__ import annotations

import torch
from torch import Tensor

from conformer_prune.model.conformer import HIDDEN, ConformerCTC
from conformer_prune.prune.cost import Metric
from conformer_prune.prune.gates import ConformerGates

__all__ = ["magnitude_masks", "unit_scores"]


def unit_scores(model: ConformerCTC) -> dict[str, Tensor]:
    """L1 norm of each prunable unit's weights (`Prunable.unit_scores`), keyed like the unit gates
    of `ConformerGates`."""
    with torch.no_grad():
        scores = {
            f"{name}.{group}": score
            for name, module in model.named_prunable()
            for group, score in module.unit_scores().items()
        }
    return {k: v.detach().float().cpu() for k, v in scores.items()}


def magnitude_masks(gates: ConformerGates, target: float, metric: Metric = "params") -> dict[str, Tensor]:
    """0/1 masks for every gate: the same kept fraction of units everywhere (at least one per
    gate), best first by L1 score, at or just under `target` (an absolute count)."""
    all_scores = unit_scores(gates.model)
    if HIDDEN in gates.slots:
        all_scores[HIDDEN] = gates.model.hidden_scores().detach().float().cpu()
    # masks live on the gates' device (CPU here, CUDA when the student is there), like learned ones
    fixed = {name: gate.fixed.clone() if gate.frozen else torch.ones_like(gate.fixed) for name, gate in gates}
    pruned = {name: s for name, s in all_scores.items() if name in fixed and gates.slots[name].learned}
    order = {name: torch.argsort(s, descending=True) for name, s in pruned.items()}

    def masks_at(fraction: float) -> dict[str, Tensor]:
        masks = {k: v.clone() for k, v in fixed.items()}
        for name, idx in order.items():
            keep = max(1, round(fraction * idx.numel()))
            masks[name] = torch.zeros_like(fixed[name])
            masks[name][idx[:keep].to(fixed[name].device)] = 1.0
        return masks

    def cost(masks: dict[str, Tensor]) -> float:
        return float(gates.mask_cost(masks).value(metric))

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(masks_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    masks = masks_at(lo)
    # fill the rounding gap with the strongest removed units that still fit
    ranked = sorted(
        (
            (float(pruned[name][j] / pruned[name].mean().clamp_min(1e-12)), name, j)
            for name in pruned
            for j in range(pruned[name].numel())
            if masks[name][j] == 0
        ),
        reverse=True,
    )
    for _, name, j in ranked:
        masks[name][j] = 1.0
        if cost(masks) > target:
            masks[name][j] = 0.0
    return masks
