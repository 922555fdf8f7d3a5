"""The size constraint: a Lagrangian that drives the expected sparsity to an exact target.

Following CoFiPruning (Xia et al. 2022, Eq. 6) and Wang et al. 2020 ("Structured Pruning of Large
Language Models", Sec. 3.3): with expected sparsity s = 1 - E[cost] / cost(teacher) and target t,

    L_budget = lambda1 (s - t) + lambda2 (s - t)^2,

minimised in the gates and maximised in the multipliers (gradient ascent, their own optimizer
group), so the multipliers grow until the constraint holds. The target ramps linearly from 0 to
its final value over a warm-up, so the student is not pruned harder than it can follow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Lagrangian", "UnreachableTargetError", "target_sparsity"]


class UnreachableTargetError(ValueError):
    """A method cannot bring the model to the requested size (its message says what it reached)."""


class Lagrangian(nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2 with learned multipliers (both start at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def forward(self, sparsity: Tensor, target: float) -> Tensor:
        gap = sparsity - target
        return self.lambda1 * gap + self.lambda2 * gap * gap


def target_sparsity(step: int, warmup_steps: int, final: float) -> float:
    """The target at `step`: a linear ramp from 0 to `final` over `warmup_steps`."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps)
