"""The pruning recipe's learning rate, chosen on dev, for the pruned model and for `continued`.

The recipe's peak learning rate of the weights (`lr` in recipes/prune.yaml, then 5e-4) was never
chosen on dev: the reference teacher trained at 2e-3, and at the end of compare.py's runs at 50% the
pruned model's dev WER was still falling (14.96% -> 14.69% in its last epoch) while `continued`'s
was flat (12.97% -> 12.97%). Issue 18 asks `l0-distill` at 50% for at most 1.03x the test WER of
`continued`; it measured 1.106x. This benchmark trains both at each of `LRS` so that the rate
both use is chosen on dev, not assumed.

Usage:
    nohup python benchmarks/lr.py > benchmarks/cache/lr.log 2>&1 &
    python benchmarks/lr.py --plan       # where each run stands; trains nothing
    python benchmarks/lr.py --record     # the record and docs from the runs finished so far
    python benchmarks/lr.py --quick      # the same code path on the quick teacher (1 + 1 epochs)

The runs are compare.py's own (its overrides, seed 0, bf16, 2 threads; `l0-distill` with the
latency ceiling) with only `lr` changed, so at 5e-4 they are the `l0-distill-50` and `continued-100`
compare.py trained before, and at each rate the rule chose they are compare.py's runs now (one run
each in benchmarks/cache/runs/, trained once). The pruned runs train first: the rule below needs
only them.

The rule, fixed before the runs: a rate replaces the recipe's, for the pruned model or for
`continued` alike, only when it has the lowest dev WER of its kind and the paired-bootstrap 95%
interval of its dev WER minus the recipe rate's lies below 0 (a change retrains every row of the
comparison, so it needs evidence). Test and test-unseen are reported, not chosen on. Writes
benchmarks/results/lr.json and the lr section of docs/benchmark.md: by the last process out, or by
``--record`` (partial until every run has finished).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    ROOT,
    Jobs,
    command_line,
    git_commit,
    markdown_table,
    print_plan,
    quick_inputs,
    reference_corpus,
    run_dir,
    save_result,
    update_doc_section,
)
from compare import CONTROL, Precision, profiled_table, run_overrides, table_precision
from prune import SPLITS, evaluated_splits, run_stage, split_sizes, teacher_eval, versus

from conformer_prune.config import load_config, recipe_path
from conformer_prune.evaluate.report import format_interval
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.methods import MethodName

LRS = (5e-4, 1e-3, 2e-3)  # the recipe's rate when the rule was fixed, then 2x and the teacher's own (4x)
# the recipe's rate when the rule was fixed (2026-12-05), which every other rate is measured against:
# fixed here, not read from recipes/prune.yaml, so that adopting the chosen rate there changes
# neither the runs nor the rule of this benchmark
RECIPE_LR = LRS[0]
KINDS: dict[str, tuple[MethodName, float]] = {"pruned": ("l0-distill", 0.5), "continued": (CONTROL, 1.0)}


def run_key(kind: str, lr: float) -> str:
    """A run's name here, e.g. pruned-lr0.001."""
    return f"{kind}-lr{lr:g}"


def configs_names() -> list[str]:
    """Every run's name, in the order `configs` trains them."""
    return [run_key(kind, lr) for kind in KINDS for lr in LRS]


def configs(table: Path, quick: bool, precision: Precision) -> dict[str, PruneConfig]:
    """Every run's config, pruned ones first: compare.py's run of that kind at seed 0 with `lr` set
    (at `RECIPE_LR`, the run compare.py trained before the recipe took the chosen rate)."""
    out: dict[str, PruneConfig] = {}
    for kind, (method, ratio) in KINDS.items():
        overrides = run_overrides(method, ratio, 0, 0, quick, table, precision=precision)
        for lr in LRS:
            out[run_key(kind, lr)] = load_config(PruneConfig, recipe_path("prune"), [*overrides, f"lr={lr}"])
    return out


def choose(rows: dict[float, dict[str, Any]], base: float) -> dict[str, Any]:
    """The rule on one kind's finished runs (`rows`: lr -> row with ``wer_dev`` and, but for the
    recipe's rate, ``dev_vs_recipe``): the lowest-dev rate replaces the recipe's only when its dev
    interval against it lies below 0. Undecided (``chosen`` None) until every rate has run."""
    if set(rows) != set(LRS):
        return {"chosen": None, "lowest_dev": None, "reason": f"not run: {sorted(set(LRS) - set(rows))}"}
    lowest = min(rows, key=lambda lr: rows[lr]["wer_dev"])
    if lowest == base:
        return {"chosen": base, "lowest_dev": lowest, "reason": "the recipe's rate has the lowest dev WER"}
    dev = rows[lowest]["dev_vs_recipe"]
    if dev["high"] < 0:
        return {"chosen": lowest, "lowest_dev": lowest, "reason": "lowest dev WER, interval below 0"}
    return {"chosen": base, "lowest_dev": lowest, "reason": "lowest dev WER, but its interval reaches 0"}


def make_record(
    teacher_result: dict[str, Any], work: Path, finished: dict[str, dict[str, Any]], base: float
) -> dict[str, Any]:
    """Each finished run's WER and size, its dev interval against the recipe's rate of its kind,
    the rule's choice per kind, and the pruned model's test WER over `continued`'s at each rate
    and at the chosen ones (with the paired interval of the difference)."""
    some = next(iter(finished))
    record: dict[str, Any] = {
        "lrs": list(LRS),
        "recipe_lr": base,
        "splits": {s: split_sizes(work / some, s, teacher_result[f"hours_{s}"]) for s in SPLITS},
        "teacher": {f"wer_{s}": teacher_result[f"wer_{s}"] for s in SPLITS},
        "runs": {},
        "not_run": [k for k in configs_names() if k not in finished],
    }
    for kind in KINDS:
        rows: dict[float, dict[str, Any]] = {}
        for lr in LRS:
            key = run_key(kind, lr)
            if key not in finished:
                continue
            pruned = finished[key]["pruned"]
            row = {
                **{f"wer_{s}": pruned[f"wer_{s}"] for s in SPLITS},
                "params": pruned["params"],
                "run": (work / key).resolve().name,
            }
            if lr != base and run_key(kind, base) in finished:
                row["dev_vs_recipe"] = versus(work / run_key(kind, base), work / key, "dev")
            rows[lr] = row
            record["runs"][key] = {"kind": kind, "lr": lr, **row}
        record[f"choice_{kind}"] = choose(rows, base)
    record["ratio_by_lr"] = {
        f"{lr:g}": finished[run_key("pruned", lr)]["pruned"]["wer_test"]
        / finished[run_key("continued", lr)]["pruned"]["wer_test"]
        for lr in LRS
        if run_key("pruned", lr) in finished and run_key("continued", lr) in finished
    }
    chosen = {kind: record[f"choice_{kind}"]["chosen"] for kind in KINDS}
    if None not in chosen.values():
        a, b = run_key("continued", chosen["continued"]), run_key("pruned", chosen["pruned"])
        record["chosen"] = {
            "pruned_lr": chosen["pruned"],
            "continued_lr": chosen["continued"],
            "test_ratio": finished[b]["pruned"]["wer_test"] / finished[a]["pruned"]["wer_test"],
            "pruned_minus_continued": {s: versus(work / a, work / b, s) for s in SPLITS},
        }
    return record


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def section(record: dict[str, Any]) -> str:
    """The lr section of docs/benchmark.md."""
    names = {"dev": "dev", "test": "test", "test_unseen": "test-unseen"}
    sizes = "; ".join(
        f"{names[s]} {v['utterances']:,} utterances, {v['words']:,} words"
        for s, v in record["splits"].items()
    )
    rows = [
        [
            r["kind"],
            f"{r['lr']:g}" + (" (recipe)" if r["lr"] == record["recipe_lr"] else ""),
            *[_percent(r[f"wer_{s}"]) for s in SPLITS],
            format_interval(r["dev_vs_recipe"]) if "dev_vs_recipe" in r else "-",
            r["run"],
        ]
        for r in record["runs"].values()
    ]
    header = ["run", "lr", *(f"WER {names[s]}" for s in SPLITS), "dev minus the recipe's rate (95%)", "run"]
    lines = [
        "## The pruning recipe's learning rate (`benchmarks/lr.py`)",
        "",
        "`l0-distill` at 50% of the parameters (the latency ceiling) and `continued`, as compare.py "
        "runs them, at each peak learning rate of the weights. The rule, fixed before the runs: a rate "
        "replaces the recipe's only with the lowest dev WER of its kind and a dev interval against the "
        f"recipe's rate below 0. Intervals: the paired bootstrap's 95%. Splits: {sizes}. Commit "
        f"`{record['commit']}`.",
        "",
        markdown_table(header, rows),
        "",
    ]
    for kind in KINDS:
        c = record[f"choice_{kind}"]
        shown = "undecided" if c["chosen"] is None else f"{c['chosen']:g}"
        lines.append(f"- {kind}: **{shown}** ({c['reason']}).")
    for lr, ratio in record["ratio_by_lr"].items():
        lines.append(f"- At lr {lr}, pruned test WER / continued's: {ratio:.3f}.")
    if chosen := record.get("chosen"):
        diff = chosen["pruned_minus_continued"]
        lines.append(
            f"- At the chosen rates, pruned test WER / continued's: **{chosen['test_ratio']:.3f}** "
            "(issue 18: at most 1.03); pruned minus continued: "
            + "; ".join(f"{names[s]} {format_interval(d)}" for s, d in diff.items())
            + "."
        )
    if record["not_run"]:
        lines.append(f"- Not run yet: {', '.join(record['not_run'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="quick teacher and corpus, 1 + 1 epochs")
    parser.add_argument("--plan", action="store_true", help="where each run stands; trains nothing")
    parser.add_argument(
        "--record", action="store_true", help="write the record and docs from the runs finished so far"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes sharing the runs (start this many), 1 thread each"
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="as compare.py's")
    args = parser.parse_args()
    commit = git_commit()
    if args.quick:
        corpus, teacher = quick_inputs()
    else:
        corpus, teacher = reference_corpus(make=not args.plan), ROOT / "benchmarks" / "models" / "teacher.pt"
    precision = table_precision(args.precision, args.quick)
    name = "lr-quick" if args.quick else "lr"
    work = CACHE / name
    compared = CACHE / ("compare-quick" if args.quick else "compare")  # its teacher and table are ours
    table = profiled_table(compared)
    cfgs = configs(table, args.quick, precision)
    jobs = Jobs(args.jobs, work)
    if args.plan:
        print_plan(jobs, cfgs, teacher, corpus)
        return
    evaluated = evaluated_splits(corpus)
    with jobs.preparing():
        teacher_result = teacher_eval(teacher, evaluated, compared / "teacher")
    finished: dict[str, dict[str, Any]] = {}
    for k, cfg in cfgs.items():
        c = jobs.config(cfg, teacher, corpus)

        def train(k: str = k, c: PruneConfig = c) -> None:
            finished[k] = run_stage(c, teacher, corpus, evaluated, work / k, teacher_result, latency=False)

        if not args.record:
            jobs.run(k, run_dir(c, teacher, corpus), train)
        elif (run_dir(c, teacher, corpus) / "eval.json").exists():  # read, never trained
            train()
    if not args.record:
        jobs.settle()
        if not jobs.last():  # the last process out writes the record
            return
    if not finished:
        raise SystemExit("no run has finished yet: nothing to record")
    record = make_record(teacher_result, work, finished, RECIPE_LR)
    record |= {"precision": precision, "commit": commit, "command": command_line()}
    save_result(name, record)
    text = section(record)
    if not args.quick:
        update_doc_section("lr", text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
