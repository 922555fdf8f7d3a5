"""What pruning kept, per layer: a Markdown table and a PNG; and the report of a pruning run:
teacher and pruned model evaluated side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from conformer_prune.data.corpus import read_corpus
from conformer_prune.distributed import is_main_process
from conformer_prune.evaluate import evaluate_recognizer
from conformer_prune.evaluate.profile import measure_models_ms, measured_ratios
from conformer_prune.model import load_recognizer
from conformer_prune.model.conformer import ConformerBlock, ConformerConfig, ConformerCTC
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import as_float
from conformer_prune.prune.latency import LATENCY_TOLERANCE, LatencyModel
from conformer_prune.prune.methods import METHODS
from conformer_prune.prune.run import run_pruning
from conformer_prune.utils import resolve_device, write_json

__all__ = [
    "format_comparison",
    "kept_per_layer",
    "latency_check",
    "layers_markdown",
    "plot_layers",
    "prune_and_report",
]

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


def _number(value: float) -> str:
    """Integers with thousands separators; other values with four significant digits."""
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def format_comparison(teacher: dict[str, Any], pruned: dict[str, Any]) -> str:
    """Teacher and pruned model side by side, with the pruned/teacher ratio."""
    rows = [f"  {'':<18} {'teacher':>14} {'pruned':>14} {'ratio':>8}"]
    for key, value in teacher.items():
        other = pruned.get(key)
        if not isinstance(value, int | float) or not isinstance(other, int | float):
            continue
        if key == "threads" or key.startswith(("utterances", "hours")):
            continue
        percent = key.startswith(("wer", "cer"))
        shown = [f"{100 * v:.2f}%" if percent else _number(v) for v in (value, other)]
        ratio = f"{other / value:.3f}" if value else "-"
        rows.append(f"  {key:<18} {shown[0]:>14} {shown[1]:>14} {ratio:>8}")
    return "\n".join(rows)


def latency_check(
    table: Path,
    teacher: ConformerCTC,
    pruned: ConformerCTC,
    target: float,
    rounds: int = 30,
    ceiling: bool = False,
) -> dict[str, Any]:
    """The pruned model's latency on the table's runtime, predicted and measured (interleaved with
    the teacher's in new processes, at the table's threads, batch and length: `measured_ratios`),
    against `target` (a kept fraction of the teacher's latency): met within 5% of it, or with
    `ceiling` (a `max_latency`) at most 5% over it."""
    model = LatencyModel.load(table)
    timed = measured_ratios(
        [teacher, pruned], model.runtime, model.threads, model.batch, model.seconds, rounds
    )
    measured_teacher, measured = timed.ms
    predicted_teacher = as_float(model.predict(teacher.config))
    predicted = as_float(model.predict(pruned.config))
    ratio = timed.ratios[1]
    return {
        "target_latency": target,
        "kind": "ceiling" if ceiling else "target",
        "runtime": model.runtime,
        "threads": model.threads,
        "batch": model.batch,
        "seconds": model.seconds,
        "latency_ms_teacher": measured_teacher,
        "latency_ms_teacher_predicted": predicted_teacher,
        "latency_ms_predicted": predicted,
        "latency_ms_measured": measured,
        "predicted_ratio": predicted / predicted_teacher,
        "measured_ratio": ratio,
        "measured_ratio_per_process": [r[1] for r in timed.per_process],
        "target_met": (ratio / target - 1 if ceiling else abs(ratio / target - 1)) <= LATENCY_TOLERANCE,
        "table": str(table),
    }


def prune_and_report(
    cfg: PruneConfig,
    teacher: Path,
    train: Path,
    dev: Path,
    evaluated: dict[str, Path],
    out: Path,
    resume: bool,
    threads: int = 2,
    teacher_eval: dict[str, Any] | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """Prune on `train` (validating on `dev`), evaluate teacher and pruned model on `evaluated`
    (decoded on the run's device, costs and latency on the CPU), and write eval.json, layers.md
    and layers.png into `out`. `teacher_eval`: the teacher's evaluation on `evaluated` when
    already known (a benchmark prunes one teacher many times).
    `latency`: time teacher and pruned model (False where other work shares the cores, whose
    timings would mislead)."""
    start = time.perf_counter()
    result = run_pruning(cfg, teacher, read_corpus(train), read_corpus(dev), out, resume=resume)
    prune_seconds = time.perf_counter() - start
    if not is_main_process():  # under torchrun, rank 0 evaluates and reports alone
        return {}
    teacher_rec = load_recognizer(teacher)
    device = resolve_device(cfg.device)  # decoded where the run trained; the costs are the CPU's
    if teacher_eval is None:
        teacher_eval = evaluate_recognizer(teacher_rec, evaluated, device, threads, latency=latency)
    teacher_eval = dict(teacher_eval)
    pruned_rec = load_recognizer(result.model_path)
    pruned_eval = evaluate_recognizer(pruned_rec, evaluated, device, threads, recogs_dir=out, latency=latency)
    prunes = METHODS[cfg.method].masks != "none"  # the control keeps every parameter
    report = {
        "target": {cfg.metric: cfg.ratio} if prunes else None,
        **({"ceilings": cfg.ceilings} if cfg.ceilings else {}),
        "method": cfg.method,
        "teacher": teacher_eval,
        "pruned": pruned_eval,
        "wall_seconds": prune_seconds,
    }
    if latency:  # measured interleaved in one loop, so their ratio is fair on a shared machine
        teacher_ms, pruned_ms = measure_models_ms([teacher_rec.model, pruned_rec.model], "torch", threads)
        for result_eval, ms in ((teacher_eval, teacher_ms), (pruned_eval, pruned_ms)):
            result_eval.update(latency_ms_10s=ms, rtf=ms / 10000.0)
    if result.latency_table is not None and latency:
        ceiling = cfg.metric != "latency"  # the table is a max_latency's
        target = cfg.ceilings["latency"] if ceiling else cfg.ratio
        check = latency_check(
            result.latency_table, teacher_rec.model, pruned_rec.model, target, ceiling=ceiling
        )
        report["latency_target"] = check
        print(
            f"latency on {check['runtime']} ({check['threads']} threads, batch {check['batch']}, "
            f"{check['seconds']:g} s): teacher {check['latency_ms_teacher']:.2f} ms, pruned "
            f"{check['latency_ms_measured']:.2f} ms measured ({check['measured_ratio']:.3f} of the "
            f"teacher) and {check['latency_ms_predicted']:.2f} ms predicted "
            f"({check['predicted_ratio']:.3f}); "
            f"{check['kind']} {check['target_latency']:.3f}: {'met' if check['target_met'] else 'missed'} "
            f"({'at most' if ceiling else 'within'} {LATENCY_TOLERANCE:.0%} {'over' if ceiling else 'of it'})"
        )
    write_json(out / "eval.json", report)
    table = layers_markdown(teacher_rec.model.config, pruned_rec.model.config, result.masks)
    (out / "layers.md").write_text(table + "\n", encoding="utf-8")
    plot_layers(
        teacher_rec.model.config,
        pruned_rec.model.config,
        result.masks,
        out / "layers.png",
        f"{cfg.method}: kept per layer ({cfg.metric} target {cfg.ratio:.0%})"
        if prunes
        else f"{cfg.method}: nothing pruned",
    )
    print(table)
    print(format_comparison(teacher_eval, pruned_eval))
    print(f"compact model: {result.model_path}; report: {out / 'eval.json'}, {out / 'layers.png'}")
    return report
