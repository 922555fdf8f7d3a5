"""The pruning methods, as two typed axes: where the masks come from, and whether the student
learns from the teacher layer by layer. The one registry that the prune config, the command line
and the benchmarks read. It also holds the control that prunes nothing (`continued`): the teacher
trained for the same steps, so that a WER loss can be told from the effect of the extra training.

Usage:
    method = METHODS[cfg.method]
    if method.masks == "learned": ...      # L0 gates under the budget
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["METHODS", "MaskSource", "Method", "MethodName"]

MaskSource = Literal["learned", "magnitude", "torch-pruning", "dense", "none"]
MethodName = Literal[
    "l0-distill",
    "l0",
    "magnitude",
    "magnitude-distill",
    "torch-pruning",
    "scratch",
    "dense-distill",
    "continued",
]


@dataclass(frozen=True)
class Method:
    """A method: its name, its mask source and whether it distils.

    Args:
        masks: "learned" (hard-concrete gates under the Lagrangian budget, then fixed), "magnitude"
            (one-shot L1 structured masks before training, `prune.magnitude`), "torch-pruning"
            (the Torch-Pruning library's one-shot group-L2 pruning, `prune.torch_pruning`) or
            "dense" (a narrower dense model of the target size from random weights, `prune.dense`)
            or "none" (nothing is removed: the teacher itself trains on, the equal-training control).
        distill: layerwise distillation from the teacher (else CTC on the labels only).
        summary: one line for `--help`.
    """

    name: MethodName
    masks: MaskSource
    distill: bool
    summary: str

    @property
    def learns_masks(self) -> bool:
        """Whether the first `prune_epochs` learn masks under the budget; every other method
        fine-tunes a fixed shape for all epochs."""
        return self.masks == "learned"

    @property
    def has_gates(self) -> bool:
        """Whether the student carries gates (learned or fixed masks) that physical pruning reads."""
        return self.masks in ("learned", "magnitude")


METHODS: dict[MethodName, Method] = {
    m.name: m
    for m in (
        Method("l0-distill", "learned", True, "the method: L0 masks under the budget, with distillation"),
        Method("l0", "learned", False, "the same gates and budget, CTC loss only"),
        Method("magnitude", "magnitude", False, "one-shot L1 structured masks, fine-tuned with CTC"),
        Method("magnitude-distill", "magnitude", True, "the same, fine-tuned with distillation"),
        Method("torch-pruning", "torch-pruning", False, "Torch-Pruning's global group L2, then CTC"),
        Method("scratch", "dense", False, "a narrower dense model trained from scratch with CTC"),
        Method("dense-distill", "dense", True, "the same dense model trained with distillation"),
        Method(
            "continued",
            "none",
            True,
            "the control: the unpruned teacher trained for the same steps, distilled from its frozen copy",
        ),
    )
}
assert set(METHODS) == set(get_args(MethodName)), "METHODS and MethodName list different methods"
