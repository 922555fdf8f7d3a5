"""Corpus readers: the LibriSpeech directory layout and NeMo-style JSON-lines manifests.

Usage:
    utts = read_corpus("LibriSpeech/dev-clean")        # a LibriSpeech split directory
    utts = read_corpus("data/train_manifest.jsonl")    # {"audio_filepath", "duration", "text"}
    write_manifest("train.jsonl", utts)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from conformer_prune.data.audio import AudioError

__all__ = ["Utterance", "read_corpus", "read_librispeech", "read_manifest", "write_manifest"]

_AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class Utterance:
    """One recording and its transcript."""

    utt_id: str
    audio_path: Path
    text: str
    duration: float


def _duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"audio file {path} could not be read ({err}); expected FLAC or WAV") from err
    return float(info.frames) / float(info.samplerate)


def read_librispeech(root: str | Path) -> list[Utterance]:
    """All utterances under `root` laid out as ``<speaker>/<chapter>/<id>.flac`` with
    ``<speaker>-<chapter>.trans.txt`` beside them (LibriSpeech; `root` is a split such as
    ``dev-clean``). Sorted by utterance id.

    Raises:
        FileNotFoundError: `root` or a transcribed audio file is missing.
        ValueError: a transcript line is empty or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus directory {root} does not exist")
    transcripts = sorted(root.glob("**/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(
            f"no *.trans.txt under {root}; expected the LibriSpeech layout "
            "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt"
        )
    utts = []
    for trans in transcripts:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2 or not parts[1].strip():
                raise ValueError(f"{trans}:{lineno}: empty transcript for '{parts[0]}'")
            utt_id, text = parts[0], " ".join(parts[1].split())
            audio = next(
                (
                    trans.parent / f"{utt_id}{s}"
                    for s in _AUDIO_SUFFIXES
                    if (trans.parent / f"{utt_id}{s}").is_file()
                ),
                None,
            )
            if audio is None:
                raise FileNotFoundError(
                    f"{trans}:{lineno}: audio for '{utt_id}' not found; expected {trans.parent / utt_id}.flac"
                )
            utts.append(Utterance(utt_id, audio, text, _duration(audio)))
    return sorted(utts, key=lambda u: u.utt_id)


_MANIFEST_KEYS = ("audio_filepath", "duration", "text")
_DURATION_TOLERANCE_S = 0.1


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a JSON-lines manifest in NeMo's convention; relative audio paths are taken from the
    manifest's directory.

    Raises:
        FileNotFoundError: the manifest or an audio file is missing.
        ValueError: a line is not a JSON object, lacks a key, has a value of the wrong type or an
            empty transcript, or a duration that differs from its file's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    utts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({err})") from err
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, found {type(entry).__name__}")
        missing = [k for k in _MANIFEST_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing key(s) {missing}; expected {list(_MANIFEST_KEYS)}")
        for key, kind in (("audio_filepath", str), ("text", str), ("duration", int | float)):
            if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
                raise ValueError(
                    f"{path}:{lineno}: {key} is {entry[key]!r}; expected a "
                    f"{'number' if key == 'duration' else 'string'}"
                )
        text = " ".join(entry["text"].split())
        if not text:
            raise ValueError(f"{path}:{lineno}: empty transcript for {entry['audio_filepath']}")
        audio = Path(entry["audio_filepath"])
        if not audio.is_absolute():
            audio = path.parent / audio
        if not audio.is_file():
            raise FileNotFoundError(f"{path}:{lineno}: audio file {audio} does not exist")
        declared, actual = float(entry["duration"]), _duration(audio)
        # batching and the hours reported come from the duration: a wrong one would change both
        if not abs(declared - actual) <= _DURATION_TOLERANCE_S:
            raise ValueError(
                f"{path}:{lineno}: duration {declared} s, but {audio} holds {actual:.3f} s; "
                f"expected the file's duration (within {_DURATION_TOLERANCE_S} s)"
            )
        utt_id = str(entry.get("utt_id", audio.stem))
        utts.append(Utterance(utt_id, audio, text, actual))
    return utts


def write_manifest(path: str | Path, utts: list[Utterance]) -> None:
    """Write `utts` as a JSON-lines manifest (absolute audio paths)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "audio_filepath": str(u.audio_path.resolve()),
                "duration": round(u.duration, 4),
                "text": u.text,
                "utt_id": u.utt_id,
            }
        )
        for u in utts
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_corpus(source: str | Path) -> list[Utterance]:
    """A LibriSpeech-layout directory or a ``.json``/``.jsonl`` manifest."""
    source = Path(source)
    if source.is_dir():
        return read_librispeech(source)
    if source.suffix in (".json", ".jsonl"):
        return read_manifest(source)
    raise FileNotFoundError(
        f"corpus {source} is neither a directory in LibriSpeech layout nor a .json/.jsonl manifest"
    )
