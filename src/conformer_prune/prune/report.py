"""What pruning kept, per layer: a Markdown table and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from conformer_prune.model.conformer import ConformerBlock, ConformerConfig

__all__ = ["kept_per_layer", "layers_markdown", "plot_layers"]

_LABELS = {"ffn1": "FFN 1", "attn": "heads", "conv": "conv", "ffn2": "FFN 2"}
# (branch, the config field of its width, its label), in the block's order
_BRANCHES = tuple((name, b.field, _LABELS[name]) for name, b in ConformerBlock.BRANCHES.items())


def kept_per_layer(
    teacher: ConformerConfig, pruned: ConformerConfig, masks: dict[str, Tensor]
) -> list[dict[str, Any]]:
    """For each teacher layer: kept and total units of every branch (0 kept if the module or the
    layer is removed), and whether the layer survives. The kept widths are read from the pruned
    model's config; `masks` only tells which teacher layers were removed (none for dense
    baselines, which have no masks)."""
    survivors = [
        i for i in range(teacher.n_layers) if f"layers.{i}" not in masks or masks[f"layers.{i}"].sum() > 0
    ]
    if len(survivors) != pruned.n_layers:
        raise ValueError(f"{pruned.n_layers} pruned layers, but the masks keep {len(survivors)}")
    rows = []
    for i in range(teacher.n_layers):
        layer_kept = i in survivors
        row: dict[str, Any] = {"layer": i, "kept": layer_kept}
        for branch, field, _ in _BRANCHES:
            total = getattr(teacher, field)[i]
            kept = getattr(pruned, field)[survivors.index(i)] if layer_kept else 0
            row[branch] = (kept, total)
        rows.append(row)
    return rows


def layers_markdown(teacher: ConformerConfig, pruned: ConformerConfig, masks: dict[str, Tensor]) -> str:
    lines = ["| layer | " + " | ".join(label for *_, label in _BRANCHES) + " |", "|---" * 5 + "|"]
    for row in kept_per_layer(teacher, pruned, masks):
        cells = []
        for branch, *_ in _BRANCHES:
            kept, total = row[branch]
            cells.append("removed" if kept == 0 and total else f"{kept}/{total}")
        lines.append(f"| {row['layer']}{'' if row['kept'] else ' (removed)'} | " + " | ".join(cells) + " |")
    stages = zip(pruned.subsampling_channels, teacher.subsampling_channels, strict=True)
    kept = ", ".join(f"stage {i + 1} {k}/{c}" for i, (k, c) in enumerate(stages))
    lines.append(f"\nFront end ({teacher.subsampling}) channels: {kept}.")
    if pruned.d_model != teacher.d_model:
        lines.append(
            f"Model dimension {pruned.d_model}/{teacher.d_model}, head dimension "
            f"{pruned.head_dim}/{teacher.head_dim}."
        )
    return "\n".join(lines)


def plot_layers(
    teacher: ConformerConfig, pruned: ConformerConfig, masks: dict[str, Tensor], path: Path, title: str
) -> None:
    """Grouped bars: fraction of each branch kept, per layer."""
    rows = kept_per_layer(teacher, pruned, masks)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 3.6))
    width = 0.2
    for k, (branch, _, label) in enumerate(_BRANCHES):
        fractions = [r[branch][0] / r[branch][1] if r[branch][1] else 0.0 for r in rows]
        ax.bar([r["layer"] + (k - 1.5) * width for r in rows], fractions, width, label=label)
    ax.set(xlabel="layer", ylabel="fraction kept", ylim=(0, 1.05), title=title)
    ax.set_xticks([r["layer"] for r in rows])
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
