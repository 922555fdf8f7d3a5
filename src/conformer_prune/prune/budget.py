"""The size constraint: a Lagrangian that drives the expected sparsity to an exact target.

Following CoFiPruning (Xia et al. 2022, Eq. 6) and Wang et al. 2020 ("Structured Pruning of Large
Language Models", Sec. 3.3): with expected sparsity s = 1 - E[cost] / cost(teacher) and target t,

    L_budget = lambda1 (s - t) + lambda2 (s - t)^2,

minimised in the gates and maximised in the multipliers (gradient ascent, their own optimizer
group), so the multipliers grow until the constraint holds. The target ramps linearly from 0 to
its final value over a warm-up, so the student is not pruned harder than it can follow, and the
constraint applies during the pruning stage only: afterwards the masks are fixed (`Budget`).

Short stages. With Adam, both multipliers move by about their learning rate per step whatever the
gradient's size, so at the step where the expected sparsity first passes a target it lagged behind,
lambda1 and lambda2 are about equal, and the gates only turn back once the gap reaches
|lambda1| / (2 lambda2), about 0.5: a one-epoch stage of 100 steps (Conformer-S, the budget alone)
overshoots a 50% target to 12% kept, whatever the multipliers' learning rate. Raising lambda2's
rate relative to lambda1's turns the gates back sooner. Adam also moves each log_alpha by at most
about its learning rate per step, so a gate starting at 3 needs some 60 steps at 0.05 to close: when
the task loss holds the gates open, a short stage lags its target and then catches up in a rush (the
demo's 174 steps: 3% expected sparsity against a 21% target after its first epoch, 35% against 49%
after its second). The multipliers are bound the same way: the demo's lambda1 ended at -9.0 after
174 steps at 0.05, Adam's limit, so a task loss that holds the gates open harder outgrows them (the
distillation defaults: expected sparsity 0.38 on average over the demo's second pruning epoch,
whose target averages 0.49). `Budget.for_stage` therefore, for a stage shorter than
`reference_steps`, scales the gates' and the multipliers' learning rates and the quadratic
multiplier by reference / steps (so gates and multipliers can travel as far as in the reference
stage, and lambda2 still grows that much faster than lambda1) and lengthens the ramp, and leaves
longer stages exactly as before (measured in `tests/test_prune.py`).

Ceilings. A run may also cap other metrics (``target_params: 0.5, max_latency: 0.6``: half the
parameters, at most 60% of the teacher's latency). Each ceiling is an inequality, s_m >= t_m, with
multipliers of its own on the gap min(0, s_m - t_m): the term and its gradients are zero while the
ceiling holds, and grow like the target's while it is exceeded. Its t_m ramps with the target, so
that the two constraints tighten together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Budget", "Lagrangian", "UnreachableTargetError", "expected_sparsity", "target_sparsity"]


class UnreachableTargetError(ValueError):
    """A method cannot bring the model to the requested size (its message says what it reached)."""


class Lagrangian(nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2 with learned multipliers (both start at 0).

    Args:
        quadratic_scale: lambda2 is `quadratic_scale` times its parameter, so that under Adam it
            moves that many times faster than lambda1 (see `Budget.for_stage`).
    """

    def __init__(self, quadratic_scale: float = 1.0, ceilings: Iterable[str] = ()) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))
        self.quadratic_scale = quadratic_scale
        # one pair of multipliers per ceiling, by metric (none: the state of a run without them)
        self.ceilings = nn.ParameterDict(
            {f"{metric}_{k}": nn.Parameter(torch.zeros(())) for metric in ceilings for k in (1, 2)}
        )

    @property
    def quadratic(self) -> Tensor:
        """The multiplier of the squared gap."""
        return self.quadratic_scale * self.lambda2

    def forward(self, sparsity: Tensor, target: float) -> Tensor:
        gap = sparsity - target
        return self.lambda1 * gap + self.quadratic * gap * gap

    def ceiling(self, metric: str, sparsity: Tensor, least: float) -> Tensor:
        """The term of the ceiling on `metric`: lambda1 g + lambda2 g^2 with g = min(0, s - least),
        zero while the expected sparsity in `metric` is at least `least`."""
        gap = torch.clamp(sparsity - least, max=0.0)
        lambda1, quadratic = self.multipliers(metric)
        return lambda1 * gap + quadratic * gap * gap

    def multipliers(self, metric: str) -> tuple[Tensor, Tensor]:
        """lambda1 and the multiplier of the squared gap of the ceiling on `metric`."""
        return self.ceilings[f"{metric}_1"], self.quadratic_scale * self.ceilings[f"{metric}_2"]


def target_sparsity(step: int, warmup_steps: int, final: float) -> float:
    """The target at `step`: a linear ramp from 0 to `final` over `warmup_steps`."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps)


def expected_sparsity(expected: Tensor | float, full: Tensor | float) -> Tensor | float:
    """s = 1 - E[cost] / cost(teacher), in the budget's metric (parameters or MACs)."""
    return 1.0 - expected / full


@dataclass
class Budget:
    """When the constraint applies, and to what: during the first `steps` training steps (the
    pruning stage), with the target ramping from 0 to `final` over the first `ramp_steps`.

    Args:
        final: the target sparsity, 1 - the kept fraction.
        steps: steps of the pruning stage.
        ramp_steps: steps of the ramp (CoFiPruning ramps too; the length is ours).
        scale: lambda2's rate relative to lambda1's (`Lagrangian`) and the factor on the gates'
            and the multipliers' learning rates (`make_prune_optimizer`): one number, since the
            gates must travel as fast as the multipliers turn them.
    """

    final: float
    steps: int
    ramp_steps: int
    scale: float = 1.0

    @classmethod
    def for_stage(cls, final: float, steps: int, warmup: float, reference_steps: int) -> Budget:
        """The budget of a pruning stage of `steps` steps with a ramp over the fraction `warmup`.

        A stage of at least `reference_steps` keeps that ramp and scales 1. A shorter one ramps over
        at least warmup x reference_steps steps, but at most twice its fraction, and scales the
        quadratic multiplier and the gates' and multipliers' learning rates by
        reference_steps / steps (ours; see the module docstring).
        """
        ramp = int(warmup * steps)
        if steps >= reference_steps or steps <= 0:
            return cls(final, steps, ramp)
        ramp = min(max(ramp, int(warmup * reference_steps)), int(min(1.0, 2 * warmup) * steps))
        return cls(final, steps, ramp, scale=reference_steps / steps)

    def target(self, step: int, final: float | None = None) -> float | None:
        """The target sparsity at `step`, or None once the pruning stage is over; with `final`
        (a ceiling's sparsity), that one's on the same ramp."""
        if step >= self.steps:
            return None
        return target_sparsity(step, self.ramp_steps, self.final if final is None else final)
