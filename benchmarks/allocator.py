"""What `keep_freed_memory` (glibc's malloc keeping freed blocks, set by every run) does to the
reference pruning step: `prune_step.py`'s step, in pairs of new processes, one with glibc's
defaults and one with the setting, the order alternating from pair to pair. Each process trains
2 warm-up steps and then `--steps` timed ones, and reports the medians of their wall, user and
system time and of their page faults, its peak resident memory, and a digest of the student's
weights after its last step (the two settings must train the same bits). The speed-up is the
median over the pairs of the pair's own ratio. Run it on quiet cores: it measures times.

Usage:
    python benchmarks/allocator.py                    # 6 pairs, 7 timed steps, 1 thread
    python benchmarks/allocator.py --pairs 4 --threads 2

Writes benchmarks/results/allocator.json and the `allocator` section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    TEACHER,
    command_line,
    git_commit,
    in_new_process,
    markdown_table,
    save_result,
    update_doc_section,
)
from prune_step import ReferenceStep

from conformer_prune.utils import keep_freed_memory

MODES = ("glibc defaults", "keep_freed_memory")


def _trial(keep: bool, teacher: str, threads: int, steps: int) -> dict[str, Any]:
    """One process's steps (run by `in_new_process`, so the allocator starts from its defaults)."""
    if keep:
        keep_freed_memory()
    torch.set_num_threads(threads)
    step = ReferenceStep(Path(teacher))
    for k in range(2):  # warm-up: the heap grows to the step's peak here
        step(k)
    rows = []
    for k in range(2, 2 + steps):
        wall, cpu = time.perf_counter(), os.times()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(k)
        after = os.times()
        rows.append(
            (
                time.perf_counter() - wall,
                after.user - cpu.user,
                after.system - cpu.system,
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
            )
        )
    digest = hashlib.sha256()
    for p in step.student.parameters():
        digest.update(p.detach().float().numpy().tobytes())
    return {
        "precision": step.precision,
        "wall_seconds": statistics.median(r[0] for r in rows),
        "user_seconds": statistics.median(r[1] for r in rows),
        "system_seconds": statistics.median(r[2] for r in rows),
        "page_faults": statistics.median(r[3] for r in rows),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux: KiB
        "weights_sha256": digest.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--note", default="", help="how the machine was loaded, kept with the results")
    args = parser.parse_args()
    pairs = []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        trials = {
            keep: in_new_process(_trial, keep, args.teacher, args.threads, args.steps) for keep in order
        }
        pair = {MODES[keep]: trials[keep] for keep in (False, True)}
        pairs.append(pair)
        ratio = pair[MODES[1]]["wall_seconds"] / pair[MODES[0]]["wall_seconds"]
        print(f"pair {i + 1}: {ratio:.3f} of the default step's time", flush=True)
    digests = {trial["weights_sha256"] for pair in pairs for trial in pair.values()}
    record = {
        "teacher": args.teacher,
        "threads": args.threads,
        "steps": args.steps,
        "precision": pairs[0][MODES[0]]["precision"],
        "pairs": pairs,
        "time_ratio": statistics.median(
            p[MODES[1]]["wall_seconds"] / p[MODES[0]]["wall_seconds"] for p in pairs
        ),
        "same_weights": len(digests) == 1,
        "note": args.note,
        "commit": git_commit(),
        "command": command_line(),
    }
    save_result("allocator", record)
    write_docs(record)
    same = record["same_weights"]
    print(f"keep_freed_memory: {record['time_ratio']:.3f} of the step's time; same weights: {same}")


def write_docs(record: dict[str, Any]) -> None:
    def cells(i: int, pair: dict[str, Any]) -> list[str]:
        a, b = pair[MODES[0]], pair[MODES[1]]
        return [
            str(i + 1),
            f"{a['wall_seconds']:.2f} / {b['wall_seconds']:.2f}",
            f"{b['wall_seconds'] / a['wall_seconds']:.3f}",
            f"{a['system_seconds']:.2f} / {b['system_seconds']:.2f}",
            f"{a['page_faults']:,.0f} / {b['page_faults']:,.0f}",
            f"{a['peak_rss_gb']:.2f} / {b['peak_rss_gb']:.2f}",
        ]

    table = markdown_table(
        [
            "pair",
            "step s (defaults / kept)",
            "ratio",
            "system s per step",
            "page faults per step",
            "peak RSS GB",
        ],
        [cells(i, pair) for i, pair in enumerate(record["pairs"])],
    )
    note = record["note"][:1].upper() + record["note"][1:].rstrip(".") + ". " if record["note"] else ""
    same = "bitwise the same" if record["same_weights"] else "**not** the same"
    update_doc_section(
        "allocator",
        "## Keeping freed memory (`benchmarks/allocator.py`)\n\n"
        f"The reference pruning step (`prune_step.py`'s), {record['precision']}, {record['threads']} "
        f"thread(s), in {len(record['pairs'])} pairs of new processes (glibc's defaults, then "
        "`keep_freed_memory`, the order alternating), each the median of "
        f"{record['steps']} steps after 2 warm-up steps: with the setting a step takes "
        f"**{record['time_ratio']:.3f}** of the time (median of the pairs' ratios), and the student's "
        f"weights after the last step are {same}. {note}Commit `{record['commit']}`."
        f"\n\n{table}\n\nReproduce: `{record['command']}`.",
    )


if __name__ == "__main__":
    main()
