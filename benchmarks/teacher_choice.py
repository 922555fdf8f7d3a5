"""Which teacher the comparison compresses: the reference teacher, or one trained on the wide voice
set (`benchmarks/teacher.py --corpus wide`).

The reference teacher is at 13.5% test WER but 2.88x that on test-unseen (issue 15 asks for at most
2x); voices.json found the gap in a few held-out voices, not in new words. A teacher that heard more
voices is the lever, and every pruning row trains again on a new teacher, so the choice is made
once, here, by a rule fixed before the wide teacher trained (2026-12-05):

    the wide teacher replaces the reference one only where its WER on dev-unseen (dev's sentences
    in four espeak-ng voices no split trains on) is lower with the paired-bootstrap 95% interval of
    wide minus reference below 0, and it is not worse on the reference corpus's dev (that
    interval not above 0).

Both teachers are scored on the same audio: the reference corpus's dev, test and test-unseen, and
the wide corpus's dev-unseen. Test and test-unseen are reported, not chosen on. A teacher not
trained yet is left out; the record then holds the reference teacher's baseline alone.

The wide teacher was chosen (2026-12-05: wide minus reference, dev-unseen -4.40 [-5.58, -3.22],
dev +0.32 [-0.49, +1.10]). The names here are those of the choice: "reference" is the narrow voice
set's teacher (now benchmarks/models/teacher-narrow.pt) and its corpus (`NARROW_CORPUS`); "wide" is
the reference teacher and corpus since.

Usage:
    python benchmarks/teacher_choice.py      # evaluates what is not cached (about 5 min a teacher)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    MODELS,
    TEACHER,
    command_line,
    git_commit,
    markdown_table,
    narrow_corpus,
    reference_corpus,
    save_result,
    update_doc_section,
)
from prune import teacher_eval

from conformer_prune.data.synth import DEV_UNSEEN_SPLIT, UNSEEN_SPLIT
from conformer_prune.evaluate.report import format_interval
from conformer_prune.evaluate.run import compare_recogs, recogs_path

# named as they were when the choice was made (see above)
TEACHERS = {"reference": MODELS / "teacher-narrow.pt", "wide": TEACHER}
# record name -> (corpus, split directory); the rule reads the first two
SPLITS = {
    "dev": ("reference", "dev"),
    "dev_unseen": ("wide", DEV_UNSEEN_SPLIT),
    "test": ("reference", "test"),
    "test_unseen": ("reference", UNSEEN_SPLIT),
}


def splits() -> dict[str, Path]:
    """The scored splits: the narrow corpus's, and dev-unseen from the wide (reference) corpus."""
    corpora = {"reference": narrow_corpus(), "wide": reference_corpus()}
    return {name: corpora[corpus] / split for name, (corpus, split) in SPLITS.items()}


def rule(versus: dict[str, dict[str, Any]]) -> bool:
    """The fixed rule on wide minus reference: dev-unseen's interval below 0, dev's not above 0."""
    return versus["dev_unseen"]["high"] < 0 and versus["dev"]["low"] <= 0


def make_record(results: dict[str, dict[str, Any]], work: Path) -> dict[str, Any]:
    """Each teacher's WERs with the split sizes, wide minus reference on every split, the choice."""
    first = next(iter(results.values()))
    record: dict[str, Any] = {
        "rule": "wide replaces reference where dev-unseen's wide-minus-reference interval is below 0 "
        "and dev's is not above 0",
        "splits": {s: {"utterances": first[f"utterances_{s}"], "words": first[f"words_{s}"]} for s in SPLITS},
        "teachers": {
            name: {
                **{f"wer_{s}": r[f"wer_{s}"] for s in SPLITS},
                "unseen_over_test": r["wer_test_unseen"] / r["wer_test"] if r["wer_test"] else None,
                "params": r["params"],
            }
            for name, r in results.items()
        },
        "chosen": "reference",
    }
    if "wide" in results:
        versus = {
            s: compare_recogs(recogs_path(work / "reference", s), recogs_path(work / "wide", s))
            for s in SPLITS
        }
        record["wide_minus_reference"] = versus
        record["chosen"] = "wide" if rule(versus) else "reference"
    else:
        record["not_run"] = ["wide"]
    return record


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def section(record: dict[str, Any]) -> str:
    """The choice's section of docs/benchmark.md."""
    sizes = "; ".join(
        f"{SPLITS[s][1]} {v['utterances']:,} utterances, {v['words']:,} words"
        for s, v in record["splits"].items()
    )
    versus = record.get("wide_minus_reference", {})
    rows = [
        [name, *[f"{100 * t[f'wer_{s}']:.2f}%" for s in SPLITS], _ratio(t["unseen_over_test"])]
        for name, t in record["teachers"].items()
    ]
    if versus:
        rows.append(["wide minus reference", *[format_interval(versus[s]) for s in SPLITS], "-"])
    header = ["teacher", *(f"WER {split}" for _, split in SPLITS.values()), "test-unseen / test"]
    table = markdown_table(header, rows)
    verdict = (
        f"Chosen by the rule: **{record['chosen']}**."
        if versus
        else "The wide teacher has not trained yet: the reference teacher's figures are the baseline "
        "it must beat."
    )
    return "\n".join(
        [
            "## Which teacher (`benchmarks/teacher_choice.py`)",
            "",
            f"The rule, fixed before the wide teacher trained: {record['rule']} (test and "
            f"test-unseen are reported, not chosen on). Splits: {sizes}. Dev, test and "
            "test-unseen are the reference corpus's; dev-unseen is the wide corpus's (dev's sentences, "
            "four espeak-ng voices no split trains on). Intervals: paired bootstrap, 95%.",
            "",
            table,
            "",
            verdict,
            "",
            f"Command: `{record['command']}`, commit {record['commit']}.",
        ]
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.parse_args()
    commit = git_commit()
    evaluated = splits()
    work = CACHE / "teacher-choice"
    results = {
        # WER only: the choice reads no latency
        name: teacher_eval(path, evaluated, work / name, latency=False)
        for name, path in TEACHERS.items()
        if path.exists()
    }
    record = make_record(results, work) | {"command": command_line(), "commit": commit}
    save_result("teacher_choice", record)
    update_doc_section("teacher-choice", section(record))
    print(section(record))


if __name__ == "__main__":
    main()
