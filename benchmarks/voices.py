"""Where the reference teacher's and the pruned model's errors are: by voice, and on words the
training text has or lacks. It answers why test-unseen's WER is about twice test's (issue 15
asks for at most 2x): new words, new voices, or a few of them.

Usage:
    python benchmarks/voices.py                 # after distill.py (or distill.py --plan) linked its runs
    python benchmarks/voices.py --run l0        # another of distill.py's runs as the pruned model

Reads the teacher's recognitions that distill.py's teacher stage wrote (benchmarks/cache/distill/
teacher; evaluated here if missing, about 3 minutes), a pruned run's (distill.py's `chosen` by
default: the method at 50%), and the reference corpus's voice table (corpus.json). Writes
benchmarks/results/voices.json, its section of docs/benchmark.md and docs/voices.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    DOCS,
    REFERENCE_CORPUS_DIR,
    TEACHER,
    command_line,
    git_commit,
    markdown_table,
    reference_corpus,
    save_result,
    update_doc_section,
)
from prune import evaluated_splits, teacher_eval

from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.synth import UNSEEN_SPLIT
from conformer_prune.evaluate.breakdown import breakdown, count_errors, speaker_of
from conformer_prune.evaluate.report import format_interval
from conformer_prune.evaluate.run import compare_recognitions, read_recogs, recogs_path

SPLITS = {"test": "test", "test_unseen": UNSEEN_SPLIT}  # recogs name -> corpus directory
ENGINE_COLORS = {"espeak-ng": "tab:blue", "flite": "tab:orange", "festival": "tab:green"}


def identity(voice: dict[str, Any]) -> str:
    """What makes a voice new to the model: an espeak-ng voice's variant (``en-029+Alicia``:
    Alicia; its accent is shared with training voices), a flite or festival voice's name."""
    return str(voice["voice"]).rsplit("+", 1)[-1]


def group_rows(
    recogs: dict[str, dict[str, tuple[str, str]]], voices: dict[str, dict[str, Any]], key: str
) -> dict[str, dict[str, Any]]:
    """Each system's errors over the utterances of the voices with the same `key` value."""
    groups: dict[str, list[str]] = {}
    for utt in recogs["teacher"]:
        groups.setdefault(str(voices[speaker_of(utt)][key]), []).append(utt)
    return {
        value: {
            **{system: count_errors([pairs[u] for u in utts]).to_dict() for system, pairs in recogs.items()},
            "pruned_minus_teacher": compare_recognitions(
                {u: recogs["teacher"][u] for u in utts}, {u: recogs["pruned"][u] for u in utts}
            ),
        }
        for value, utts in sorted(groups.items())
    }


def plot(record: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [36, 12]})
    for ax, split in zip(axes, SPLITS, strict=True):
        data = record["splits"][split]
        speakers = sorted(data["voices"], key=lambda s: data["teacher"]["speakers"][s]["wer"])
        x = range(len(speakers))
        for offset, system, alpha in ((-0.2, "teacher", 1.0), (0.2, "pruned", 0.5)):
            ax.bar(
                [i + offset for i in x],
                [100 * data[system]["speakers"][s]["wer"] for s in speakers],
                width=0.4,
                color=[ENGINE_COLORS[data["voices"][s]["engine"]] for s in speakers],
                alpha=alpha,
                hatch=None if system == "teacher" else "//",
            )
        ax.set_xticks(
            list(x), [f"{s} {identity(data['voices'][s])}" for s in speakers], rotation=90, fontsize=7
        )
        ax.axhline(100 * data["teacher"]["all"]["wer"], color="black", lw=0.8, ls="--")
        ax.set(title=f"{split}: WER by voice", ylabel="WER (%)")
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ENGINE_COLORS.values()]
    axes[0].legend(handles, list(ENGINE_COLORS), loc="upper left", fontsize=8)
    fig.suptitle("solid: teacher; hatched: pruned; dashed: the teacher's WER on the split", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render(record: dict[str, Any]) -> str:
    splits = record["splits"]
    vocab_rows = [
        [
            split,
            f"{splits[split]['teacher']['all']['utterances']:,}",
            f"{splits[split]['teacher']['all']['words']:,}",
            pct(splits[split]["teacher"]["vocabulary"]["unknown_share"]),
            *(
                f"{pct(splits[split][s]['vocabulary']['known']['error_rate'])} / "
                f"{pct(splits[split][s]['vocabulary']['unknown']['error_rate'])}"
                for s in ("teacher", "pruned")
            ),
        ]
        for split in SPLITS
    ]
    unseen = splits["test_unseen"]
    voice_rows = [
        [
            speaker,
            v["engine"],
            v["voice"],
            "held out" if v["held_out"] else "seen",
            f"{unseen['teacher']['speakers'][speaker]['utterances']}",
            f"{unseen['teacher']['speakers'][speaker]['words']:,}",
            pct(unseen["teacher"]["speakers"][speaker]["wer"]),
            pct(unseen["pruned"]["speakers"][speaker]["wer"]),
            format_interval(unseen["pruned_minus_teacher"][speaker]),
        ]
        for speaker, v in sorted(
            unseen["voices"].items(), key=lambda kv: unseen["teacher"]["speakers"][kv[0]]["wer"]
        )
    ]
    group_table_rows = [
        [
            split,
            f"{name} = {value}",
            f"{g['teacher']['utterances']:,}",
            f"{g['teacher']['words']:,}",
            pct(g["teacher"]["wer"]),
            pct(g["pruned"]["wer"]),
            format_interval(g["pruned_minus_teacher"]),
        ]
        for split in SPLITS
        for name, groups in record["groups"][split].items()
        for value, g in groups.items()
    ]
    summary = record["summary"]
    ratios = summary["identity_over_test"]
    return (
        "## Where the errors are: voices and words (`benchmarks/voices.py`)\n\n"
        f"The reference teacher and the pruned model (distill.py's `{record['pruned_name']}`, run "
        f"`{record['pruned_run']}`), greedy decoding, scored per voice and per reference word. A "
        "reference word is an error when it is substituted or deleted; insertions belong to no "
        "reference word. Known words: those of the training transcripts. A voice's identity is an "
        "espeak-ng voice's variant (its accent is shared with training voices) or a flite or festival "
        "voice's name; test-unseen's voices have identities no training voice has (`held_out_voices` "
        "of corpus.json). Differences: pruned minus teacher, paired bootstrap, 95%. "
        f"Commit `{record['commit']}`.\n\n"
        + markdown_table(
            [
                "split",
                "utterances",
                "words",
                "words not in training text",
                "teacher error rate, known / unknown words",
                "pruned, known / unknown",
            ],
            vocab_rows,
        )
        + "\n\n"
        + markdown_table(
            ["split", "voices", "utterances", "words", "teacher WER", "pruned WER", "pruned - teacher"],
            group_table_rows,
        )
        + "\n\nTest-unseen, voice by voice:\n\n"
        + markdown_table(
            [
                "speaker",
                "engine",
                "voice",
                "identity",
                "utterances",
                "words",
                "teacher WER",
                "pruned WER",
                "pruned - teacher",
            ],
            voice_rows,
        )
        + "\n\n"
        f"- Words training never saw are {pct(summary['unknown_share_test'])} of test's reference words "
        f"and {pct(summary['unknown_share_unseen'])} of test-unseen's: the text does not make test-unseen "
        "harder. On known words alone, the teacher's error rate is "
        f"{pct(summary['known_error_test'])} on test and {pct(summary['known_error_unseen'])} "
        "on test-unseen.\n"
        f"- The teacher's test-unseen WER is {summary['unseen_over_test']:.2f}x its test WER. By held-out "
        "identity, its WER over test's: "
        + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in sorted(ratios.items(), key=lambda kv: kv[1]))
        + ".\n\n"
        "![WER by voice](voices.png)\n\n"
        f"Reproduce: `{record['command']}`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="chosen", help="distill.py's run to break down beside the teacher")
    args = parser.parse_args()
    commit = git_commit()
    corpus, teacher = REFERENCE_CORPUS_DIR, TEACHER
    if not (corpus / "corpus.json").exists():
        reference_corpus()
    work = CACHE / "distill"
    pruned = work / args.run
    if not recogs_path(pruned, "test").exists():
        raise SystemExit(f"{pruned} holds no recognitions: run `python benchmarks/distill.py --plan` first")
    evaluated = evaluated_splits(corpus)
    teacher_eval(teacher, evaluated, work / "teacher")

    table = json.loads((corpus / "corpus.json").read_text())
    held_out = set(table["held_out_voices"])
    voices = {
        str(v["speaker"]): {**v, "identity": identity(v), "held_out": identity(v) in held_out}
        for v in table["voices"] + table["unseen_voices"]
    }
    known = {w for u in read_corpus(corpus / "train") for w in u.text.split()}
    record: dict[str, Any] = {"pruned_name": args.run, "pruned_run": pruned.resolve().name, "splits": {}}
    record["groups"] = {}
    recogs_by_split = {}
    for split in SPLITS:
        recogs = {
            "teacher": read_recogs(recogs_path(work / "teacher", split)),
            "pruned": read_recogs(recogs_path(pruned, split)),
        }
        recogs_by_split[split] = recogs
        speakers = sorted({speaker_of(u) for u in recogs["teacher"]}, key=int)
        record["splits"][split] = {
            **{system: breakdown(pairs, known) for system, pairs in recogs.items()},
            "voices": {s: voices[s] for s in speakers},
            "pruned_minus_teacher": {
                s: compare_recognitions(
                    {u: p for u, p in recogs["teacher"].items() if speaker_of(u) == s},
                    {u: p for u, p in recogs["pruned"].items() if speaker_of(u) == s},
                )
                for s in speakers
            },
        }
        record["groups"][split] = {"engine": group_rows(recogs, voices, "engine")}
    record["groups"]["test_unseen"]["identity"] = group_rows(
        recogs_by_split["test_unseen"], voices, "identity"
    )
    splits = record["splits"]
    test_wer = splits["test"]["teacher"]["all"]["wer"]
    record["summary"] = {
        "unknown_share_test": splits["test"]["teacher"]["vocabulary"]["unknown_share"],
        "unknown_share_unseen": splits["test_unseen"]["teacher"]["vocabulary"]["unknown_share"],
        "known_error_test": splits["test"]["teacher"]["vocabulary"]["known"]["error_rate"],
        "known_error_unseen": splits["test_unseen"]["teacher"]["vocabulary"]["known"]["error_rate"],
        "unseen_over_test": splits["test_unseen"]["teacher"]["all"]["wer"] / test_wer,
        "identity_over_test": {
            name: g["teacher"]["wer"] / test_wer
            for name, g in record["groups"]["test_unseen"]["identity"].items()
        },
    }
    record |= {"commit": commit, "command": command_line()}
    save_result("voices", record)
    plot(record, DOCS / "voices.png")
    update_doc_section("voices", render(record))
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
