"""The method on the reference teacher: L0 pruning with layerwise distillation to 50% of the
parameters, beside the equal-training control `continued` (the teacher itself, unpruned, trained
for the same steps with the same recipe, data order, SpecAugment and distillation).

Usage:
    nohup python benchmarks/prune.py > benchmarks/cache/prune.log 2>&1 &
    # or both runs at once, one thread each (`common.Jobs`); the last process out writes the record
    for k in 0 1; do
        nohup python benchmarks/prune.py --jobs 2 > benchmarks/cache/prune-$k.log 2>&1 &
    done
    python benchmarks/prune.py --quick        # same code path on the quick teacher (teacher.py --quick)

Stages are cached under benchmarks/cache/ and resume where they stopped: the reference corpus
(`synthesize(..., **REFERENCE_CORPUS)`, rebuilt deterministically if missing), the teacher's
evaluation (with its recognitions, for the paired bootstrap), the pruning run and the `continued`
run (each resumable at every epoch, skipped once its eval.json exists; both live in
benchmarks/cache/runs/, shared with the other benchmarks' identical runs, see `common.link_run`).
The pruned run's weights are read (the compact model, its layer table), so it is trained here if
it finished elsewhere; `continued` may be a run restored from its record in results/runs/, since
it is timed by its shape, which is the teacher's.
The WER differences of the pruned model against the teacher and against `continued` carry the
paired bootstrap's 95% interval on dev, test and test-unseen. Writes
benchmarks/results/prune-50.json, the prune section of docs/benchmark.md,
docs/prune-50-layers.png and the compact model benchmarks/models/pruned-50.pt (for latency.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    DOCS,
    PRUNED,
    TEACHER,
    Jobs,
    command_line,
    file_digest,
    fresh_latency_ms,
    git_commit,
    in_fresh_process,
    keep_run_result,
    link_run,
    markdown_table,
    quick_inputs,
    reference_corpus,
    run_dir,
    save_result,
    update_doc_section,
)

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.synth import UNSEEN_SPLIT
from conformer_prune.evaluate import evaluate_recognizer
from conformer_prune.evaluate.profile import machine
from conformer_prune.evaluate.run import compare_recognition_runs, compare_recogs, read_recogs, recogs_path
from conformer_prune.model import load_recognizer
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.report import prune_and_report
from conformer_prune.train.loop import native_bf16
from conformer_prune.utils import resolve_device, write_json

SPLITS = ("dev", "test", "test_unseen")  # test_unseen: the corpus's UNSEEN_SPLIT directory
TARGET_RATIO = 1.03  # pruned test WER at most 1.03x continued's (issue 15)
KEYS = ("params", "macs_per_second")
LATENCY_THREADS = 2
LATENCY_ROUNDS = 30  # teacher, pruned and continued timed interleaved in one loop, median of these


def evaluated_splits(corpus: Path) -> dict[str, Path]:
    """The split directories every benchmark scores, under the names its records use (`SPLITS`)."""
    return {s: corpus / (UNSEEN_SPLIT if s == "test_unseen" else s) for s in SPLITS}


def stage_seconds(log_path: Path) -> tuple[float, float]:
    """Wall seconds of the pruning and of the fine-tuning stage, from the run's log."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    prune_end = max((r["elapsed_seconds"] for r in epochs if r["stage"] == "prune"), default=0.0)
    return prune_end, epochs[-1]["elapsed_seconds"] - prune_end


def teacher_eval(
    teacher: Path, evaluated: dict[str, Path], out: Path, latency: bool = True
) -> dict[str, Any]:
    """The teacher's WER and cost (timed only with `latency`), with its recognitions in `out`,
    cached in out/eval.json for this teacher's bytes and these splits (`scored` in it): a directory
    that outlived the teacher or corpus it scored is evaluated again, not read."""
    cache = out / "eval.json"
    scored = _scored(teacher, evaluated)
    result: dict[str, Any] | None = json.loads(cache.read_text()) if cache.exists() else None
    if result is not None and result.pop("scored", None) != scored:
        print(f"{cache} scored another teacher or corpus: evaluating {teacher} again", flush=True)
        result = None
    if result is None:
        out.mkdir(parents=True, exist_ok=True)
        result = evaluate_recognizer(
            load_recognizer(teacher), evaluated, threads=2, recogs_dir=out, latency=latency
        )
        write_json(cache, {**result, "scored": scored})
    _check_splits(result, cache)
    return result


def _scored(teacher: Path, evaluated: dict[str, Path]) -> dict[str, Any]:
    """What a teacher's evaluation scored: its bytes, and each split by its corpus's synthesis
    record (a corpus without one, by its path)."""
    splits = {}
    for name, split in evaluated.items():
        record = split.parent / "corpus.json"
        corpus = file_digest(record) if record.exists() else str(split.parent.resolve())
        splits[name] = {"corpus": corpus, "split": split.name}
    return {"teacher_sha256": file_digest(teacher), "splits": splits}


def run_stage(
    cfg: PruneConfig,
    teacher: Path,
    corpus: Path,
    evaluated: dict[str, Path],
    run: Path,
    teacher_result: dict[str, Any],
    latency: bool = True,
    weights: bool = False,
) -> dict[str, Any]:
    """One pruning-engine run (resumable), skipped once its eval.json exists; `run` becomes a link
    to the run's shared directory (`common.link_run`), so another benchmark's identical run is reused.
    It evaluates on the run's own threads; `latency=False` leaves the timing out (other runs share
    the cores). It trains in a fresh process (`in_fresh_process`: the memory goes back when it
    ends), started again from the saved state if killed. `weights`: the caller reads the run's
    model and files beyond its record, so a run finished on another machine is trained again
    rather than restored from its record, and one restored here before is refused."""
    run = link_run(run, cfg, teacher, corpus, restore=not weights)
    _check_fresh(run / "eval.json")
    if weights and (run / "eval.json").exists() and not (run / "model.pt").exists():
        restored = run.resolve()
        raise SystemExit(f"{restored} was restored from its record, without weights: remove it to train it")
    if (run / "eval.json").exists():
        report: dict[str, Any] = json.loads((run / "eval.json").read_text())
    else:
        if corpus.name != "corpus-quick":
            check_precision(cfg, run)
        report = in_fresh_process(_resumed, cfg, teacher, corpus, evaluated, run, teacher_result, latency)
    # a quick run is a smoke test, not a result for git; a run restored from its record (no
    # weights) has its record already
    if corpus.name != "corpus-quick" and (run / "model.pt").exists():
        keep_run_result(run)
    return report


def train_runs(
    jobs: Jobs,
    cfgs: dict[str, PruneConfig],
    teacher: Path,
    corpus: Path,
    evaluated: dict[str, Path],
    work: Path,
    teacher_result: dict[str, Any],
    read_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each named run of `cfgs` (`run_stage` without timing, linked as work/<name>) trained through
    `jobs` and settled, and its report; `read_only` (a benchmark's ``--record``): only the runs
    finished already, read, none trained."""
    reports: dict[str, dict[str, Any]] = {}
    for k, cfg in cfgs.items():
        c = jobs.config(cfg, teacher, corpus)

        def train(k: str = k, c: PruneConfig = c) -> None:
            reports[k] = run_stage(c, teacher, corpus, evaluated, work / k, teacher_result, latency=False)

        if not read_only:
            jobs.run(k, run_dir(c, teacher, corpus), train)
        elif (run_dir(c, teacher, corpus) / "eval.json").exists():
            train()
    if not read_only:
        jobs.settle()
    return reports


def _resumed(
    cfg: PruneConfig,
    teacher: Path,
    corpus: Path,
    evaluated: dict[str, Path],
    run: Path,
    teacher_result: dict[str, Any],
    latency: bool,
) -> dict[str, Any]:
    """`prune_and_report` on `run`, resumed from its saved state when it has one (`run_stage`
    calls it in a fresh process, and again if that process dies)."""
    resume, threads = (run / "prune_state.pt").exists(), cfg.threads or 2
    train, dev = corpus / "train", corpus / "dev"
    return prune_and_report(
        cfg, teacher, train, dev, evaluated, run, resume, threads, teacher_result, latency=latency
    )


def check_precision(cfg: PruneConfig, run: Path) -> None:
    """Refuse to train a bf16 run where it would compute in fp32 (a CPU without native bf16,
    `resolve_precision`): the benchmarks' runs are compared with one another, and every one so far
    trained in bf16."""
    if cfg.precision == "bf16" and not native_bf16(resolve_device(cfg.device)):
        raise SystemExit(
            f"{run.resolve().name}: this machine has no native bfloat16 ({machine()['cpu']}), so the run "
            "would train in fp32, unlike the bf16 runs it is compared with (and bf16 emulated is about "
            "10x slower); train it on a CPU with avx512_bf16 or amx_bf16, or on a GPU"
        )


def _check_fresh(eval_json: Path) -> None:
    """A cached evaluation from before the test-unseen split (an older corpus) is not reused."""
    if eval_json.exists():
        _check_splits(json.loads(eval_json.read_text()), eval_json)


def _check_splits(report: dict[str, Any], eval_json: Path) -> None:
    """`_check_fresh` of a report already read from `eval_json`."""
    scored = report.get("pruned", report)
    missing = [s for s in SPLITS if f"wer_{s}" not in scored]
    if missing:
        raise SystemExit(f"{eval_json}: no WER on {missing} (an older corpus); remove {eval_json.parent}")


def versus(a: Path, b: Path, split: str) -> dict[str, Any]:
    """WER of the recognitions in run `b` minus those in run `a` on `split`, with the paired
    bootstrap's 95% interval and the split's size (`compare_recogs`)."""
    return compare_recogs(recogs_path(a, split), recogs_path(b, split))


def versus_runs(a: list[Path], b: list[Path], split: str) -> dict[str, Any]:
    """`versus` of two systems trained several times each (seeds): the mean WER of the runs in `b`
    minus that of the runs in `a` (`compare_recognition_runs`)."""
    recs_a, recs_b = ([read_recogs(recogs_path(run, split)) for run in runs] for runs in (a, b))
    return compare_recognition_runs(recs_a, recs_b, f"the runs {[r.name for r in (*a, *b)]}")


def split_sizes(recogs_dir: Path, split: str, hours: float) -> dict[str, Any]:
    refs = [ref for ref, _ in read_recogs(recogs_path(recogs_dir, split)).values()]
    return {"utterances": len(refs), "words": sum(len(r.split()) for r in refs), "hours": hours}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="quick teacher and corpus, two epochs")
    parser.add_argument("--set", nargs="*", default=[], help="PruneConfig overrides (both runs)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes sharing the two runs (start this many), 1 thread each"
    )
    args = parser.parse_args()
    commit = git_commit()  # the code this run starts with (HEAD may move while it runs)
    if args.quick:
        corpus, teacher = quick_inputs()
        overrides = ["prune_epochs=1", "finetune_epochs=1", *args.set]
    else:
        corpus, teacher = reference_corpus(), TEACHER
        overrides = list(args.set)
    if not (corpus / UNSEEN_SPLIT).is_dir():
        raise SystemExit(f"{corpus} has no {UNSEEN_SPLIT} split; synthesize it again")
    name = "prune-50-quick" if args.quick else "prune-50"
    work = {"teacher": CACHE / f"{name}-teacher", "pruned": CACHE / name}
    work["continued"] = CACHE / f"{name}-continued"
    evaluated = evaluated_splits(corpus)
    cfg = load_config(PruneConfig, recipe_path("prune"), overrides)
    if cfg.method == "continued":
        raise SystemExit("--set method=continued: the control runs beside the method anyway")
    control = load_config(PruneConfig, recipe_path("prune"), [*overrides, "method=continued"])

    # with --jobs 1 it still waits for a run another benchmark is training (distill's `chosen`)
    jobs = Jobs(args.jobs, CACHE / name)
    with jobs.preparing():
        teacher_result = teacher_eval(teacher, evaluated, work["teacher"])
    reports: dict[str, dict[str, Any]] = {}
    for k, c in (("pruned", cfg), ("continued", control)):
        # the pruned run's compact model and layer table are read: its weights, not only its record;
        # `continued` is timed by its shape (the teacher's), so a record restored without weights serves
        weights = k == "pruned"
        c = jobs.config(c, teacher, corpus, weights=weights)

        def train(k: str = k, c: PruneConfig = c, weights: bool = weights) -> None:
            reports[k] = run_stage(
                c, teacher, corpus, evaluated, work[k], teacher_result, latency=False, weights=weights
            )

        jobs.run(k, run_dir(c, teacher, corpus, restore=not weights), train)
    jobs.settle()
    if not jobs.last():  # the last process out writes the record, once nothing else trains
        return
    wer_keys = [f"{m}_{s}" for s in SPLITS for m in ("wer", "cer")]
    systems = {"teacher": teacher_result} | {k: r["pruned"] for k, r in reports.items()}
    record: dict[str, Any] = {
        "target_params": cfg.ratio,
        "method": cfg.method,
        "splits": {s: split_sizes(work["teacher"], s, teacher_result[f"hours_{s}"]) for s in SPLITS},
        **{k: {key: v[key] for key in (*wer_keys, *KEYS)} for k, v in systems.items()},
        "pruned_vs_teacher": {s: versus(work["teacher"], work["pruned"], s) for s in SPLITS},
        "pruned_vs_continued": {s: versus(work["continued"], work["pruned"], s) for s in SPLITS},
        "specaug": _written(work["pruned"])["specaug"],
        "epochs": {"prune": cfg.prune_epochs, "finetune": cfg.finetune_epochs},
        "commit": commit,
        "command": command_line(),
    }
    # the three models timed in one loop, interleaved, so that their ratios are fair on a shared
    # machine, in a new process (not this one, which may have trained); `continued` from its run
    # directory: its model.pt, or its shape with fresh weights when restored from its record
    paths = [teacher, work["pruned"] / "model.pt", work["continued"]]
    timed = fresh_latency_ms(paths, threads=LATENCY_THREADS, rounds=LATENCY_ROUNDS)
    for k, ms in zip(("teacher", "pruned", "continued"), timed, strict=True):
        record[k] |= {"latency_ms_10s": ms, "rtf": ms / 10000.0, "latency_vs_teacher": ms / timed[0]}
    record["latency"] = {"threads": LATENCY_THREADS, "rounds": LATENCY_ROUNDS, "seconds": 10.0, "batch": 1}
    record["latency"]["machine"] = machine()
    record["train_threads"] = {k: r["pruned"]["threads"] for k, r in reports.items()}
    if _identity_config(work["continued"])["specaug"] != _identity_config(work["pruned"])["specaug"]:
        raise SystemExit("the pruned and continued runs trained under different SpecAugment")
    p, c, t = record["pruned"], record["continued"], record["teacher"]
    record["ratios"] = {
        "wer_test_pruned_over_continued": p["wer_test"] / c["wer_test"] if c["wer_test"] else None,
        "wer_test_pruned_over_continued_target": TARGET_RATIO,
        "params_pruned_over_teacher": p["params"] / t["params"],
        "params_continued_over_teacher": c["params"] / t["params"],
        "latency_pruned_over_teacher": p["latency_vs_teacher"],
        "latency_pruned_over_continued": p["latency_vs_teacher"] / c["latency_vs_teacher"],
    }
    prune_wall, finetune_wall = stage_seconds(work["pruned"] / "log.jsonl")
    record |= {"prune_wall_seconds": prune_wall, "finetune_wall_seconds": finetune_wall}
    record["continued_wall_seconds"] = sum(stage_seconds(work["continued"] / "log.jsonl"))
    print(json.dumps(record, indent=2))
    save_result(name, record)
    if args.quick:
        return
    shutil.copyfile(work["pruned"] / "layers.png", DOCS / "prune-50-layers.png")
    # the compact model, for latency.py
    shutil.copyfile(work["pruned"] / "model.pt", PRUNED)
    update_doc_section("prune", section(record, cfg, (work["pruned"] / "layers.md").read_text()))


def _identity_config(run: Path) -> dict[str, Any]:
    """The config a run is named by (`common.run_identity`; a restored run has no prune_config.yaml),
    where a SpecAugment of None is the teacher's."""
    config: dict[str, Any] = json.loads((run / "identity.json").read_text())["config"]
    return config


def _written(run: Path) -> dict[str, Any]:
    """The resolved config a run wrote (the SpecAugment it used among it)."""
    written: dict[str, Any] = yaml.safe_load((run / "prune_config.yaml").read_text())
    return written


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _interval(v: dict[str, float]) -> str:
    return f"{100 * v['delta']:+.2f} [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}]"


def _threads(threads: int) -> str:
    """The threads a run trained on (a 1-thread run shared the 2 cores with another: `Jobs`)."""
    return f"{threads} thread{'s' if threads != 1 else ''} on 2 CPU cores"


def section(record: dict[str, Any], cfg: PruneConfig, layers: str) -> str:
    """The prune section of docs/benchmark.md: the three systems with split sizes, and the
    pruned model's WER loss against the teacher and against `continued`, with intervals."""
    t, p, c = record["teacher"], record["pruned"], record["continued"]
    names = {"dev": "dev", "test": "test", "test_unseen": "test-unseen"}
    rows = [
        [
            name,
            f"{r['params']:,}",
            f"{r['macs_per_second'] / 1e6:.1f} M",
            f"{r['latency_ms_10s']:.0f} ({r['latency_vs_teacher']:.2f}x)",
            *[_percent(r[f"wer_{s}"]) for s in SPLITS],
        ]
        for name, r in (
            ("teacher", t),
            (f"pruned ({record['method']}, {record['target_params']:.0%} params)", p),
            ("continued (teacher trained as long, unpruned)", c),
        )
    ]
    rows.append(
        [
            "pruned / teacher",
            f"{p['params'] / t['params']:.3f}",
            f"{p['macs_per_second'] / t['macs_per_second']:.3f}",
            f"{p['latency_vs_teacher']:.3f}",
            *[f"{p[f'wer_{s}'] / t[f'wer_{s}']:.3f}" if t[f"wer_{s}"] else "-" for s in SPLITS],
        ]
    )
    rows.append(
        [
            "pruned / continued",
            f"{p['params'] / c['params']:.3f}",
            f"{p['macs_per_second'] / c['macs_per_second']:.3f}",
            f"{p['latency_vs_teacher'] / c['latency_vs_teacher']:.3f}",
            *[f"{p[f'wer_{s}'] / c[f'wer_{s}']:.3f}" if c[f"wer_{s}"] else "-" for s in SPLITS],
        ]
    )
    header = ["model", "params", "MACs / s audio", "latency 10 s, ms (x teacher's)"]
    header += [f"{names[s]} WER" for s in SPLITS]
    table = markdown_table(header, rows)
    sizes = markdown_table(
        ["split", "utterances", "words", "hours", "pruned minus teacher", "pruned minus continued"],
        [
            [
                names[s],
                f"{record['splits'][s]['utterances']:,}",
                f"{record['splits'][s]['words']:,}",
                f"{record['splits'][s]['hours']:.2f}",
                _interval(record["pruned_vs_teacher"][s]),
                _interval(record["pruned_vs_continued"][s]),
            ]
            for s in SPLITS
        ],
    )
    ratio = record["ratios"]["wer_test_pruned_over_continued"]
    verdict = "-" if ratio is None else "met" if ratio <= TARGET_RATIO else "not met"
    vs_t, vs_c = record["pruned_vs_teacher"]["test"], record["pruned_vs_continued"]["test"]
    specaug = ", ".join(f"{k} {v}" for k, v in record["specaug"].items())
    return (
        "## Pruning to 50% of the parameters (`benchmarks/prune.py`)\n\n"
        f"L0 gates + Lagrangian budget + layerwise distillation, {cfg.prune_epochs} pruning and "
        f"{cfg.finetune_epochs} fine-tuning epochs ({record['prune_wall_seconds'] / 60:.0f} + "
        f"{record['finetune_wall_seconds'] / 60:.0f} min, {_threads(record['train_threads']['pruned'])}, "
        f"{cfg.precision}), beside the "
        f"equal-training control `continued`: the teacher itself, unpruned, trained for the same "
        f"{cfg.prune_epochs + cfg.finetune_epochs} epochs on the same batches with the same learning "
        f"rate, CTC and layerwise distillation from its frozen copy "
        f"({record['continued_wall_seconds'] / 60:.0f} min, "
        f"{_threads(record['train_threads']['continued'])}). Both train under the teacher's own "
        f"SpecAugment ({specaug}). Latencies: CPU (PyTorch), {record['latency']['threads']} threads, "
        "batch 1, 10 s utterance: the three models timed in one process, interleaved in one loop, "
        f"median of {record['latency']['rounds']} rounds each. Commit `{record['commit']}`.\n\n"
        f"{table}\n\n"
        f"WER loss of the pruned model on test: {_interval(vs_t)} points against the teacher, "
        f"{_interval(vs_c)} points against `continued` (WER difference with the paired bootstrap's "
        f"95% interval, 10,000 resamples of the utterances; negative: the pruned model is better). "
        f"Pruned test WER / continued's: {'-' if ratio is None else f'{ratio:.3f}'} (target at most "
        f"{TARGET_RATIO}: **{verdict}**); parameters / teacher's: "
        f"{record['ratios']['params_pruned_over_teacher']:.3f}.\n\n{sizes}\n\n"
        f"Kept per layer:\n\n{layers}\n"
        f"![kept per layer](prune-50-layers.png)\n\nReproduce: `{record['command']}`."
    )


if __name__ == "__main__":
    main()
