"""How well a latency table predicts the latency of the shapes pruning really leaves (issue 17).

Usage:
    python benchmarks/latency_model.py --tables benchmarks/results/compare-latency-ort.json
    python benchmarks/latency_model.py --tables old.json new.json --shapes 12   # two tables, one timing

The shapes are the compact models of the reference teacher's finished runs (their records in
benchmarks/results/runs/ keep each shape), at most `--shapes` of them spread evenly over their
parameter counts, and the committed benchmarks/models/pruned-50.pt. Each is built with random
weights (latency depends on the shape), and all of them are timed with the teacher interleaved,
round by round, on the tables' runtime (threads, batch and length from the first table), in a new
process, on quiet cores. For each table: the predicted ratio to the teacher against the measured
one, and their mean and largest absolute difference. Writes benchmarks/results/latency_model.json
and the latency-model section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PRUNED,
    RUN_RECORDS,
    TEACHER,
    command_line,
    file_digest,
    git_commit,
    in_new_process,
    load_result,
    markdown_table,
    save_result,
    update_doc_section,
)

from conformer_prune.config import from_dict
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.evaluate.profile import machine, measure_models_ms
from conformer_prune.model import ConformerConfig, build_model, load_recognizer
from conformer_prune.prune.cost import as_float
from conformer_prune.prune.latency import LatencyModel, Runtime


def run_shapes(teacher: Path) -> dict[str, dict[str, Any]]:
    """The compact model's config of every finished run of `teacher` with a record, by run name,
    one per distinct shape."""
    digest = file_digest(teacher)
    shapes: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for path in sorted(RUN_RECORDS.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("identity", {}).get("teacher_sha256") != digest or "architecture" not in record:
            continue
        key = json.dumps(record["architecture"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            shapes[record["run"]] = record["architecture"]
    return shapes


def spread(params: dict[str, int], n: int) -> list[str]:
    """At most `n` names, spread evenly over their sorted parameter counts (ends included)."""
    names = sorted(params, key=lambda k: params[k])
    if len(names) <= n:
        return names
    return list(dict.fromkeys(names[round(i * (len(names) - 1) / (n - 1))] for i in range(n)))


def _timed(
    configs: dict[str, dict[str, Any]], runtime: Runtime, threads: int, rounds: int
) -> dict[str, float]:
    models = [load_recognizer(TEACHER).model]
    models += [build_model(from_dict(ConformerConfig, c)).eval() for c in configs.values()]
    times = measure_models_ms(models, runtime, threads=threads, rounds=rounds)
    return dict(zip(["teacher", *configs], times, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", nargs="+", type=Path, required=True, help="latency tables to check")
    parser.add_argument("--shapes", type=int, default=12, help="run shapes to time, besides pruned-50")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (medians)")
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    args = parser.parse_args()
    if args.docs:
        update_doc_section("latency-model", section(load_result("latency_model")))
        return
    tables = {path.name: LatencyModel.load(path) for path in args.tables}
    first = next(iter(tables.values()))
    teacher = load_recognizer(TEACHER).model
    for model in tables.values():
        model.describes(teacher.config)
    shapes = run_shapes(TEACHER)
    params = {k: count_params(build_model(from_dict(ConformerConfig, c))) for k, c in shapes.items()}
    configs = {k: shapes[k] for k in spread(params, args.shapes)}
    pruned = load_recognizer(PRUNED).model
    configs["pruned-50.pt"] = dataclasses.asdict(pruned.config)
    params["pruned-50.pt"] = count_params(pruned)
    print(
        f"timing the teacher and {len(configs)} shapes on {first.runtime}, {first.threads} threads",
        flush=True,
    )
    ms = in_new_process(_timed, configs, first.runtime, first.threads, args.rounds)
    teacher_params = count_params(teacher)
    teacher_ms = {name: as_float(model.predict(teacher.config)) for name, model in tables.items()}
    rows = []
    for name, config in configs.items():
        cfg = from_dict(ConformerConfig, config)
        row: dict[str, Any] = {
            "shape": name,
            "params_vs_teacher": params[name] / teacher_params,
            "latency_ms": ms[name],
            "measured_ratio": ms[name] / ms["teacher"],
        }
        for table_name, model in tables.items():
            predicted = as_float(model.predict(cfg)) / teacher_ms[table_name]
            row[f"predicted_ratio[{table_name}]"] = predicted
        rows.append(row)
    summary = {
        name: {
            "mean_abs_error": statistics.fmean(
                abs(r[f"predicted_ratio[{name}]"] - r["measured_ratio"]) for r in rows
            ),
            "max_abs_error": max(abs(r[f"predicted_ratio[{name}]"] - r["measured_ratio"]) for r in rows),
            "fit": model.table.get("fit"),
            "created": model.table.get("created"),
        }
        for name, model in tables.items()
    }
    record = {
        "runtime": first.runtime,
        "threads": first.threads,
        "batch": first.batch,
        "seconds": first.seconds,
        "rounds": args.rounds,
        "machine": machine(),
        "latency_ms_teacher": ms["teacher"],
        "rows": rows,
        "tables": summary,
        "commit": git_commit(),
        "command": command_line(),
    }
    print(json.dumps(record, indent=1))
    save_result("latency_model", record)
    update_doc_section("latency-model", section(record))


def section(record: dict[str, Any]) -> str:
    names = list(record["tables"])
    header = ["shape", "params (of teacher)", "measured", *(f"predicted ({n})" for n in names)]
    rows = [
        [
            r["shape"],
            f"{r['params_vs_teacher']:.3f}",
            f"{r['measured_ratio']:.3f}",
            *(f"{r[f'predicted_ratio[{n}]']:.3f}" for n in names),
        ]
        for r in sorted(record["rows"], key=lambda r: r["params_vs_teacher"])
    ]
    errors = "; ".join(
        f"{n}: mean {v['mean_abs_error']:.3f}, largest {v['max_abs_error']:.3f}"
        for n, v in record["tables"].items()
    )
    return "\n".join(
        [
            "## How well the latency table predicts pruned shapes (`benchmarks/latency_model.py`)",
            "",
            f"Latency as a fraction of the teacher's ({record['latency_ms_teacher']:.1f} ms) on "
            f"{record['runtime']}, {record['threads']} threads, batch {record['batch']}, "
            f"{record['seconds']:g} s, on {record['machine']['cpu']}; every shape (the compact models of "
            f"finished runs, and the committed pruned-50.pt) timed interleaved with the teacher, median "
            f"of {record['rounds']} rounds. Absolute error of the predicted fraction: {errors}.",
            "",
            "Tables: " + "; ".join(f"`{n}`: {v['fit']}" for n, v in record["tables"].items()) + ".",
            "",
            markdown_table(header, rows),
        ]
    )


if __name__ == "__main__":
    main()
