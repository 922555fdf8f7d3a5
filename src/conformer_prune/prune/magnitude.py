"""One-shot structured magnitude pruning: the `magnitude` and `magnitude-distill` baselines.

Every head, feed-forward neuron, convolution channel and front-end channel is scored by the L1 norm
of all the weights that belong to it (the rows it writes and the columns it reads); every gate then
keeps the same fraction of its units, its best by score, with the fraction chosen by bisection so
that the exact cost of the pruned model is at or just under the target. Whole modules are kept.
Because a common fraction rounds differently in gates of different widths, the remaining gap to
the target is filled with the best-scoring removed units (relative to their gate's mean score)
that still fit, as the learned masks are in `ConformerGates.deterministic_masks`.

Usage:
    masks = magnitude_masks(gates, target=0.5 * teacher_params, metric="params")
    gates.freeze(masks)        # then fine-tune, and physically prune
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from conformer_prune.model.conformer import (
    ConformerBlock,
    ConformerCTC,
    ConvolutionModule,
    FeedForward,
    RelPositionMultiHeadAttention,
)
from conformer_prune.prune.gates import ConformerGates

__all__ = ["magnitude_masks", "unit_scores"]


def _heads(attn: RelPositionMultiHeadAttention) -> Tensor:
    h, d = attn.heads, attn.head_dim
    rows = sum(
        lin.weight.abs().view(h, d, -1).sum((1, 2))
        for lin in (attn.linear_q, attn.linear_k, attn.linear_v, attn.linear_pos)
    )
    biases = sum(lin.bias.abs().view(h, d).sum(1) for lin in (attn.linear_q, attn.linear_k, attn.linear_v))
    out = attn.linear_out.weight.abs().view(-1, h, d).sum((0, 2))
    pos = attn.pos_bias_u.abs().sum(1) + attn.pos_bias_v.abs().sum(1)
    return rows + biases + out + pos


def _neurons(ffn: FeedForward) -> Tensor:
    return ffn.linear1.weight.abs().sum(1) + ffn.linear1.bias.abs() + ffn.linear2.weight.abs().sum(0)


def _channels(conv: ConvolutionModule) -> Tensor:
    c = conv.pointwise_conv2.in_channels
    pw1 = conv.pointwise_conv1.weight.abs().sum((1, 2))
    if conv.pointwise_conv1.bias is not None:
        pw1 = pw1 + conv.pointwise_conv1.bias.abs()
    glu = pw1[:c] + pw1[c:]  # a channel is a GLU pair of pointwise_conv1 outputs
    return glu + conv.depthwise_conv.weight.abs().sum((1, 2)) + conv.pointwise_conv2.weight.abs().sum((0, 2))


def unit_scores(model: ConformerCTC) -> dict[str, Tensor]:
    """L1 norm of each prunable unit's weights, keyed like the unit gates of `ConformerGates`."""
    scores: dict[str, Tensor] = {}
    with torch.no_grad():
        pre = model.encoder.pre_encode
        conv0, conv1 = pre.conv[0], pre.conv[2]
        assert isinstance(conv0, nn.Conv2d) and isinstance(conv1, nn.Conv2d)
        c2 = conv1.out_channels
        out_columns = pre.out.weight.abs().view(-1, c2, pre.out.in_features // c2).sum((0, 2))
        scores["frontend.0"] = conv0.weight.abs().sum((1, 2, 3)) + conv1.weight.abs().sum((0, 2, 3))
        scores["frontend.1"] = conv1.weight.abs().sum((1, 2, 3)) + out_columns
        for i, block in enumerate(model.encoder.layers):
            assert isinstance(block, ConformerBlock)
            if block.self_attn is not None:
                scores[f"layers.{i}.attn.units"] = _heads(block.self_attn)
            if block.feed_forward1 is not None:
                scores[f"layers.{i}.ffn1.units"] = _neurons(block.feed_forward1)
            if block.conv is not None:
                scores[f"layers.{i}.conv.units"] = _channels(block.conv)
            if block.feed_forward2 is not None:
                scores[f"layers.{i}.ffn2.units"] = _neurons(block.feed_forward2)
    return {k: v.detach().float().cpu() for k, v in scores.items()}


def magnitude_masks(
    gates: ConformerGates, target: float, metric: Literal["params", "macs"] = "params"
) -> dict[str, Tensor]:
    """0/1 masks for every gate: the same kept fraction of units everywhere (at least one per
    gate), best first by L1 score, at or just under `target` (an absolute count)."""
    all_scores = unit_scores(gates.model)
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
        c = gates.mask_cost(masks)
        return float(c.params if metric == "params" else c.macs_per_second)

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
