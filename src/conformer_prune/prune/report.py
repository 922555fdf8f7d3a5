"""What pruning kept, per layer: a Markdown table and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from conformer_prune.model.conformer import ConformerConfig

__all__ = ["kept_per_layer", "layers_markdown", "plot_layers"]

_BRANCHES = (
    ("ffn1", "ffn1", "FFN 1"),
    ("attn", "heads", "heads"),
    ("conv", "conv_channels", "conv"),
    ("ffn2", "ffn2", "FFN 2"),
)


def kept_per_layer(teacher: ConformerConfig, masks: dict[str, Tensor]) -> list[dict[str, Any]]:
    """For each teacher layer: kept and total units of every branch (0 kept if the module or the
    layer is removed), and whether the layer survives."""
    rows = []
    for i in range(teacher.n_layers):
        layer_kept = f"layers.{i}" not in masks or bool(masks[f"layers.{i}"].sum() > 0)
        row: dict[str, Any] = {"layer": i, "kept": layer_kept}
        for branch, field, _ in _BRANCHES:
            total = getattr(teacher, field)[i]
            module = masks.get(f"layers.{i}.{branch}")
            units = masks.get(f"layers.{i}.{branch}.units")
            kept = int(units.sum()) if units is not None else total
            if not layer_kept or (module is not None and module.sum() == 0):
                kept = 0
            row[branch] = (kept, total)
        rows.append(row)
    return rows


def layers_markdown(teacher: ConformerConfig, masks: dict[str, Tensor]) -> str:
    lines = ["| layer | " + " | ".join(label for *_, label in _BRANCHES) + " |", "|---" * 5 + "|"]
    for row in kept_per_layer(teacher, masks):
        cells = []
        for branch, *_ in _BRANCHES:
            kept, total = row[branch]
            cells.append("removed" if kept == 0 and total else f"{kept}/{total}")
        lines.append(f"| {row['layer']}{'' if row['kept'] else ' (removed)'} | " + " | ".join(cells) + " |")
    if "frontend.0" in masks and "frontend.1" in masks:
        kept = [int(masks[f"frontend.{j}"].sum()) for j in (0, 1)]
        c1, c2 = teacher.subsampling_channels
        lines.append(f"\nFront end: conv1 {kept[0]}/{c1} channels, conv2 {kept[1]}/{c2} channels.")
    return "\n".join(lines)


def plot_layers(teacher: ConformerConfig, masks: dict[str, Tensor], path: Path, title: str) -> None:
    """Grouped bars: fraction of each branch kept, per layer."""
    rows = kept_per_layer(teacher, masks)
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
