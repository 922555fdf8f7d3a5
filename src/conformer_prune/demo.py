"""The main job on a trained recognizer, cached stage by stage in one working directory: a small
subset of the reference corpus, the teacher's evaluation, 50% pruning with layerwise distillation,
the equal-training control (`continued`: the teacher, unpruned, trained for the same steps with the
same recipe), teacher and pruned model side by side (WER with split sizes and paired-bootstrap
intervals against the teacher and the control, parameters, MACs, latency), ONNX export.

Usage:
    run_demo(Path("runs/demo"))   # what `conformer-prune demo` runs, on the committed teacher
    run_demo(Path("runs/demo-mine"), teacher=Path("runs/teacher/model.pt"))
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from conformer_prune.config import load_config, recipe_path
from conformer_prune.data.corpus import read_corpus, write_manifest
from conformer_prune.data.synth import REFERENCE_CORPUS, UNSEEN_SPLIT, synthesize
from conformer_prune.data.tokenizer import Tokenizer
from conformer_prune.evaluate import evaluate_recognizer
from conformer_prune.evaluate.report import format_interval
from conformer_prune.evaluate.run import compare_recogs, recogs_path
from conformer_prune.export.run import export_with_report
from conformer_prune.model import load_recognizer
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.report import format_comparison, prune_and_report
from conformer_prune.utils import write_json

__all__ = ["DEFAULT_TEACHER", "DEMO_HOURS", "DEMO_UNSEEN_HOURS", "run_demo"]

# The reference teacher committed with the repository (src/conformer_prune/demo.py -> repo root).
DEFAULT_TEACHER = Path(__file__).resolve().parents[2] / "benchmarks" / "models" / "teacher.pt"
# The demo's subset of the reference corpus: `synthesize` with REFERENCE_CORPUS's arguments but a
# smaller `hours` and `unseen_hours` writes a prefix of each split. 1 h gives about 0.9 h to prune
# on and a test split of about 85 utterances; 0.1 h of test-unseen about 100 utterances.
DEMO_HOURS = 1.0
DEMO_UNSEEN_HOURS = 0.1
# The splits both models are evaluated on, in the order they are shown.
_EVALUATED = ("test", UNSEEN_SPLIT, "dev")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_teacher(teacher: Path, work: Path) -> dict[str, str]:
    """The teacher's path and checksum, recorded in `work` on the first run; a later run into the
    same `work` with another teacher would mix their cached stages, so it is refused."""
    if not teacher.is_file():
        raise FileNotFoundError(
            f"no teacher checkpoint at {teacher}: the reference teacher is committed to the repository "
            f"as benchmarks/models/teacher.pt (run the demo from a clone, or restore it with `git checkout "
            f"-- benchmarks/models/teacher.pt`); or train one with `conformer-prune train` and pass "
            f"`--teacher PATH`"
        )
    identity = {"path": str(teacher), "sha256": _sha256(teacher)}
    record = work / "teacher.json"
    if record.exists():
        before = json.loads(record.read_text(encoding="utf-8"))
        if before["sha256"] != identity["sha256"]:
            raise ValueError(
                f"{work} holds a demo of another teacher ({before['path']}, sha256 {before['sha256'][:12]}); "
                f"found {teacher} (sha256 {identity['sha256'][:12]}): pass another --work or delete {work}"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json(record, identity)
    return identity


def _spellable(split: Path, tokenizer: Tokenizer, work: Path) -> Path:
    """`split`, or where a teacher's alphabet lacks characters of some transcripts (a teacher
    trained on other text), a manifest in `work` of the utterances it can spell: pruning trains
    with CTC on the teacher's tokens. Evaluation still scores every utterance."""
    utts = read_corpus(split)
    kept = [u for u in utts if not tokenizer.unspellable(u.text)]
    if len(kept) == len(utts):
        return split
    chars = tokenizer.unspellable(" ".join(u.text for u in utts))
    print(
        f"  {split.name}: the teacher's alphabet lacks {' '.join(chars)}: pruning uses the "
        f"{len(kept)} of {len(utts)} utterances it can spell"
    )
    manifest = work / f"{split.name}-spellable.jsonl"
    write_manifest(manifest, kept)
    return manifest


def _teacher_eval(teacher: Path, splits: dict[str, Path], out: Path, workers: int) -> dict[str, Any]:
    """The teacher's evaluation with its recognitions in `out`, cached in ``out/eval.json``."""
    cache = out / "eval.json"
    if cache.exists():
        result: dict[str, Any] = json.loads(cache.read_text(encoding="utf-8"))
        return result
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_recognizer(load_recognizer(teacher), splits, threads=workers, recogs_dir=out)
    write_json(cache, result)
    return result


def run_demo(
    work: Path,
    teacher: Path = DEFAULT_TEACHER,
    hours: float = DEMO_HOURS,
    unseen_hours: float = DEMO_UNSEEN_HOURS,
    workers: int = 2,
    prune_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the stages in `work`; a stage whose results are already there is reused, and an
    interrupted pruning run resumes from its last epoch (delete `work` to start over with other
    settings). Returns what ``work/demo.json`` records.

    Args:
        work: the working directory.
        teacher: the trained recognizer to prune (any architecture the package builds).
        hours: hours of the reference corpus's train/dev/test to synthesize (a prefix of each).
        unseen_hours: hours of its test-unseen split.
        workers: synthesis processes and CPU threads of evaluation and latency.
        prune_overrides: dotted overrides of the ``demo-prune`` recipe.

    Raises:
        FileNotFoundError: `teacher` does not exist.
        ValueError: `work` holds a demo of another teacher.
    """
    start = time.perf_counter()
    identity = _check_teacher(teacher, work)
    corpus = work / "corpus"
    print(f"[1/5] {hours} h + {unseen_hours} h test-unseen of the reference corpus in {corpus}")
    # no dev-unseen: the demo chooses nothing
    subset = {**REFERENCE_CORPUS, "hours": hours, "unseen_hours": unseen_hours, "dev_unseen_hours": 0.0}
    stats = synthesize(corpus, **subset, workers=workers)
    splits = {name: corpus / name for name in _EVALUATED}
    teacher_dir = work / "teacher"
    print(f"[2/5] evaluating the teacher {teacher} in {teacher_dir}")
    teacher_eval = _teacher_eval(teacher, splits, teacher_dir, workers)
    prune_cfg, control_cfg = (
        load_config(PruneConfig, recipe_path("demo-prune"), [*(prune_overrides or []), *extra])
        for extra in ([], ["method=continued"])
    )
    tokenizer = load_recognizer(teacher).tokenizer
    train, dev = (_spellable(corpus / name, tokenizer, work) for name in ("train", "dev"))

    def stage(out: Path, cfg: PruneConfig, latency: bool) -> dict[str, Any]:
        if (out / "eval.json").exists():  # written last: the stage is complete
            return json.loads((out / "eval.json").read_text(encoding="utf-8"))
        resume = (out / "prune_state.pt").exists()
        return prune_and_report(
            cfg, teacher, train, dev, splits, out, resume, workers, teacher_eval=teacher_eval, latency=latency
        )

    pruned = work / "pruned-50"
    print(f"[3/5] pruning to 50% of the parameters with layerwise distillation in {pruned}")
    report = stage(pruned, prune_cfg, latency=True)
    control = work / "continued"
    print(f"[4/5] the control: the teacher, unpruned, trained for the same steps in {control}")
    control_report = stage(control, control_cfg, latency=False)
    intervals, against_control = (
        {name: compare_recogs(recogs_path(base, name), recogs_path(pruned, name)) for name in splits}
        for base in (teacher_dir, control)
    )
    onnx_path = work / "pruned-50.onnx"
    print(f"[5/5] exporting the pruned model to ONNX (fp32 and int8) in {onnx_path}")
    export_json = work / "export.json"
    if export_json.exists():
        export = json.loads(export_json.read_text(encoding="utf-8"))
    else:
        export = export_with_report(
            pruned / "model.pt", onnx_path, int8=True, data=corpus / "test", threads=workers, teacher=teacher
        )
        write_json(export_json, export)
    print(json.dumps(export, indent=2))
    record = {
        "teacher": identity,
        "corpus": {"hours": hours, "unseen_hours": unseen_hours, "splits": stats},
        "prune_config": "demo-prune",
        "prune_overrides": list(prune_overrides or []),
        "teacher_eval": report["teacher"],
        "pruned_eval": report["pruned"],
        "pruned_minus_teacher": intervals,
        "continued_eval": control_report["pruned"],
        "pruned_minus_continued": against_control,
        "prune_wall_seconds": report["wall_seconds"],
        "export": export,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(work / "demo.json", record)
    print(format_summary(record))
    print(f"demo finished in {record['wall_seconds'] / 60:.1f} min; results in {work}")
    return record


def format_summary(record: dict[str, Any]) -> str:
    """Teacher and pruned model side by side, then each split's size and the paired-bootstrap 95%
    interval of the pruned model's WER minus the teacher's, then minus the control's."""
    lines = [
        f"teacher {record['teacher']['path']} and the pruned model (greedy decoding, latency of a 10 s "
        f"utterance on {record['teacher_eval']['threads']} threads):",
        format_comparison(record["teacher_eval"], record["pruned_eval"]),
        "pruned minus teacher WER, points, with the paired bootstrap's 95% interval:",
    ]
    control = "pruned minus continued (the teacher, unpruned, trained for the same steps), its WER first:"
    for key, title in (("pruned_minus_teacher", None), ("pruned_minus_continued", control)):
        if title:
            lines.append(title)
        for name, d in record[key].items():
            wer = f"{100 * record['continued_eval'][f'wer_{name}']:.2f}%   " if title else ""
            size = f"{d['utterances']:>6,} utterances {d['words']:>7,} words"
            lines.append(f"  {name:<12} {size}   {wer}{format_interval(d)}")
    return "\n".join(lines)
