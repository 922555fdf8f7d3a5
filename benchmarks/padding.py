"""What padding each batch's frame axis to a multiple saves on a CPU (`pad_frames_to`).

Usage:
    python benchmarks/padding.py                         # multiple 64, 2 pairs of processes
    python benchmarks/padding.py --multiple 128 --pairs 3
    nohup python benchmarks/padding.py --check > benchmarks/cache/padding.log 2>&1 &
    python benchmarks/padding.py --check --plan          # where its two runs stand; trains nothing

On a CPU, PyTorch's bf16 kernels come from oneDNN, which compiles them for every new input shape
and keeps them in a per-process cache. The pruning engine's batches are cut by length, so nearly
every batch has a length not seen before, and its step compiles every kernel again: the compact
student, whose blocks all have different widths, needs about 260 of them per new length against
the gated student's 47 (counted with ONEDNN_VERBOSE=profile_create). Padded to a multiple, the
batches of an epoch have a few dozen lengths, whose kernels are compiled once and then reused.

A step here is a fine-tuning step of the compact student (the committed 50% model's masks, on the
reference teacher), with the recipe's distillation, precision (bf16 where native) and 2 threads,
on random features shaped as the engine's own sampler cuts an epoch of the reference corpus's
training lengths (`BucketBatchSampler`, `collate`, the recipe's max_frames). Each process first
takes `--warm` batches of the epoch (the kernels an epoch has met by then), then times the next
`--steps`. Each variant runs in its own new process, as runs do, the two alternating, because in
one process a variant that meets a new length every step evicts the other's kernels from the
cache. The speed-up is the median of the pairs' ratios of mean step times. The padded variant sets
oneDNN's cache capacity as the engine does (`start_run`). Writes benchmarks/results/padding.json
and a section of docs/benchmark.md.

`--check`: whether padding joins the recipe. Two runs of the pruning engine, cached and resumable
like every benchmark's: `recipe` (the reference recipe as it was before padding joined it, with
`pad_frames_to` 1: distill.py's `chosen-prune1`, read where it has finished) and `padded` (the same
with `pad_frames_to` 64, the recipe's since 2026-12-05 and compare.py's `l0-distill` at 50%). The
rule, fixed before the run, as ceiling.py's: padding joins the recipe if the paired-bootstrap 95%
interval of the padded run's dev WER minus the recipe's reaches 0 or lies below it (padding is for
speed; what it must show is no harm on dev beyond noise). Test and test-unseen are reported, not
chosen on. Writes benchmarks/results/padding-check.json and the padding-check section of
docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    PRUNED,
    REFERENCE_CORPUS_DIR,
    TEACHER,
    Jobs,
    command_line,
    git_commit,
    markdown_table,
    plan_state,
    precision_overrides,
    reference_corpus,
    run_dir,
    save_result,
    update_doc_section,
)
from compact_finetune import _step, students
from compare import table_precision
from prune import SPLITS, evaluated_splits, run_stage, teacher_eval, versus

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.dataset import Batch, BucketBatchSampler, collate
from conformer_prune.evaluate.profile import in_new_process, machine
from conformer_prune.model import load_recognizer
from conformer_prune.model.conformer import ConformerConfig, feature_frames
from conformer_prune.prune.config import PruneConfig
from conformer_prune.train.loop import resolve_precision, start_run

TRAIN = REFERENCE_CORPUS_DIR / "train"
MULTIPLE = 64  # --check's
CHECK_RUNS = {"recipe": ["pad_frames_to=1"], "padded": [f"pad_frames_to={MULTIPLE}"]}


def training_lengths(rate: float) -> list[int]:
    """Feature frames of the training utterances: the reference corpus's where it has been
    synthesised, else 20,000 lengths drawn uniformly from its range (1.5-16 s)."""
    if TRAIN.exists():
        return [feature_frames(u.duration, rate) for u in read_corpus(TRAIN)]
    gen = torch.Generator().manual_seed(0)
    return torch.randint(150, 1600, (20000,), generator=gen).tolist()


def batches(cfg: PruneConfig, multiple: int, model: ConformerConfig, count: int) -> list[Batch]:
    """The first `count` batches of an epoch as the engine cuts them, with random features."""
    lengths = training_lengths(model.feature_rate)
    sampler = BucketBatchSampler(lengths, cfg.max_frames, seed=cfg.seed, pad_frames_to=multiple)
    gen = torch.Generator().manual_seed(1)
    out = []
    for indices in list(sampler)[:count]:
        samples = [
            (
                torch.randn(lengths[i], model.n_mels, generator=gen),
                torch.randint(1, model.vocab_size, (max(2, lengths[i] // 40),), generator=gen),
                i,
            )
            for i in indices
        ]
        out.append(collate(samples, pad_frames_to=multiple))
    return out


def child(multiple: int, warm: int, steps: int) -> dict[str, Any]:
    """One variant in this process: the mean time of `steps` steps after `warm` of them."""
    cfg = load_config(PruneConfig, recipe_path("prune"), [f"pad_frames_to={multiple}"])
    start_run(2, 0, cfg.pad_frames_to)
    cfg.precision = resolve_precision(cfg.precision, torch.device("cpu"))  # type: ignore[assignment]
    teacher = load_recognizer(TEACHER).model.eval()
    _, student = students(teacher, cfg, load_recognizer(PRUNED).meta["masks"])
    epoch = batches(cfg, multiple, teacher.config, warm + steps)
    times = []
    for i, batch in enumerate(epoch):
        step = _step(student, teacher, cfg, batch)
        start = time.perf_counter()
        step()
        if i >= warm:
            times.append(time.perf_counter() - start)
    return {
        "mean_step_s": statistics.mean(times),
        "lengths_timed": len({b.feats.shape[1] for b in epoch[warm:]}),
        "shapes_timed": len({tuple(b.feats.shape[:2]) for b in epoch[warm:]}),
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "precision": cfg.precision,
    }


def check(plan: bool, precision: str | None) -> None:
    """The two runs of `--check`, and the record once both have finished."""
    commit = git_commit()
    corpus, teacher = reference_corpus(make=not plan), TEACHER
    work = CACHE / "padding"
    overrides = precision_overrides(table_precision(precision, quick=False))  # type: ignore[arg-type]
    jobs = Jobs(1, work)
    cfgs = {
        name: jobs.config(
            load_config(PruneConfig, recipe_path("prune"), [*overrides, *extra]), teacher, corpus
        )
        for name, extra in CHECK_RUNS.items()
    }
    if plan:
        for name, cfg in cfgs.items():
            state, shown = plan_state(cfg, teacher, corpus)
            print(f"{name:<8} {state}  ({shown.name})", flush=True)
        return
    evaluated = evaluated_splits(corpus)
    with jobs.preparing():
        teacher_result = teacher_eval(teacher, evaluated, work / "teacher")
    reports: dict[str, dict[str, Any]] = {}
    for name, cfg in cfgs.items():

        def train(name: str = name, cfg: PruneConfig = cfg) -> None:
            reports[name] = run_stage(
                cfg, teacher, corpus, evaluated, work / name, teacher_result, latency=False
            )

        jobs.run(name, run_dir(cfg, teacher, corpus), train)
    jobs.settle()
    if not jobs.last():
        return
    record: dict[str, Any] = {
        name: {f"wer_{s}": reports[name]["pruned"][f"wer_{s}"] for s in SPLITS} for name in CHECK_RUNS
    }
    record["padded_vs_recipe"] = {s: versus(work / "recipe", work / "padded", s) for s in SPLITS}
    record["joins_the_recipe"] = record["padded_vs_recipe"]["dev"]["low"] <= 0
    record["seconds_per_step"] = {name: step_seconds(work / name) for name in CHECK_RUNS}
    record |= {"multiple": MULTIPLE, "commit": commit, "command": command_line()}
    print(json.dumps(record, indent=2))
    save_result("padding-check", record)
    update_doc_section("padding-check", check_section(record))


def step_seconds(run: Path) -> dict[str, float]:
    """Seconds per step of each stage, from the run's log (one line per epoch). The two runs may
    have trained on other machines, threads or company: `benchmarks/padding.py`'s steps are the
    comparison; these say what the runs took."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    stages: dict[str, list[float]] = {}
    for epoch in (e for e in log if "train_seconds" in e):
        stages.setdefault(epoch["stage"], []).append(epoch["train_seconds"] / epoch["steps"])
    return {stage: statistics.mean(v) for stage, v in stages.items()}


def check_section(record: dict[str, Any]) -> str:
    vs = record["padded_vs_recipe"]
    rows = []
    for name in CHECK_RUNS:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in record["seconds_per_step"][name].items())
        rows.append([name, *(f"{100 * record[name][f'wer_{s}']:.2f}%" for s in SPLITS), steps])
    rows.append(
        [
            "padded minus recipe",
            *(
                f"{100 * vs[s]['delta']:+.2f} [{100 * vs[s]['low']:+.2f}, {100 * vs[s]['high']:+.2f}]"
                for s in SPLITS
            ),
            "-",
        ]
    )
    sizes = "; ".join(
        f"{s.replace('_', '-')} {vs[s]['utterances']:,} utterances, {vs[s]['words']:,} words" for s in SPLITS
    )
    verdict = "joins" if record["joins_the_recipe"] else "does not join"
    return (
        "## Padding in the recipe (`benchmarks/padding.py --check`)\n\n"
        f"The reference recipe against the same with `pad_frames_to` {record['multiple']}. Padding "
        f"**{verdict}** the recipe (rule: the dev interval of padded minus recipe reaches 0 or lies "
        f"below it). Intervals: the paired bootstrap's 95%. Splits: {sizes}. Seconds per step are "
        f"each run's own, possibly on other machines or beside other runs. Commit `{record['commit']}`.\n\n"
        + markdown_table(["run", *(f"{s.replace('_', '-')} WER" for s in SPLITS), "seconds per step"], rows)
        + f"\n\nReproduce: `{record['command']}`.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--warm", type=int, default=40, help="untimed steps first (the epoch so far)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument(
        "--check", action="store_true", help="train the recipe padded to 64 frames: does padding join it?"
    )
    parser.add_argument("--plan", action="store_true", help="with --check: where its runs stand")
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="with --check: both runs' precision, as compare.py's (fp32 where bf16 is not native)",
    )
    args = parser.parse_args()
    if args.check:
        check(args.plan, args.precision)
        return
    commit = git_commit()
    runs: dict[str, list[dict[str, Any]]] = {"unpadded": [], "padded": []}
    for pair in range(args.pairs):
        for name, multiple in (("unpadded", 1), ("padded", args.multiple)):
            runs[name].append(in_new_process(child, multiple, args.warm, args.steps))
            print(f"pair {pair} {name}: {runs[name][-1]}", flush=True)
    ratios = [
        u["mean_step_s"] / p["mean_step_s"] for u, p in zip(runs["unpadded"], runs["padded"], strict=True)
    ]
    record = {
        "multiple": args.multiple,
        "speedup": statistics.median(ratios),
        "ratios": ratios,
        "runs": runs,
        "warm": args.warm,
        "steps": args.steps,
        "threads": 2,
        "machine": machine(),
        "commit": commit,
        "command": command_line(),
    }
    save_result("padding", record)
    rows = [
        [
            name,
            ", ".join(f"{1000 * r['mean_step_s']:.0f}" for r in rs),
            str(rs[0]["lengths_timed"]),
            str(rs[0]["shapes_timed"]),
            ", ".join(f"{r['max_rss_gb']:.2f}" for r in rs),
        ]
        for name, rs in runs.items()
    ]
    update_doc_section(
        "padding",
        "## Batches padded to a multiple (`benchmarks/padding.py`)\n\n"
        f"Fine-tuning steps of the compact 50% student ({runs['padded'][0]['precision']}, 2 threads, "
        f"{record['machine']['cpu']}) on an epoch's batches as the engine cuts them, unpadded against "
        f"padded to a multiple of {args.multiple} frames, each variant in its own new process "
        f"({args.warm} steps untimed, then {args.steps} timed), alternating. Padded steps are "
        f"**{record['speedup']:.2f}x** faster (median of {args.pairs} pairs' ratios: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}). "
        f"Commit `{commit}`.\n\n"
        + markdown_table(
            ["batches", "mean step (ms), each process", "lengths timed", "shapes timed", "peak RSS (GB)"],
            rows,
        )
        + f"\n\nReproduce: `{record['command']}`.\n",
    )


if __name__ == "__main__":
    main()
