"""Reference corpus and reference teacher: the base every later benchmark compresses.

Usage:
    nohup python benchmarks/teacher.py > benchmarks/cache/teacher.log 2>&1 &
    python benchmarks/teacher.py --quick          # same code path, minutes

Stages are cached under benchmarks/cache/ and resume where they stopped: the synthetic corpus
(3 hours, seed 0), the training run (resumable at every epoch, bounded by --minutes of training per
invocation), then the evaluation. Writes benchmarks/results/teacher.json, the teacher's section of
docs/benchmark.md, docs/teacher_training.png, and copies the model to benchmarks/models/teacher.pt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

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
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.synth import synthesize
from conformer_prune.evaluate import evaluate_recognizer
from conformer_prune.model import load_recognizer
from conformer_prune.train import TrainConfig, run_training


def plot_training(log: list[dict[str, float]], path: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in log]
    ax[0].plot(epochs, [r["ctc"] for r in log], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training CTC loss", title="Training loss")
    ax[1].plot(epochs, [100 * r["dev_wer"] for r in log], marker="o", color="tab:red")
    ax[1].set(xlabel="epoch", ylabel="dev WER (%)", title="Dev WER (greedy)")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small corpus and few epochs (smoke test)")
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=75.0, help="training wall-time budget for this call")
    parser.add_argument("--set", nargs="*", default=[], help="training overrides")
    args = parser.parse_args()
    commit = git_commit()  # the code this run starts with (HEAD may move while it runs)
    tag = "quick" if args.quick else "reference"
    hours = 0.2 if args.quick else args.hours
    corpus = CACHE / f"corpus-{tag}"
    run = CACHE / f"teacher-{tag}"

    print(f"[corpus] {hours} h in {corpus}", flush=True)
    stats = synthesize(corpus, hours, seed=0, workers=2)

    overrides = (["epochs=2", "model.n_layers=4"] if args.quick else []) + args.set
    cfg = load_config(TrainConfig, recipe_path("teacher"), overrides)
    cfg.time_budget_minutes = args.minutes
    print(f"[train] {run}", flush=True)
    run_training(
        cfg,
        read_corpus(corpus / "train"),
        read_corpus(corpus / "dev"),
        run,
        resume=(run / "train_state.pt").exists(),
    )

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    finished = log[-1]["epoch"]
    print(f"[evaluate] after {finished}/{cfg.epochs} epochs", flush=True)
    rec = load_recognizer(run / "model.pt")
    results = evaluate_recognizer(
        rec, {"dev": corpus / "dev", "test": corpus / "test"}, threads=2, recogs_dir=run
    )
    record = {
        **results,
        "train_audio_seconds_per_second": statistics.median(r["audio_seconds_per_second"] for r in log),
        "train_wall_seconds": log[-1]["elapsed_seconds"],
        "epochs_done": finished,
        "epochs_planned": cfg.epochs,
        "best_epoch": rec.meta.get("epoch"),
        "corpus_hours": sum(s["seconds"] for s in stats.values()) / 3600,
        "corpus": stats,
        "precision": cfg.precision,
        "commit": commit,
        "command": command_line(),
    }
    name = "teacher" if not args.quick else "teacher-quick"
    print(json.dumps(record, indent=2))
    save_result(name, record)
    if args.quick:
        return
    models = ROOT / "benchmarks" / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.pt", models / "teacher.pt")
    plot_training(log, DOCS / "teacher_training.png")
    table = markdown_table(
        [
            "params",
            "MACs / s audio",
            "latency 10 s (ms, 2 thr)",
            "RTF",
            "dev WER",
            "test WER",
            "test CER",
            "train speed (x real time)",
            "train wall (min)",
            "epochs",
        ],
        [
            [
                f"{record['params']:,}",
                f"{record['macs_per_second'] / 1e6:.1f} M",
                f"{record['latency_ms_10s']:.0f}",
                f"{record['rtf']:.3f}",
                f"{100 * record['wer_dev']:.2f}%",
                f"{100 * record['wer_test']:.2f}%",
                f"{100 * record['cer_test']:.2f}%",
                f"{record['train_audio_seconds_per_second']:.1f}",
                f"{record['train_wall_seconds'] / 60:.0f}",
                f"{finished}/{cfg.epochs} (best {record['best_epoch']})",
            ]
        ],
    )
    update_doc_section(
        "teacher",
        "## Reference teacher (`benchmarks/teacher.py`)\n\n"
        f"Conformer-S shape (12 layers, d_model 144, 4 heads, FFN 576, kernel 15) trained with "
        f"{cfg.precision} autocast on {record['corpus_hours']:.2f} h of synthetic speech "
        f"(`conformer-prune synth`, seed 0), 2 CPU cores. Commit `{record['commit']}`.\n\n"
        f"{table}\n\n![training curves](teacher_training.png)\n\n"
        f"Reproduce: `{record['command']}` (resumes from `benchmarks/cache/`).",
    )


if __name__ == "__main__":
    main()
