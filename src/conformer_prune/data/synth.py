"""A deterministic synthetic English speech corpus in LibriSpeech layout, for machines with no
real corpus (demos, tests, benchmarks).

Text comes from Debian's `fortunes` package, normalised the LibriSpeech way; speech comes from
three Debian synthesizers (espeak-ng with several English accents and voice variants, flite and
festival). A "speaker" is one voice setting: engine, voice, tempo and pitch. The same seed gives
byte-identical FLAC files and transcripts; an interrupted run can be re-run into the same
directory and skips the utterances already written.

An optional ``test-unseen`` split measures generalisation as a new user's audio would: it is
spoken only by voices (engine plus voice or variant) that no other split uses, and its text comes
from another source (Debian's ``fortune-anarchism`` quotes), minus any sentence the main text
also holds. An optional ``dev-unseen`` split is where choices about such generalisation are made
without looking at test-unseen: dev's sentences, spoken by espeak-ng variants that neither the
main splits nor test-unseen use (Debian's English voices of flite and festival are all taken).

``voice_set="wide"`` (the reference corpus's) trains on many more voices than ``"narrow"`` (the
default): 63 espeak-ng variants instead of 13 (each with two accents), and ten tempo and pitch
settings of each flite and festival voice instead of two, so that each engine keeps its share.
The teacher trained on the narrow set had 2.9x its test WER on the held-out voices; the one
trained on the wide set replaced it by a rule fixed beforehand (benchmarks/teacher_choice.py).

Usage:
    from conformer_prune.data.synth import synthesize
    stats = synthesize("data/synth", hours=0.05, seed=0, snr_db=(10.0, 30.0), workers=2)
    # data/synth/{train,dev,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    stats = synthesize("data/synth", hours=0.05, unseen_hours=0.01)  # and data/synth/test-unseen
    stats = synthesize("data/synth", hours=0.05, dev_unseen_hours=0.01)  # and data/synth/dev-unseen
    # data/synth/{train,dev,test}/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    # data/synth/corpus.json

Needs: ``apt-get install espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts fortunes``,
and for ``test-unseen`` also ``festvox-kdlpc16k fortune-anarchism``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

__all__ = [
    "DEV_UNSEEN_SPLIT",
    "ENGINES",
    "NARROW_CORPUS",
    "REFERENCE_CORPUS",
    "SAMPLE_RATE",
    "SPLITS",
    "UNSEEN_SPLIT",
    "Voice",
    "VoiceSet",
    "dev_unseen_voices",
    "normalize_text",
    "synthesize",
    "voices",
]

Engine = Literal["espeak-ng", "flite", "festival"]
Split = Literal["train", "dev", "test", "test-unseen", "dev-unseen"]
VoiceSet = Literal["narrow", "wide"]

ENGINES: tuple[Engine, ...] = ("espeak-ng", "flite", "festival")
SPLITS: tuple[Split, ...] = ("train", "dev", "test")  # same voices, disjoint sentences
UNSEEN_SPLIT: Split = "test-unseen"  # other voices, other text
DEV_UNSEEN_SPLIT: Split = "dev-unseen"  # other voices again, dev's text
# every split, in the order they are built (and their index seeds their plans)
_ALL_SPLITS: tuple[Split, ...] = (*SPLITS, UNSEEN_SPLIT, DEV_UNSEEN_SPLIT)
SAMPLE_RATE = 16000

_FORTUNE_DIR = Path("/usr/share/games/fortunes")

# The first reference corpus, on the narrow voice set: its teacher (benchmarks/models/teacher-narrow.pt)
# was the benchmarks' until 2026-12-05. Seed 0 gives: train 20,899 utterances (19.6 h), dev 687
# utterances (8,114 words), test 1,863 utterances (21,629 words), test-unseen 626 utterances
# (9,160 words). 8% of the sentences go to test, so that a test sentence is heard at most twice.
NARROW_CORPUS: dict = {
    "hours": 22.0,
    "seed": 0,
    "dev_fraction": 0.03,
    "test_fraction": 0.08,
    "unseen_hours": 0.8,
}
# The reference corpus of the benchmarks and the demo (`synthesize(out, **REFERENCE_CORPUS)`;
# the demo takes a smaller `hours`, whose splits are prefixes of these): the same sentences and
# test-unseen in the wide voice set, and a dev-unseen split where choices about held-out voices are
# made. Seed 0 gives: train 21,118 utterances (19.6 h), dev 687 utterances (8,182 words), test
# 1,881 utterances (21,891 words), test-unseen the narrow corpus's 626, dev-unseen 564 (6,675 words).
REFERENCE_CORPUS: dict = {**NARROW_CORPUS, "voice_set": "wide", "dev_unseen_hours": 0.5}

# The text of test-unseen (package fortune-anarchism), never read for the other splits.
_UNSEEN_TEXT = "anarchism"
# ascii-art is pictures, not prose.
_SKIP_FORTUNE_FILES = frozenset({"ascii-art", _UNSEEN_TEXT})
_MIN_WORDS, _MAX_WORDS = 3, 30

# The binary each engine runs and the Debian package that ships it.
_BINARIES: dict[Engine, tuple[str, str]] = {
    "espeak-ng": ("espeak-ng", "espeak-ng"),
    "flite": ("flite", "flite"),
    "festival": ("text2wave", "festival"),
}
_FESTIVAL_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "ked_diphone": "festvox-kdlpc16k",
}
_ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# Human-sounding variants from `espeak-ng --voices=variant`; whisper, croak and the robots are left
# out because they would teach a recognizer little about speech.
_ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m5", "m6", "m7",
    "f1", "f2", "f4", "f5",
    "Annie", "klatt", "klatt3",
)  # fmt: skip
# The training variants of `voice_set="wide"`: the narrow set's, then the rest of
# `espeak-ng --voices=variant` but the held-out ones (test-unseen's and dev-unseen's and their
# near-copies steph2, steph3, AnxiousAndy), the robots (UniversalRobot, anikaRobot, robosoft1-8),
# the whispers, croak, Demonic, the announcer, Tweaky, fast, Mr serious (a space in its name),
# kaukovalta, and near-copies of kept ones (Gene2, iven2-4, edward2, klatt5-6, RicishayMax2-3).
# Chosen by name and voice file, not by listening to each.
_WIDE_ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m5", "m6", "m7",
    "f1", "f2", "f4", "f5",
    "Annie", "klatt", "klatt3",
    "Alex", "Andrea", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco",
    "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "Storm", "adam", "anika", "antonio",
    "aunty", "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa",
    "gustave", "iven", "john", "klatt2", "klatt4", "linda", "marcelo", "max", "michel", "miguel",
    "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "travis",
    "victor", "zac",
)  # fmt: skip
_ESPEAK_PER_VARIANT = 2
_FLITE_VOICES = ("kal16", "awb", "rms")
_FESTIVAL_VOICES = ("kal_diphone", "cmu_us_slt_arctic_hts")
# Held out for test-unseen: no other split uses these (engine, voice or variant) pairs. Two
# espeak-ng variants of each sex and one female named variant; flite's female clustergen voice
# (its other clustergen voice, awb, is male); festival's second American diphone voice.
_UNSEEN_ESPEAK_VARIANTS = ("m4", "f3", "Alicia")
_UNSEEN_FLITE_VOICES = ("slt",)
_UNSEEN_FESTIVAL_VOICES = ("ked_diphone",)
# Held out for dev-unseen: in no other split of either voice set; two female, two male
_DEV_UNSEEN_ESPEAK_VARIANTS = ("m8", "belinda", "steph", "Andy")
_SPEAKERS_PER_VOICE = 2  # flite and festival: two tempo/pitch settings per voice
# ... and ten in the wide set, so that each engine keeps its share of the speakers (and of the
# audio): espeak-ng 126 of 176 against 26 of 36 in the narrow set
_WIDE_SPEAKERS_PER_VOICE = 10
# Speaker ids: engine prefix plus slot, so an id names the same slot under every seed; held-out
# voices count from 500 above their engine's prefix.
_ID_BASE: dict[Engine, int] = {"espeak-ng": 1000, "flite": 2000, "festival": 3000}
_HELD_OUT_ID_OFFSET = 500
_DEV_UNSEEN_ID_OFFSET = 700
# Chapter ids: one range per split, a new chapter every `_UTTS_PER_CHAPTER` utterances of a speaker.
_CHAPTER_BASE: dict[Split, int] = {
    "train": 1000,
    "dev": 2000,
    "test": 3000,
    "test-unseen": 4000,
    "dev-unseen": 5000,
}
_UTTS_PER_CHAPTER = 100
_MAX_CHAPTERS = 1000

_ESPEAK_DEFAULT_WPM = 175
_KAL16_F0_HZ = 95.0  # flite kal16's default int_f0_target_mean (measured)
# festival's diphone voices' int_lr_params target mean and std
_DIPHONE_F0 = {"kal_diphone": (105.0, 14.0), "ked_diphone": (105.0, 15.0)}
_SPEED_RANGE = (0.85, 1.15)  # tempo relative to the engine default
_PITCH_RANGE = (-3.0, 3.0)  # semitones relative to the voice default
_PEAK_DBFS_RANGE = (-12.0, -1.0)  # per-utterance level, so loudness varies as in real recordings
_TRIM_DB = 40.0  # trim leading/trailing samples this far below the peak...
_TRIM_PAD_S = 0.1  # ...keeping this much margin

_ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "jr": "junior",
    "sr": "senior",
    "st": "saint",
    "vs": "versus",
    "etc": "et cetera",
}
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)
# Symbols an engine would read aloud (or that mark code, URLs, money): the sentence is unusable.
_UNSPEAKABLE_RE = re.compile(r"[0-9@#$%&*+=<>/\\|~^_{}\[\]]|\b[ei]\.[eg]\.", re.IGNORECASE)
_DASHES_RE = re.compile(r"[-\u2010-\u2015]")
_APOSTROPHES_RE = re.compile(r"[\u2018\u2019\u02bc]")
_QUOTES_RE = re.compile(r"[\u201c\u201d\u00ab\u00bb`]")
_PUNCT_RE = re.compile(r"[.,;:!?\"()]")
_STRAY_APOSTROPHE_RE = re.compile(r"(?<![A-Z])'|'(?![A-Z])")
_WORDS_RE = re.compile(r"[A-Z']+( [A-Z']+)*")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\u201d\u2019]*\s+")
_ACRONYM_RE = re.compile(r"\b[A-Z]{2,}\b")
# a whole word (apostrophes included: DON'T has a vowel, its T after the apostrophe is no word)
_NO_VOWEL_RE = re.compile(r"(?<!\S)[B-DF-HJ-NP-TV-XZ']+(?!\S)")
# bumped when the text rules change which sentences a corpus holds, so that an older corpus is
# not silently resumed with other sentences (2: words with apostrophes are kept)
_TEXT_RULES = 2


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Args:
        speaker: the LibriSpeech speaker id (1xxx espeak-ng, 2xxx flite, 3xxx festival).
        engine: the synthesizer.
        voice: the engine's voice name, e.g. ``en-gb-scotland+m3``, ``awb``, ``kal_diphone``.
        speed: tempo relative to the engine default (1.0 = default, above 1 = faster).
        pitch: semitones relative to the voice default (ignored by flite ``rms``, recorded as 0).
    """

    speaker: int
    engine: Engine
    voice: str
    speed: float
    pitch: float


@dataclass(frozen=True)
class _Job:
    """Everything needed to render one utterance, fixed in the main process for determinism."""

    split: Split
    voice: Voice
    text: str
    chapter: int
    utt: int
    peak_dbfs: float
    snr_db: float | None
    noise: Literal["white", "pink"]
    noise_seed: int

    @property
    def utt_id(self) -> str:
        return f"{self.voice.speaker}-{self.chapter}-{self.utt:04d}"

    def path(self, out_dir: Path) -> Path:
        return out_dir / self.split / str(self.voice.speaker) / str(self.chapter) / f"{self.utt_id}.flac"


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str | None:
    """Normalise one sentence the LibriSpeech way, or return None when it cannot be spoken as is.

    Upper case, letters A-Z, apostrophes only inside words, single spaces. Punctuation is
    removed and hyphens become spaces; accents are folded (``café`` -> ``CAFE``); a few
    abbreviations are expanded (``Mr.`` -> ``MISTER``). Sentences holding digits, symbols a
    synthesizer would read aloud (``$ % & @ / _`` ...), ``e.g.``/``i.e.``, or letters outside
    A-Z after folding give None: digits are dropped rather than spelled out, because the words
    an engine would say for them are not knowable here.

    Args:
        text: one sentence of raw English text.

    Returns:
        The normalised transcript, or None when the sentence is empty or unusable.
    """
    if _UNSPEAKABLE_RE.search(text):
        return None
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = _APOSTROPHES_RE.sub("'", text)
    text = _DASHES_RE.sub(" ", _QUOTES_RE.sub(" ", text))
    text = _PUNCT_RE.sub(" ", text)
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = _STRAY_APOSTROPHE_RE.sub(" ", text.upper()).split()
    normalized = " ".join(words)
    return normalized if words and _WORDS_RE.fullmatch(normalized) else None


def _speakable(raw: str, normalized: str) -> bool:
    """Whether every engine will say exactly the words of `normalized` (a synthesis filter on
    top of `normalize_text`): no acronyms, which engines spell letter by letter, and a length
    LibriSpeech-like utterances have."""
    n_words = normalized.count(" ") + 1
    if not _MIN_WORDS <= n_words <= _MAX_WORDS:
        return False
    # An upper-case word in mixed-case text is an acronym (``UNIX``, ``IBM``); a word without
    # vowels (``TV``, ``HMM``) is spelled or hummed in ways the transcript cannot follow.
    if _ACRONYM_RE.search(raw) and any(c.islower() for c in raw):
        return False
    return not _NO_VOWEL_RE.search(normalized.replace("Y", "A"))


def _fortunes(fortune_dir: Path, only: str | None = None) -> Iterator[str]:
    """Every fortune (the text between ``%`` lines) of the plain-text files, attributions cut:
    of every file but the skipped ones, or of the file named `only`."""
    package = "fortunes" if only is None else f"fortune-{only}"
    if not fortune_dir.is_dir():
        raise FileNotFoundError(
            f"fortune directory {fortune_dir} does not exist; expected Debian's {package} "
            f"(apt-get install {package})"
        )
    files = sorted(
        p
        for p in fortune_dir.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and (p.name == only if only is not None else p.name not in _SKIP_FORTUNE_FILES)
    )
    if not files:
        where = fortune_dir if only is None else fortune_dir / only
        raise FileNotFoundError(
            f"no fortune text at {where}; expected Debian's {package} (apt-get install {package})"
        )
    for path in files:
        content = path.read_bytes().decode("utf-8", errors="replace")
        for fortune in re.split(r"^%[ \t]*$", content, flags=re.MULTILINE):
            # "\t\t-- Mark Twain" and everything after it is the attribution, not the quote.
            yield re.split(r"^\s*--", fortune, maxsplit=1, flags=re.MULTILINE)[0]


@lru_cache(maxsize=4)
def _speakable_sentences(fortune_dir: Path, only: str | None = None) -> frozenset[str]:
    """The unique speakable normalised sentences of `_fortunes(fortune_dir, only)`."""
    seen: set[str] = set()
    for fortune in _fortunes(fortune_dir, only):
        for raw in _SENTENCE_END_RE.split(" ".join(fortune.split())):
            normalized = normalize_text(raw)
            if normalized is not None and _speakable(raw, normalized):
                seen.add(normalized)
    return frozenset(seen)


def _split_of(sentence: str, dev_fraction: float, test_fraction: float) -> Split:
    """The split of a sentence, from a hash of its text: never in two splits, whatever the seed."""
    u = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "big") / 2.0**64
    if u < dev_fraction:
        return "dev"
    if u < dev_fraction + test_fraction:
        return "test"
    return "train"


@lru_cache(maxsize=4)
def _sentences(fortune_dir: Path, dev_fraction: float, test_fraction: float) -> dict[Split, tuple[str, ...]]:
    """The sentences of each split, sorted: those of the main text by a hash of each sentence,
    and for test-unseen those of its own text that the main text does not hold."""
    main = _speakable_sentences(fortune_dir)
    by_split: dict[Split, list[str]] = {s: [] for s in SPLITS}
    for sentence in sorted(main):
        by_split[_split_of(sentence, dev_fraction, test_fraction)].append(sentence)
    return {s: tuple(v) for s, v in by_split.items()}


@lru_cache(maxsize=2)
def _unseen_sentences(fortune_dir: Path) -> tuple[str, ...]:
    """The sentences of test-unseen, sorted: its own text's, minus any the main text holds."""
    return tuple(sorted(_speakable_sentences(fortune_dir, _UNSEEN_TEXT) - _speakable_sentences(fortune_dir)))


# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------


def voices(
    seed: int = 0,
    engines: Sequence[str] = ENGINES,
    held_out: bool = False,
    voice_set: VoiceSet = "narrow",
) -> list[Voice]:
    """The speakers of a corpus built with `seed`: every espeak-ng accent and variant, every
    flite and festival voice, each with a seeded tempo and pitch.

    Each espeak-ng variant is used by two speakers with different accents (accents are dealt
    round-robin from a seeded permutation); each flite and festival voice by two speakers.

    Args:
        seed: chooses accents, tempi and pitches.
        engines: which of ``espeak-ng``, ``flite``, ``festival`` to use.
        held_out: the voices of test-unseen instead (variants and voices no other split uses).
        voice_set: the main splits' voices: the "narrow" set (13 espeak-ng variants, two
            settings of each flite and festival voice) or the "wide" set, the reference corpus's
            (63 variants, ten settings of each other voice, so that each engine keeps its share);
            test-unseen's voices are the same in both.

    Raises:
        ValueError: an unknown or no engine, or an unknown voice set.
    """
    chosen = _validate_engines(engines)
    if voice_set not in ("narrow", "wide"):
        raise ValueError(f"voice_set: expected 'narrow' or 'wide', found {voice_set!r}")
    rng = np.random.default_rng([seed, 0] if not held_out else [seed, 0, 1])
    variants: tuple[str, ...] = _ESPEAK_VARIANTS if voice_set == "narrow" else _WIDE_ESPEAK_VARIANTS
    if held_out:
        variants = _UNSEEN_ESPEAK_VARIANTS
    id_offset = _HELD_OUT_ID_OFFSET if held_out else 0
    per_voice = _WIDE_SPEAKERS_PER_VOICE if voice_set == "wide" and not held_out else _SPEAKERS_PER_VOICE
    out = _espeak_voices(rng, variants, id_offset)
    others: tuple[tuple[Engine, tuple[str, ...]], ...] = (
        ("flite", _UNSEEN_FLITE_VOICES if held_out else _FLITE_VOICES),
        ("festival", _UNSEEN_FESTIVAL_VOICES if held_out else _FESTIVAL_VOICES),
    )
    for engine, names in others:
        for slot in range(len(names) * per_voice):
            name = names[slot % len(names)]
            speed, pitch = _speed_pitch(rng)
            if name == "rms":  # a unit-selection voice: flite cannot shift its pitch
                pitch = 0.0
            out.append(Voice(_ID_BASE[engine] + id_offset + slot + 1, engine, name, speed, pitch))
    return [v for v in out if v.engine in chosen]


def dev_unseen_voices(seed: int = 0, engines: Sequence[str] = ENGINES) -> list[Voice]:
    """The speakers of dev-unseen: espeak-ng variants that no other split of either voice set
    uses, two accents each (none when espeak-ng is not among `engines`)."""
    chosen = _validate_engines(engines)
    if "espeak-ng" not in chosen:
        return []
    return _espeak_voices(
        np.random.default_rng([seed, 0, 2]), _DEV_UNSEEN_ESPEAK_VARIANTS, _DEV_UNSEEN_ID_OFFSET
    )


def _speed_pitch(rng: np.random.Generator) -> tuple[float, float]:
    # Rounded so that the values written to corpus.json and the command line agree.
    return round(float(rng.uniform(*_SPEED_RANGE)), 3), round(float(rng.uniform(*_PITCH_RANGE)), 2)


def _espeak_voices(rng: np.random.Generator, variants: Sequence[str], id_offset: int) -> list[Voice]:
    """Two speakers per variant, accents dealt round-robin from a permutation drawn first (drawn
    for every engine even when espeak-ng is not chosen, so that a voice's setting does not depend
    on which other engines were asked for)."""
    accents = [_ESPEAK_ACCENTS[i] for i in rng.permutation(len(_ESPEAK_ACCENTS))]
    out: list[Voice] = []
    for slot in range(len(variants) * _ESPEAK_PER_VARIANT):
        voice = f"{accents[slot % len(accents)]}+{variants[slot % len(variants)]}"
        speaker = _ID_BASE["espeak-ng"] + id_offset + slot + 1
        out.append(Voice(speaker, "espeak-ng", voice, *_speed_pitch(rng)))
    return out


def _validate_engines(engines: Sequence[str]) -> tuple[Engine, ...]:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ValueError(f"engines must be a non-empty subset of {ENGINES}; found {tuple(engines)}")
    return tuple(e for e in ENGINES if e in engines)


def _check_engines(engines: Sequence[Engine]) -> None:
    """Fail early, naming the package to install, when an engine's binary is not on PATH."""
    for engine in engines:
        binary, package = _BINARIES[engine]
        if shutil.which(binary) is None:
            raise RuntimeError(
                f"synthesis engine {engine!r} needs the program {binary!r}, which is not on PATH; "
                f"install it with: apt-get install {package}"
                + (" " + " ".join(_FESTIVAL_PACKAGES.values()) if engine == "festival" else "")
            )


def _engine_command(voice: Voice, text: str, wav: Path, workdir: Path) -> list[str]:
    """The command line that makes `voice` say `text` into `wav`."""
    # Engines spell out short all-capital words as letters, so they get lower case.
    spoken = text.lower()
    semitones = 2.0 ** (voice.pitch / 12.0)
    if voice.engine == "espeak-ng":
        # espeak-ng's -p (0-99, default 50) is not in semitones; ~6 steps per semitone is close.
        pitch = int(np.clip(round(50 + 6 * voice.pitch), 0, 99))
        wpm = round(_ESPEAK_DEFAULT_WPM * voice.speed)
        return [
            "espeak-ng",
            "-v",
            voice.voice,
            "-s",
            str(wpm),
            "-p",
            str(pitch),
            "-w",
            str(wav),
            spoken,
        ]
    if voice.engine == "flite":
        args = [
            "flite",
            "-voice",
            voice.voice,
            "--setf",
            f"duration_stretch={1.0 / voice.speed:.4f}",
        ]
        if voice.voice == "kal16":  # a diphone voice: pitch follows its intonation target
            args += ["--setf", f"int_f0_target_mean={_KAL16_F0_HZ * semitones:.2f}"]
        elif voice.voice in ("awb", "slt"):  # clustergen voices: pitch is a multiplier on F0
            args += ["--setf", f"f0_shift={semitones:.4f}"]
        return [*args, "-t", spoken, "-o", str(wav)]
    text_file = workdir / "text.txt"
    text_file.write_text(spoken + "\n", encoding="utf-8")
    if voice.voice in _DIPHONE_F0:
        mean, std = _DIPHONE_F0[voice.voice]
        setup = (
            f"(begin (Parameter.set 'Duration_Stretch {1.0 / voice.speed:.4f}) "
            f"(set! int_lr_params '((target_f0_mean {mean * semitones:.2f}) "
            f"(target_f0_std {std * semitones:.2f}) (model_f0_mean 170) (model_f0_std 34))))"
        )
    else:  # HTS: hts_engine's own -r (speed) and -fm (half-tones) options
        setup = (
            f"(set! hts_engine_params (append hts_engine_params "
            f'\'(("-r" {voice.speed:.4f}) ("-fm" {voice.pitch:.2f}))))'
        )
    return [
        "text2wave",
        "-eval",
        f"(voice_{voice.voice})",
        "-eval",
        setup,
        str(text_file),
        "-o",
        str(wav),
    ]


def _run_engine(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Synthesize `text`; returns (mono float64 samples, sample rate)."""
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        workdir = Path(tmp)
        wav = workdir / "out.wav"
        cmd = _engine_command(voice, text, wav, workdir)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        # festival exits 0 on Scheme errors ("SIOD ERROR"): check its stderr and output too.
        failed = proc.returncode != 0 or "SIOD ERROR" in proc.stderr or not wav.is_file()
        if failed:
            hint = ""
            if voice.engine == "festival" and "unbound variable" in proc.stderr:
                hint = f"; install the voice with: apt-get install {_FESTIVAL_PACKAGES[voice.voice]}"
            raise RuntimeError(
                f"{voice.engine} failed (exit {proc.returncode}) on {text!r}{hint}\n"
                f"command: {subprocess.list2cmdline(cmd)}\nstderr: {proc.stderr.strip()[-1000:]}"
            )
        audio, rate = sf.read(str(wav), dtype="float64", always_2d=True)
    if audio.shape[0] == 0 or not np.any(audio):
        raise RuntimeError(
            f"{voice.engine} produced no audio for {text!r}\ncommand: {subprocess.list2cmdline(cmd)}"
        )
    return audio.mean(axis=1), int(rate)


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


def _trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading/trailing silence (engines pad differently), keeping a short margin."""
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10.0 ** (-_TRIM_DB / 20.0))
    pad = int(_TRIM_PAD_S * SAMPLE_RATE)
    return audio[max(loud[0] - pad, 0) : loud[-1] + pad + 1]


def _noise(n: int, kind: Literal["white", "pink"], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white noise, or pink-ish noise (1/f power) shaped in the frequency domain."""
    white = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.shape[0], dtype=np.float64)
        freqs[0] = 1.0
        white = np.fft.irfft(spectrum / np.sqrt(freqs), n=n)
    return white / max(float(white.std()), 1e-12)


def _render(job: _Job) -> np.ndarray:
    """The 16 kHz mono int16 samples of one utterance."""
    audio, rate = _run_engine(job.voice, job.text)
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    audio = _trim(audio)
    audio = audio * (10.0 ** (job.peak_dbfs / 20.0) / np.abs(audio).max())
    if job.snr_db is not None:
        power = float(np.mean(audio**2))
        noise = _noise(audio.shape[0], job.noise, np.random.default_rng(job.noise_seed))
        audio = audio + noise * np.sqrt(power / 10.0 ** (job.snr_db / 10.0))
        # Noise can push peaks past full scale; scale down rather than clip.
        audio = audio / max(1.0, float(np.abs(audio).max()) / 0.999)
    return np.round(audio * 32767.0).astype(np.int16)


def _valid_duration(path: Path) -> float | None:
    """Seconds of audio in an existing utterance file, or None when it is missing or unusable."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
        return None
    return info.frames / SAMPLE_RATE


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via `write(tmp)` to a temporary name beside `path`, then rename: readers (and a
    resumed run) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _make_utterance(job: _Job, out_dir: Path) -> float:
    """Write one utterance unless a valid file is already there; returns its seconds."""
    path = job.path(out_dir)
    existing = _valid_duration(path)
    if existing is not None:
        return existing
    samples = _render(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: sf.write(str(tmp), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16"))
    return samples.shape[0] / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def _plan(
    split: Split,
    sentences: Sequence[str],
    speakers: Sequence[Voice],
    seed: int,
    snr_db: tuple[float, float] | None,
) -> Iterator[_Job]:
    """The endless, seeded sequence of a split's utterances. Sentences are drawn without
    replacement (reshuffled once all are used) and speakers round-robin in seeded order, so a
    larger `hours` extends a smaller corpus rather than changing it."""
    rng = np.random.default_rng([seed, 1 + _ALL_SPLITS.index(split)])
    counts: dict[int, int] = defaultdict(int)
    speaker_queue: deque[Voice] = deque()
    while True:
        for i in rng.permutation(len(sentences)):
            if not speaker_queue:
                speaker_queue.extend(speakers[j] for j in rng.permutation(len(speakers)))
            voice = speaker_queue.popleft()
            k = counts[voice.speaker]
            counts[voice.speaker] += 1
            if k >= _UTTS_PER_CHAPTER * _MAX_CHAPTERS:
                raise ValueError(
                    f"speaker {voice.speaker} needs more than {k} utterances in {split}; "
                    "expected a corpus of at most a few hundred hours"
                )
            # Drawn whether or not noise is asked for: a noisy corpus is the clean one plus noise.
            snr_u, pink = float(rng.random()), bool(rng.random() < 0.5)
            yield _Job(
                split=split,
                voice=voice,
                text=sentences[i],
                chapter=_CHAPTER_BASE[split] + k // _UTTS_PER_CHAPTER,
                utt=k % _UTTS_PER_CHAPTER,
                peak_dbfs=round(float(rng.uniform(*_PEAK_DBFS_RANGE)), 2),
                snr_db=None if snr_db is None else round(snr_db[0] + snr_u * (snr_db[1] - snr_db[0]), 2),
                noise="pink" if pink else "white",
                noise_seed=int(rng.integers(2**63)),
            )


def _build_split(
    plan: Iterator[_Job],
    target_s: float,
    out_dir: Path,
    pool: ThreadPoolExecutor,
    window: int,
    bar: tqdm,
) -> list[tuple[_Job, float]]:
    """Render utterances of `plan` in order until `target_s` seconds are reached.

    Up to `window` utterances render at once; results are taken in plan order, so the cut (and
    so the corpus) does not depend on timing. Utterances rendered past the cut are removed later.
    """
    done: list[tuple[_Job, float]] = []
    pending: deque[tuple[_Job, Future[float]]] = deque()
    total = 0.0
    try:
        while total < target_s:
            while len(pending) < window:
                job = next(plan)
                pending.append((job, pool.submit(_make_utterance, job, out_dir)))
            job, future = pending.popleft()
            seconds = future.result()
            done.append((job, seconds))
            total += seconds
            # Each split overshoots its target by part of an utterance; grow the total so tqdm
            # keeps formatting it (past its total it drops the numbers the bar format uses).
            bar.total = max(bar.total, bar.n + seconds)
            bar.update(seconds)
            bar.set_postfix_str(f"{job.split} {len(done)} utts", refresh=False)
    finally:
        for _, future in pending:
            future.cancel()
        for _, future in pending:
            if not future.cancelled():
                future.exception()  # wait; a failure past the cut does not matter
    return done


def _write_transcripts(split_dir: Path, done: Sequence[tuple[_Job, float]]) -> set[Path]:
    """Write one sorted ``<speaker>-<chapter>.trans.txt`` per chapter; returns their paths."""
    chapters: dict[Path, list[str]] = defaultdict(list)
    for job, _ in done:
        chapter_dir = split_dir / str(job.voice.speaker) / str(job.chapter)
        chapters[chapter_dir / f"{job.voice.speaker}-{job.chapter}.trans.txt"].append(
            f"{job.utt_id} {job.text}"
        )
    for path, lines in chapters.items():
        _write_if_changed(path, "\n".join(sorted(lines)) + "\n")
    return set(chapters)


def _remove_stale(split_dir: Path, keep: set[Path]) -> None:
    """Delete files of earlier runs (past the cut, other sizes, interrupted temp files) so the
    directory holds exactly this corpus."""
    if not split_dir.is_dir():
        return
    for path in sorted(split_dir.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _atomic_write_text(path: Path, body: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))


def _write_if_changed(path: Path, text: str) -> None:
    """Atomically, and only when the text changes: checking a finished corpus leaves every file
    as it is (benchmarks hash corpus.json into the identity of each run trained on it)."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        _atomic_write_text(path, text)


def _write_json(path: Path, data: dict) -> None:
    _write_if_changed(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One `synthesize` at a time into `out`, across processes (a lock file beside it): two
    processes checking one corpus at once would remove each other's files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def synthesize(
    out_dir: str | Path,
    hours: float,
    *,
    seed: int = 0,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    snr_db: tuple[float, float] | None = None,
    engines: Sequence[str] = ENGINES,
    unseen_hours: float = 0.0,
    dev_unseen_hours: float = 0.0,
    voice_set: VoiceSet = "narrow",
    workers: int = 2,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Build (or finish building) a synthetic corpus in LibriSpeech layout under `out_dir`.

    Writes ``out_dir/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (16 kHz mono,
    16-bit FLAC), one sorted ``<speaker>-<chapter>.trans.txt`` per chapter, and
    ``out_dir/corpus.json`` with the settings, the voices and the statistics. Each split stops at
    the first utterance that brings it to its share of `hours`. Sentences never appear in two
    splits; every voice may appear in every split but test-unseen, whose voices and text no other
    split uses. The same arguments give byte-identical files;
    re-running into the same directory skips utterances already written (so an interrupted run
    can be resumed), removes files that are not part of the corpus and rewrites no file whose
    content stands. Calls into one directory, from any process, take turns (a lock file
    ``.<out_dir name>.lock`` beside it).

    Args:
        out_dir: where to write the corpus; created if needed.
        hours: total hours of audio over all splits.
        seed: chooses the voices' settings and the sentence/speaker/level/noise of each utterance.
        dev_fraction: share of `hours` (and of the sentences) for ``dev``.
        test_fraction: share of `hours` (and of the sentences) for ``test``.
        snr_db: if given, add white or pink noise to each utterance at an SNR drawn uniformly
            from ``(low, high)`` dB.
        engines: which of ``espeak-ng``, ``flite``, ``festival`` to use.
        unseen_hours: hours of the ``test-unseen`` split (none when 0), on top of `hours`.
        dev_unseen_hours: hours of the ``dev-unseen`` split (none when 0), on top of `hours`:
            dev's sentences, spoken by espeak-ng variants no other split uses.
        voice_set: the main splits' espeak-ng variants: "narrow" (13) or "wide" (63).
        workers: utterances synthesized in parallel (each runs an engine process).
        progress: show a tqdm progress bar.

    Returns:
        Per split ``{"utterances": n, "seconds": s, "speakers": k}``.

    Raises:
        ValueError: bad sizes, fractions, SNR range or engines, or `out_dir` holds a corpus built
            with other settings.
        FileNotFoundError: the fortunes text (or, for test-unseen, fortune-anarchism) is not
            installed.
        RuntimeError: an engine is not installed or fails on an utterance.
    """
    out = Path(out_dir)
    chosen = _validate_engines(engines)
    if not hours > 0:
        raise ValueError(f"hours must be positive; found {hours}")
    if not unseen_hours >= 0:
        raise ValueError(f"unseen_hours must be >= 0; found {unseen_hours}")
    if not dev_unseen_hours >= 0:
        raise ValueError(f"dev_unseen_hours must be >= 0; found {dev_unseen_hours}")
    if dev_unseen_hours > 0 and "espeak-ng" not in chosen:
        raise ValueError("dev_unseen_hours: dev-unseen's voices are espeak-ng's; add it to engines")
    if not (dev_fraction >= 0 and test_fraction >= 0 and dev_fraction + test_fraction < 1):
        raise ValueError(
            "dev_fraction and test_fraction must be >= 0 with a sum below 1; "
            f"found {dev_fraction} and {test_fraction}"
        )
    if snr_db is not None and not (len(snr_db) == 2 and snr_db[0] <= snr_db[1]):
        raise ValueError(f"snr_db must be (low, high) with low <= high; found {snr_db}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1; found {workers}")
    _check_engines(chosen)

    speakers = voices(seed, chosen, voice_set=voice_set)
    held_out = voices(seed, chosen, held_out=True)
    speakers_of: dict[Split, list[Voice]] = {
        **{s: speakers for s in SPLITS},
        UNSEEN_SPLIT: held_out,
        DEV_UNSEEN_SPLIT: dev_unseen_voices(seed, chosen),
    }
    main_sentences = _sentences(_FORTUNE_DIR, float(dev_fraction), float(test_fraction))
    sentences: dict[Split, tuple[str, ...]] = {
        **main_sentences,
        UNSEEN_SPLIT: _unseen_sentences(_FORTUNE_DIR) if unseen_hours > 0 else (),
        DEV_UNSEEN_SPLIT: main_sentences["dev"],
    }
    targets: dict[Split, float] = {
        "train": hours * 3600.0 * (1.0 - dev_fraction - test_fraction),
        "dev": hours * 3600.0 * dev_fraction,
        "test": hours * 3600.0 * test_fraction,
        UNSEEN_SPLIT: unseen_hours * 3600.0,
        DEV_UNSEEN_SPLIT: dev_unseen_hours * 3600.0,
    }
    for split, target in targets.items():
        if target > 0 and not sentences[split]:
            raise ValueError(f"no sentences fall in {split}; expected a larger {split}_fraction")

    settings = {
        "seed": seed,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "snr_db": None if snr_db is None else [float(snr_db[0]), float(snr_db[1])],
        "engines": list(chosen),
        "text_rules": _TEXT_RULES,
        # which voices the main splits leave to test-unseen (a corpus from before there was one
        # used them all, and is refused rather than extended with other voices)
        "held_out_voices": sorted({v.voice.split("+")[-1] for v in held_out}),
        "voice_set": voice_set,
    }
    with _exclusive(out):
        _check_resumable(out / "corpus.json", settings)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            **_without_defaults(settings),
            "hours": hours,
            "sample_rate": SAMPLE_RATE,
            "unseen_hours": unseen_hours,
            "sentences": {s: len(v) for s, v in sentences.items() if s != DEV_UNSEEN_SPLIT},
            "voices": [asdict(v) for v in speakers],
            "unseen_voices": [asdict(v) for v in held_out] if unseen_hours > 0 else [],
        }
        if dev_unseen_hours > 0:  # written only where asked for: a corpus without it is named as before
            meta |= {
                "dev_unseen_hours": dev_unseen_hours,
                "dev_unseen_voices": [asdict(v) for v in speakers_of[DEV_UNSEEN_SPLIT]],
            }
        # Written first (without stats) so that a resumed run can check it continues the same corpus;
        # a corpus.json of this very corpus (a finished one being checked) is left as it is.
        if _meta_of(out / "corpus.json") != json.loads(json.dumps(meta)):
            _write_json(out / "corpus.json", {**meta, "splits": None})

        stats: dict[str, dict[str, float]] = {}
        bar_format = (
            "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]"
        )
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(
                total=sum(targets.values()),
                desc="synthesize",
                bar_format=bar_format,
                disable=not progress,
            ) as bar,
        ):
            for split in _ALL_SPLITS:
                split_dir = out / split
                done: list[tuple[_Job, float]] = []
                if targets[split] > 0:
                    plan = _plan(split, sentences[split], speakers_of[split], seed, snr_db)
                    done = _build_split(plan, targets[split], out, pool, 4 * workers, bar)
                keep = {job.path(out) for job, _ in done} | _write_transcripts(split_dir, done)
                _remove_stale(split_dir, keep)
                if split not in SPLITS and not done:
                    if split_dir.is_dir():
                        split_dir.rmdir()  # emptied by _remove_stale: this corpus has no such split
                    continue
                stats[split] = {
                    "utterances": len(done),
                    "seconds": round(sum(s for _, s in done), 3),
                    "speakers": len({job.voice.speaker for job, _ in done}),
                }
        _write_json(out / "corpus.json", {**meta, "splits": stats})
        return stats


def _meta_of(meta_path: Path) -> dict | None:
    """An existing corpus.json without its statistics (None when there is none)."""
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.pop("splits", None)
    return dict(meta)


# Settings written to corpus.json only where they differ from these, the values every corpus had
# before the setting existed: such a corpus.json stays byte for byte what it was.
_SETTING_DEFAULTS = {"voice_set": "narrow"}


def _without_defaults(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _SETTING_DEFAULTS or v != _SETTING_DEFAULTS[k]}


def _check_resumable(meta_path: Path, settings: dict) -> None:
    """Refuse to mix two corpora: an existing corpus.json must have the same settings (`hours`
    may differ: a corpus of other size is a prefix or an extension of this one; a setting it does
    not name has its default, `_SETTING_DEFAULTS`)."""
    if not meta_path.is_file():
        return
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not a readable corpus.json ({err})") from err
    differing = {
        k: (found, v) for k, v in settings.items() if (found := old.get(k, _SETTING_DEFAULTS.get(k))) != v
    }
    if differing:
        details = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in differing.items())
        raise ValueError(
            f"{meta_path.parent} holds a corpus built with other settings ({details}); "
            "use another directory or delete it"
        )
