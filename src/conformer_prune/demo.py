"""The main job on embedded defaults, cached stage by stage in one working directory: a synthetic
corpus, a small teacher, 50% pruning with layerwise distillation and its report, ONNX export.

Usage:
    run_demo(Path("runs/demo"))   # what `conformer-prune demo` runs
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.synth import synthesize
from conformer_prune.export.run import export_with_report
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.report import prune_and_report
from conformer_prune.train import TrainConfig, run_training

__all__ = ["run_demo"]


def run_demo(
    work: Path,
    hours: float = 0.5,
    seed: int = 0,
    workers: int = 2,
    train_overrides: list[str] | None = None,
    prune_overrides: list[str] | None = None,
) -> None:
    """Run the four stages in `work`; a stage whose state is already there resumes from it."""
    start = time.perf_counter()
    corpus = work / "corpus"
    print(f"[1/4] synthetic corpus ({hours} h) in {corpus}")
    synthesize(corpus, hours, seed=seed, workers=workers)
    run = work / "teacher"
    print(f"[2/4] training a small Conformer-CTC teacher in {run}")
    cfg = load_config(TrainConfig, recipe_path("demo"), train_overrides)
    resume = (run / "train_state.pt").exists()
    run_training(cfg, read_corpus(corpus / "train"), read_corpus(corpus / "dev"), run, resume=resume)
    evaluated = {"dev": corpus / "dev", "test": corpus / "test"}
    pruned = work / "pruned-50"
    print(f"[3/4] pruning to 50% of the parameters with layerwise distillation in {pruned}")
    prune_cfg = load_config(PruneConfig, recipe_path("demo-prune"), prune_overrides)
    resume = (pruned / "prune_state.pt").exists()
    prune_and_report(prune_cfg, run / "model.pt", corpus / "train", corpus / "dev", evaluated, pruned, resume)
    onnx_path = work / "pruned-50.onnx"
    print(f"[4/4] exporting the pruned model to ONNX (fp32 and int8) in {onnx_path}")
    report = export_with_report(
        pruned / "model.pt", onnx_path, int8=True, data=corpus / "test", teacher=run / "model.pt"
    )
    print(json.dumps(report, indent=2))
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; results in {work}")
