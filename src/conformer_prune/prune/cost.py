"""Closed-form parameter and MAC counts of a Conformer-CTC, for dense, gated and pruned models.

The counts are polynomials in the number of kept units per structure, so feeding them expected
counts (sums of gate probabilities, times the probability that the enclosing module and layer are
kept) gives the differentiable expected cost of the L0 budget; feeding them 0/1 mask sums gives
the exact cost of the physically pruned model. Tests check both against ``numel()`` and against
`torch.utils.flop_counter` on the pruned model.

MACs are counted for one utterance of `seconds` of audio (10 s by default: 1001 feature frames,
251 encoder frames) and divided by `seconds`, as `conformer_prune.evaluate.macs_per_second` does.
The self-attention score and context terms grow with the square of the length, so the figure
depends on that reference length. As the flop counter does, only matrix products and convolutions
count (biases, norms, activations and softmax do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from conformer_prune.data.dataset import subsampled_length
from conformer_prune.evaluate.metrics import FRAMES_PER_SECOND
from conformer_prune.model.conformer import ConformerConfig

__all__ = ["Cost", "LayerCounts", "ModelCounts", "conformer_cost", "dense_counts"]

Num = Tensor | float


@dataclass
class LayerCounts:
    """Kept units of one layer (expected values or exact counts).

    `*_module` and `layer` are presence probabilities (0 or 1 once masks are fixed); the widths are
    the kept units given that their module is present.
    """

    layer: Num
    ffn1_module: Num
    ffn1: Num
    attn_module: Num
    heads: Num
    conv_module: Num
    conv: Num
    ffn2_module: Num
    ffn2: Num


@dataclass
class ModelCounts:
    sub1: Num
    sub2: Num
    layers: list[LayerCounts]


@dataclass
class Cost:
    params: Num
    macs_per_second: Num

    def value(self, metric: Literal["params", "macs"]) -> Num:
        """The count a budget on `metric` constrains."""
        return self.params if metric == "params" else self.macs_per_second


def dense_counts(cfg: ConformerConfig) -> ModelCounts:
    """The counts of an unpruned model of config `cfg` (absent modules count 0)."""
    layers = [
        LayerCounts(
            layer=1.0,
            ffn1_module=float(cfg.ffn1[i] > 0),
            ffn1=float(cfg.ffn1[i]),
            attn_module=float(cfg.heads[i] > 0),
            heads=float(cfg.heads[i]),
            conv_module=float(cfg.conv_channels[i] > 0),
            conv=float(cfg.conv_channels[i]),
            ffn2_module=float(cfg.ffn2[i] > 0),
            ffn2=float(cfg.ffn2[i]),
        )
        for i in range(cfg.n_layers)
    ]
    c1, c2 = cfg.subsampling_channels
    return ModelCounts(float(c1), float(c2), layers)


def conformer_cost(cfg: ConformerConfig, counts: ModelCounts, seconds: float = 10.0) -> Cost:
    """Parameters and MACs per second of audio of `cfg` with the given kept units."""
    d, dh, k, v = cfg.d_model, cfg.head_dim, cfg.conv_kernel, cfg.vocab_size + 1
    frames = int(seconds * FRAMES_PER_SECOND) + 1
    t1, f1 = (frames - 1) // 2 + 1, (cfg.n_mels - 1) // 2 + 1  # after the first convolution
    t, f2 = subsampled_length(frames), (f1 - 1) // 2 + 1  # encoder frames, frequency bins
    tp = 2 * t - 1  # relative positions

    c1, c2 = counts.sub1, counts.sub2
    params: Num = 10 * c1 + c2 * (9 * c1 + 1) + c2 * f2 * d + d  # conv1, conv2, out
    macs: Num = 9 * c1 * t1 * f1 + 9 * c1 * c2 * t * f2 + c2 * f2 * d * t
    for lc in counts.layers:
        # feed-forward: LayerNorm (2d), linear1 (d f + f), linear2 (f d + d)
        ffn_p = lc.ffn1_module * (3 * d + lc.ffn1 * (2 * d + 1)) + lc.ffn2_module * (
            3 * d + lc.ffn2 * (2 * d + 1)
        )
        ffn_m = lc.ffn1_module * 2 * d * lc.ffn1 * t + lc.ffn2_module * 2 * d * lc.ffn2 * t
        # attention: LayerNorm, q/k/v (d e + e each), out (e d + d), pos (d e), biases u and v (2 e)
        # with e = heads * head_dim; products q.k, q.p and attn.v per head
        e = lc.heads * dh
        attn_p = lc.attn_module * (3 * d + e * (5 * d + 5))
        attn_m = lc.attn_module * (4 * d * e * t + d * e * tp + e * t * t + e * t * tp + e * t * t)
        # convolution: LayerNorm, pointwise_conv1 (2c d + 2c), depthwise (c k + c), BatchNorm (2c),
        # pointwise_conv2 (c d + d)
        conv_p = lc.conv_module * (3 * d + lc.conv * (3 * d + k + 5))
        conv_m = lc.conv_module * lc.conv * (3 * d + k) * t
        params = params + lc.layer * (2 * d + ffn_p + attn_p + conv_p)  # 2d: the block's norm_out
        macs = macs + lc.layer * (ffn_m + attn_m + conv_m)
    params = params + d * v + v  # CTC head
    macs = macs + d * v * t
    return Cost(params, macs / seconds)


def as_float(x: Num) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
