"""Hard-concrete gates (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through
L0 Regularization", Sec. 4), with CoFiPruning's and DPHuBERT's constants: temperature 2/3,
stretch to (-0.1, 1.1).

A gate vector z in [0, 1]^n is sampled in training as

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = clamp(s (r - l) + l, 0, 1)

and P(z_i != 0) = sigmoid(log_alpha_i - beta log(-l / r)) in closed form (their Eq. 12), which is
what the expected-cost budget differentiates. Sampling draws from a generator the caller seeds per
step, so every data-parallel rank applies the same masks at the same step.

In eval mode a gate returns a fixed mask: ``fixed`` once `freeze` has been called, else the
deterministic top-k of log_alpha with k = round(expected number of non-zeros), its kept units at 1,
or, for a `soft` gate, at their expected value E[z] (what training applied on average; CoFiPruning
and DPHuBERT also keep soft values for the kept units in eval and fold them into the weights when
they slice, with the approximation sigmoid(0.8 log_alpha / beta) of E[z]; we integrate E[z]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LOG_ALPHA_RANGE", "HardConcrete"]

BETA = 2.0 / 3.0
LEFT = -0.1
RIGHT = 1.1
_EPS = 1e-6
_QUADRATURE = 4096
# CoFiPruning's `L0Module.constrain_parameters`, called after every optimizer step, clamps log_alpha
# to [log(1e-2), log(1e2)]: a gate can always come back within a few steps (P(z > 0) stays in
# [0.002, 0.998])
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))


class HardConcrete(nn.Module):
    """`n` hard-concrete gates.

    Args:
        n: number of gates (heads, neurons, channels, or 1 for a whole module).
        init_log_alpha: initial log_alpha; large values start the gates open (CoFiPruning uses
            10 for module and head gates, a little noise keeps ties apart).
        init_std: standard deviation of the initial noise on log_alpha.
    """

    def __init__(self, n: int, init_log_alpha: float = 3.0, init_std: float = 0.01) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a gate needs at least one unit, found n = {n}")
        self.n = n
        self.log_alpha = nn.Parameter(torch.full((n,), init_log_alpha) + init_std * torch.randn(n))
        self.fixed: Tensor
        self.is_frozen: Tensor
        self.register_buffer("fixed", torch.ones(n))  # buffers, so a checkpoint keeps the fixed mask
        self.register_buffer("is_frozen", torch.tensor(False))
        self.generator: torch.Generator | None = None
        self.soft = False

    @property
    def frozen(self) -> bool:
        return bool(self.is_frozen)

    def prob_nonzero(self) -> Tensor:
        """P(z_i > 0) for each gate, differentiable in log_alpha. Shape (n,)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LEFT / RIGHT))

    def expected_nonzero(self) -> Tensor:
        return self.prob_nonzero().sum()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp log_alpha to `LOG_ALPHA_RANGE` (a frozen gate is left alone)."""
        if not self.frozen:
            self.log_alpha.clamp_(*LOG_ALPHA_RANGE)

    def sample(self) -> Tensor:
        u = torch.rand(self.n, generator=self.generator).clamp(_EPS, 1 - _EPS).to(self.log_alpha.device)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)

    def expected_value(self) -> Tensor:
        """E[z_i] per gate: the mean of the clamped stretched sample over u ~ U(0, 1), by the
        midpoint rule on `_QUADRATURE` points (no closed form; within 1e-4). Shape (n,)."""
        u = (torch.arange(_QUADRATURE, device=self.log_alpha.device) + 0.5) / _QUADRATURE
        logistic = torch.log(u) - torch.log1p(-u)  # (Q,)
        s = torch.sigmoid((logistic[None, :] + self.log_alpha.detach()[:, None]) / BETA)  # (n, Q)
        return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0).mean(dim=1)

    def deterministic(self) -> Tensor:
        """Binary mask keeping the round(E[#non-zero]) gates with the largest log_alpha."""
        k = int(torch.round(self.expected_nonzero()).item())
        mask = torch.zeros(self.n, device=self.log_alpha.device)
        if k > 0:
            mask[torch.topk(self.log_alpha.detach(), k).indices] = 1.0
        return mask

    def freeze(self, mask: Tensor) -> None:
        """Fix the mask (0/1 values) for fine-tuning and physical pruning."""
        if mask.shape != (self.n,):
            raise ValueError(f"mask must have shape ({self.n},), found {tuple(mask.shape)}")
        self.fixed.copy_(mask)
        self.is_frozen.fill_(True)
        self.log_alpha.requires_grad_(False)

    def forward(self) -> Tensor:
        if self.frozen:
            return self.fixed
        if self.training:
            return self.sample()
        mask = self.deterministic()
        return mask * self.expected_value() if self.soft else mask

    def extra_repr(self) -> str:
        return f"n={self.n}, frozen={self.frozen}, soft={self.soft}"
