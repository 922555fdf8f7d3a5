"""A latency model of a Conformer-CTC on one runtime, differentiable in the kept units, for the
latency budget (``prune --target-latency``).

The table comes from `conformer_prune.evaluate.profile` (``conformer-prune profile``), which times
the parts of a model on a named runtime (PyTorch eager, ONNX Runtime fp32 or int8) at a fixed
number of threads, batch size and utterance length. The model it predicts from, per utterance:

    latency = rest(d) + frontend(f, d) + sum over layers of P(layer) x sum over modules of
              P(module) x part(units, d)

- ``part(units, d)``: the latency of one residual module (feed-forward, self-attention or
  convolution) at `units` kept units (neurons, heads, channels) and model dimension `d`, read by
  bilinear interpolation in a table measured at a grid of units and of d (piecewise linear in
  each, extrapolated linearly past the grid, which the pruned widths never leave but by a
  fraction of a unit). A module's time is its block's minus the empty block's, so the call
  overhead and the block's final LayerNorm are not counted once per module.
- ``frontend(f, d)``: the subsampling front end, by the fraction `f` of its convolution MACs that
  the kept channels cost (at full d) and by d.
- ``rest(d)``: the whole model's measured time at d less its parts: the position encoding, the
  per-block LayerNorms, the CTC head, and what isolation adds or hides.

Under the gates' distribution the kept units are replaced by their expected counts, as the
parameter and MAC budgets do: E[part(u)] is approximated by part(E[u]) (exact where the table is
linear; the error is the table's curvature times the variance of u, small once gates are near 0
or 1). A physically pruned model, whose units are exact counts, gets the table's value.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from conformer_prune.config import from_dict
from conformer_prune.model.conformer import (
    HIDDEN,
    ConformerBlock,
    ConformerConfig,
    ConvSubsampling,
    Num,
    feature_frames,
)
from conformer_prune.prune.cost import as_float

__all__ = ["FORMAT", "LATENCY_TOLERANCE", "PARTS", "RUNTIMES", "LatencyModel", "Runtime", "interpolate"]

Runtime = Literal["torch", "ort", "ort-int8"]  # PyTorch eager; ONNX Runtime fp32; its dynamic int8
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)

FORMAT = "conformer-prune latency table 1"
LATENCY_TOLERANCE = 0.05  # a latency target is met when the measured ratio is within 5% of it
PARTS = ("ffn", "heads", "conv")  # the module types of a block, by their Prunable.STRUCTURE
# the fields of the profiled model that a model must share for the table to describe it
_SHARED = ("n_mels", "head_dim", "conv_kernel", "subsampling", "subsampling_factor")


def interpolate(x: Num, xs: Sequence[float], ys: Sequence[Num]) -> Num:
    """Piecewise-linear y(x) through the points (xs, ys) (xs increasing), extrapolated linearly from
    the end segments; differentiable in `x` and in `ys` when they are tensors."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"interpolate: {len(xs)} x values and {len(ys)} y values")
    if len(xs) == 1:
        return ys[0]
    k = min(max(bisect.bisect_right(xs, as_float(x)) - 1, 0), len(xs) - 2)
    w = (x - xs[k]) / (xs[k + 1] - xs[k])
    return ys[k] + w * (ys[k + 1] - ys[k])


@dataclass
class _Table:
    """ms[j][i]: the latency at hidden[j] and axis[i]."""

    axis: list[float]
    hidden: list[float]
    ms: list[list[float]]

    def __call__(self, x: Num, d: Num) -> Num:
        rows = [interpolate(x, self.axis, row) for row in self.ms]
        return interpolate(d, self.hidden, rows)


class LatencyModel:
    """Predicted latency (ms) of a Conformer-CTC from a profile table (see the module docstring).

    Args:
        table: the JSON object that `conformer_prune.evaluate.profile.profile_latency` writes.
    """

    def __init__(self, table: Mapping[str, Any]) -> None:
        if table.get("format") != FORMAT:
            raise ValueError(f"not a latency table: format {table.get('format')!r}, expected {FORMAT!r}")
        self.table = dict(table)
        self.config = from_dict(ConformerConfig, table["config"], "latency table config")
        if table["runtime"] not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, found {table['runtime']!r}")
        self.runtime = cast(Runtime, table["runtime"])
        self.threads: int = table["threads"]
        self.batch: int = table["batch"]
        self.seconds: float = table["seconds"]
        # the CPU it was profiled on: its predictions are that machine's latencies
        self.cpu: str | None = table.get("machine", {}).get("cpu")
        hidden = [float(d) for d in table["hidden"]]
        self.hidden = hidden
        parts = table["parts"]
        self.parts = {name: _Table(parts[name]["units"], hidden, parts[name]["ms"]) for name in PARTS}
        self.frontend = _Table(parts["frontend"]["fraction"], hidden, parts["frontend"]["ms"])
        self.rest = _Table([0.0], hidden, [[ms] for ms in table["rest_ms"]])
        self._frontend_macs = self.frontend_conv_macs(self.config, {})

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no latency table (write one with `conformer-prune profile`)")
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON latency table ({err})") from err
        try:
            return cls(table)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    def describes(self, cfg: ConformerConfig) -> None:
        """Raise ValueError unless the table can predict `cfg` (same fixed shapes; widths and d
        within the profiled model's)."""
        ref = self.config
        for name in _SHARED:
            if getattr(cfg, name) != getattr(ref, name):
                raise ValueError(
                    f"the latency table was profiled on a model with {name} = {getattr(ref, name)!r}, "
                    f"this model has {getattr(cfg, name)!r}; profile this model"
                )
        if cfg.d_model > ref.d_model:
            raise ValueError(f"d_model {cfg.d_model} exceeds the profiled model's {ref.d_model}")

    @staticmethod
    def frontend_conv_macs(cfg: ConformerConfig, kept: Mapping[str, Num]) -> Num:
        """MACs of the front end's convolutions for 10 s (the output projection at width 1) with
        `kept` front-end channels: the axis of the front-end table, as a fraction of the full."""
        groups = ConvSubsampling.config_groups(cfg)
        front = {g: kept.get(f"frontend.{g}", float(n)) for g, n in groups.items()}
        # at a fixed model dimension, so the fraction measures the channels only
        return ConvSubsampling.size(cfg, {**front, HIDDEN: 1.0}, feature_frames(10.0, cfg.feature_rate)).macs

    def predict(self, cfg: ConformerConfig, kept: Mapping[str, Num] | None = None) -> Num:
        """Latency (ms) of `cfg` with `kept` units by gate name (mask sums, expected counts or
        presence probabilities, as `conformer_prune.prune.cost.conformer_cost` takes them)."""
        kept = kept or {}
        d = kept.get(HIDDEN, float(cfg.d_model))
        if len(self.hidden) == 1 and as_float(d) != self.hidden[0]:
            raise ValueError(
                f"the latency table was profiled at d_model {self.hidden[0]:g} alone; a model whose "
                "model dimension is pruned needs a table of several (conformer-prune profile's default)"
            )
        fraction = self.frontend_conv_macs(cfg, kept) / self._frontend_macs
        total = self.rest(0.0, d) + self.frontend(fraction, d)
        for i in range(cfg.n_layers):
            layer: Num = 0.0
            for name, branch in ConformerBlock.BRANCHES.items():
                width = getattr(cfg, branch.field)[i]
                if width == 0:
                    continue
                gate = f"layers.{i}.{name}"
                part = self.parts[branch.module.STRUCTURE](kept.get(f"{gate}.units", float(width)), d)
                layer = layer + kept.get(gate, 1.0) * part
            total = total + kept.get(f"layers.{i}", 1.0) * layer
        return total
