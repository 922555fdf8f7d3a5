"""A latency ceiling beside the parameter target: at 50% of the parameters, what does capping the
model's ONNX Runtime latency cost in WER?

Issue 18 asks `l0-distill` at 50% of the parameters to run at least 40% faster than the teacher.
The recipe's parameter budget alone gave 1.53x (35% less time): it keeps the front end's channels
and the convolution modules, cheap in parameters and dear in time. `max_latency` caps the
latency too (`PruneConfig`, a second Lagrangian beside the parameter target).

Usage:
    python benchmarks/compare.py --prepare    # first, on quiet cores: the teacher's latency table
    nohup python benchmarks/ceiling.py > benchmarks/cache/ceiling.log 2>&1 &
    python benchmarks/ceiling.py --plan       # where both runs stand; trains nothing
    python benchmarks/ceiling.py --quick      # same code path on the quick teacher (teacher.py --quick)
    # where bf16 is not native: --precision fp32 on each command, as compare.py's (both runs in fp32;
    # `recipe` is then compare.py --precision fp32's l0-distill at 50%)

Two runs of the pruning engine, cached and resumable like every benchmark's (benchmarks/cache/runs/):
- `recipe`: the reference recipe (`recipes/prune.yaml`, batches padded to 64 frames since
  2026-12-05), padding.py's `padded` and compare.py's `l0-distill` at 50% (restored from its
  record when it finished elsewhere: its latency is measured on its shape);
- `ceiling`: the same with ``max_latency`` CEILING, on the latency table compare.py profiles
  (ONNX Runtime fp32, 2 threads, batch 1, a 10 s utterance).

The rule, fixed before the run: the ceiling joins the method that compare.py compares if its dev
WER is not worse than the recipe's beyond noise (the paired-bootstrap 95% interval of the
difference on dev reaches 0 or lies below it) and its measured latency is at most 0.60 of the
teacher's (issue 18's 40%). Test and test-unseen are reported, not chosen on. The last process out
times the teacher and both models interleaved on ONNX Runtime (2 threads, batch 1, 10 s) in a new
process, and writes benchmarks/results/ceiling.json and the ceiling section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    TEACHER,
    Jobs,
    command_line,
    git_commit,
    markdown_table,
    precision_overrides,
    print_plan,
    quick_inputs,
    reference_corpus,
    save_result,
    timing_model,
    update_doc_section,
)
from compare import CEILING, LATENCY_RUNTIME, ceiling_overrides, profiled_table, table_precision
from prune import SPLITS, evaluated_splits, split_sizes, teacher_eval, train_runs, versus

from conformer_prune.config import load_config, recipe_path
from conformer_prune.evaluate.profile import machine, measured_ratios
from conformer_prune.evaluate.report import format_interval
from conformer_prune.model import load_recognizer
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import as_float
from conformer_prune.prune.latency import LatencyModel

ISSUE_RATIO = 0.60  # the measured latency the rule asks for, as a fraction of the teacher's
THREADS, ROUNDS = 2, 15  # the timing: threads, and interleaved rounds (medians)
RUNS = ("recipe", "ceiling")


def configs(table: Path, overrides: list[str]) -> dict[str, PruneConfig]:
    """The two runs' configs: the recipe, and the recipe with the latency ceiling on `table`."""
    recipe = load_config(PruneConfig, recipe_path("prune"), overrides)
    ceiling = load_config(
        PruneConfig, recipe_path("prune"), [*overrides, *ceiling_overrides("l0-distill", 0.5, table)]
    )
    return {"recipe": recipe, "ceiling": ceiling}


def verdict(record: dict[str, Any]) -> dict[str, Any]:
    """The rule on a record: the dev interval of ceiling - recipe reaches 0 or lies below it, and
    the ceiling's measured latency is at most ISSUE_RATIO of the teacher's."""
    dev = record["ceiling_vs_recipe"]["dev"]
    ratio = record["ceiling"]["latency_vs_teacher"]
    not_worse = dev["low"] <= 0
    fast = ratio <= ISSUE_RATIO
    return {"dev_not_worse": not_worse, "latency_met": fast, "adopt": not_worse and fast}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="quick teacher and corpus, 1 + 1 epochs")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes sharing the two runs (start this many), 1 thread each"
    )
    parser.add_argument("--plan", action="store_true", help="where both runs stand; trains nothing")
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="both runs' precision, as compare.py's: the recipe's bf16 by default; fp32 on a CPU without "
        "native bf16 (then `recipe` is compare.py --precision fp32's l0-distill at 50%%)",
    )
    args = parser.parse_args()
    commit = git_commit()
    if args.quick:
        corpus, teacher = quick_inputs()
        overrides = ["prune_epochs=1", "finetune_epochs=1"]
    else:
        corpus, teacher = reference_corpus(), TEACHER
        overrides = []
    precision = table_precision(args.precision, args.quick)
    overrides += precision_overrides(precision)
    name = "ceiling-quick" if args.quick else "ceiling"
    work = CACHE / name
    table = profiled_table(CACHE / ("compare-quick" if args.quick else "compare"))
    cfgs = configs(table, overrides)
    jobs = Jobs(args.jobs, work)
    if args.plan:
        print_plan(jobs, cfgs, teacher, corpus)
        return
    evaluated = evaluated_splits(corpus)
    with jobs.preparing():
        teacher_result = teacher_eval(teacher, evaluated, work / "teacher")
    reports = train_runs(jobs, cfgs, teacher, corpus, evaluated, work, teacher_result)
    if not jobs.last():  # the last process out writes the record, once nothing else trains
        return
    record = make_record(teacher, teacher_result, reports, work, table)
    record |= {"precision": precision, "commit": commit, "command": command_line()}
    print(json.dumps(record, indent=2))
    save_result(name, record)
    if not args.quick:
        update_doc_section("ceiling", section(record))


def make_record(
    teacher: Path, teacher_result: dict[str, Any], reports: dict[str, dict[str, Any]], work: Path, table: Path
) -> dict[str, Any]:
    """Both runs' WER and size, their paired differences, and their latency on the table's runtime,
    measured (interleaved with the teacher's, in new processes: `measured_ratios`, as the
    ceiling itself is checked when pruning ends) and predicted."""
    latency = LatencyModel.load(table)
    models = [load_recognizer(teacher).model, *(timing_model(work / k) for k in RUNS)]
    timed = measured_ratios(models, LATENCY_RUNTIME, THREADS, rounds=ROUNDS)
    predicted_teacher = as_float(latency.predict(latency.config))
    record: dict[str, Any] = {
        "ceiling_latency": CEILING,
        "table": table.name,
        "table_machine": latency.cpu,  # the latencies here are this machine's
        "runtime": LATENCY_RUNTIME,
        "timing": {
            "threads": THREADS,
            "rounds": ROUNDS,
            "processes": len(timed.per_process),
            "batch": 1,
            "seconds": 10.0,
            "machine": machine(),
        },
        "splits": {s: split_sizes(work / "teacher", s, teacher_result[f"hours_{s}"]) for s in SPLITS},
        "teacher": {
            **{f"wer_{s}": teacher_result[f"wer_{s}"] for s in SPLITS},
            "params": teacher_result["params"],
            "macs_per_second": teacher_result["macs_per_second"],
            "latency_ms": timed.ms[0],
        },
    }
    for i, k in enumerate(RUNS, start=1):
        pruned = reports[k]["pruned"]
        shape = timing_model(work / k).config
        record[k] = {
            **{f"wer_{s}": pruned[f"wer_{s}"] for s in SPLITS},
            "params": pruned["params"],
            "macs_per_second": pruned["macs_per_second"],
            "params_vs_teacher": pruned["params"] / teacher_result["params"],
            "latency_ms": timed.ms[i],
            "latency_vs_teacher": timed.ratios[i],
            "latency_vs_teacher_per_process": [r[i] for r in timed.per_process],
            "predicted_vs_teacher": as_float(latency.predict(shape)) / predicted_teacher,
            "architecture": {f: getattr(shape, f) for f in ("heads", "ffn1", "ffn2", "conv_channels")}
            | {"subsampling_channels": shape.subsampling_channels},
            "run": (work / k).resolve().name,
        }
    record["ceiling_vs_recipe"] = {s: versus(work / "recipe", work / "ceiling", s) for s in SPLITS}
    record["verdict"] = verdict(record)
    return record


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def section(record: dict[str, Any]) -> str:
    """The ceiling section of docs/benchmark.md."""
    names = {"dev": "dev", "test": "test", "test_unseen": "test-unseen"}
    sizes = ", ".join(
        f"{names[s]} {v['utterances']:,} utterances / {v['words']:,} words"
        for s, v in record["splits"].items()
    )
    rows = [
        [
            label,
            f"{r['params']:,}",
            f"{r['latency_ms']:.1f} ({r['latency_ms'] / record['teacher']['latency_ms']:.3f})",
            "" if label == "teacher" else f"{r['predicted_vs_teacher']:.3f}",
            *[_percent(r[f"wer_{s}"]) for s in SPLITS],
        ]
        for label, r in (
            ("teacher", record["teacher"]),
            ("recipe (50% params)", record["recipe"]),
            (f"recipe + max_latency {record['ceiling_latency']}", record["ceiling"]),
        )
    ]
    header = ["model", "params", "ORT ms (of teacher)", "predicted", *(f"WER {names[s]}" for s in SPLITS)]
    diff = record["ceiling_vs_recipe"]
    v = record["verdict"]
    lines = [
        "## A latency ceiling beside the parameter target (`benchmarks/ceiling.py`)",
        "",
        f"Latency: ONNX Runtime fp32, {record['timing']['threads']} threads, batch 1, 10 s, the three models "
        f"interleaved, the median over {record['timing'].get('processes', 1)} new processes of each one's "
        f"median of {record['timing']['rounds']} rounds' ratios to the teacher, on "
        f"{record['timing']['machine']['cpu']} (the ceiling's table was profiled on "
        f"{record['table_machine']}). Splits: {sizes}.",
        "",
        markdown_table(header, rows),
        "",
        "Ceiling minus recipe (WER points, paired bootstrap 95%): "
        + "; ".join(f"{names[s]} {format_interval(d)}" for s, d in diff.items())
        + ".",
        "",
        f"The rule fixed before the run (dev WER not worse beyond noise, measured latency at most "
        f"{ISSUE_RATIO:.2f} of the teacher's): dev {'holds' if v['dev_not_worse'] else 'fails'}, latency "
        f"{'holds' if v['latency_met'] else 'fails'}, so the ceiling "
        f"{'joins' if v['adopt'] else 'does not join'} the method compare.py compares.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
