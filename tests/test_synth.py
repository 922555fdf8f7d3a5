from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_prune.data import synth
from conformer_prune.data.synth import SPLITS, Voice, normalize_text, synthesize, voices

_TINY = {"hours": 0.01, "seed": 5, "dev_fraction": 0.1, "test_fraction": 0.1}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _transcripts(split_dir: Path) -> dict[str, str]:
    out = {}
    for trans in split_dir.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, float]]]:
    """About 36 s of synthetic speech over train/dev/test."""
    out = tmp_path_factory.mktemp("synth")
    return out, synthesize(out, **_TINY, workers=2, progress=False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, world!", "HELLO WORLD"),
        ("  Don't   stop-believing...  ", "DON'T STOP BELIEVING"),
        ("'Tis the dogs' bone, isn't it?", "TIS THE DOGS BONE ISN'T IT"),
        ("\u201cIt\u2019s fine,\u201d she said \u2014 quietly.", "IT'S FINE SHE SAID QUIETLY"),
        ("Café naïve résumé", "CAFE NAIVE RESUME"),
        ("Mr. Smith met Dr. Jones", "MISTER SMITH MET DOCTOR JONES"),
        ("I have 3 cats", None),
        ("It costs $5", None),
        ("mail me at a@b", None),
        ("see e.g. this", None),
        ("Привет мир", None),
        (" ... ", None),
    ],
)
def test_normalize_text(raw: str, expected: str | None) -> None:
    assert normalize_text(raw) == expected


def test_voices_cover_every_accent_variant_and_voice() -> None:
    vs = voices(seed=3)
    assert len({v.speaker for v in vs}) == len(vs)
    espeak = [v.voice for v in vs if v.engine == "espeak-ng"]
    assert {e.split("+")[0] for e in espeak} == set(synth._ESPEAK_ACCENTS)
    assert {e.split("+")[1] for e in espeak} == set(synth._ESPEAK_VARIANTS)
    assert {v.voice for v in vs if v.engine == "flite"} == {"kal16", "awb", "rms"}
    assert {v.voice for v in vs if v.engine == "festival"} == {"kal_diphone", "cmu_us_slt_arctic_hts"}
    assert voices(seed=3) == vs and voices(seed=4) != vs
    # A voice's setting does not depend on which other engines were chosen.
    assert voices(seed=3, engines=["flite"]) == [v for v in vs if v.engine == "flite"]


def test_held_out_voices_are_no_voice_of_the_main_splits() -> None:
    main, held = voices(seed=3), voices(seed=3, held_out=True)
    # engine plus voice (or espeak-ng variant): no pair of test-unseen is a pair of the others
    pair = lambda v: (v.engine, v.voice.split("+")[-1])  # noqa: E731
    assert {pair(v) for v in held}.isdisjoint({pair(v) for v in main})
    assert {pair(v) for v in held} == {
        *(("espeak-ng", x) for x in synth._UNSEEN_ESPEAK_VARIANTS),
        ("flite", "slt"),
        ("festival", "ked_diphone"),
    }
    assert {v.speaker for v in held}.isdisjoint({v.speaker for v in main})
    assert len({v.speaker for v in held}) == len(held)


def test_the_wide_voice_set_adds_espeak_variants_and_holds_out_the_same_voices() -> None:
    """`voice_set="wide"` trains on 63 espeak-ng variants (the narrow set's 13 among them) and the
    same flite and festival voices at five times the settings; no training variant of either set
    is one of test-unseen's or dev-unseen's, and every speaker id stays in its engine's range."""
    pair = lambda v: (v.engine, v.voice.split("+")[-1])  # noqa: E731
    narrow, wide = voices(seed=3), voices(seed=3, voice_set="wide")
    variants = {v.voice.split("+")[1] for v in wide if v.engine == "espeak-ng"}
    assert variants == set(synth._WIDE_ESPEAK_VARIANTS) and len(variants) == 63
    assert set(synth._ESPEAK_VARIANTS) < variants
    assert {pair(v) for v in wide if v.engine != "espeak-ng"} == {
        pair(v) for v in narrow if v.engine != "espeak-ng"
    }
    # each engine keeps about its share of the speakers: espeak-ng 126 of 176, 26 of 36 before
    count = lambda vs, e: sum(v.engine == e for v in vs)  # noqa: E731
    assert [count(wide, e) for e in synth.ENGINES] == [126, 30, 20]
    assert [count(narrow, e) for e in synth.ENGINES] == [26, 6, 4]
    held = {pair(v) for v in voices(seed=3, held_out=True) + synth.dev_unseen_voices(seed=3)}
    assert held.isdisjoint({pair(v) for v in wide}) and held.isdisjoint({pair(v) for v in narrow})
    ids = [v.speaker for v in wide + synth.dev_unseen_voices(seed=3) + voices(seed=3, held_out=True)]
    assert len(set(ids)) == len(ids)
    assert all(synth._ID_BASE[v.engine] < v.speaker < synth._ID_BASE[v.engine] + 1000 for v in wide)
    with pytest.raises(ValueError, match="voice_set"):
        voices(voice_set="many")  # type: ignore[arg-type]


def test_the_dev_unseen_voices_are_espeak_variants_no_other_split_uses() -> None:
    dev = synth.dev_unseen_voices(seed=3)
    assert {v.voice.split("+")[1] for v in dev} == set(synth._DEV_UNSEEN_ESPEAK_VARIANTS)
    assert {v.engine for v in dev} == {"espeak-ng"} and synth.dev_unseen_voices(3, ["flite"]) == []
    assert synth.dev_unseen_voices(seed=3) == dev != synth.dev_unseen_voices(seed=4)


def test_unseen_text_is_its_own_source_and_not_in_the_main_text() -> None:
    unseen = set(synth._unseen_sentences(synth._FORTUNE_DIR))
    main = synth._speakable_sentences(synth._FORTUNE_DIR)
    assert len(unseen) > 500 and unseen.isdisjoint(main)
    own = synth._speakable_sentences(synth._FORTUNE_DIR, synth._UNSEEN_TEXT)
    assert unseen <= own and len(own & main) < 0.05 * len(own)  # the two sources barely overlap


def test_unseen_split_uses_held_out_voices_and_unseen_text(tmp_path: Path) -> None:
    stats = synthesize(tmp_path, **_TINY, unseen_hours=0.004, workers=2, progress=False)
    unseen = _transcripts(tmp_path / synth.UNSEEN_SPLIT)
    assert stats[synth.UNSEEN_SPLIT]["utterances"] == len(unseen) > 0
    held = {str(v.speaker) for v in voices(seed=_TINY["seed"], held_out=True)}
    assert {u.split("-")[0] for u in unseen} <= held
    for split in SPLITS:
        assert not {u.split("-")[0] for u in _transcripts(tmp_path / split)} & held
    assert set(unseen.values()) <= set(synth._unseen_sentences(synth._FORTUNE_DIR))
    meta = json.loads((tmp_path / "corpus.json").read_text())
    assert meta["splits"][synth.UNSEEN_SPLIT] == stats[synth.UNSEEN_SPLIT]
    # the main splits are those of the same corpus without test-unseen
    again = synthesize(tmp_path, **_TINY, workers=2, progress=False)
    assert synth.UNSEEN_SPLIT not in again and not (tmp_path / synth.UNSEEN_SPLIT).exists()
    assert {s: again[s] for s in SPLITS} == {s: stats[s] for s in SPLITS}


def test_dev_unseen_split_speaks_devs_text_in_voices_no_other_split_uses(
    tiny: tuple[Path, dict[str, dict[str, float]]], tmp_path: Path
) -> None:
    """dev-unseen: dev's sentences in the held-out espeak-ng variants, named in corpus.json; the
    other splits are those of the corpus without it, and a corpus built without it (or with the
    reference voices) has the corpus.json it had before the options existed."""
    root, stats = tiny
    out = tmp_path / "corpus"
    got = synthesize(out, **_TINY, dev_unseen_hours=0.003, workers=2, progress=False)
    dev_unseen = _transcripts(out / synth.DEV_UNSEEN_SPLIT)
    assert got[synth.DEV_UNSEEN_SPLIT]["utterances"] == len(dev_unseen) > 0
    held = {str(v.speaker) for v in synth.dev_unseen_voices(seed=_TINY["seed"])}
    assert {u.split("-")[0] for u in dev_unseen} <= held
    for split in SPLITS:
        assert not {u.split("-")[0] for u in _transcripts(out / split)} & held
    dev_sentences = synth._sentences(synth._FORTUNE_DIR, _TINY["dev_fraction"], _TINY["test_fraction"])["dev"]
    assert set(dev_unseen.values()) <= set(dev_sentences)
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["dev_unseen_hours"] == 0.003 and len(meta["dev_unseen_voices"]) == len(held)
    assert {s: got[s] for s in SPLITS} == {s: stats[s] for s in SPLITS}
    again = synthesize(out, **_TINY, workers=2, progress=False)  # without it: as the tiny corpus
    assert again == stats and _tree(out) == _tree(root)
    assert "voice_set" not in json.loads((root / "corpus.json").read_text())


def test_a_corpus_of_one_voice_set_is_not_resumed_with_the_other(tmp_path: Path) -> None:
    args = {"hours": 0.002, "seed": 2, "progress": False, "engines": ["espeak-ng"]}
    synthesize(tmp_path / "wide", **args, voice_set="wide")
    assert json.loads((tmp_path / "wide" / "corpus.json").read_text())["voice_set"] == "wide"
    with pytest.raises(ValueError, match="voice_set: 'wide' there, 'narrow' asked"):
        synthesize(tmp_path / "wide", **args)
    synthesize(tmp_path / "narrow", **args)
    with pytest.raises(ValueError, match="voice_set: 'narrow' there, 'wide' asked"):
        synthesize(tmp_path / "narrow", **args, voice_set="wide")


def test_the_command_line_makes_the_unseen_splits_with_the_wide_voices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformer_prune.cli import main

    args = ["synth", str(tmp_path), "--hours", "0.002", "--seed", "2", "--voice-set", "wide"]
    assert main([*args, "--unseen-hours", "0.001", "--dev-unseen-hours", "0.001"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats[synth.UNSEEN_SPLIT]["utterances"] > 0 and stats[synth.DEV_UNSEEN_SPLIT]["utterances"] > 0
    assert json.loads((tmp_path / "corpus.json").read_text())["voice_set"] == "wide"


def test_every_new_voice_renders() -> None:
    """One utterance per variant of the wide set and of dev-unseen, through the engine."""
    seen = set(synth._ESPEAK_VARIANTS)
    new = [
        v
        for v in voices(seed=0, engines=["espeak-ng"], voice_set="wide") + synth.dev_unseen_voices(seed=0)
        if v.voice.split("+")[1] not in seen
    ]
    for voice in {v.voice.split("+")[1]: v for v in new}.values():
        job = synth._Job("train", voice, "THE CAT SAT ON THE MAT", 1000, 0, -3.0, None, "pink", 7)
        samples = synth._render(job)
        assert 0.5 < samples.shape[0] / synth.SAMPLE_RATE < 5.0, voice
        assert np.abs(samples).max() > 1000, voice


def test_missing_unseen_text_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "cookie").write_text("The cat sat on the mat today.\n%\n")
    with pytest.raises(FileNotFoundError, match="apt-get install fortune-anarchism"):
        synth._unseen_sentences(fortunes)


@pytest.mark.parametrize("engine", synth.ENGINES)
def test_every_voice_renders_16k_mono(engine: str) -> None:
    for voice in voices(seed=0, engines=[engine]) + voices(seed=0, engines=[engine], held_out=True):
        job = synth._Job("train", voice, "THE CAT SAT ON THE MAT", 1000, 0, -3.0, 20.0, "pink", 7)
        samples = synth._render(job)
        assert samples.dtype == np.int16 and samples.ndim == 1
        assert 0.5 < samples.shape[0] / synth.SAMPLE_RATE < 5.0, voice
        assert np.abs(samples).max() > 1000, voice


def test_tiny_corpus_is_librispeech_layout(tiny: tuple[Path, dict[str, dict[str, float]]]) -> None:
    root, stats = tiny
    meta = json.loads((root / "corpus.json").read_text())
    assert meta["splits"] == stats and meta["seed"] == _TINY["seed"]
    sentences: dict[str, set[str]] = {}
    for split in SPLITS:
        texts = _transcripts(root / split)
        flacs = sorted((root / split).rglob("*.flac"))
        assert sorted(texts) == [p.stem for p in flacs]
        seconds = 0.0
        for flac in flacs:
            speaker, chapter, _ = flac.stem.split("-")
            assert re.fullmatch(r"\d+-\d+-\d{4}", flac.stem)
            assert flac.parent == root / split / speaker / chapter
            info = sf.info(str(flac))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            seconds += info.frames / info.samplerate
        for trans in (root / split).rglob("*.trans.txt"):
            lines = trans.read_text().splitlines()
            assert lines == sorted(lines)
            assert trans.name == f"{trans.parent.parent.name}-{trans.parent.name}.trans.txt"
        for text in texts.values():
            assert text and normalize_text(text) == text
        target = _TINY["hours"] * 3600 * {"train": 0.8, "dev": 0.1, "test": 0.1}[split]
        assert stats[split]["utterances"] == len(flacs) > 0
        assert stats[split]["seconds"] == pytest.approx(seconds, abs=1e-2)
        assert seconds >= target
        sentences[split] = set(texts.values())
    assert not sentences["train"] & sentences["dev"]
    assert not sentences["train"] & sentences["test"]
    assert not sentences["dev"] & sentences["test"]


def test_same_seed_same_bytes_and_resume(
    tiny: tuple[Path, dict[str, dict[str, float]]], tmp_path: Path
) -> None:
    root, stats = tiny
    again = tmp_path / "again"
    assert synthesize(again, **_TINY, workers=1, progress=False) == stats
    assert _tree(again) == _tree(root)

    # An interrupted run: a missing utterance, a missing transcript, a stray temp file.
    flac = next((again / "train").rglob("*.flac"))
    flac.unlink()
    next((again / "dev").rglob("*.trans.txt")).unlink()
    (flac.parent / f".{flac.name}.123.tmp").write_bytes(b"partial")
    synthesize(again, **_TINY, workers=2, progress=False)
    assert _tree(again) == _tree(root)


def test_checks_of_a_finished_corpus_take_turns_and_write_nothing(
    tiny: tuple[Path, dict[str, dict[str, float]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Benchmarks hash corpus.json into their runs' identities and check the corpus when they
    start, several at once: a check must not rewrite a byte, nor overlap another check."""
    root, stats = tiny
    corpus = tmp_path / "corpus"
    shutil.copytree(root, corpus)
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    real_check, real_write = synth._check_resumable, synth._write_json
    spans: dict[int, list[float]] = {}  # by thread: its check's start, its last corpus.json write

    def slow_check(meta_path: Path, settings: dict) -> None:
        spans[threading.get_ident()] = [time.perf_counter()]
        time.sleep(0.2)  # two checks at once would overlap here
        real_check(meta_path, settings)

    def last_write(path: Path, data: dict) -> None:
        real_write(path, data)
        spans[threading.get_ident()][1:] = [time.perf_counter()]

    def check() -> None:
        assert synthesize(corpus, **_TINY, workers=1, progress=False) == stats

    monkeypatch.setattr(synth, "_check_resumable", slow_check)
    monkeypatch.setattr(synth, "_write_json", last_write)
    threads = [threading.Thread(target=check) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 2 and all(len(s) == 2 for s in spans.values())
    (_, a_end), (b_start, _) = sorted(spans.values())
    assert b_start >= a_end
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == before


def test_noise_keeps_the_utterances(tmp_path: Path) -> None:
    args = {"hours": 0.003, "seed": 2, "progress": False, "engines": ["espeak-ng"]}
    clean = synthesize(tmp_path / "clean", **args)
    noisy = synthesize(tmp_path / "noisy", **args, snr_db=(5.0, 10.0))
    assert {s: v["utterances"] for s, v in clean.items()} == {s: v["utterances"] for s, v in noisy.items()}
    for split in SPLITS:
        assert _transcripts(tmp_path / "clean" / split) == _transcripts(tmp_path / "noisy" / split)
    a = next((tmp_path / "clean").rglob("*.flac"))
    b = tmp_path / "noisy" / a.relative_to(tmp_path / "clean")
    assert a.read_bytes() != b.read_bytes()


def test_other_settings_in_same_directory_are_refused(
    tiny: tuple[Path, dict[str, dict[str, float]]],
) -> None:
    root, _ = tiny
    with pytest.raises(ValueError, match="seed: 5 there, 6 asked"):
        synthesize(root, **{**_TINY, "seed": 6}, progress=False)


def test_missing_engine_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(synth.shutil, "which", lambda name: None if name == "text2wave" else "/bin/x")
    with pytest.raises(RuntimeError, match="apt-get install festival"):
        synthesize(tmp_path, 0.001, progress=False)
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synthesize(tmp_path, 0.001, progress=False)


def test_engine_failure_names_text_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "_engine_command", lambda *_: ["sh", "-c", "echo boom >&2; exit 3"])
    voice = Voice(1001, "espeak-ng", "en-us+m1", 1.0, 0.0)
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*HELLO THERE.*command: sh -c.*boom"):
        synth._run_engine(voice, "HELLO THERE")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hours": 0.0},
        {"hours": 1.0, "dev_fraction": 0.6, "test_fraction": 0.5},
        {"hours": 1.0, "dev_fraction": -0.1},
        {"hours": 1.0, "snr_db": (20.0, 10.0)},
        {"hours": 1.0, "engines": ["say"]},
        {"hours": 1.0, "workers": 0},
        {"hours": 1.0, "unseen_hours": -1.0},
        {"hours": 1.0, "dev_unseen_hours": -1.0},
        {"hours": 1.0, "dev_unseen_hours": 0.1, "engines": ["flite"]},
        {"hours": 1.0, "voice_set": "many"},
    ],
)
def test_bad_arguments(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize(tmp_path, **kwargs)
