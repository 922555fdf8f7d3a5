"""How to train one model on 2 CPU cores: one process with 2 threads, or two data-parallel
processes with 1 thread each (torchrun, gloo, DistributedDataParallel)?

Usage:
    python benchmarks/data_parallel.py                       # the reference teacher's recipe
    python benchmarks/data_parallel.py --set model.dropout=0 model.dropout_att=0 --rounds 3

A step is a training step of the recipe (bf16 autocast as the recipe says, CTC, AdamW, gradient
clipping) on `--batch` utterances of `--seconds` of random features: in one process the whole
batch, in each of the two processes half of it (the same global batch, gradients averaged by DDP,
as `conformer-prune train` under torchrun). The layouts alternate, one launch each per round, so
that a drift of the machine shows in both. The result is the median step time of each layout over
all its timed steps and their ratio. Writes benchmarks/results/data_parallel.json and a section of
docs/benchmark.md. Nothing else may run on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, git_commit, markdown_table, random_batch, save_result, update_doc_section

LAYOUTS = {"one process, 2 threads": "single", "two processes, 1 thread each (DDP)": "ddp"}


def _worker(layout: str, args: argparse.Namespace) -> None:
    """Time `args.steps` steps after two warm-up steps; rank 0 prints their seconds as JSON."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from conformer_prune.config import load_config, recipe_path
    from conformer_prune.model import build_model
    from conformer_prune.model.conformer import feature_frames
    from conformer_prune.train import TrainConfig
    from conformer_prune.train.loop import autocast, make_optimizer, resolve_precision

    ddp = layout == "ddp"
    if ddp:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    torch.set_num_threads(1 if ddp else 2)
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, recipe_path(args.recipe), args.set)
    cfg.model.vocab_size = 128
    cfg.model.feature_rate = cfg.features.frames_per_second  # as training sets it
    model = build_model(cfg.model).train()
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    net = DistributedDataParallel(model) if ddp else model
    per_rank = args.batch // world
    frames = cfg.model.encoder_frames(feature_frames(args.seconds, cfg.model.feature_rate))
    batch = random_batch(cfg.model, per_rank, args.seconds, frames // 3)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)  # as a run resolves it

    def step() -> None:
        with autocast(device, precision):
            log_probs, lengths = net(batch.feats, batch.feat_lengths)
            loss = model.ctc_loss(log_probs, lengths, batch.targets, batch.target_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    for _ in range(2):
        step()
    seconds = []
    for _ in range(args.steps):
        if ddp:
            dist.barrier()
        start = time.perf_counter()
        step()
        if ddp:
            dist.barrier()
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        print(json.dumps(seconds), flush=True)
    if ddp:
        dist.destroy_process_group()


def _launch(layout: str, args: argparse.Namespace) -> list[float]:
    tail = [__file__, "--worker", layout, "--recipe", args.recipe, "--steps", str(args.steps)]
    tail += ["--batch", str(args.batch), "--seconds", str(args.seconds), "--set", *args.set]
    if layout == "ddp":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *tail]
    else:
        argv = [sys.executable, *tail]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if layout == "ddp" else "2"}
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env, check=True).stdout
    return [float(s) for s in json.loads(out.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="reference-teacher", help="training recipe (name or YAML)")
    parser.add_argument("--set", nargs="*", default=[], help="training overrides")
    parser.add_argument("--batch", type=int, default=8, help="utterances per step (global)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of audio per utterance")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per launch")
    parser.add_argument("--rounds", type=int, default=3, help="launches of each layout, alternated")
    parser.add_argument("--worker", choices=sorted(set(LAYOUTS.values())), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch % 2:
        parser.error("--batch must be even (the two processes take half each)")
    if args.worker:
        _worker(args.worker, args)
        return
    commit = git_commit()
    steps: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    rounds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for r in range(args.rounds):
        for name, layout in LAYOUTS.items():
            seconds = _launch(layout, args)
            steps[name] += seconds
            rounds[name].append(statistics.median(seconds))
            print(f"round {r + 1}: {name}: median {statistics.median(seconds):.3f} s per step", flush=True)
    median = {name: statistics.median(s) for name, s in steps.items()}
    single, ddp = (median[name] for name in LAYOUTS)
    record = {
        "step_seconds": median,
        "round_medians": rounds,
        "speedup_ddp": single / ddp,
        "recipe": args.recipe,
        "overrides": args.set,
        "batch": {"utterances": args.batch, "seconds": args.seconds},
        "steps_per_launch": args.steps,
        "rounds": args.rounds,
        "commit": commit,
        "command": command_line(),
    }
    print(json.dumps(record, indent=1), flush=True)
    save_result("data_parallel", record)
    rows = [
        [
            name,
            f"{median[name]:.3f}",
            " / ".join(f"{s:.3f}" for s in rounds[name]),
            f"{single / median[name]:.2f}x",
        ]
        for name in LAYOUTS
    ]
    update_doc_section(
        "data_parallel",
        "## One process or two on 2 cores (`benchmarks/data_parallel.py`)\n\n"
        f"A training step of recipe `{args.recipe}`"
        + (f" with `{' '.join(args.set)}`" if args.set else "")
        + f" on {args.batch} x {args.seconds:g} s of random features (the same global batch in both "
        f"layouts), {args.steps} timed steps per launch, {args.rounds} launches of each layout "
        f"alternated, nothing else on the 2 cores. Two data-parallel processes train "
        f"**{record['speedup_ddp']:.2f}x** as fast as one with 2 threads. Commit `{commit}`.\n\n"
        + markdown_table(["layout", "median s per step", "per launch", "speed"], rows)
        + f"\n\nReproduce: `{record['command']}`.\n",
    )


if __name__ == "__main__":
    main()
