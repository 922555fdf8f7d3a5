"""Attach hard-concrete gates to a Conformer-CTC and read them as masks, counts and costs.

Usage:
    gates = ConformerGates.attach(student, ["heads", "ffn", "conv", "modules", "frontend"])
    cost = gates.expected_cost()          # differentiable, for the budget
    masks = gates.deterministic_masks(target_params=0.5 * teacher_params)
    gates.freeze(masks)                   # fine-tune with fixed masks, then physically prune

Structures, by name (a unit structure is the `Prunable.STRUCTURE` of the module class that owns the
units, so a new prunable module brings its own):
- ``heads``: attention heads of every layer;
- ``ffn``: hidden neurons of both feed-forward modules;
- ``conv``: convolution-module channels (GLU pair, depthwise filter, BatchNorm entry, pointwise_conv2
  column);
- ``modules``: one gate per self-attention, feed-forward and convolution module;
- ``frontend``: output channels of the two subsampling convolutions;
- ``layers``: one gate per whole block;
- ``hidden``: the model dimension (d_model), one mask shared by every writer to the residual stream
  and every reader of it (CoFiPruning's ``hidden_z``; see `ConformerEncoder`).

A module gate is attached wherever unit gates are, even when ``modules`` is not learned: it then
stays fixed at one until `freeze` closes it because all its units were removed, so that an
all-removed module computes nothing (not its output bias), exactly like the pruned model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from conformer_prune.model.conformer import HIDDEN, ConformerCTC, Num, Prunable
from conformer_prune.prune.cost import Cost, Metric, conformer_cost
from conformer_prune.prune.hardconcrete import HardConcrete

if TYPE_CHECKING:
    from conformer_prune.prune.latency import LatencyModel

__all__ = ["STRUCTURES", "ConformerGates", "Structure"]

Structure = Literal["heads", "ffn", "conv", "modules", "frontend", "layers", "hidden"]
STRUCTURES: tuple[Structure, ...] = ("heads", "ffn", "conv", "modules", "frontend", "layers", "hidden")


@dataclass
class _Slot:
    """A gate and where it lives: `owner.attr`. A unit gate of a removable module names the gate
    that removes the whole module (`closes`), and every gate inside a block that block's layer
    gate (`layer`, present or not)."""

    gate: HardConcrete
    owner: torch.nn.Module
    attr: str
    learned: bool
    unit: bool = False
    closes: str | None = None
    layer: str | None = None
    module: Prunable | None = None  # the module whose units (`group`) or output the gate scales
    group: str | None = None


class ConformerGates:
    """The gates attached to one model, by name (``layers.3.attn.units``, ``layers.3.attn``,
    ``frontend.1``; see `ConformerCTC.named_prunable`). With a `latency` model, every cost also
    carries the predicted latency (the "latency" metric)."""

    def __init__(self, model: ConformerCTC, slots: dict[str, _Slot], structures: list[str]) -> None:
        self.model = model
        self.slots = slots
        self.structures = structures
        self.latency: LatencyModel | None = None

    @classmethod
    def attach(
        cls,
        model: ConformerCTC,
        structures: list[str],
        init_unit: float = 3.0,
        init_module: float = 5.0,
        soft: bool = False,
    ) -> ConformerGates:
        """Create the gates for `structures` inside `model`'s modules.

        Args:
            model: the student (modified in place).
            structures: names from `STRUCTURES`.
            init_unit: initial log_alpha of unit gates (heads, neurons, channels); 3 starts them
                open with P(z > 0) = 0.99.
            init_module: initial log_alpha of module and layer gates.
            soft: in eval mode, unit and module gates keep their kept units at E[z] rather than 1
                (`HardConcrete`), which `fold` moves into the weights when the masks are fixed.
                Layer gates stay binary: a block's output mixes with its input after the final
                LayerNorm, so no weight can absorb a soft layer gate.
        """
        unknown = sorted(set(structures) - set(STRUCTURES))
        if unknown:
            raise ValueError(f"unknown prunable structures {unknown}; expected some of {list(STRUCTURES)}")
        slots: dict[str, _Slot] = {}
        device = next(model.parameters()).device

        def add(name: str, owner: torch.nn.Module, attr: str, n: int, init: float, learned: bool) -> _Slot:
            gate = HardConcrete(
                n, init_log_alpha=init if learned else 20.0, init_std=0.01 if learned else 0.0
            )
            if not learned:
                gate.freeze(torch.ones(n))
            gate.to(device)
            setattr(owner, attr, gate)
            slots[name] = _Slot(gate, owner, attr, learned)
            return slots[name]

        # the order of creation fixes the gates' initial noise and their sampling seeds
        pre = model.encoder.pre_encode
        if pre.STRUCTURE in structures:
            for group, n in pre.unit_groups().items():
                slot = add(f"frontend.{group}", pre, pre.GATES[group], n, init_unit, True)
                slot.unit, slot.module, slot.group = True, pre, group
        for i, block in enumerate(model.blocks()):
            for branch, module in block.branches():
                if module is None:
                    continue
                name = f"layers.{i}.{branch}"
                unit_gated = module.STRUCTURE in structures
                if unit_gated:
                    for group, n in module.unit_groups().items():
                        slot = add(f"{name}.{group}", module, module.GATES[group], n, init_unit, True)
                        slot.unit, slot.closes, slot.layer = True, name, f"layers.{i}"
                        slot.module, slot.group = module, group
                if unit_gated or "modules" in structures:
                    slot = add(name, block, f"gate_{branch}", 1, init_module, "modules" in structures)
                    slot.layer, slot.module = f"layers.{i}", module
            if "layers" in structures:
                add(f"layers.{i}", block, "gate_layer", 1, init_module, True)
        if HIDDEN in structures:  # created last: the other gates' noise and seeds stay as they were
            add(HIDDEN, model.encoder, "gate_hidden", model.config.d_model, init_unit, True).unit = True
        for name, slot in slots.items():
            slot.gate.soft = soft and slot.learned and (slot.module is not None or name == HIDDEN)
        return cls(model, slots, list(structures))

    def __iter__(self) -> Iterator[tuple[str, HardConcrete]]:
        return ((name, slot.gate) for name, slot in self.slots.items())

    def log_alphas(self) -> list[Tensor]:
        return [slot.gate.log_alpha for slot in self.slots.values() if slot.learned]

    def clamp_(self) -> None:
        """Clamp every learned gate's log_alpha to CoFiPruning's range (`LOG_ALPHA_RANGE`)."""
        for slot in self.slots.values():
            if slot.learned:
                slot.gate.clamp_()

    def remaining_layers(self) -> list[bool]:
        """Per block, whether its layer gate (if any) keeps it: the fixed mask once frozen, else
        the deterministic one (what CoFiPruning's dynamic layer mapping matches students among)."""
        out = []
        for i in range(len(self.model.blocks())):
            slot = self.slots.get(f"layers.{i}")
            if slot is None:
                out.append(True)
            else:
                gate = slot.gate
                out.append(bool((gate.fixed if gate.frozen else gate.deterministic()).sum() > 0))
        return out

    def set_step(self, seed: int, step: int) -> None:
        """Seed every gate's sampling from (seed, step), identically on every rank."""
        for k, slot in enumerate(self.slots.values()):
            slot.gate.generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + k)

    # -- costs ------------------------------------------------------------------------------------

    def expected_cost(self, seconds: float = 10.0) -> Cost:
        """E[params], E[MACs/s] under the gates' distribution (differentiable in log_alpha)."""
        value: dict[str, Num] = {}
        for name, slot in self.slots.items():
            gate = slot.gate
            value[name] = gate.fixed.sum() if gate.frozen else gate.prob_nonzero().sum()
        return conformer_cost(self.model.config, value, seconds, self.latency)

    def mask_cost(self, masks: dict[str, Tensor], seconds: float = 10.0) -> Cost:
        """Exact cost of the model that `masks` would leave after physical pruning."""
        masks = self.normalized(masks)
        kept = {k: float(m.sum()) for k, m in masks.items()}
        return conformer_cost(self.model.config, kept, seconds, self.latency)

    # -- deterministic masks ----------------------------------------------------------------------

    def current_masks(self) -> dict[str, Tensor]:
        """The 0/1 masks of the gates in eval mode now (a soft gate's kept units count as 1)."""
        with torch.no_grad():
            return {name: (slot.gate.eval()() > 0).float() for name, slot in self.slots.items()}

    def normalized(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Close a module whose units are all removed, and keep one front-end channel and one model
        dimension at least."""
        out = {k: v.clone() for k, v in masks.items()}
        for name in list(out):
            slot = self.slots.get(name)
            if slot is None or not slot.unit or out[name].sum() > 0:
                continue
            if slot.closes is not None:
                out[slot.closes] = torch.zeros(1, device=out[name].device)
            else:  # what cannot be removed (the front end, the model dimension) keeps its best unit
                out[name][int(torch.argmax(slot.gate.log_alpha))] = 1.0
        return out

    def unit_costs(self, masks: dict[str, Tensor], metric: Metric = "params") -> dict[str, float]:
        """The marginal cost of one unit of each gate at `masks` (the derivative of the closed-form
        cost in the gate's kept count; a unit of a closed module or layer costs 0)."""
        kept = {
            name: torch.tensor(float(m.sum()), dtype=torch.float64, requires_grad=True)
            for name, m in self.normalized(masks).items()
        }
        cost = conformer_cost(self.model.config, kept, latency=self.latency).value(metric)
        assert isinstance(cost, Tensor)
        grads = torch.autograd.grad(cost, list(kept.values()), allow_unused=True)
        return {name: 0.0 if g is None else float(g) for name, g in zip(kept, grads, strict=True)}

    def deterministic_masks(
        self,
        target: float | None = None,
        metric: Metric = "params",
        ceilings: dict[Metric, float] | None = None,
    ) -> dict[str, Tensor]:
        """0/1 masks: each gate keeps its round(E[#non-zero]) best units; then, if `target` (an
        absolute parameter or MAC count) is given, units are removed or restored until the exact
        cost is at or just under it. `ceilings` (absolute costs in other metrics) are met too:
        after the target, the weakest units per unit of each ceiling's cost are removed until it
        holds, and a unit is restored only where the target and every ceiling still hold.

        The adjustment guarantees the target is met within one unit's cost (a head is about 0.4%
        of a Conformer-S), where independent rounding per gate can miss it by several percent. It
        ranks units by P(z != 0) per unit of cost (the greedy order of a knapsack: a cheap likely
        unit before an expensive one), so gates that start at different log_alpha or whose units
        cost differently compare fairly; and it moves units only, inside the modules and layers
        that the deterministic masks keep. A module or layer whose own gate closed it stays closed:
        its unit gates learned nothing while it was off, so reopening it would bring back stale
        units.
        """
        masks = {
            name: slot.gate.deterministic() if slot.learned else slot.gate.fixed.clone()
            for name, slot in self.slots.items()
        }
        if target is None:
            return self.normalized(masks)
        masks = self.normalized(masks)

        limits: dict[Metric, float] = {metric: target, **(ceilings or {})}

        def within(m: dict[str, Tensor], *by: Metric) -> bool:
            cost = self.mask_cost(m)  # once for every limit asked
            return all(float(cost.value(metric)) <= limits[metric] for metric in by)

        def is_open(name: str | None) -> bool:
            return name is None or name not in masks or bool(masks[name].sum() > 0)

        def ranked(by: Metric) -> list[tuple[float, str, int]]:
            """Candidate units, best first: (P(z != 0) per unit of cost in `by`, gate, index)."""
            unit_cost = self.unit_costs(masks, by)
            return sorted(
                (
                    (float(p) / max(unit_cost[name], 1e-12), name, j)
                    for name, slot in self.slots.items()
                    if slot.learned and slot.unit and is_open(slot.closes) and is_open(slot.layer)
                    for j, p in enumerate(slot.gate.prob_nonzero().detach().tolist())
                ),
                reverse=True,
            )

        order = ranked(metric)
        # drop the weakest kept units until at or under the target, then under each ceiling ...
        for by in limits:
            if within(masks, by):
                continue
            for _, name, j in reversed(order if by == metric else ranked(by)):
                if masks[name][j] == 1:
                    masks[name][j] = 0.0
                    if within(masks, by):
                        break
        # ... then restore the strongest removed units that still fit (small ones fill the gap a
        # large one left)
        for _, name, j in order:
            if masks[name][j] == 0:
                masks[name][j] = 1.0
                if not within(masks, *limits):
                    masks[name][j] = 0.0
        return self.normalized(masks)

    @torch.no_grad()
    def fold(self, masks: dict[str, Tensor]) -> None:
        """Multiply the weights that follow every soft gate by the E[z] of the units `masks` keeps,
        so that with these 0/1 masks frozen the model computes what it computed in eval mode with
        the soft gates (exactly, where the masks are the gates' own deterministic ones). Call it
        once, just before `freeze`."""
        for name, mask in self.normalized(masks).items():
            slot = self.slots[name]
            if not slot.gate.soft or slot.gate.frozen:
                continue
            scale = torch.where(mask > 0, slot.gate.expected_value(), torch.ones_like(mask))
            if name == HIDDEN:
                self.model.fold_hidden(scale)
            elif slot.module is not None and slot.group is not None:
                slot.module.fold_units(slot.group, scale)
            elif slot.module is not None:  # a module gate scales the module's output: its writers
                for layer in slot.module.residual_writers():
                    for p in layer.parameters():
                        p.mul_(scale.to(p))

    def freeze(self, masks: dict[str, Tensor]) -> None:
        for name, mask in self.normalized(masks).items():
            self.slots[name].gate.freeze(mask)
