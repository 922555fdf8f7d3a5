"""Attach hard-concrete gates to a Conformer-CTC and read them as masks, counts and costs.

Usage:
    gates = ConformerGates.attach(student, ["heads", "ffn", "conv", "modules", "frontend"])
    cost = gates.expected_cost()          # differentiable, for the budget
    masks = gates.deterministic_masks(target_params=0.5 * teacher_params)
    gates.freeze(masks)                   # fine-tune with fixed masks, then physically prune

Structures, by name:
- ``heads``: attention heads of every layer;
- ``ffn``: hidden neurons of both feed-forward modules;
- ``conv``: convolution-module channels (GLU pair, depthwise filter, BatchNorm entry, pointwise_conv2
  column);
- ``modules``: one gate per self-attention, feed-forward and convolution module;
- ``frontend``: output channels of the two subsampling convolutions;
- ``layers``: one gate per whole block.

A module gate is attached wherever unit gates are, even when ``modules`` is not learned: it then
stays fixed at one until `freeze` closes it because all its units were removed, so that an
all-removed module computes nothing (not its output bias), exactly like the pruned model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from conformer_prune.model.conformer import ConformerCTC
from conformer_prune.prune.cost import Cost, LayerCounts, ModelCounts, conformer_cost
from conformer_prune.prune.hardconcrete import HardConcrete

__all__ = ["STRUCTURES", "ConformerGates", "Structure"]

Structure = Literal["heads", "ffn", "conv", "modules", "frontend", "layers"]
STRUCTURES: tuple[Structure, ...] = ("heads", "ffn", "conv", "modules", "frontend", "layers")


@dataclass
class _Slot:
    """A gate and where it lives: `owner.attr`."""

    gate: HardConcrete
    owner: torch.nn.Module
    attr: str
    learned: bool


class ConformerGates:
    """The gates attached to one model, by name (``layers.3.heads``, ``layers.3.attn``, ``frontend.1``)."""

    def __init__(self, model: ConformerCTC, slots: dict[str, _Slot], structures: list[str]) -> None:
        self.model = model
        self.slots = slots
        self.structures = structures

    @classmethod
    def attach(
        cls,
        model: ConformerCTC,
        structures: list[str],
        init_unit: float = 3.0,
        init_module: float = 5.0,
    ) -> ConformerGates:
        """Create the gates for `structures` inside `model`'s modules.

        Args:
            model: the student (modified in place).
            structures: names from `STRUCTURES`.
            init_unit: initial log_alpha of unit gates (heads, neurons, channels); 3 starts them
                open with P(z > 0) = 0.99.
            init_module: initial log_alpha of module and layer gates.
        """
        unknown = sorted(set(structures) - set(STRUCTURES))
        if unknown:
            raise ValueError(f"unknown prunable structures {unknown}; expected some of {list(STRUCTURES)}")
        slots: dict[str, _Slot] = {}

        def add(name: str, owner: torch.nn.Module, attr: str, n: int, init: float, learned: bool) -> None:
            gate = HardConcrete(
                n, init_log_alpha=init if learned else 20.0, init_std=0.01 if learned else 0.0
            )
            if not learned:
                gate.freeze(torch.ones(n))
            gate.to(next(model.parameters()).device)
            setattr(owner, attr, gate)
            slots[name] = _Slot(gate, owner, attr, learned)

        cfg = model.config
        pre = model.encoder.pre_encode
        if "frontend" in structures:
            add("frontend.0", pre, "gate1", cfg.subsampling_channels[0], init_unit, True)
            add("frontend.1", pre, "gate2", cfg.subsampling_channels[1], init_unit, True)
        for i, block in enumerate(model.encoder.layers):
            branches = {  # branch: (module attribute, structure of its units, width)
                "ffn1": ("feed_forward1", "ffn", cfg.ffn1[i]),
                "attn": ("self_attn", "heads", cfg.heads[i]),
                "conv": ("conv", "conv", cfg.conv_channels[i]),
                "ffn2": ("feed_forward2", "ffn", cfg.ffn2[i]),
            }
            for branch, (attr, structure, width) in branches.items():
                module = getattr(block, attr)
                if module is None:
                    continue
                unit_gated = structure in structures
                if unit_gated:
                    add(f"layers.{i}.{branch}.units", module, "gate", width, init_unit, True)
                if unit_gated or "modules" in structures:
                    add(
                        f"layers.{i}.{branch}",
                        block,
                        f"gate_{branch}",
                        1,
                        init_module,
                        "modules" in structures,
                    )
            if "layers" in structures:
                add(f"layers.{i}", block, "gate_layer", 1, init_module, True)
        return cls(model, slots, list(structures))

    def __iter__(self) -> Iterator[tuple[str, HardConcrete]]:
        return ((name, slot.gate) for name, slot in self.slots.items())

    def log_alphas(self) -> list[Tensor]:
        return [slot.gate.log_alpha for slot in self.slots.values() if slot.learned]

    def set_step(self, seed: int, step: int) -> None:
        """Seed every gate's sampling from (seed, step), identically on every rank."""
        for k, slot in enumerate(self.slots.values()):
            slot.gate.generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + k)

    # -- counts and costs -------------------------------------------------------------------------

    def _counts(self, value: dict[str, Tensor | float]) -> ModelCounts:
        cfg = self.model.config

        def get(name: str, default: float) -> Tensor | float:
            return value.get(name, default)

        layers = []
        for i in range(cfg.n_layers):
            widths = {
                "ffn1": cfg.ffn1[i],
                "attn": cfg.heads[i],
                "conv": cfg.conv_channels[i],
                "ffn2": cfg.ffn2[i],
            }
            kw: dict[str, Tensor | float] = {"layer": get(f"layers.{i}", 1.0)}
            for branch, width in widths.items():
                unit_key = "heads" if branch == "attn" else branch
                kw[f"{branch}_module"] = get(f"layers.{i}.{branch}", float(width > 0))
                kw[unit_key] = get(f"layers.{i}.{branch}.units", float(width))
            layers.append(LayerCounts(**kw))
        c1, c2 = cfg.subsampling_channels
        return ModelCounts(get("frontend.0", float(c1)), get("frontend.1", float(c2)), layers)

    def expected_cost(self, seconds: float = 10.0) -> Cost:
        """E[params], E[MACs/s] under the gates' distribution (differentiable in log_alpha)."""
        value: dict[str, Tensor | float] = {}
        for name, slot in self.slots.items():
            gate = slot.gate
            value[name] = gate.fixed.sum() if gate.frozen else gate.prob_nonzero().sum()
        return conformer_cost(self.model.config, self._counts(value), seconds)

    def mask_cost(self, masks: dict[str, Tensor], seconds: float = 10.0) -> Cost:
        """Exact cost of the model that `masks` would leave after physical pruning."""
        masks = self.normalized(masks)
        return conformer_cost(
            self.model.config, self._counts({k: float(m.sum()) for k, m in masks.items()}), seconds
        )

    # -- deterministic masks ----------------------------------------------------------------------

    def current_masks(self) -> dict[str, Tensor]:
        """The masks the gates apply in eval mode now."""
        with torch.no_grad():
            return {name: slot.gate.eval()().detach().clone() for name, slot in self.slots.items()}

    def normalized(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Close a module whose units are all removed, and keep one front-end channel at least."""
        out = {k: v.clone() for k, v in masks.items()}
        for name in out:
            if name.endswith(".units") and out[name].sum() == 0:
                out[name.removesuffix(".units")] = torch.zeros(1, device=out[name].device)
            if name.startswith("frontend.") and out[name].sum() == 0:
                out[name][int(torch.argmax(self.slots[name].gate.log_alpha))] = 1.0
        return out

    def deterministic_masks(
        self, target: float | None = None, metric: Literal["params", "macs"] = "params"
    ) -> dict[str, Tensor]:
        """0/1 masks: each gate keeps its round(E[#non-zero]) best units; then, if `target` (an
        absolute parameter or MAC count) is given, units are removed or restored in order of
        log_alpha until the exact cost is at or just under it.

        The adjustment guarantees the target is met within one unit's cost (a head is about 0.4%
        of a Conformer-S), where independent rounding per gate can miss it by several percent.
        """
        masks = {
            name: slot.gate.deterministic() if slot.learned else slot.gate.fixed.clone()
            for name, slot in self.slots.items()
        }
        if target is None:
            return self.normalized(masks)

        def cost(m: dict[str, Tensor]) -> float:
            c = self.mask_cost(m)
            return float(c.params if metric == "params" else c.macs_per_second)

        # candidate units, best first: (log_alpha, gate name, index)
        ranked = sorted(
            (
                (float(slot.gate.log_alpha[j].detach()), name, j)
                for name, slot in self.slots.items()
                if slot.learned
                for j in range(slot.gate.n)
            ),
            reverse=True,
        )
        current = cost(masks)
        # drop the weakest kept units until at or under the target ...
        for _, name, j in reversed(ranked):
            if current <= target:
                break
            if masks[name][j] == 1:
                masks[name][j] = 0.0
                current = cost(masks)
        # ... then restore the strongest removed units that still fit (small ones fill the gap a
        # large one left)
        for _, name, j in ranked:
            if masks[name][j] == 0:
                masks[name][j] = 1.0
                new = cost(masks)
                if new > target:
                    masks[name][j] = 0.0
                else:
                    current = new
        return self.normalized(masks)

    def freeze(self, masks: dict[str, Tensor]) -> None:
        for name, mask in self.normalized(masks).items():
            self.slots[name].gate.freeze(mask)
