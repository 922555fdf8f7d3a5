"""Reference corpus and reference teacher: the base every later benchmark compresses.

Usage:
    nohup python benchmarks/teacher.py > benchmarks/cache/teacher.log 2>&1 &
    python benchmarks/teacher.py --quick          # same code path, minutes
    python benchmarks/teacher.py --pilot v512 --minutes 25 --set tokenizer.vocab_size=512 epochs=1
                                                  # a short run to choose a lever: dev only
    torchrun --standalone --nproc_per_node 2 benchmarks/teacher.py --set threads=1 max_frames=4000
                                                  # data-parallel: 2 processes of 1 thread, the
                                                  # same global batch (max_frames is per process)
    python benchmarks/teacher.py --corpus narrow  # the teacher of the narrow voice set (NARROW_CORPUS)

Stages are cached under benchmarks/cache/: the synthetic reference corpus (`REFERENCE_CORPUS`, the
wide voice set: train, dev, test, test-unseen and dev-unseen), the training run (one run within
`--minutes` of training on 2 cores; it resumes at an epoch boundary if interrupted, and the result
then says it was not one uninterrupted run), then the evaluation. Writes
benchmarks/results/teacher.json, the teacher's section of docs/benchmark.md,
docs/teacher_training.png, and copies the model (weights, config and tokenizer; no optimizer
state) to benchmarks/models/teacher.pt.

`--corpus narrow` trains on `NARROW_CORPUS` instead (13 espeak-ng variants and two settings of each
other voice; no dev-unseen): the first reference teacher's corpus, which the wide one replaced by
the rule of benchmarks/teacher_choice.py. Its full run writes teacher-narrow.json and
benchmarks/models/teacher-narrow.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    CORPORA,
    DOCS,
    MODELS,
    REFERENCE_VOICES,
    command_line,
    corpus_dir,
    git_commit,
    markdown_table,
    save_result,
    update_doc_section,
)

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.synth import (
    DEV_UNSEEN_SPLIT,
    UNSEEN_SPLIT,
    synthesize,
)
from conformer_prune.distributed import is_main_process
from conformer_prune.evaluate import evaluate_recognizer
from conformer_prune.model import load_recognizer
from conformer_prune.train import TrainConfig, run_training

EVALUATED = ("dev", "test", UNSEEN_SPLIT)


def plot_training(log: list[dict[str, float]], path: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    minutes = [r["elapsed_seconds"] / 60 for r in log]
    ax[0].plot(minutes, [r["ctc"] for r in log], marker="o")
    ax[0].set(xlabel="training minutes (2 CPU cores)", ylabel="training CTC loss", title="Training loss")
    ax[1].plot(minutes, [100 * r["dev_wer"] for r in log], marker="o", color="tab:red")
    for r, m in zip(log, minutes, strict=True):
        ax[1].annotate(
            str(r["epoch"]),
            (m, 100 * r["dev_wer"]),
            fontsize=7,
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
        )
    ax[1].set(
        xlabel="training minutes (2 CPU cores)", ylabel="dev WER (%)", title="Dev WER (greedy), by epoch"
    )
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def flattening(log: list[dict[str, float]]) -> dict[str, float | None]:
    """How much the dev WER still fell at the end: points over the last epoch and over the last
    quarter of the epochs (at least two); None where there are too few epochs."""
    wers = [100 * r["dev_wer"] for r in log]
    quarter = max(2, len(wers) // 4)
    return {
        "dev_wer_drop_last_epoch_points": wers[-2] - wers[-1] if len(wers) > 1 else None,
        "dev_wer_drop_last_quarter_points": wers[-quarter - 1] - wers[-1] if len(wers) > quarter else None,
        "epochs_in_last_quarter": quarter,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small corpus and few epochs (smoke test)")
    parser.add_argument(
        "--pilot",
        metavar="NAME",
        help="a short run on --corpus to choose a lever: evaluated on dev (and dev-unseen) only (test "
        "is for the chosen recipe), written to results/teacher-pilot-NAME.json "
        "(teacher-pilot-narrow-NAME.json on the narrow corpus)",
    )
    parser.add_argument(
        "--corpus",
        choices=tuple(CORPORA),
        default=REFERENCE_VOICES,
        help="the wide voice set (REFERENCE_CORPUS), or the narrow one (NARROW_CORPUS: the first "
        "reference teacher's)",
    )
    parser.add_argument("--recipe", default="reference-teacher", help="training recipe (name or YAML)")
    parser.add_argument("--minutes", type=float, default=150.0, help="training wall-time budget")
    parser.add_argument("--set", nargs="*", default=[], help="training overrides")
    args = parser.parse_args()
    commit = git_commit()  # the code this run starts with (HEAD may move while it runs)
    # each corpus's runs their own names (a quick run's ends in "-quick", which .gitignore keeps out)
    reference = args.corpus == REFERENCE_VOICES
    if args.quick:
        tag = "quick" if reference else f"{args.corpus}-quick"
    elif args.pilot:
        tag = f"pilot-{args.pilot}" if reference else f"pilot-{args.corpus}-{args.pilot}"
    else:
        tag = args.corpus
    spec = dict(CORPORA[args.corpus])
    corpus = corpus_dir(args.corpus)
    if args.quick:
        spec.update(hours=0.3, unseen_hours=0.03)
        if spec.get("dev_unseen_hours"):
            spec.update(dev_unseen_hours=0.03)
        corpus = CACHE / ("corpus-quick" if reference else f"corpus-quick-{args.corpus}")
    run = CACHE / f"teacher-{tag}"

    print(f"[corpus] {spec} in {corpus}", flush=True)
    stats = synthesize(corpus, workers=2, **spec)

    overrides = (
        # 4 blocks: the intermediate CTC half-way, as the reference recipe's at block 6 of 12
        ["epochs=2", "model.n_layers=4", "inter_ctc.layers=[2]", "tokenizer.vocab_size=256"]
        if args.quick
        else []
    ) + args.set
    cfg = load_config(TrainConfig, recipe_path(args.recipe), overrides)
    cfg.time_budget_minutes = args.minutes
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / "log.jsonl"
    epochs_before = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    if epochs_before < cfg.epochs and is_main_process():
        # every start of training is recorded: the issue asks for one uninterrupted run
        with (run / "starts.txt").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} from epoch {epochs_before}\n")
    print(f"[train] {run}", flush=True)
    run_training(
        cfg,
        read_corpus(corpus / "train"),
        read_corpus(corpus / "dev"),
        run,
        resume=(run / "train_state.pt").exists(),
    )
    if not is_main_process():  # under torchrun, rank 0 evaluates and writes
        return

    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    finished = log[-1]["epoch"]
    print(f"[evaluate] after {finished}/{cfg.epochs} epochs", flush=True)
    rec = load_recognizer(run / "model.pt")
    # a pilot chooses: dev only (and dev-unseen where the corpus has it); test is for the chosen
    evaluated = ("dev",) if args.pilot else EVALUATED
    if DEV_UNSEEN_SPLIT in stats:
        evaluated = (*evaluated, DEV_UNSEEN_SPLIT)
    results = evaluate_recognizer(rec, {name: corpus / name for name in evaluated}, threads=2, recogs_dir=run)
    starts = (run / "starts.txt").read_text().splitlines()
    record = {
        **results,
        "unseen_over_test": (
            results[f"wer_{UNSEEN_SPLIT}"] / results["wer_test"] if results.get("wer_test") else None
        ),
        **(
            {"dev_unseen_over_dev": results[f"wer_{DEV_UNSEEN_SPLIT}"] / results["wer_dev"]}
            if DEV_UNSEEN_SPLIT in evaluated
            else {}
        ),
        "train_audio_seconds_per_second": statistics.median(r["audio_seconds_per_second"] for r in log),
        "train_wall_seconds": log[-1]["elapsed_seconds"],
        "uninterrupted": len(starts) == 1,
        "starts": starts,
        "epochs_done": finished,
        "epochs_planned": cfg.epochs,
        "best_epoch": rec.meta.get("epoch"),
        "dev_curve": [
            {"epoch": r["epoch"], "minutes": r["elapsed_seconds"] / 60, "dev_wer": r["dev_wer"]} for r in log
        ],
        **flattening(log),
        "corpus_hours": sum(s["seconds"] for s in stats.values()) / 3600,
        "corpus_spec": spec,
        "corpus": stats,
        "recipe": args.recipe,
        "overrides": args.set,
        "subsampling": f"{cfg.model.subsampling} x{cfg.model.subsampling_factor}",
        "vocab_size": cfg.model.vocab_size,
        "precision": cfg.precision,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),  # data-parallel under torchrun
        "threads_per_process": cfg.threads,
        "commit": commit,
        "command": command_line(),
    }
    print(json.dumps(record, indent=2))
    full_reference = tag == REFERENCE_VOICES
    save_result("teacher" if full_reference else f"teacher-{tag}", record)
    if tag in CORPORA:  # a full run; the narrow teacher beside the reference one, not in its place
        MODELS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "model.pt", MODELS / ("teacher.pt" if full_reference else f"teacher-{tag}.pt"))
    if not full_reference:
        return
    plot_training(log, DOCS / "teacher_training.png")
    sizes = markdown_table(
        ["split", "utterances", "words", "hours", "voices", "WER", "CER"],
        [
            [
                s,
                f"{results[f'utterances_{s}']:,}",
                f"{results[f'words_{s}']:,}",
                f"{results[f'hours_{s}']:.2f}",
                f"{stats[s]['speakers']}" + (" (held out)" if s in (UNSEEN_SPLIT, DEV_UNSEEN_SPLIT) else ""),
                f"{100 * results[f'wer_{s}']:.2f}%",
                f"{100 * results[f'cer_{s}']:.2f}%",
            ]
            for s in evaluated
        ]
        + [
            [
                "train",
                f"{stats['train']['utterances']:,}",
                "-",
                f"{stats['train']['seconds'] / 3600:.2f}",
                f"{stats['train']['speakers']}",
                "-",
                "-",
            ]
        ],
    )
    costs = markdown_table(
        [
            "params",
            "MACs / s audio",
            "latency 10 s (ms, 2 thr)",
            "train speed (x real time)",
            "train wall (min)",
            "epochs",
            "one run",
        ],
        [
            [
                f"{record['params']:,}",
                f"{record['macs_per_second'] / 1e6:.1f} M",
                f"{record['latency_ms_10s']:.0f}",
                f"{record['train_audio_seconds_per_second']:.1f}",
                f"{record['train_wall_seconds'] / 60:.0f}",
                f"{finished}/{cfg.epochs} (best {record['best_epoch']})",
                "yes" if record["uninterrupted"] else f"no ({len(starts)} starts)",
            ]
        ],
    )
    drop = record["dev_wer_drop_last_quarter_points"]
    update_doc_section(
        "teacher",
        "## Reference teacher (`benchmarks/teacher.py`)\n\n"
        f"Recipe `{args.recipe}` ({record['subsampling']} front end, vocabulary {record['vocab_size']}) "
        f"trained with {cfg.precision} autocast on the synthetic reference corpus "
        f"(`REFERENCE_CORPUS`, {record['corpus_hours']:.1f} h, seed 0) on 2 CPU cores. Test-unseen "
        "is spoken only by voices no training utterance uses, with text from another source "
        "(`fortune-anarchism`); dev-unseen is dev's text in four other held-out voices (eight speakers). "
        f"Commit `{record['commit']}`.\n\n{sizes}\n\n"
        f"Test-unseen WER / test WER: {record['unseen_over_test']:.2f}.\n\n{costs}\n\n"
        f"Dev WER fell {record['dev_wer_drop_last_epoch_points']:.2f} points over the last epoch and "
        f"{drop:.2f} points over the last {record['epochs_in_last_quarter']} epochs.\n\n"
        f"![training curves](teacher_training.png)\n\nReproduce: `{record['command']}`.",
    )


if __name__ == "__main__":
    main()
