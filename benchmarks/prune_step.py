"""Where a pruning step's time goes: the reference pruning recipe's step (gated student, layerwise
distillation from the frozen teacher, the recipe's AdamW groups and clipping) on the committed
teacher, timed and broken down by operator.

Usage:
    python benchmarks/prune_step.py                       # the reference teacher, 1 thread
    python benchmarks/prune_step.py --threads 2 --steps 7

The student is the teacher with the recipe's gates attached (`recipes/prune.yaml`: its structures,
initial gate logits and mask switch) and its distillation settings, built as a run builds them
(`gated_student`), on one seeded random batch of the recipe's size (`max_frames` of 5 s utterances),
under the recipe's precision (as a run resolves it: fp32 on a CPU without native bf16). Step times are medians
over `--steps` steps after a warm-up; one more step runs under a TorchDispatchMode that sums each
operator's time (by operator and input shapes; the dispatch adds a little time of its own, so the
sum is reported beside the plain step). Then the gradient-norm probe's cost (one more backward
pass per loss part, `distill.probe_every`): steps with and without a probe, `--steps` pairs
interleaved, and what a probe every 20 and every 100 steps adds to the mean step. Run it on quiet
cores: it measures absolute times.
Writes benchmarks/results/prune_step.json and the `prune_step` section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    TEACHER,
    command_line,
    git_commit,
    load_result,
    markdown_table,
    random_batch,
    save_result,
    update_doc_section,
)

from conformer_prune.config import load_config, recipe_path
from conformer_prune.model import load_recognizer
from conformer_prune.prune.budget import Lagrangian
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.prune.run import _weights, gated_student, make_prune_optimizer
from conformer_prune.train.loop import autocast, resolve_precision
from conformer_prune.utils import keep_freed_memory

SECONDS = 5.0  # utterance length of the batch


class _OpTimes(TorchDispatchMode):
    """Sums the wall time of every dispatched operator by (operator, first two input shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.defaultdict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:2]
        key = (str(func.overloadpacket.__name__), " x ".join(str(list(s)) for s in shapes))
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return out


class ReferenceStep:
    """The reference pruning recipe's step (see the module docstring) on `teacher`, on one seeded
    random batch of the recipe's size; `step(k)` trains step k. On `device`, in `precision` when
    given, else in the recipe's as a run resolves it there."""

    def __init__(self, teacher: Path, device: str = "cpu", precision: str | None = None) -> None:
        torch.manual_seed(0)
        self.cfg = cfg = load_config(PruneConfig, recipe_path("prune"), [])
        self.device = torch.device(device)
        model = load_recognizer(teacher).model.to(self.device).eval()
        target_abs = cfg.ratio * as_float(conformer_cost(model.config).value(cfg.metric))
        self.student, self.gates, self.distiller = gated_student(cfg, model, target_abs)
        self.student.train()
        # the recipe's optimizer (weight, gate and multiplier groups, the gate clamp) and what it clips
        self.weights = _weights(self.student, self.distiller)
        self.optimizer = make_prune_optimizer(self.weights, self.gates, Lagrangian(), cfg)
        self.batch_size = max(1, cfg.max_frames // round(SECONDS * 100))
        batch = random_batch(model.config, self.batch_size, SECONDS, round(SECONDS * 100 / 4 / 3))
        self.batch = batch.to(self.device)
        self.precision = precision or resolve_precision(cfg.precision, self.device)  # as a run computes it

    def __call__(self, k: int) -> None:
        self.gates.set_step(self.cfg.seed, k)
        with autocast(self.device, self.precision):
            loss, _ = self.distiller.loss(self.student, self.batch, self.gates.remaining_layers())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights, self.cfg.grad_clip)
        self.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--note", default="", help="how the machine was loaded, kept with the results")
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    args = parser.parse_args()
    if args.docs:
        write_docs(load_result("prune_step"))
        return
    keep_freed_memory()  # as a run does (`start_run`)
    torch.set_num_threads(args.threads)
    step = ReferenceStep(Path(args.teacher))
    cfg, distiller = step.cfg, step.distiller

    times = []
    for k in range(args.steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - start)
    ops = _OpTimes()
    with ops:
        step(args.steps + 1)
    plain: list[float] = []  # interleaved pairs: a step as usual, then one that probes
    probed: list[float] = []
    for k in range(args.steps):
        for probe, out in ((False, plain), (True, probed)):
            if probe:
                distiller.probe_next()
            start = time.perf_counter()
            step(args.steps + 2 + 2 * k + probe)
            out.append(time.perf_counter() - start)
    extra = statistics.median(b / a for a, b in zip(plain, probed, strict=True)) - 1  # of a step
    top = sorted(ops.seconds.items(), key=lambda item: -item[1])[: args.top]
    record = {
        "teacher": args.teacher,
        "threads": args.threads,
        "batch": [step.batch_size, SECONDS],
        "precision": step.precision,
        "structures": cfg.structures,
        "step_seconds": statistics.median(times[1:]),
        "step_seconds_all": times[1:],
        "ops_seconds_total": sum(ops.seconds.values()),
        "probe": {
            "probe_every": cfg.distill.probe_every,
            "plain_seconds": plain,
            "probed_seconds": probed,
            "extra_fraction_of_a_step": extra,  # median over the pairs of probed / plain - 1
            "mean_step_extra": {str(n): extra / n for n in (20, 100)},
        },
        "top_ops": [
            {"op": op, "shapes": shapes, "calls": ops.calls[(op, shapes)], "seconds": seconds}
            for (op, shapes), seconds in top
        ],
        "note": args.note,
        "commit": git_commit(),
        "command": command_line(),
    }
    print(f"step {record['step_seconds']:.3f} s (median of {args.steps})", flush=True)
    save_result("prune_step", record)
    write_docs(record)


def write_docs(record: dict[str, Any]) -> None:
    step = record["step_seconds"]
    table = markdown_table(
        ["operator", "input shapes", "calls", "seconds", "share of the step"],
        [
            [r["op"], r["shapes"], str(r["calls"]), f"{r['seconds']:.3f}", f"{r['seconds'] / step:.1%}"]
            for r in record["top_ops"]
        ],
    )
    teacher = Path(record["teacher"])
    shown = teacher.relative_to(ROOT) if teacher.is_relative_to(ROOT) else teacher
    note = record["note"][:1].upper() + record["note"][1:].rstrip(".") + ". " if record["note"] else ""
    batch, seconds = record["batch"]
    update_doc_section(
        "prune_step",
        "## Where a pruning step's time goes (`benchmarks/prune_step.py`)\n\n"
        f"The reference pruning recipe's step on `{shown}` (structures {', '.join(record['structures'])}; "
        f"distillation; AdamW), {batch} x {seconds:g} s of random features, {record['precision']}, "
        f"{record['threads']} thread(s): **{step:.3f} s** per step (median of "
        f"{len(record['step_seconds_all'])}); the operators of one more step, summed by operator and "
        f"input shapes ({record['ops_seconds_total']:.3f} s in all). {note}Commit `{record['commit']}`."
        f"\n\n{table}\n\n{_probe_text(record.get('probe'))}Reproduce: `{record['command']}`.",
    )


def _probe_text(probe: dict[str, Any] | None) -> str:
    if probe is None:  # a record from before the probe was timed
        return ""
    extra, mean = probe["extra_fraction_of_a_step"], probe["mean_step_extra"]
    return (
        f"The gradient-norm probe: a step that probes takes {1 + extra:.2f}x a plain one (median of "
        f"{len(probe['plain_seconds'])} interleaved pairs, {statistics.median(probe['probed_seconds']):.3f} "
        f"against {statistics.median(probe['plain_seconds']):.3f} s), so a probe every 20 steps adds "
        f"{mean['20']:.1%} to the mean step and one every 100 (the default since 2026-12-03) "
        f"{mean['100']:.1%}.\n\n"
    )


if __name__ == "__main__":
    main()
