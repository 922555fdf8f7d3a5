"""FastConformer (dw_striding by 8, kernel 9) against the 4x Conformer at the same d_model and depth:
training throughput, where a training step's time goes, and inference latency (PyTorch and ONNX
Runtime).

Usage:
    python benchmarks/fastconformer.py                 # the two recipes' shapes, bf16 and fp32
    python benchmarks/fastconformer.py --rounds 3 --batch 4 --seconds 5   # a quick look

Both models are built from the shipped recipes (`teacher`: the reference Conformer; `fastconformer`:
the same shape with NeMo's 8x front end and kernel 9) with random weights. A training step is what
`conformer-prune train` does per batch: forward under the recipe's precision, CTC loss, backward,
gradient clipping, AdamW. The batch is `--batch` utterances of `--seconds` of random features with
random targets (a third of the 8x encoder frames, so CTC can align them). Steps of the two models
alternate (A, B, A, B, ...), after one warm-up each, and the medians are compared: the machine is
shared, and alternation slows both alike. Throughput is audio seconds per wall-clock second (x real
time) on 2 threads. The profile times each part's forward and backward with module hooks (the CPU
runs them synchronously) in separate steps; the hooks slow a step, so only its shares are compared.
Latency: one utterance of 10 s, eval mode, PyTorch
eager and ONNX Runtime fp32 (features in), interleaved. Writes benchmarks/results/fastconformer.json
and the fastconformer section of docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, git_commit, markdown_table, random_batch, save_result, update_doc_section

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.dataset import Batch
from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.evaluate.metrics import count_params, interleaved_medians_ms, macs_per_second
from conformer_prune.export import OnnxRecognizer, export_onnx
from conformer_prune.model import ConformerConfig, ConformerCTC, Recognizer, build_model
from conformer_prune.model.conformer import FEATURE_FRAMES_PER_SECOND
from conformer_prune.train import TrainConfig
from conformer_prune.train.loop import autocast, ctc_loss, make_optimizer

BASELINE = "conformer-4x"
MODELS: dict[str, tuple[str, Callable[[ConformerConfig], dict[str, Any]]]] = {
    # name -> (recipe, changes to its model config)
    BASELINE: ("teacher", lambda m: {}),
    "fastconformer-8x": ("fastconformer", lambda m: {}),
    # NeMo's subsampling_conv_channels -1: the front end as wide as the encoder
    "fastconformer-8x, d_model channels": (
        "fastconformer",
        lambda m: {"subsampling_channels": [m.d_model] * len(m.subsampling_channels)},
    ),
}
PARTS = {  # profile category -> module attribute names inside the encoder
    "front end": ("pre_encode",),
    "attention": ("self_attn", "norm_self_att"),
    "convolution": ("conv", "norm_conv"),
    "feed-forward": ("feed_forward1", "feed_forward2", "norm_feed_forward1", "norm_feed_forward2"),
}


def _batch(model: ConformerCTC, batch: int, seconds: float) -> Batch:
    # the same transcript length for every model (it belongs to the utterance, not the encoder):
    # a third of the frames of the most subsampled encoder compared (8x), so CTC fits it in all
    tokens = max(1, int(seconds * model.config.feature_rate / 8) // 3)
    return random_batch(model.config, batch, seconds, tokens)


def _step(model: ConformerCTC, batch: Batch, precision: str, grad_clip: float) -> Callable[[], None]:
    """One training step of `model` on `batch`, as `train_one_epoch` takes it."""
    optimizer = make_optimizer(model, 1e-4, 1e-3, (0.9, 0.98))
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss, _ = ctc_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()

    return step


def _profile(
    model: ConformerCTC, batch: Batch, precision: str, grad_clip: float, steps: int
) -> dict[str, float]:
    """Median seconds per step spent in each part (forward + backward), the optimizer (clipping
    and AdamW) and the rest (positional encoding, block norms, CTC head and loss, autograd)."""
    spent: dict[str, float] = {}
    starts: dict[int, float] = {}
    handles: list[Any] = []

    def attach(module: nn.Module, part: str) -> None:
        def start(*_: Any) -> None:
            starts[id(module)] = time.perf_counter()

        def stop(*_: Any) -> None:
            spent[part] = spent.get(part, 0.0) + time.perf_counter() - starts.pop(id(module))

        handles.append(module.register_forward_pre_hook(start))
        handles.append(module.register_forward_hook(stop))
        handles.append(module.register_full_backward_pre_hook(start))
        handles.append(module.register_full_backward_hook(stop))

    for part, names in PARTS.items():
        for name, module in model.encoder.named_modules():
            in_block = name.startswith("layers.") and name.rsplit(".", 1)[-1] in names
            if in_block or name in names:  # (pre_encode.conv is the front end's, not a block's)
                attach(module, part)
    # the features require a gradient here, or the front end's backward hook could not fire
    # around its backward (the extra input gradient of the first convolution is small)
    batch.feats.requires_grad_(True)
    optimizer = make_optimizer(model, 1e-4, 1e-3, (0.9, 0.98))
    params = [p for p in model.parameters() if p.requires_grad]
    records: list[dict[str, float]] = []
    for k in range(steps + 1):  # the first is a warm-up
        spent.clear()
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss, _ = ctc_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt_start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        end = time.perf_counter()
        record = {**spent, "optimizer": end - opt_start}
        record["rest"] = (end - start) - sum(record.values())
        record["step"] = end - start
        if k:
            records.append(record)
    for handle in handles:
        handle.remove()
    return {key: statistics.median(r[key] for r in records) for key in records[0]}


def _recognizer(model: ConformerCTC) -> Recognizer:
    tokenizer = Tokenizer.train(["A CAT SAT ON THE MAT"] * 4, TokenizerConfig(vocab_size=20))
    return Recognizer(model.eval(), LogMelFeatures(FeatureConfig()), tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="utterances per training step")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per utterance")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per model and precision")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument(
        "--profile-steps", type=int, default=3, help="profiled steps per model (after a warm-up)"
    )
    args = parser.parse_args()
    commit = git_commit()
    torch.set_num_threads(2)
    models: dict[str, ConformerCTC] = {}
    for name, (recipe, change) in MODELS.items():
        config = load_config(TrainConfig, recipe_path(recipe)).model
        torch.manual_seed(0)
        models[name] = build_model(dataclasses.replace(config, **change(config)))
    audio = args.batch * args.seconds
    result: dict[str, Any] = {
        "command": command_line(),
        "commit": commit,
        "threads": 2,
        "batch": args.batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "profile_steps": args.profile_steps,
        "models": {
            name: {
                "recipe": MODELS[name][0],
                "params": count_params(m),
                "macs_per_second": macs_per_second(m),
                "subsampling": f"{m.config.subsampling} x{m.config.subsampling_factor}",
                "subsampling_channels": list(m.config.subsampling_channels),
            }
            for name, m in models.items()
        },
        "training": {},
        "profile": {},
    }
    for precision in args.precisions:
        runs = {}
        for name, model in models.items():
            model.train()
            runs[name] = _step(model, _batch(model, args.batch, args.seconds), precision, 1.0)
        medians = interleaved_medians_ms(runs, args.rounds)
        result["training"][precision] = {
            name: {"step_ms": ms, "x_real_time": audio / (ms / 1000)} for name, ms in medians.items()
        }
        speedup = {name: medians[BASELINE] / ms for name, ms in medians.items() if name != BASELINE}
        result["training"][precision]["speedup"] = speedup
        print(f"training {precision}: {medians} ms per step; speed-ups {speedup}", flush=True)
        for name, model in models.items():
            batch = _batch(model, args.batch, args.seconds)
            result["profile"].setdefault(precision, {})[name] = _profile(
                model, batch, precision, 1.0, args.profile_steps
            )
            print(f"profile {precision} {name}: {result['profile'][precision][name]}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        frames = int(10 * FEATURE_FRAMES_PER_SECOND) + 1
        feats = torch.randn(1, frames, 80, generator=torch.Generator().manual_seed(0))
        lengths = torch.tensor([frames])
        runners: dict[tuple[str, str], Callable[[], object]] = {}
        for name, model in models.items():
            model.eval()
            path = export_onnx(_recognizer(model), Path(tmp) / f"{name}.onnx", frontend=False)
            session = OnnxRecognizer(path, threads=2).session
            inputs = {"features": feats.numpy(), "lengths": lengths.numpy()}

            def run_torch(model: ConformerCTC = model) -> Tensor:
                with torch.inference_mode():
                    return model(feats, lengths)[0]

            runners[(name, "torch")] = run_torch
            runners[(name, "ort-fp32")] = functools.partial(session.run, None, inputs)
        latency = interleaved_medians_ms(runners, args.rounds)
        result["latency_ms_10s"] = {f"{name} {runtime}": ms for (name, runtime), ms in latency.items()}
        print(f"latency: {result['latency_ms_10s']}", flush=True)
    save_result("fastconformer", result)
    update_doc_section("fastconformer", _markdown(result))


def _markdown(r: dict[str, Any]) -> str:
    names = list(MODELS)
    lines = [
        "## FastConformer against the 4x Conformer (same d_model and depth)",
        "",
        f"`{r['command']}` at commit {r['commit']}: random weights, the `teacher` and `fastconformer` "
        "recipes' shapes (and the FastConformer with NeMo's `subsampling_conv_channels: -1`, a front "
        f"end as wide as the encoder), {r['threads']} threads, a training step on {r['batch']} x "
        f"{r['seconds']:.0f} s "
        f"(forward, CTC, backward, clipping, AdamW), medians of {r['rounds']} steps per model "
        "taken in alternation. Absolute figures move with the load of a shared machine; the ratios "
        "are what alternation protects. Speed-ups (bold) are against the 4x Conformer in the same "
        "run.",
        "",
    ]
    rows = []
    lat = r["latency_ms_10s"]
    for name in names:
        m = r["models"][name]
        front = f"{m['subsampling']}, {'/'.join(map(str, m['subsampling_channels']))} channels"
        row = [name, front, f"{m['params']:,}", f"{m['macs_per_second'] / 1e6:.1f} M"]
        for t in r["training"].values():
            cell = f"{t[name]['x_real_time']:.1f}x ({t[name]['step_ms'] / 1000:.2f} s"
            row.append(cell + (f", **{t['speedup'][name]:.2f}x**)" if name != BASELINE else ")"))
        for runtime in ("torch", "ort-fp32"):
            ms = lat[f"{name} {runtime}"]
            ratio = lat[f"{BASELINE} {runtime}"] / ms
            row.append(f"{ms:.1f} ms" + (f" ({ratio:.2f}x)" if name != BASELINE else ""))
        rows.append(row)
    header = ["model", "front end", "params", "MACs / s audio"]
    header += [f"training {p}, x real time (step)" for p in r["training"]]
    header += ["latency 10 s, PyTorch", "latency 10 s, ONNX Runtime fp32"]
    lines.append(markdown_table(header, rows))
    for precision, profile in r["profile"].items():
        lines += ["", f"Where a training step's time goes ({precision}, seconds per step, share):", ""]
        keys = ["front end", "attention", "convolution", "feed-forward", "optimizer", "rest"]
        prow = []
        for name in names:
            p = profile[name]
            prow.append(
                [name]
                + [f"{p.get(k, 0.0):.3f} ({p.get(k, 0.0) / p['step']:.0%})" for k in keys]
                + [f"{p['step']:.3f}"]
            )
        lines.append(markdown_table(["model", *keys, "step"], prow))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
