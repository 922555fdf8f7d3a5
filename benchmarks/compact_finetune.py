"""What fine-tuning the compact student saves: a fine-tuning step of the gated student with its
masks fixed against the same step of the physically pruned student (`finetune_compact`).

Usage:
    python benchmarks/compact_finetune.py                  # the reference shapes, 10 rounds
    python benchmarks/compact_finetune.py --rounds 3       # a quick look

The masks are those of the committed reference pruning run (benchmarks/models/pruned-50.pt, 50%
of the reference teacher's parameters); the teacher is benchmarks/models/teacher.pt. A step is a
fine-tuning step of the reference recipe (recipes/prune.yaml): distillation loss (CTC plus layer
MSE against the frozen teacher's forward pass), backward, gradient clipping, AdamW, under the
recipe's precision, on 2 threads. The batch is `--batch` utterances of `--seconds` of random
features (about the recipe's max_frames), random targets. The two students' steps alternate after
a warm-up each and the medians are compared (the machine is shared; alternation slows both
alike). Writes benchmarks/results/compact_finetune.json and a section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PRUNED,
    TEACHER,
    command_line,
    git_commit,
    markdown_table,
    random_batch,
    save_result,
    update_doc_section,
)

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.dataset import Batch
from conformer_prune.distill.layerwise import LayerwiseDistiller
from conformer_prune.evaluate.metrics import count_params, interleaved_medians_ms
from conformer_prune.model import ConformerCTC, load_recognizer
from conformer_prune.model.conformer import feature_frames
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.gates import ConformerGates
from conformer_prune.prune.physical import physically_prune
from conformer_prune.train.loop import autocast, resolve_precision


def _step(student: ConformerCTC, teacher: ConformerCTC, cfg: PruneConfig, batch: Batch) -> Callable[[], None]:
    """One fine-tuning step of `student` as the pruning engine takes it (`Epochs`)."""
    distiller = LayerwiseDistiller(teacher, teacher.config.n_layers, teacher.config.d_model, cfg.distill)
    params = [p for n, p in student.named_parameters() if ".gate" not in n] + list(distiller.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=cfg.weight_decay)
    student.train()

    def step() -> None:
        with autocast(torch.device("cpu"), cfg.precision):
            loss, _ = distiller.loss(student, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()

    return step


def students(
    teacher: ConformerCTC, cfg: PruneConfig, masks: dict[str, Any]
) -> tuple[ConformerCTC, ConformerCTC]:
    """A copy of `teacher` gated with `masks` fixed (a pruned model's `meta["masks"]`), and that
    student physically pruned."""
    gated = copy.deepcopy(teacher)
    gates = ConformerGates.attach(gated, cfg.structures)
    gates.freeze({k: torch.tensor(v) for k, v in masks.items()})
    return gated, physically_prune(gated, gates.current_masks())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=9.9)
    args = parser.parse_args()
    commit = git_commit()
    torch.set_num_threads(2)
    cfg = load_config(PruneConfig, recipe_path("prune"), [])
    # the precision as a run resolves it (fp32 on a CPU without native bf16)
    cfg.precision = resolve_precision(cfg.precision, torch.device("cpu"))  # type: ignore[assignment]
    teacher = load_recognizer(TEACHER).model.eval()
    pruned = load_recognizer(PRUNED)
    gated, compact = students(teacher, cfg, pruned.meta["masks"])
    assert count_params(compact) == count_params(pruned.model)
    frames = feature_frames(args.seconds, teacher.config.feature_rate)
    batch = random_batch(teacher.config, args.batch, args.seconds, teacher.config.encoder_frames(frames) // 3)
    runs = {"gated": _step(gated, teacher, cfg, batch), "compact": _step(compact, teacher, cfg, batch)}
    for step in runs.values():  # warm-up
        step()
    ms = interleaved_medians_ms(runs, args.rounds)
    record = {
        "step_ms": ms,
        "speedup": ms["gated"] / ms["compact"],
        "params": {"teacher": count_params(teacher), "compact": count_params(compact)},
        "batch": {"utterances": args.batch, "seconds": args.seconds},
        "precision": cfg.precision,
        "threads": 2,
        "rounds": args.rounds,
        "commit": commit,
        "command": command_line(),
    }
    print(record, flush=True)
    save_result("compact_finetune", record)
    rows = [[name, f"{value:.0f}"] for name, value in ms.items()]
    update_doc_section(
        "compact_finetune",
        "## Fine-tuning the compact student (`benchmarks/compact_finetune.py`)\n\n"
        f"A fine-tuning step of the reference recipe (distillation from the teacher, {cfg.precision}, "
        f"2 threads, {args.batch} x {args.seconds} s of features) with the committed 50% model's masks: "
        f"the gated student with fixed masks against the physically pruned one, interleaved, median "
        f"of {args.rounds}. The compact step is **{record['speedup']:.2f}x** faster; both compute the "
        f"same function and gradients (tests/test_prune.py). Commit `{commit}`.\n\n"
        + markdown_table(["student", "step (ms)"], rows)
        + f"\n\nReproduce: `{record['command']}`.\n",
    )


if __name__ == "__main__":
    main()
