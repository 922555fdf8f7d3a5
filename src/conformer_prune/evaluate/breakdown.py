"""Where a recognizer's errors are: by speaker, and on words the training text has or lacks.

A corpus WER says how much a model gets wrong, not where. Two questions come first when it is
high on one split and not another (a held-out-voices split, say): is it a few voices, or all of
them; and is it words the model never saw in training (no acoustic model spells those well), or
the sound itself. Both are answered from the recognitions `evaluate` writes (``recogs-NAME.txt``),
as icefall's decoding writes error details beside its WER summary.

Usage:
    conformer-prune errors runs/eval/recogs-test.txt --train corpus/train --json errors.json
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jiwer

__all__ = [
    "LIBRISPEECH_SPEAKER",
    "ErrorCounts",
    "breakdown",
    "by_speaker",
    "by_vocabulary",
    "count_errors",
    "speaker_of",
]

# LibriSpeech utterance ids are <speaker>-<chapter>-<utterance>
LIBRISPEECH_SPEAKER = r"^([^-]+)-"


@dataclass(frozen=True)
class ErrorCounts:
    """Word errors of a set of utterances, aligned one utterance at a time (as `error_rates`)."""

    utterances: int
    words: int  # reference words
    substitutions: int
    deletions: int
    insertions: int

    @property
    def wer(self) -> float:
        return (self.substitutions + self.deletions + self.insertions) / max(1, self.words)

    def to_dict(self) -> dict[str, Any]:
        return {
            "utterances": self.utterances,
            "words": self.words,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "wer": self.wer,
        }


def _align(pairs: list[tuple[str, str]]) -> jiwer.WordOutput:
    """jiwer's alignment of (reference, hypothesis) pairs, upper-cased as `error_rates` scores."""
    if not pairs:
        raise ValueError("expected at least one (reference, hypothesis) pair, found none")
    return jiwer.process_words([r.upper() for r, _ in pairs], [h.upper() for _, h in pairs])


def count_errors(pairs: list[tuple[str, str]]) -> ErrorCounts:
    out = _align(pairs)
    return ErrorCounts(
        len(pairs),
        sum(len(r) for r in out.references),
        out.substitutions,
        out.deletions,
        out.insertions,
    )


def speaker_of(utt_id: str, pattern: str = LIBRISPEECH_SPEAKER) -> str:
    """The speaker of an utterance: the first group of `pattern` matched at the id's start."""
    match = re.match(pattern, utt_id)
    if match is None or not match.groups():
        raise ValueError(
            f"utterance id {utt_id!r} does not name a speaker: expected it to match {pattern!r} "
            "with a group (the speaker); pass another pattern"
        )
    return match.group(1)


def by_speaker(
    recogs: Mapping[str, tuple[str, str]], pattern: str = LIBRISPEECH_SPEAKER
) -> dict[str, ErrorCounts]:
    """Errors per speaker of utterance id -> (reference, hypothesis), worst WER first."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for utt, pair in recogs.items():
        groups.setdefault(speaker_of(utt, pattern), []).append(pair)
    counts = {speaker: count_errors(pairs) for speaker, pairs in groups.items()}
    return dict(sorted(counts.items(), key=lambda item: (-item[1].wer, item[0])))


def by_vocabulary(recogs: Mapping[str, tuple[str, str]], known: Iterable[str]) -> dict[str, Any]:
    """How often reference words are misrecognised when they occur in `known` (e.g. the training
    transcripts' words) and when they do not. A reference word is misrecognised when the alignment
    substitutes or deletes it; an inserted word belongs to no reference word and is counted apart.

    Returns ``{"known": {"words", "errors", "error_rate"}, "unknown": {...}, "unknown_share",
    "insertions"}``, words compared upper-cased."""
    vocabulary = {w.upper() for w in known}
    out = _align(list(recogs.values()))
    words = {"known": 0, "unknown": 0}
    errors = {"known": 0, "unknown": 0}
    for ref, chunks in zip(out.references, out.alignments, strict=True):
        for chunk in chunks:
            for word in ref[chunk.ref_start_idx : chunk.ref_end_idx]:
                kind = "known" if word in vocabulary else "unknown"
                words[kind] += 1
                errors[kind] += chunk.type != "equal"
    parts = {
        kind: {"words": words[kind], "errors": errors[kind], "error_rate": errors[kind] / max(1, words[kind])}
        for kind in words
    }
    total = words["known"] + words["unknown"]
    return parts | {"unknown_share": words["unknown"] / max(1, total), "insertions": out.insertions}


def breakdown(
    recogs: Mapping[str, tuple[str, str]],
    known: Iterable[str] | None = None,
    pattern: str = LIBRISPEECH_SPEAKER,
) -> dict[str, Any]:
    """The whole split's errors (``all``), each speaker's (``speakers``, worst first) and, given
    the words of the training text, those on known and unknown words (``vocabulary``)."""
    result: dict[str, Any] = {
        "all": count_errors(list(recogs.values())).to_dict(),
        "speakers": {s: c.to_dict() for s, c in by_speaker(recogs, pattern).items()},
    }
    if known is not None:
        result["vocabulary"] = by_vocabulary(recogs, known)
    return result
