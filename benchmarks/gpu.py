"""On a CUDA GPU: the reference pruning step's time, and the pruned model's speed against the teacher's.

Usage (on a machine with a CUDA device):
    python benchmarks/gpu.py                       # committed teacher and 50% model, writes the record
    python benchmarks/gpu.py --out /elsewhere/gpu.json
    python benchmarks/gpu.py --docs                # only rewrite the docs from benchmarks/results/gpu.json

1. The reference pruning recipe's step (`benchmarks/prune_step.py`'s `ReferenceStep`: gated student,
   layerwise distillation from the frozen teacher, AdamW, clipping) on the committed teacher, one
   seeded random batch of the recipe's size, in bf16 autocast (the recipe's) and in fp32: the
   median of `--steps` steps after three warm-ups, each ended by a device synchronisation.
2. Inference (features to log-probabilities, PyTorch eager, `torch.no_grad`): the teacher and the
   50% pruned model on 10 s utterances, batch 1, 32 and 256, fp32 and bf16 autocast. Each round times
   `--calls` forward passes of each model, the two interleaved; a speed-up is the median of the
   rounds' own ratios, with its quartiles, as `latency.py` does on the CPU.
Writes benchmarks/results/gpu.json (or `--out`) and the `gpu` section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PRUNED,
    ROOT,
    TEACHER,
    command_line,
    git_commit,
    load_result,
    markdown_table,
    save_result,
    update_doc_section,
)
from prune_step import SECONDS as STEP_SECONDS
from prune_step import ReferenceStep

from conformer_prune.model import load_recognizer
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.train.loop import autocast

SECONDS = 10.0  # utterance length of the inference batches
PRECISIONS = ("bf16", "fp32")
BATCHES = (1, 32, 256)


def _timed(fn: Callable[[], Any], calls: int) -> float:
    """Mean seconds per call of `fn` over `calls` calls, the device idle at both ends."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def pruning_step(teacher: Path, precision: str, steps: int) -> dict[str, Any]:
    step = ReferenceStep(teacher, device="cuda", precision=precision)
    torch.cuda.reset_peak_memory_stats()
    times = [_timed(functools.partial(step, k), 1) for k in range(steps + 3)]
    median = statistics.median(times[3:])  # after three warm-ups (kernel choice, the allocator's blocks)
    return {
        "precision": precision,
        "batch": [step.batch_size, STEP_SECONDS],
        "step_seconds": median,
        "step_seconds_all": times[3:],
        "audio_seconds_per_second": step.batch_size * STEP_SECONDS / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


@torch.no_grad()
def _forward(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor, precision: str) -> Any:
    with autocast(feats.device, precision):
        return model(feats, lengths)


def inference(teacher: Path, pruned: Path, rounds: int, calls: int) -> list[dict[str, Any]]:
    device = torch.device("cuda")
    paths = {"teacher": teacher, "pruned": pruned}
    models = {name: load_recognizer(path).model.to(device).eval() for name, path in paths.items()}
    frames = round(SECONDS * 100)
    rows = []
    for precision in PRECISIONS:
        for batch in BATCHES:
            feats = torch.randn(batch, frames, models["teacher"].config.n_mels, device=device)
            lengths = torch.full((batch,), frames, device=device)
            runs = {
                name: functools.partial(_forward, model, feats, lengths, precision)
                for name, model in models.items()
            }
            for run in runs.values():  # warm-up
                _timed(run, 3)
            ms: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):  # the two models interleaved, round by round
                for name, run in runs.items():
                    ms[name].append(1000 * _timed(run, calls))
            ratios = [t / p for t, p in zip(ms["teacher"], ms["pruned"], strict=True)]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            rows.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "teacher_ms": statistics.median(ms["teacher"]),
                    "pruned_ms": statistics.median(ms["pruned"]),
                    "speedup": statistics.median(ratios),
                    "speedup_quartiles": [q1, q3],
                    "rounds": rounds,
                    "calls": calls,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--pruned", default=str(PRUNED))
    parser.add_argument("--steps", type=int, default=20, help="timed pruning steps per precision")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="forward passes per model and round")
    parser.add_argument("--out", help="write the record here instead of benchmarks/results/gpu.json")
    parser.add_argument(
        "--commit", help="the commit of this tree where it is no git checkout (a copied working tree)"
    )
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    args = parser.parse_args()
    if args.docs:
        write_docs(load_result("gpu"))
        return
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device; none is visible to PyTorch")
    teacher, pruned = Path(args.teacher), Path(args.pruned)
    costs = {
        name: conformer_cost(load_recognizer(path).model.config)
        for name, path in (("teacher", teacher), ("pruned", pruned))
    }
    params = {name: as_float(cost.params) for name, cost in costs.items()}
    macs = {name: as_float(cost.macs_per_second) for name, cost in costs.items()}
    record = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "teacher": str(teacher.relative_to(ROOT) if teacher.is_relative_to(ROOT) else teacher),
        "pruned": str(pruned.relative_to(ROOT) if pruned.is_relative_to(ROOT) else pruned),
        "params": params,
        "macs_per_second": macs,
        "pruning_step": [pruning_step(teacher, precision, args.steps) for precision in PRECISIONS],
        "inference": inference(teacher, pruned, args.rounds, args.calls),
        "commit": args.commit or git_commit(),
        "command": command_line(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    else:
        save_result("gpu", record)
        write_docs(record)


def write_docs(record: dict[str, Any]) -> None:
    step_rows = [
        [
            s["precision"],
            f"{s['batch'][0]} x {s['batch'][1]:g} s",
            f"{1000 * s['step_seconds']:.1f}",
            f"{s['audio_seconds_per_second']:.0f}",
            f"{s['peak_memory_gib']:.1f}",
        ]
        for s in record["pruning_step"]
    ]
    inference_rows = [
        [
            r["precision"],
            str(r["batch"]),
            f"{r['teacher_ms']:.2f}",
            f"{r['pruned_ms']:.2f}",
            f"{r['speedup']:.2f}x [{r['speedup_quartiles'][0]:.2f}, {r['speedup_quartiles'][1]:.2f}]",
        ]
        for r in record["inference"]
    ]
    params, macs = record["params"], record["macs_per_second"]
    update_doc_section(
        "gpu",
        "## On a GPU (`benchmarks/gpu.py`)\n\n"
        f"{record['device']}, PyTorch {record['torch']} (CUDA {record['cuda']}); "
        f"commit `{record['commit']}`.\n\n"
        f"The reference pruning recipe's step on `{record['teacher']}` (gated student, layerwise "
        "distillation, AdamW; one random batch of the recipe's size; median of "
        f"{len(record['pruning_step'][0]['step_seconds_all'])} steps after 3 warm-ups):\n\n"
        + markdown_table(["precision", "batch", "ms per step", "audio s per s", "peak GiB"], step_rows)
        + f"\n\nInference, features to log-probabilities (PyTorch eager), `{record['pruned']}` "
        f"({params['pruned'] / params['teacher']:.1%} of the teacher's parameters, "
        f"{macs['pruned'] / macs['teacher']:.1%} of its MACs) against "
        f"`{record['teacher']}`, 10 s utterances: milliseconds per forward pass (median of "
        f"{record['inference'][0]['rounds']} interleaved rounds of {record['inference'][0]['calls']} "
        "passes each), and the median of the rounds' speed-ups with its quartiles:\n\n"
        + markdown_table(["precision", "batch", "teacher ms", "pruned ms", "speed-up"], inference_rows)
        + f"\n\nReproduce (on a CUDA machine): `{record['command']}`.",
    )


if __name__ == "__main__":
    main()
