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

`--analysis` measures why the speed-up is what it is, and adds it to the saved record (with its
own commit and note): ONNX Runtime's own profile of fp32, `dynamic` and `hybrid` (kernel time by
operator type, one 10 s utterance), and single-MatMul graphs, fp32 against dynamic int8, at the
model's shapes at batch 1, at 8 utterances' rows, and at a 512-wide model's (Conformer-L's
d_model and feed-forward width), timed interleaved.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    PRUNED,
    ROOT,
    command_line,
    git_commit,
    load_result,
    markdown_table,
    save_result,
    speedups,
    update_doc_section,
)

from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import read_corpus
from conformer_prune.evaluate.metrics import error_rates, interleaved_times_ms, paired_bootstrap_wer
from conformer_prune.evaluate.profile import machine
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
    parser.add_argument("--model", default=str(PRUNED))
    parser.add_argument("--corpus", default=str(CACHE / "corpus-quick"), help="with train and test")
    parser.add_argument("--calibration-utterances", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--note", default="", help="how the machine was loaded, kept with the results")
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    parser.add_argument(
        "--analysis",
        action="store_true",
        help="only the profile by operator type and the MatMul kernels, added to the saved record",
    )
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
        if args.analysis and name not in PROFILED:
            continue
        files[name] = quantize_int8(
            fp32, work / f"{name}.onnx", mode, ops, modules, calibration if mode in CALIBRATED_MODES else None
        )
        print(f"quantized {name}", flush=True)
    if args.analysis:
        record = load_result("int8")
        record["analysis"] = analysis(rec, files, work, args.rounds, args.note, commit)
        save_result("int8", record)
        write_docs(record)
        return

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
        "machine": machine(),
        "commit": commit,
        "command": command_line(),
    }
    save_result("int8", record)
    write_docs(record)


def _latency(files: dict[str, Path], threads: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median latency of each file on one 10 s utterance at `threads`, timed in alternation, and
    the median over rounds of each round's fp32 time over the file's."""
    wave = _waveform()
    sessions = {name: ort_session(path, threads) for name, path in files.items()}
    runs = {name: functools.partial(s.run, None, wave) for name, s in sessions.items()}
    times = interleaved_times_ms(runs, rounds)
    latency = {name: statistics.median(t) for name, t in times.items()}
    speedup = {name: r["median"] for name, r in speedups(times, "fp32").items()}
    print(f"{threads} threads: latency", latency, "speed-up", speedup, flush=True)
    return latency, speedup


PROFILED = ("dynamic", "hybrid")  # the variants whose operator profile `--analysis` records
PROFILE_RUNS = 20


def analysis(
    rec: Any, files: dict[str, Path], work: Path, rounds: int, note: str, commit: str
) -> dict[str, Any]:
    """Kernel time by operator type of each file, and the MatMul kernels at the model's shapes."""
    threads = THREADS[0]
    profile = {name: op_times_ms(path, threads, PROFILE_RUNS) for name, path in files.items()}
    cfg = rec.model.config
    frames = round(SECONDS * cfg.feature_rate / cfg.subsampling_factor)
    width = max([*cfg.ffn1, *cfg.ffn2])
    shapes = {
        "feed-forward in, batch 1": (frames, cfg.d_model, width),
        "feed-forward out, batch 1": (frames, width, cfg.d_model),
        "feed-forward in, batch 8": (8 * frames, cfg.d_model, width),
        "d_model 512 feed-forward in, batch 1": (frames, 512, 2048),
    }
    kernels = {}
    for label, (m, k, n) in shapes.items():
        fp32_ms, int8_ms = matmul_int8_ms(m, k, n, threads, 10 * rounds, work)
        kernels[label] = {
            "m": m,
            "k": k,
            "n": n,
            "fp32_ms": fp32_ms,
            "int8_ms": int8_ms,
            "speedup": fp32_ms / int8_ms,
        }
        print(label, kernels[label], flush=True)
    return {
        "threads": threads,
        "profile_runs": PROFILE_RUNS,
        "op_ms": profile,
        "matmul": kernels,
        "note": note,
        "commit": commit,
        "command": command_line(),
    }


def op_times_ms(path: Path, threads: int, runs: int) -> dict[str, float]:
    """ONNX Runtime's own kernel time per run (ms) of each operator type, after 5 warm-up runs."""
    wave = _waveform()
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(path, threads, profile_prefix=Path(tmp) / "profile")
        for _ in range(5 + runs):
            session.run(None, wave)
        events = json.loads(Path(session.end_profiling()).read_text())
    measured = [e for e in events if e.get("name") == "model_run"][5:]
    start = min(e["ts"] for e in measured)  # the warm-up runs' kernels come before it
    total: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            total[e["args"]["op_name"]] += e["dur"]
    return {op: us / runs / 1000 for op, us in total.most_common()}


def matmul_int8_ms(m: int, k: int, n: int, threads: int, rounds: int, work: Path) -> tuple[float, float]:
    """Median times (ms) of one (m, k) x (k, n) MatMul in fp32 and dynamically quantized to int8
    (as `quantize_int8`'s dynamic mode does: int8 weights, activations quantized at run time)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((0.05 * rng.standard_normal((k, n))).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [weight],
    )
    fp32, int8 = work / "matmul-fp32.onnx", work / "matmul-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), fp32)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, reduce_range=True)
    feed = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8, threads)}
    times = interleaved_times_ms(
        {name: functools.partial(s.run, None, feed) for name, s in sessions.items()}, rounds
    )
    return statistics.median(times["fp32"]), statistics.median(times["int8"])


def _waveform() -> dict[str, np.ndarray]:
    """One 10 s utterance of noise, batch 1 (latency does not depend on what it says)."""
    samples = int(SECONDS * 16000)
    waveform = 0.1 * np.random.default_rng(0).standard_normal((1, samples)).astype(np.float32)
    return {"waveforms": waveform, "lengths": np.array([samples])}


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
        f"Reproduce: `{record['command']}`."
        + (_analysis_docs(record["analysis"]) if "analysis" in record else ""),
    )


GEMM_OPS = ("MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv")  # fp32's matrix products


def _analysis_docs(a: dict[str, Any]) -> str:
    """Why the speed-up is what it is: kernel time by operator type, and the MatMul kernels."""
    ops = a["op_ms"]
    names = list(ops)
    shown: list[str] = []
    for name in names:  # fp32's 12 largest, then each variant's largest that fp32 lacks
        shown += [op for op in list(ops[name])[:12] if op not in shown]
    by_op = markdown_table(
        ["operator type", *(f"{name} (ms)" for name in names)],
        [[op, *(f"{ops[name][op]:.2f}" if op in ops[name] else "-" for name in names)] for op in shown]
        + [["all kernels", *(f"{sum(ops[name].values()):.2f}" for name in names)]],
    )
    fp32 = ops["fp32"]
    total = sum(fp32.values())
    rest = total - sum(fp32.get(op, 0.0) for op in GEMM_OPS)
    trade = []  # what each variant takes off fp32's operators, and what its own cost
    for name in names[1:]:
        kinds = fp32.keys() | ops[name].keys()
        less = sum(max(fp32.get(op, 0.0) - ops[name].get(op, 0.0), 0.0) for op in kinds)
        more = sum(max(ops[name].get(op, 0.0) - fp32.get(op, 0.0), 0.0) for op in kinds)
        trade.append(
            f"`{name}` takes {less:.1f} ms off the operators it shrinks or replaces and adds {more:.1f} ms"
        )
    kernels = markdown_table(
        ["MatMul", "m x k x n", "fp32 (ms)", "int8 (ms)", "int8 speed-up"],
        [
            [
                label,
                f"{r['m']} x {r['k']} x {r['n']}",
                f"{r['fp32_ms']:.3f}",
                f"{r['int8_ms']:.3f}",
                f"{r['speedup']:.2f}x",
            ]
            for label, r in a["matmul"].items()
        ],
    )
    note = a["note"].rstrip(".") + ". " if a["note"] else ""
    return (
        f"\n\n### Why int8 gains little here\n\nONNX Runtime's profile of one 10 s utterance "
        f"({a['threads']} threads, kernel time per run, mean of {a['profile_runs']} runs). In fp32, "
        f"the matrix products ({', '.join(GEMM_OPS)}) take {total - rest:.1f} of {total:.1f} ms; the "
        f"other {rest:.1f} ms bound any int8 speed-up to {total / rest:.2f}x even if every matrix "
        f"product, attention's included, took no time. Of what int8 could save, little is saved: "
        f"{'; '.join(trade)}.\n\n{by_op}\n\nOne MatMul graph, fp32 "
        f"against dynamic int8, medians of interleaved runs. At batch 1 this model's products are "
        f"too small for the int8 kernels to pay for quantizing their input; the same kernels gain "
        f"more with more rows or wider layers.\n\n{kernels}\n\n{note}Commit `{a['commit']}`. "
        f"Reproduce: `{a['command']}`."
    )


if __name__ == "__main__":
    main()
