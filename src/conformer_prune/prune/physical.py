"""Physical pruning: slice a gated model's weights by its 0/1 masks into a smaller dense model.

Each prunable module slices itself (`Prunable.prune` in `conformer_prune.model.conformer`): every
Linear, Conv1d/Conv2d, BatchNorm (with running statistics), position projection and per-head bias
loses the rows or columns of removed units; modules whose gate is zero are dropped (their width
becomes 0 in the config, and the block skips them); blocks whose layer gate is zero are removed.
The result is a plain `ConformerCTC` built from its own config, with no gates and no reference to
the teacher, loaded with ``strict=True``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from conformer_prune.model.conformer import ConformerCTC, build_model

__all__ = ["physically_prune", "without_gates"]


def without_gates(model: ConformerCTC) -> ConformerCTC:
    """A CPU copy of `model` whose gate slots are all empty."""
    plain = copy.deepcopy(model).cpu()
    for module in plain.modules():
        for name, _ in list(module.named_children()):
            if name.startswith("gate"):
                setattr(module, name, None)
    return plain


def physically_prune(model: ConformerCTC, masks: dict[str, Tensor]) -> ConformerCTC:
    """A new, smaller model computing what `model` computes with `masks` applied in eval mode.

    Args:
        model: the (gated or plain) model; it is not modified.
        masks: 0/1 masks by gate name (see `ConformerCTC.named_prunable`), normalised; absent
            names keep all.
    """
    for name, mask in masks.items():
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"mask {name} is not binary; freeze deterministic masks before pruning")
    sliced = without_gates(model)
    sliced.prune(masks)
    pruned = build_model(sliced.config)
    pruned.load_state_dict({k: v.detach() for k, v in sliced.state_dict().items()}, strict=True)
    return pruned.eval()
