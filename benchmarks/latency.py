"""Deployment latency: PyTorch eager against ONNX Runtime fp32 and int8, and against the machine's limit.

Usage:
    python benchmarks/latency.py                     # reference teacher and the 50% pruned model
    python benchmarks/latency.py --models a=x.pt b=y.pt --rounds 5
    python benchmarks/latency.py --frontend-only      # only the log-mel front end (about a minute)

For every model: export to ONNX (features to log-probabilities, the graph that `latency_ms_10s`
times in PyTorch) and quantize it to int8; then, for 1 and 2 threads and batches 1 and 8, time a
10 s utterance in every (model, runtime) pair, interleaved round by round, and keep the medians;
each speed-up over the teacher's ONNX Runtime fp32 is the median of the rounds' own ratios (two
runs of 7 rounds had put the pruned model at 1.49x and 1.64x by the ratio of medians), with its
quartiles.
The peak is the median rate of a 2048^3 fp32 matmul with the same threads, measured in the same
run; achieved GFLOP/s count 2 x the model's MACs (also for int8, whose work is the same).
WER on the test split compares PyTorch, ONNX Runtime fp32 and int8 (waveform graphs, front end
inside). The log-mel front end of the waveform graph is also timed alone (2 threads, batch 1, 10 s):
the exported `torch.stft` (an ONNX STFT, `export --stft-frontend`) against the matrix products
of `MatmulDFTLogMel` (what export writes by default), and PyTorch. Writes
benchmarks/results/latency.json, the latency and latency-frontend sections of docs/benchmark.md
and docs/latency.png. Run it on a quiet machine: nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    DOCS,
    PRUNED,
    REFERENCE_CORPUS_DIR,
    TEACHER,
    command_line,
    git_commit,
    load_result,
    markdown_table,
    save_result,
    speedups,
    update_doc_section,
)

from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.features import FeatureConfig, LogMelFeatures, MatmulDFTLogMel
from conformer_prune.evaluate.metrics import (
    dummy_features,
    interleaved_medians_ms,
    interleaved_times_ms,
    macs_per_second,
)
from conformer_prune.evaluate.profile import machine
from conformer_prune.export import OnnxRecognizer, export_onnx, onnx_error_rates, quantize_int8
from conformer_prune.export.onnx import exported_proto
from conformer_prune.export.runtime import ort_session
from conformer_prune.model import load_recognizer
from conformer_prune.model.checkpoint import Recognizer

SECONDS = 10.0
RUNTIMES = ("torch", "ort-fp32", "ort-int8")


def peak_matmul_gflops(threads: int, n: int = 2048, runs: int = 7) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def _runner(rec: Recognizer, runtime: str, files: dict[str, Path], threads: int, batch: int) -> Any:
    """A zero-argument callable that runs one batch of 10 s feature sequences."""
    feats, lengths = dummy_features(rec.model.config, SECONDS, batch)
    if runtime == "torch":
        model = rec.model.eval()

        def run_torch() -> None:
            with torch.inference_mode():
                model(feats, lengths)

        return run_torch
    session = OnnxRecognizer(files[runtime], threads=threads).session
    inputs = {"features": feats.numpy(), "lengths": lengths.numpy()}
    return lambda: session.run(None, inputs)


def frontend_latency(config: FeatureConfig, threads: int, rounds: int) -> dict[str, Any]:
    """The log-mel front end alone on one 10 s utterance (batch 1): ONNX Runtime on the exported
    STFT graph and on the matrix-product graph, and PyTorch, interleaved; with each ONNX
    graph's largest feature difference from PyTorch on that utterance."""
    samples = int(SECONDS * config.sample_rate)
    waves = 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([samples])
    torch_features = LogMelFeatures(config).eval()
    dims = (
        {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("time", min=1600)},
        {0: torch.export.Dim("batch", min=1, max=1024)},
    )
    inputs = {"waveforms": waves.numpy(), "lengths": lengths.numpy()}
    with torch.inference_mode():
        reference = torch_features(waves, lengths)[0].numpy()
    runners: dict[str, Any] = {}
    max_abs_diff = {}
    for name, module in (("ort-stft", torch_features), ("ort-matmul", MatmulDFTLogMel(config).eval())):
        example = (waves[:, : 3 * config.sample_rate].repeat(2, 1), torch.tensor([48000, 32000]))
        proto = exported_proto(
            module, example, ["waveforms", "lengths"], ["features", "lengths_out"], dims, {}
        )
        session = ort_session(proto.SerializeToString(), threads)  # idle threads do not spin
        max_abs_diff[name] = float(np.abs(session.run(None, inputs)[0] - reference).max())
        runners[name] = functools.partial(session.run, None, inputs)

    def run_torch() -> None:
        with torch.inference_mode():
            torch_features(waves, lengths)

    runners["torch"] = run_torch
    torch.set_num_threads(threads)
    medians = interleaved_medians_ms(runners, rounds)
    return {
        "threads": threads,
        "batch": 1,
        "seconds_of_audio": SECONDS,
        "rounds": rounds,
        "latency_ms": medians,
        "max_abs_diff_vs_torch": max_abs_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", help="NAME=checkpoint (default: teacher and pruned-50)")
    parser.add_argument("--test", default=str(REFERENCE_CORPUS_DIR / "test"), help="corpus for WER")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--frontend-only",
        action="store_true",
        help="time only the front end and update that entry of latency.json (keeps the other rows)",
    )
    parser.add_argument("--note", default="", help="how the machine was loaded, kept with the results")
    args = parser.parse_args()
    commit = git_commit()  # the code this run starts with (HEAD may move while it runs)
    frontend = frontend_latency(FeatureConfig(), threads=2, rounds=max(args.rounds, 15))
    frontend |= {"commit": commit, "command": command_line(), "note": args.note}
    print("front end:", frontend, flush=True)
    if args.frontend_only:
        record = load_result("latency")
        record["frontend"] = frontend
        save_result("latency", record)
        write_frontend_docs(frontend)
        return
    models = (
        dict(m.split("=", 1) for m in args.models)
        if args.models
        else {
            "teacher": str(TEACHER),
            "pruned-50": str(PRUNED),
        }
    )
    work = CACHE / "latency"
    recs = {name: load_recognizer(path) for name, path in models.items()}
    files: dict[str, dict[str, Path]] = {}
    wer: dict[str, dict[str, float]] = {}
    utts = read_corpus(args.test) if Path(args.test).exists() else []
    for name, rec in recs.items():
        feats_fp32 = export_onnx(rec, work / f"{name}.features.onnx", frontend=False)
        feats_int8 = quantize_int8(feats_fp32, work / f"{name}.features.int8.onnx")
        files[name] = {"ort-fp32": feats_fp32, "ort-int8": feats_int8}
        if utts:
            wave_fp32 = export_onnx(rec, work / f"{name}.onnx")
            wave_int8 = quantize_int8(wave_fp32, work / f"{name}.int8.onnx")
            torch.set_num_threads(2)
            wer[name] = {
                "ort-fp32": onnx_error_rates(OnnxRecognizer(wave_fp32, 2), utts)["wer"],
                "ort-int8": onnx_error_rates(OnnxRecognizer(wave_int8, 2), utts)["wer"],
            }
            print(f"{name}: test WER {wer[name]}", flush=True)
    macs = {name: macs_per_second(rec.model, SECONDS) * SECONDS for name, rec in recs.items()}

    peaks = {threads: peak_matmul_gflops(threads) for threads in (1, 2)}
    rows = []
    for threads in (1, 2):
        for batch in (1, 8):
            runners = {
                (name, runtime): _runner(rec, runtime, files[name], threads, batch)
                for name, rec in recs.items()
                for runtime in RUNTIMES
            }
            torch.set_num_threads(threads)
            times = interleaved_times_ms(runners, args.rounds)
            base = ("teacher" if "teacher" in recs else next(iter(recs)), "ort-fp32")
            ratios = speedups(times, base)
            for (name, runtime), t in times.items():
                ms = statistics.median(t)
                gflops = 2 * macs[name] * batch / (ms / 1000) / 1e9
                rows.append(
                    {
                        "model": name,
                        "runtime": runtime,
                        "threads": threads,
                        "batch": batch,
                        "latency_ms": ms,
                        "speedup_vs_base": ratios[(name, runtime)],
                        "gflops": gflops,
                        "fraction_of_peak": gflops / peaks[threads],
                    }
                )
                print(rows[-1], flush=True)
    record = {
        "peak_matmul_gflops": peaks[2],
        "peak_matmul_gflops_by_threads": {str(k): v for k, v in peaks.items()},
        "seconds_of_audio": SECONDS,
        "rows": rows,
        "wer_test": wer,
        "frontend": frontend,
        "torch_version": torch.__version__,
        "machine": machine(),
        "commit": commit,
        "command": command_line(),
    }
    save_result("latency", record)
    write_docs(record)
    write_frontend_docs(frontend)


def write_docs(record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    lookup = {(r["model"], r["runtime"], r["threads"], r["batch"]): r for r in rows}
    base = "teacher" if "teacher" in models else models[0]
    table_rows = []
    for threads in (1, 2):
        for batch in (1, 8):
            for model in models:
                for runtime in RUNTIMES:
                    r = lookup[(model, runtime, threads, batch)]
                    ref = lookup[(base, "ort-fp32", threads, batch)]["latency_ms"]
                    # the median of the rounds' ratios and its quartiles (older records: the
                    # ratio of the medians)
                    ratio = r.get("speedup_vs_base", {"median": ref / r["latency_ms"]})
                    spread = f" ({ratio['q1']:.2f}-{ratio['q3']:.2f})" if "q1" in ratio else ""
                    wer = record["wer_test"].get(model, {}).get(runtime)
                    table_rows.append(
                        [
                            model,
                            runtime,
                            str(threads),
                            str(batch),
                            f"{r['latency_ms']:.1f}",
                            f"{ratio['median']:.2f}x{spread}",
                            f"{r['gflops']:.1f}",
                            f"{100 * r['fraction_of_peak']:.0f}%",
                            f"{100 * wer:.2f}%" if wer is not None else "-",
                        ]
                    )
    table = markdown_table(
        [
            "model",
            "runtime",
            "threads",
            "batch",
            "latency (ms)",
            f"speed-up vs {base} ort-fp32 (quartiles)",
            "GFLOP/s",
            "of peak",
            "test WER",
        ],
        table_rows,
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, batch in zip(axes, (1, 8), strict=True):
        width = 0.8 / len(models)
        x = np.arange(len(RUNTIMES))
        for k, model in enumerate(models):
            values = [lookup[(model, rt, 2, batch)]["latency_ms"] for rt in RUNTIMES]
            ax.bar(x + k * width, values, width, label=model)
        ax.set_xticks(x + width * (len(models) - 1) / 2, RUNTIMES)
        ax.set_ylabel("latency of a 10 s utterance (ms)")
        ax.set_title(f"batch {batch}, 2 threads")
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "latency.png", dpi=120)
    peaks = record["peak_matmul_gflops_by_threads"]
    update_doc_section(
        "latency",
        "## Deployment latency (`benchmarks/latency.py`)\n\n"
        f"10 s of audio (features to log-probabilities), medians of interleaved runs in one process; "
        f"a speed-up is the median over rounds of each round's ratio, with its quartiles; "
        f"PyTorch {record['torch_version']} eager against ONNX Runtime fp32 and int8 (dynamic "
        f"quantization of the Linear layers). Peak: a 2048^3 fp32 matmul in the same run, "
        f"{peaks['1']:.1f} GFLOP/s with 1 thread and {peaks['2']:.1f} with 2. Test WER through the "
        f"exported waveform graphs. Commit `{record['commit']}`.\n\n{table}\n\n"
        "![latency](latency.png)\n\n"
        f"Reproduce: `{record['command']}`.",
    )


def write_frontend_docs(frontend: dict[str, Any]) -> None:
    ms = frontend["latency_ms"]
    diffs = frontend["max_abs_diff_vs_torch"]
    labels = {
        "ort-stft": "ONNX Runtime, exported `torch.stft` (ONNX STFT)",
        "ort-matmul": "ONNX Runtime, matrix products (`MatmulDFTLogMel`, the export default)",
        "torch": "PyTorch `LogMelFeatures` (`torch.stft`)",
    }
    rows = [
        [
            labels[name],
            f"{ms[name]:.1f}",
            f"{ms['ort-stft'] / ms[name]:.2f}x",
            f"{diffs[name]:.1e}" if name in diffs else "-",
        ]
        for name in ("ort-stft", "ort-matmul", "torch")
    ]
    table = markdown_table(
        ["front end", "latency (ms)", "speed-up vs ONNX STFT", "max abs feature diff vs PyTorch"], rows
    )
    update_doc_section(
        "latency-frontend",
        "## The log-mel front end alone (`benchmarks/latency.py`)\n\n"
        f"One 10 s utterance, batch 1, {frontend['threads']} threads, medians of "
        f"{frontend['rounds']} interleaved rounds in one process; compare the rows as ratios. "
        f"{note[:1].upper() + note[1:].rstrip('.') + '. ' if (note := frontend['note']) else ''}"
        f"Commit `{frontend['commit']}`.\n\n"
        f"{table}\n\nReproduce: `{frontend['command']}`.",
    )


if __name__ == "__main__":
    main()
