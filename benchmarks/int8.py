"""int8 against fp32 in ONNX Runtime: dynamic and static (calibrated QDQ) quantization, with
per-operator and per-module choices, by latency and WER.

Usage:
    python benchmarks/int8.py --model benchmarks/models/pruned-50.pt --corpus benchmarks/cache/corpus-quick
    python benchmarks/int8.py --rounds 9 --calibration-utterances 16

The model is exported once (waveform graph, front end inside); each variant below quantizes that
file. Static variants calibrate on the first utterances of the corpus's train split (never on the
utterances scored). Latency: one 10 s utterance, batch 1, at 2 threads (the issue's setting) and
at 1, every variant timed in alternation in one process (median times, and the median over rounds
of each round's ratio to fp32; idle ONNX Runtime threads do not spin, so one session does not slow
the next). WER: greedy, on the test split, with the paired-bootstrap 95% interval of each variant's
difference from fp32.
Writes benchmarks/results/int8.json and the `int8` section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    ROOT,
    command_line,
    git_commit,
    load_result,
    markdown_table,
    save_result,
    update_doc_section,
)

from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import read_corpus
from conformer_prune.evaluate.metrics import error_rates, interleaved_times_ms, paired_bootstrap_wer
from conformer_prune.export.onnx import (
    CALIBRATED_MODES,
    INT8_MODULES,
    Int8Mode,
    export_onnx,
    quantize_int8,
)
from conformer_prune.export.run import calibration_inputs
from conformer_prune.export.runtime import OnnxRecognizer, ort_session
from conformer_prune.model import load_recognizer

SECONDS = 10.0
THREADS = (2, 1)  # the first is the headline setting
# name -> (mode, op types, modules)
VARIANTS: dict[str, tuple[Int8Mode, tuple[str, ...], tuple[str, ...]]] = {
    "dynamic": ("dynamic", ("MatMul", "Gemm"), INT8_MODULES),
    "dynamic-subsampling-conv-ffn": ("dynamic", ("MatMul", "Gemm", "Conv"), ("subsampling", "feed_forward")),
    "static": ("static", ("MatMul", "Gemm"), INT8_MODULES),
    "static-ffn-attention": ("static", ("MatMul", "Gemm"), ("feed_forward", "attention")),
    "static-conv": ("static", ("MatMul", "Gemm", "Conv"), INT8_MODULES),
    "static-subsampling-conv": ("static", ("Conv",), ("subsampling",)),
    "static-subsampling-conv-ffn": ("static", ("MatMul", "Gemm", "Conv"), ("subsampling", "feed_forward")),
    "hybrid": ("hybrid", ("MatMul", "Gemm", "Conv"), INT8_MODULES),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "models" / "pruned-50.pt"))
    parser.add_argument("--corpus", default=str(CACHE / "corpus-quick"), help="with train and test")
    parser.add_argument("--calibration-utterances", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--note", default="", help="how the machine was loaded, kept with the results")
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    args = parser.parse_args()
    if args.docs:
        write_docs(load_result("int8"))
        return
    commit = git_commit()
    work = CACHE / "int8"
    rec = load_recognizer(args.model)
    fp32 = export_onnx(rec, work / "fp32.onnx")
    calibration = calibration_inputs(
        rec, read_corpus(Path(args.corpus) / "train"), count=args.calibration_utterances
    )
    files = {"fp32": fp32}
    for name, (mode, ops, modules) in VARIANTS.items():
        files[name] = quantize_int8(
            fp32, work / f"{name}.onnx", mode, ops, modules, calibration if mode in CALIBRATED_MODES else None
        )
        print(f"quantized {name}", flush=True)

    test = read_corpus(Path(args.corpus) / "test")
    audio = [load_audio(u.audio_path, 16000) for u in test]
    refs = [u.text for u in test]
    hyps = {name: OnnxRecognizer(path, THREADS[0]).transcribe(audio) for name, path in files.items()}
    wer = {name: error_rates(refs, h)["wer"] for name, h in hyps.items()}
    print("WER", wer, flush=True)
    timed = {threads: _latency(files, threads, args.rounds) for threads in THREADS}
    latency, speedup = timed[THREADS[0]]
    rows = {
        name: {
            "mode": VARIANTS[name][0] if name in VARIANTS else "fp32",
            "op_types": list(VARIANTS[name][1]) if name in VARIANTS else [],
            "modules": list(VARIANTS[name][2]) if name in VARIANTS else [],
            "latency_ms": latency[name],
            "speedup_vs_fp32": speedup[name],
            "by_threads": {
                str(t): {"latency_ms": timed[t][0][name], "speedup_vs_fp32": timed[t][1][name]}
                for t in THREADS
            },
            "wer_test": wer[name],
            "wer_change_relative": (wer[name] - wer["fp32"]) / wer["fp32"] if wer["fp32"] else None,
            "wer_minus_fp32": paired_bootstrap_wer(refs, hyps["fp32"], hyps[name]),
            "file_bytes": files[name].stat().st_size,
        }
        for name in files
    }
    record = {
        "model": args.model,
        "corpus": args.corpus,
        "test_utterances": len(test),
        "test_words": sum(len(r.split()) for r in refs),
        "calibration_utterances": len(calibration),
        "threads": THREADS[0],
        "threads_also": list(THREADS[1:]),
        "batch": 1,
        "seconds_of_audio": SECONDS,
        "rounds": args.rounds,
        "rows": rows,
        "note": args.note,
        "commit": commit,
        "command": command_line(),
    }
    save_result("int8", record)
    write_docs(record)


def _latency(files: dict[str, Path], threads: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median latency of each file on one 10 s utterance at `threads`, timed in alternation, and
    the median over rounds of each round's fp32 time over the file's."""
    wave = {
        "waveforms": 0.1
        * np.random.default_rng(0).standard_normal((1, int(SECONDS * 16000))).astype(np.float32),
        "lengths": np.array([int(SECONDS * 16000)]),
    }
    sessions = {name: ort_session(path, threads) for name, path in files.items()}
    runs = {name: functools.partial(s.run, None, wave) for name, s in sessions.items()}
    times = interleaved_times_ms(runs, rounds)
    latency = {name: statistics.median(t) for name, t in times.items()}
    # each round's ratio compares runs a fraction of a second apart, so a load that drifts over
    # the rounds cancels out of it
    speedup = {
        name: statistics.median(f / x for f, x in zip(times["fp32"], t, strict=True))
        for name, t in times.items()
    }
    print(f"{threads} threads: latency", latency, "speed-up", speedup, flush=True)
    return latency, speedup


def write_docs(record: dict[str, Any]) -> None:
    also = record.get("threads_also", [])  # thread counts timed besides the headline one
    table = markdown_table(
        [
            "variant",
            "mode",
            "op types",
            "modules",
            f"latency (ms), {record['threads']} threads",
            f"speed-up vs fp32, {record['threads']} threads",
            *(f"speed-up, {t} thread{'s' * (t > 1)}" for t in also),
            "test WER",
            "vs fp32 (95% CI)",
        ],
        [
            [
                name,
                r["mode"],
                ", ".join(r["op_types"]) or "-",
                "all" if len(r["modules"]) == len(INT8_MODULES) else ", ".join(r["modules"]) or "-",
                f"{r['latency_ms']:.1f}",
                f"{r['speedup_vs_fp32']:.2f}x",
                *(f"{r['by_threads'][str(t)]['speedup_vs_fp32']:.2f}x" for t in also),
                f"{100 * r['wer_test']:.2f}%",
                "-"
                if name == "fp32"
                else f"{100 * r['wer_minus_fp32']['delta']:+.2f} "
                f"[{100 * r['wer_minus_fp32']['low']:+.2f}, {100 * r['wer_minus_fp32']['high']:+.2f}]",
            ]
            for name, r in record["rows"].items()
        ],
    )
    model = Path(record["model"])
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model  # not this machine's path
    note = record["note"].rstrip(".") + ". " if record["note"] else ""
    update_doc_section(
        "int8",
        "## int8 in ONNX Runtime (`benchmarks/int8.py`)\n\n"
        f"`{shown}` as a waveform graph; one 10 s utterance, batch 1, medians of "
        f"{record['rounds']} interleaved rounds in one process; the speed-up is "
        f"the median of the rounds' ratios. Static variants calibrated on "
        f"{record['calibration_utterances']} train utterances; test WER on "
        f"{record['test_utterances']} utterances ({record['test_words']} words), differences in "
        f"points. {note}Commit `{record['commit']}`.\n\n{table}\n\n"
        f"Reproduce: `{record['command']}`.",
    )


if __name__ == "__main__":
    main()
