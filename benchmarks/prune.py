"""The method on the reference teacher: L0 pruning with layerwise distillation to 50% of the parameters.

Usage:
    nohup python benchmarks/prune.py > benchmarks/cache/prune.log 2>&1 &
    python benchmarks/prune.py --quick        # same code path on the quick teacher (teacher.py --quick)

Stages are cached under benchmarks/cache/ and resume where they stopped: the reference corpus
(rebuilt deterministically by `synthesize` if missing), the pruning run (resumable at every epoch),
then the evaluation of teacher and pruned model in the same process (CPU latencies measured
interleaved). Writes benchmarks/results/prune-50.json, the prune section of docs/benchmark.md,
docs/prune-50-layers.png and the compact model benchmarks/models/pruned-50.pt (for latency.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    DOCS,
    ROOT,
    command_line,
    git_commit,
    markdown_table,
    save_result,
    update_doc_section,
)

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.synth import synthesize
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.report import prune_and_report


def stage_seconds(log_path: Path) -> tuple[float, float]:
    """Wall seconds of the pruning and of the fine-tuning stage, from the run's log."""
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    prune_end = max((r["elapsed_seconds"] for r in epochs if r["stage"] == "prune"), default=0.0)
    return prune_end, epochs[-1]["elapsed_seconds"] - prune_end


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="quick teacher and corpus, two epochs")
    parser.add_argument("--set", nargs="*", default=[], help="PruneConfig overrides")
    args = parser.parse_args()
    commit = git_commit()  # the code this run starts with (HEAD may move while it runs)
    if args.quick:
        corpus, teacher = CACHE / "corpus-quick", CACHE / "teacher-quick" / "model.pt"
        overrides = ["prune_epochs=1", "finetune_epochs=1", *args.set]
        if not teacher.exists():
            raise SystemExit("run `python benchmarks/teacher.py --quick` first")
    else:
        corpus, teacher = CACHE / "corpus-reference", ROOT / "benchmarks" / "models" / "teacher.pt"
        overrides = list(args.set)
        synthesize(corpus, 3.0, seed=0, workers=2)  # no-op when cached
    cfg = load_config(PruneConfig, recipe_path("prune"), overrides)
    run = CACHE / ("prune-50-quick" if args.quick else "prune-50")
    resume = (run / "prune_state.pt").exists()
    evaluated = {"dev": corpus / "dev", "test": corpus / "test"}
    report = prune_and_report(cfg, teacher, corpus / "train", corpus / "dev", evaluated, run, resume)
    prune_wall, finetune_wall = stage_seconds(run / "log.jsonl")
    keys = (
        "wer_dev",
        "wer_test",
        "cer_dev",
        "cer_test",
        "params",
        "macs_per_second",
        "latency_ms_10s",
        "rtf",
        "threads",
    )
    record = {
        "target_params": cfg.ratio,
        "method": cfg.method,
        "teacher": {k: report["teacher"][k] for k in keys},
        "pruned": {k: report["pruned"][k] for k in keys},
        "prune_wall_seconds": prune_wall,
        "finetune_wall_seconds": finetune_wall,
        "epochs": {"prune": cfg.prune_epochs, "finetune": cfg.finetune_epochs},
        "commit": commit,
        "command": command_line(),
    }
    print(json.dumps(record, indent=2))
    save_result("prune-50-quick" if args.quick else "prune-50", record)
    if args.quick:
        return
    shutil.copyfile(run / "layers.png", DOCS / "prune-50-layers.png")
    shutil.copyfile(run / "model.pt", ROOT / "benchmarks" / "models" / "pruned-50.pt")  # for latency.py
    t, p = record["teacher"], record["pruned"]
    rows = []
    for name, r in (("teacher", t), ("pruned (l0-distill, 50% params)", p)):
        rows.append(
            [
                name,
                f"{r['params']:,}",
                f"{r['macs_per_second'] / 1e6:.1f} M",
                f"{r['latency_ms_10s']:.0f}",
                f"{100 * r['wer_dev']:.2f}%",
                f"{100 * r['wer_test']:.2f}%",
            ]
        )
    rows.append(
        [
            "pruned / teacher",
            f"{p['params'] / t['params']:.3f}",
            f"{p['macs_per_second'] / t['macs_per_second']:.3f}",
            f"{p['latency_ms_10s'] / t['latency_ms_10s']:.3f}",
            f"{p['wer_dev'] / t['wer_dev']:.3f}" if t["wer_dev"] else "-",
            f"{p['wer_test'] / t['wer_test']:.3f}" if t["wer_test"] else "-",
        ]
    )
    table = markdown_table(
        ["model", "params", "MACs / s audio", "latency 10 s (ms)", "dev WER", "test WER"], rows
    )
    layers = (run / "layers.md").read_text()
    update_doc_section(
        "prune",
        "## Pruning to 50% of the parameters (`benchmarks/prune.py`)\n\n"
        f"L0 gates + Lagrangian budget + layerwise distillation, {cfg.prune_epochs} pruning and "
        f"{cfg.finetune_epochs} fine-tuning epochs ({prune_wall / 60:.0f} + {finetune_wall / 60:.0f} min "
        f"on 2 CPU cores, {cfg.precision}). Latencies: CPU, 2 threads, batch 1, 10 s utterance, medians "
        f"of interleaved runs in one process. Commit `{record['commit']}`.\n\n{table}\n\n"
        f"Kept per layer:\n\n{layers}\n"
        f"![kept per layer](prune-50-layers.png)\n\nReproduce: `{record['command']}`.",
    )


if __name__ == "__main__":
    main()
