"""Profile a Conformer-CTC's prunable parts on a runtime: the latency table of the latency budget.

Usage:
    conformer-prune profile runs/teacher/model.pt --runtime ort --threads 2 --out latency-ort.json

Every part is built at a grid of widths, with random weights (latency does not depend on their
values), and timed on the runtime at `threads` threads, batch `batch`, one utterance of `seconds`:

- the whole model (every layer at the widest widths of any layer) at every model dimension of
  the `hidden` grid, whose latency less its parts' is ``rest``;
- for each module type, the same model with that type's modules at `units` (neurons, heads,
  channels) in every layer, and without them: a module's latency at `units` is the difference
  divided by the number of such modules. Modules are measured in place, in the whole model,
  because that is where they run: timed alone, in a one-block graph, a module costs more than it
  adds to the whole model (on the reference teacher, ONNX Runtime at 2 threads, the one-block
  parts summed to 53 ms of a 44 ms model), so a table of one-block parts predicted a pruned
  model at 0.48 of the teacher's latency where it measured 0.65;
- the subsampling front end alone, with every stage's channels scaled by each fraction of the grid.

All graphs are timed interleaved, round by round (`interleaved_medians_ms`), so a noisy machine
slows them alike, and each keeps its median. Runtimes: ``torch`` (PyTorch eager, fp32), ``ort``
(ONNX Runtime fp32, each graph exported as `conformer-prune export` does, opset 18) and
``ort-int8`` (those graphs with ONNX Runtime's dynamic int8 quantization of their MatMul and Gemm
nodes, the default of ``export --int8``). The table names the runtime, the machine and the library
versions; `conformer_prune.prune.latency.LatencyModel` reads it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from tqdm import tqdm

from conformer_prune.config import to_dict
from conformer_prune.evaluate.metrics import dummy_features, interleaved_times_ms
from conformer_prune.model.conformer import (
    HIDDEN,
    ConformerBlock,
    ConformerConfig,
    ConformerCTC,
    ConvSubsampling,
    build_model,
)
from conformer_prune.prune.latency import FORMAT, PARTS, RUNTIMES, LatencyModel, Runtime
from conformer_prune.utils import atomic_write_text

__all__ = [
    "RUNTIMES",
    "MeasuredRatios",
    "Runtime",
    "in_new_process",
    "machine",
    "measure_models_ms",
    "measured_ratios",
    "profile_latency",
    "write_table",
]

UNIT_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
HIDDEN_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
FRONTEND_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
_INT8_OPS = ["MatMul", "Gemm"]


@dataclasses.dataclass
class _Graph:
    module: nn.Module
    inputs: tuple[Tensor, ...]


def _scaled(channels: list[int], fraction: float) -> list[int]:
    """Every front-end stage's channels scaled by `fraction` (at least one)."""
    return [max(1, round(fraction * c)) for c in channels]


def _frontend_graph(cfg: ConformerConfig, d: int, fraction: float, seconds: float, batch: int) -> _Graph:
    channels = _scaled(cfg.subsampling_channels, fraction)
    module = ConvSubsampling(cfg.n_mels, channels, d, cfg.subsampling).eval()
    return _Graph(module, dummy_features(cfg, seconds, batch))


def _model_graph(
    cfg: ConformerConfig, d: int, seconds: float, batch: int, widths: dict[str, int] | None = None
) -> _Graph:
    """The whole model at dimension `d`, with every layer's `widths` (field -> width) if given."""
    per_layer: dict[str, Any] = {k: [v] * cfg.n_layers for k, v in (widths or {}).items()}
    full = dataclasses.replace(cfg, d_model=d, d_model_unpruned=0, hidden_dims=[], **per_layer)
    return _Graph(build_model(full).eval(), dummy_features(cfg, seconds, batch))


def _torch_runner(graph: _Graph) -> Callable[[], object]:
    @torch.no_grad()
    def run() -> object:
        return graph.module(*graph.inputs)

    return run


def _ort_runner(graph: _Graph, threads: int, int8: bool, workdir: Path, name: str) -> Callable[[], object]:
    from conformer_prune.export.onnx import exported_proto
    from conformer_prune.export.runtime import ort_session

    names = [f"input{i}" for i in range(len(graph.inputs))]
    with torch.no_grad():
        outputs = graph.module(*graph.inputs)
    n_out = len(outputs) if isinstance(outputs, tuple) else 1
    proto = exported_proto(
        graph.module, graph.inputs, names, [f"output{i}" for i in range(n_out)], tuple({} for _ in names), {}
    )
    path = workdir / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = workdir / f"{name}.int8.onnx"
        quantize_dynamic(  # as `conformer_prune.export.onnx.quantize_int8` quantizes
            str(path),
            str(quantized),
            weight_type=QuantType.QInt8,
            reduce_range=True,
            op_types_to_quantize=_INT8_OPS,
        )
        path = quantized
    session = ort_session(path, threads)
    feed = {n: x.numpy() for n, x in zip(names, graph.inputs, strict=True)}
    return functools.partial(session.run, None, feed)


def _runners(
    graphs: dict[Any, _Graph], runtime: Runtime, threads: int, progress: bool
) -> tuple[dict[Any, Callable[[], object]], tempfile.TemporaryDirectory[str] | None]:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, found {runtime!r}")
    if runtime == "torch":
        return {key: _torch_runner(g) for key, g in graphs.items()}, None
    workdir = tempfile.TemporaryDirectory(prefix="conformer-prune-profile-")
    runners = {}
    items = tqdm(graphs.items(), desc=f"export ({runtime})", disable=not progress, unit="graph")
    for k, (key, graph) in enumerate(items):
        runners[key] = _ort_runner(graph, threads, runtime == "ort-int8", Path(workdir.name), f"g{k}")
    return runners, workdir


def _timed_rounds(
    graphs: dict[Any, _Graph], runtime: Runtime, threads: int, rounds: int, progress: bool = False
) -> dict[Any, list[float]]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runners, workdir = _runners(graphs, runtime, threads, progress)
        try:
            return interleaved_times_ms(runners, rounds)
        finally:
            if workdir is not None:
                workdir.cleanup()
    finally:
        torch.set_num_threads(old)


def _timed(
    graphs: dict[Any, _Graph], runtime: Runtime, threads: int, rounds: int, progress: bool = False
) -> dict[Any, float]:
    times = _timed_rounds(graphs, runtime, threads, rounds, progress)
    return {key: statistics.median(t) for key, t in times.items()}


def measure_models_ms(
    models: Sequence[ConformerCTC],
    runtime: Runtime,
    threads: int = 2,
    batch: int = 1,
    seconds: float = 10.0,
    rounds: int = 10,
) -> list[float]:
    """Median latency (ms) of each model's forward pass (features to log-probabilities) on
    `runtime`, measured interleaved in this process; compare them as ratios."""
    graphs = {
        k: _Graph(m.eval().cpu().float(), dummy_features(m.config, seconds, batch))
        for k, m in enumerate(models)
    }
    medians = _timed(graphs, runtime, threads, rounds)
    return [medians[k] for k in range(len(models))]


T = TypeVar("T")


def in_new_process(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a new (spawned) process, where every measured ratio is timed: a process that
    has trained timed the same models differently from a new one (the benchmarks measured the
    reference teacher 2.7x slower in a process that had trained a run on one thread, 204 against
    74 ms; on the quick teacher a pruned model measured 0.494 of the teacher's latency in its
    training process and 0.52-0.54 in new ones). `fn` is a module-level function; its arguments
    and result are pickled."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


MEASURE_PROCESSES = 3  # new processes per measured ratio (`measured_ratios`)


@dataclasses.dataclass
class MeasuredRatios:
    """Latencies measured as fractions of the first model's (see `measured_ratios`).

    Attributes:
        ratios: per model, the median over processes of its ratio (the first model's is 1).
        per_process: per process, each model's ratio: the median over rounds of that round's
            time over the first model's in the same round.
        ms: per model, the median over processes of its median time (ms).
    """

    ratios: list[float]
    per_process: list[list[float]]
    ms: list[float]


def measured_ratios(
    models: Sequence[ConformerCTC],
    runtime: Runtime,
    threads: int = 2,
    batch: int = 1,
    seconds: float = 10.0,
    rounds: int = 30,
    processes: int | None = None,
) -> MeasuredRatios:
    """Each model's latency on `runtime` as a fraction of the first's: timed interleaved, round by
    round, in each of `processes` new processes (`MEASURE_PROCESSES` when None), so that neither
    this process's state nor one process's luck sets it. Compare latencies this way, not as
    absolute times: a shared machine moves those from process to process."""
    specs = [(m.config, {k: v.detach().cpu().float() for k, v in m.state_dict().items()}) for m in models]
    runs = [
        in_new_process(_rounds_in_process, specs, runtime, threads, batch, seconds, rounds)
        for _ in range(processes or MEASURE_PROCESSES)
    ]
    per_process = [
        [statistics.median(x / first for x, first in zip(t, times[0], strict=True)) for t in times]
        for times in runs
    ]
    return MeasuredRatios(
        ratios=[statistics.median(column) for column in zip(*per_process, strict=True)],
        per_process=per_process,
        ms=[statistics.median(statistics.median(t) for t in column) for column in zip(*runs, strict=True)],
    )


def _rounds_in_process(
    specs: list[tuple[ConformerConfig, dict[str, Tensor]]],
    runtime: Runtime,
    threads: int,
    batch: int,
    seconds: float,
    rounds: int,
) -> list[list[float]]:
    graphs = {}
    for k, (cfg, state) in enumerate(specs):
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
        graphs[k] = _Graph(model.eval(), dummy_features(cfg, seconds, batch))
    times = _timed_rounds(graphs, runtime, threads, rounds)
    return [times[k] for k in range(len(specs))]


def _grid(n: int, fractions: Sequence[float], low: int = 1) -> list[int]:
    return sorted({max(low, round(f * n)) for f in fractions} | {n})


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def machine() -> dict[str, Any]:
    """The CPU (its model name), its cores, the system and Python: what a timing was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": platform.platform(),
        "python": platform.python_version(),
    }


def _versions(runtime: Runtime) -> dict[str, str]:
    versions: dict[str, str] = {"torch": str(torch.__version__)}
    for package in ("conformer-prune", "onnxruntime", "onnx") if runtime != "torch" else ("conformer-prune",):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def profile_latency(
    cfg: ConformerConfig,
    runtime: Runtime = "ort",
    threads: int = 2,
    batch: int = 1,
    seconds: float = 10.0,
    rounds: int = 7,
    unit_fractions: Sequence[float] = UNIT_FRACTIONS,
    hidden_fractions: Sequence[float] = HIDDEN_FRACTIONS,
    frontend_fractions: Sequence[float] = FRONTEND_FRACTIONS,
    progress: bool = True,
) -> dict[str, Any]:
    """The latency table of `cfg` on `runtime` (see the module docstring): a JSON-ready dict that
    `LatencyModel` reads. Widths are the largest of any layer; grids are fractions of them."""
    start = time.perf_counter()
    widest = {branch.field: max(getattr(cfg, branch.field)) for branch in ConformerBlock.BRANCHES.values()}
    fields = {"ffn": "ffn1", "heads": "heads", "conv": "conv_channels"}
    widest["ffn1"] = max(widest["ffn1"], widest["ffn2"])
    units = {
        part: list(range(1, max(1, widest["heads"]) + 1))
        if part == "heads"
        else _grid(widest[fields[part]], unit_fractions)
        for part in PARTS
    }
    hidden = sorted({_even(f * cfg.d_model) for f in hidden_fractions} | {cfg.d_model})
    # front-end channel fractions, and the fraction of its convolution MACs each keeps (the
    # table's axis); a fraction whose channels round like the previous one's is not profiled
    reference = LatencyModel.frontend_conv_macs(cfg, {})
    fractions: list[float] = []
    mac_fractions: list[float] = []
    for f in sorted(set(frontend_fractions) | {1.0}):
        channels = {f"frontend.{i}": float(c) for i, c in enumerate(_scaled(cfg.subsampling_channels, f))}
        value = float(LatencyModel.frontend_conv_macs(cfg, channels) / reference)
        if not mac_fractions or value > mac_fractions[-1]:
            fractions.append(f)
            mac_fractions.append(value)
    # the whole model, every layer at the widest widths, and each module type at each narrower
    # width (0: without it) in every layer; at the widest it is the whole model
    base = {**widest, "ffn2": widest["ffn1"]}
    part_fields = {"ffn": ("ffn1", "ffn2"), "heads": ("heads",), "conv": ("conv_channels",)}
    graphs: dict[Any, _Graph] = {}
    for d in hidden:
        graphs["model", d] = _model_graph(cfg, d, seconds, batch, base)
        for part in PARTS:
            for u in [0, *units[part]]:
                if u == base[part_fields[part][0]]:
                    continue
                widths = base | {field: u for field in part_fields[part]}
                graphs[part, d, u] = _model_graph(cfg, d, seconds, batch, widths)
        for f in fractions:
            graphs["frontend", d, f] = _frontend_graph(cfg, d, f, seconds, batch)
    ms = _timed(graphs, runtime, threads, rounds, progress)

    def timed(part: str, d: int, u: int) -> float:
        return ms["model", d] if u == base[part_fields[part][0]] else ms[part, d, u]

    def part_ms(part: str, d: int, u: int) -> float:
        return (timed(part, d, u) - timed(part, d, 0)) / (cfg.n_layers * len(part_fields[part]))

    parts: dict[str, Any] = {
        part: {"units": units[part], "ms": [[part_ms(part, d, u) for u in units[part]] for d in hidden]}
        for part in PARTS
    }
    parts["frontend"] = {
        "fraction": mac_fractions,
        "channel_fraction": fractions,
        "ms": [[ms["frontend", d, f] for f in fractions] for d in hidden],
    }
    table = {
        "format": FORMAT,
        "runtime": runtime,
        "threads": threads,
        "batch": batch,
        "seconds": seconds,
        "rounds": rounds,
        "machine": machine(),
        "versions": _versions(runtime),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "profile_seconds": 0.0,
        "fit": (
            "bilinear interpolation of measured tables (piecewise linear in units, then in d); a "
            "module = (the whole model with that type's modules at that width in every layer - the "
            "whole model without them) / their number; rest = whole model - front end - modules"
        ),
        "config": to_dict(cfg),
        "hidden": hidden,
        "parts": parts,
        "rest_ms": [0.0 for _ in hidden],
        "model_ms": [ms["model", d] for d in hidden],
    }
    # rest(d): the whole model's time less the front end and the modules as the table predicts
    # them (between grid points by its interpolation), so the dense model at each d is exact
    parts_only = LatencyModel(table)
    uniform_widths: dict[str, Any] = {k: [v] * cfg.n_layers for k, v in base.items()}
    uniform = dataclasses.replace(cfg, **uniform_widths)
    table["rest_ms"] = [
        ms["model", d] - float(parts_only.predict(uniform, {HIDDEN: float(d)})) for d in hidden
    ]
    table["profile_seconds"] = time.perf_counter() - start
    return table


def write_table(table: dict[str, Any], path: Path) -> None:
    """Write a latency table as JSON, atomically."""
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
