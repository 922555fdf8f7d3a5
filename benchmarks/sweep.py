"""One setting of the pruning recipe chosen on dev, for the pruned model and `continued` alike.

A sweep trains compare.py's `l0-distill` at 50% (the latency ceiling, seed 0) and its `continued`
control, each at every value of one setting (lr.py: the learning rate; budget.py: the epochs), with
only that setting changed, so that at the value the recipe takes its runs are compare.py's own (one
run each in benchmarks/cache/runs/, trained once). The pruned runs train first: the rule needs only
them.

The rule, fixed before the runs: a value replaces the recipe's, for each kind the sweep chooses,
only when it has the lowest dev WER of that kind and the paired-bootstrap 95% interval of its dev WER
minus the recipe value's lies below 0 (a change retrains every row of the comparison, so it needs
evidence). A kind the sweep does not choose for takes the pruned model's value (`continued` gets the
pruned model's training steps, whatever they are). Test and test-unseen are reported, not chosen on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    TEACHER,
    Jobs,
    command_line,
    git_commit,
    markdown_table,
    print_plan,
    quick_inputs,
    reference_corpus,
    save_result,
    update_doc_section,
)
from compare import CONTROL, Precision, profiled_table, run_overrides, table_precision
from prune import SPLITS, evaluated_splits, split_sizes, teacher_eval, train_runs, versus

from conformer_prune.config import load_config, recipe_path
from conformer_prune.evaluate.report import format_interval
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.methods import MethodName

KINDS: dict[str, tuple[MethodName, float]] = {"pruned": ("l0-distill", 0.5), "continued": (CONTROL, 1.0)}
NAMES = {"dev": "dev", "test": "test", "test_unseen": "test-unseen"}


@dataclass(frozen=True)
class Sweep:
    """What one sweep varies. `values`: the settings tried, the recipe's first (`base`, fixed in
    the benchmark, not read from recipes/prune.yaml, so that adopting the chosen value there
    changes neither its runs nor its rule); `overrides`: a value's PruneConfig overrides; `show`: a
    value as the docs write it; `chooses`: the kinds the rule chooses a value for."""

    name: str
    setting: str
    values: tuple[float, ...]
    overrides: Callable[[float], list[str]]
    show: Callable[[float], str]
    title: str
    what: str
    chooses: tuple[str, ...] = tuple(KINDS)

    @property
    def base(self) -> float:
        return self.values[0]

    def key(self, kind: str, value: float) -> str:
        """A run's name in the sweep, e.g. pruned-lr0.001."""
        return f"{kind}-{self.setting}{value:g}"

    def names(self) -> list[str]:
        """Every run's name, in the order `configs` trains them."""
        return [self.key(kind, v) for kind in KINDS for v in self.values]


def configs(sweep: Sweep, table: Path, quick: bool, precision: Precision) -> dict[str, PruneConfig]:
    """Every run's config, pruned ones first: compare.py's run of that kind at seed 0 with the
    sweep's overrides last."""
    out: dict[str, PruneConfig] = {}
    for kind, (method, ratio) in KINDS.items():
        overrides = run_overrides(method, ratio, 0, 0, quick, table, precision=precision)
        for v in sweep.values:
            settings = [*overrides, *sweep.overrides(v)]
            out[sweep.key(kind, v)] = load_config(PruneConfig, recipe_path("prune"), settings)
    return out


def choose(values: tuple[float, ...], rows: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """The rule on one kind's finished runs (`rows`: value -> row with ``wer_dev`` and, but for the
    recipe's value ``values[0]``, ``vs_recipe["dev"]``): the lowest-dev value replaces the recipe's
    only when its dev interval against it lies below 0. Undecided (``chosen`` None) until every
    value has run."""
    base = values[0]
    if set(rows) != set(values):
        return {"chosen": None, "lowest_dev": None, "reason": f"not run: {sorted(set(values) - set(rows))}"}
    lowest = min(rows, key=lambda v: rows[v]["wer_dev"])
    if lowest == base:
        return {"chosen": base, "lowest_dev": lowest, "reason": "the recipe's value has the lowest dev WER"}
    if rows[lowest]["vs_recipe"]["dev"]["high"] < 0:
        return {"chosen": lowest, "lowest_dev": lowest, "reason": "lowest dev WER, interval below 0"}
    return {"chosen": base, "lowest_dev": lowest, "reason": "lowest dev WER, but its interval reaches 0"}


def make_record(
    sweep: Sweep, teacher_result: dict[str, Any], work: Path, finished: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Each finished run's WER and size with its intervals against the recipe's value of its kind
    (every split; dev is chosen on), the rule's choice per kind, and the pruned model's test WER
    over `continued`'s at each value both ran at and at the chosen values, with the paired
    intervals of the difference."""
    some = next(iter(finished))
    base = sweep.base
    record: dict[str, Any] = {
        "setting": sweep.setting,
        "values": list(sweep.values),
        "recipe_value": base,
        "splits": {s: split_sizes(work / some, s, teacher_result[f"hours_{s}"]) for s in SPLITS},
        "teacher": {f"wer_{s}": teacher_result[f"wer_{s}"] for s in SPLITS},
        "runs": {},
        "not_run": [k for k in sweep.names() if k not in finished],
    }
    rows_by_kind: dict[str, dict[float, dict[str, Any]]] = {}
    for kind in KINDS:
        rows: dict[float, dict[str, Any]] = {}
        for v in sweep.values:
            key = sweep.key(kind, v)
            if key not in finished:
                continue
            pruned = finished[key]["pruned"]
            row = {
                **{f"wer_{s}": pruned[f"wer_{s}"] for s in SPLITS},
                "params": pruned["params"],
                "run": (work / key).resolve().name,
            }
            if v != base and sweep.key(kind, base) in finished:
                row["vs_recipe"] = {s: versus(work / sweep.key(kind, base), work / key, s) for s in SPLITS}
            rows[v] = row
            record["runs"][key] = {"kind": kind, "value": v, **row}
        rows_by_kind[kind] = rows
    for kind in sweep.chooses:
        record[f"choice_{kind}"] = choose(sweep.values, rows_by_kind[kind])
    record["versus_continued"] = {
        f"{v:g}": _versus_continued(sweep, work, finished, v, v)
        for v in sweep.values
        if sweep.key("pruned", v) in finished and sweep.key("continued", v) in finished
    }
    chosen = {kind: record[f"choice_{kind}"]["chosen"] for kind in sweep.chooses}
    chosen |= {kind: chosen["pruned"] for kind in KINDS if kind not in chosen}
    ran = None not in chosen.values() and all(sweep.key(k, v) in finished for k, v in chosen.items())
    if ran:  # every kind's chosen run has finished (one that follows the pruned model's may not)
        record["chosen"] = {
            "values": chosen,
            **_versus_continued(sweep, work, finished, chosen["pruned"], chosen["continued"]),
        }
    return record


def _versus_continued(
    sweep: Sweep, work: Path, finished: dict[str, dict[str, Any]], pruned: float, continued: float
) -> dict[str, Any]:
    """The pruned run at `pruned` against `continued`'s at `continued`: test WER ratio, and the
    paired interval of pruned minus continued on every split."""
    a, b = sweep.key("continued", continued), sweep.key("pruned", pruned)
    return {
        "test_ratio": finished[b]["pruned"]["wer_test"] / finished[a]["pruned"]["wer_test"],
        "pruned_minus_continued": {s: versus(work / a, work / b, s) for s in SPLITS},
    }


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _intervals(diff: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{NAMES[s]} {format_interval(d)}" for s, d in diff.items())


def section(sweep: Sweep, record: dict[str, Any]) -> str:
    """The sweep's section of docs/benchmark.md."""
    sizes = "; ".join(
        f"{NAMES[s]} {v['utterances']:,} utterances, {v['words']:,} words"
        for s, v in record["splits"].items()
    )
    rows = [
        [
            r["kind"],
            sweep.show(r["value"]) + (" (recipe)" if r["value"] == record["recipe_value"] else ""),
            *[_percent(r[f"wer_{s}"]) for s in SPLITS],
            *[format_interval(r["vs_recipe"][s]) if "vs_recipe" in r else "-" for s in SPLITS],
            r["run"],
        ]
        for r in record["runs"].values()
    ]
    header = [
        "run",
        sweep.setting,
        *(f"WER {NAMES[s]}" for s in SPLITS),
        *(f"{NAMES[s]} minus the recipe's (95%)" for s in SPLITS),
        "run",
    ]
    lines = [
        f"## {sweep.title} (`benchmarks/{sweep.name}.py`)",
        "",
        f"`l0-distill` at 50% of the parameters (the latency ceiling) and `continued`, as compare.py "
        f"runs them, at each {sweep.what}. The rule, fixed before the runs: a value replaces the "
        "recipe's only with the lowest dev WER of its kind and a dev interval against the recipe's "
        "value below 0; test and test-unseen are reported, not chosen on"
        + (
            f"; {', '.join(k for k in KINDS if k not in sweep.chooses)} takes the pruned model's value"
            if set(sweep.chooses) != set(KINDS)
            else ""
        )
        + f". Intervals: the paired bootstrap's 95%. Splits: {sizes}. Commit `{record['commit']}`.",
        "",
        markdown_table(header, rows),
        "",
    ]
    for kind in sweep.chooses:
        c = record[f"choice_{kind}"]
        shown = "undecided" if c["chosen"] is None else sweep.show(c["chosen"])
        lines.append(f"- {kind}: **{shown}** ({c['reason']}).")
    for v, vs in record["versus_continued"].items():
        lines.append(
            f"- At {sweep.show(float(v))} for both, pruned test WER / continued's: {vs['test_ratio']:.3f}; "
            f"pruned minus continued: {_intervals(vs['pruned_minus_continued'])}."
        )
    if chosen := record.get("chosen"):
        values = ", ".join(f"{k} {sweep.show(v)}" for k, v in chosen["values"].items())
        lines.append(
            f"- At the chosen values ({values}), pruned test WER / continued's: "
            f"**{chosen['test_ratio']:.3f}** (issue 18: at most 1.03); pruned minus continued: "
            f"{_intervals(chosen['pruned_minus_continued'])}."
        )
    if record["not_run"]:
        lines.append(f"- Not run yet: {', '.join(record['not_run'])}.")
    return "\n".join(lines)


def main(sweep: Sweep, description: str) -> None:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
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
        corpus, teacher = reference_corpus(make=not args.plan), TEACHER
    precision = table_precision(args.precision, args.quick)
    name = f"{sweep.name}-quick" if args.quick else sweep.name
    work = CACHE / name
    compared = CACHE / ("compare-quick" if args.quick else "compare")  # its teacher and table are ours
    table = profiled_table(compared)
    cfgs = configs(sweep, table, args.quick, precision)
    jobs = Jobs(args.jobs, work)
    if args.plan:
        print_plan(jobs, cfgs, teacher, corpus)
        return
    evaluated = evaluated_splits(corpus)
    with jobs.preparing():
        teacher_result = teacher_eval(teacher, evaluated, compared / "teacher")
    finished = train_runs(jobs, cfgs, teacher, corpus, evaluated, work, teacher_result, args.record)
    if not args.record and not jobs.last():  # the last process out writes the record
        return
    if not finished:
        raise SystemExit("no run has finished yet: nothing to record")
    record = make_record(sweep, teacher_result, work, finished)
    record |= {"precision": precision, "commit": commit, "command": command_line()}
    save_result(name, record)
    text = section(sweep, record)
    if not args.quick:
        update_doc_section(sweep.name, text)
    print(text, flush=True)
