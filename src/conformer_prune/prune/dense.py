"""The dense baselines' shape: a uniform Conformer as deep as the teacher, narrower, with a given
parameter count (`scratch` trains it from random weights with CTC, `dense-distill` with the same
layerwise distillation as the method).

Usage:
    cfg = dense_config_like(teacher.config, target_params=0.5 * teacher_params)
"""

from __future__ import annotations

import dataclasses

from conformer_prune.model.conformer import ConformerConfig
from conformer_prune.prune.budget import UnreachableTargetError
from conformer_prune.prune.cost import as_float, conformer_cost

__all__ = ["dense_config_like", "dense_params"]


def dense_params(cfg: ConformerConfig) -> int:
    return int(as_float(conformer_cost(cfg).params))


def _scaled(teacher: ConformerConfig, scale: float, ffn: int | None = None) -> ConformerConfig:
    n = teacher.n_layers

    def width(value: int, least: int = 1) -> int:
        return max(least, round(value * scale))

    return dataclasses.replace(
        teacher,
        d_model=2 * width(teacher.d_model // 2, 2),  # even: sinusoidal position embeddings
        head_dim=width(teacher.head_dim, 2),
        heads=[max(teacher.heads)] * n,
        ffn1=[ffn if ffn is not None else width(max(teacher.ffn1))] * n,
        ffn2=[ffn if ffn is not None else width(max(teacher.ffn2))] * n,
        conv_channels=[width(max(teacher.conv_channels))] * n,
        subsampling_channels=[width(c) for c in teacher.subsampling_channels],
        d_model_unpruned=0,  # a plain model of its own width, even if the teacher's d_model was pruned
        hidden_dims=[],
    )


def dense_config_like(teacher: ConformerConfig, target_params: float) -> ConformerConfig:
    """The teacher's depth and heads with every width scaled by one factor (found by bisection),
    then the feed-forward width set so that the count is at or just under `target_params`.

    Raises:
        UnreachableTargetError: even the narrowest shape is larger than the target.
    """
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if dense_params(_scaled(teacher, mid)) <= target_params:
            lo = mid
        else:
            hi = mid
    cfg = _scaled(teacher, lo)
    if dense_params(cfg) > target_params:
        raise UnreachableTargetError(
            f"no dense shape of the teacher's depth fits in {target_params:,.0f} parameters"
        )
    ffn = cfg.ffn1[0]
    while dense_params(_scaled(teacher, lo, ffn + 1)) <= target_params:  # use the rounding slack
        ffn += 1
    return _scaled(teacher, lo, ffn)
