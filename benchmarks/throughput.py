"""How to spend 2 CPU cores on many pruning runs: one run with 2 threads, or two runs at once with
1 thread each?

Usage:
    python benchmarks/throughput.py              # 8 steps per measurement
    python benchmarks/throughput.py --steps 4    # a quick look

A step is a distillation step of the reference pruning recipe (recipes/prune.yaml) on the gated
student (the reference teacher with its gates at their initial values, the teacher's forward pass
for the layer distance), 8 utterances of 9.9 s of random features, as in
benchmarks/compact_finetune.py. Measured in separate processes, one after another: one process
with 2 threads; two processes with 1 thread each, started together; one process with 2 threads
again (the two single-process figures bracket the pair, so a drift of the machine shows). The
throughput is steps per second summed over the processes. Writes benchmarks/results/throughput.json
and a section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    TEACHER,
    command_line,
    git_commit,
    markdown_table,
    random_batch,
    save_result,
    update_doc_section,
)


def _worker(threads: int, steps: int) -> None:
    """Time `steps` steps (after a warm-up) and print their seconds as JSON."""
    import torch
    from compact_finetune import _step

    from conformer_prune.config import load_config, recipe_path
    from conformer_prune.model import load_recognizer
    from conformer_prune.model.conformer import feature_frames
    from conformer_prune.prune.config import PruneConfig
    from conformer_prune.prune.gates import ConformerGates

    torch.set_num_threads(threads)
    cfg = load_config(PruneConfig, recipe_path("prune"), [])
    teacher = load_recognizer(TEACHER).model.eval()
    student = copy.deepcopy(teacher)
    ConformerGates.attach(student, cfg.structures)
    frames = feature_frames(9.9, teacher.config.feature_rate)
    batch = random_batch(teacher.config, 8, 9.9, teacher.config.encoder_frames(frames) // 3)
    step = _step(student, teacher, cfg, batch)
    step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))


def _processes(threads: int, count: int, steps: int) -> list[float]:
    """The median step seconds of each of `count` processes started together."""
    argv = [sys.executable, __file__, "--worker", str(threads), "--steps", str(steps)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {[p.returncode for p in procs]}")
    return [statistics.median(json.loads(out.strip().splitlines()[-1])) for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # threads, in a worker
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.steps)
        return
    commit = git_commit()
    before = _processes(2, 1, args.steps)[0]
    pair = _processes(1, 2, args.steps)
    after = _processes(2, 1, args.steps)[0]
    single = statistics.mean([before, after])
    together = sum(1 / s for s in pair)
    record = {
        "step_seconds": {"2 threads, before": before, "1 thread x 2": pair, "2 threads, after": after},
        "steps_per_second": {"one run, 2 threads": 1 / single, "two runs, 1 thread each": together},
        "gain": together * single,
        "steps": args.steps,
        "commit": commit,
        "command": command_line(),
    }
    print(record, flush=True)
    save_result("throughput", record)
    rows = [
        ["one run, 2 threads", f"{before:.2f} / {after:.2f} (before / after)", f"{1 / single:.3f}"],
        ["two runs, 1 thread each", " / ".join(f"{s:.2f}" for s in pair), f"{together:.3f}"],
    ]
    update_doc_section(
        "throughput",
        "## Two runs at a time (`benchmarks/throughput.py`)\n\n"
        "A distillation step of the reference recipe on the gated 4x student (8 x 9.9 s), median of "
        f"{args.steps} steps per process; 2 cores. Two 1-thread runs together train "
        f"**{record['gain']:.2f}x** the steps of one 2-thread run, so `benchmarks/distill.py --jobs 2` "
        f"runs two at a time. Commit `{commit}`.\n\n"
        + markdown_table(["layout", "seconds per step", "steps per second, all runs"], rows)
        + f"\n\nReproduce: `{record['command']}`.\n",
    )


if __name__ == "__main__":
    main()
