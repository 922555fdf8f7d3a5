from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conformer_prune.config import load_config
from conformer_prune.data.audio import AudioError, load_audio
from conformer_prune.data.corpus import read_corpus, read_librispeech, read_manifest, write_manifest
from conformer_prune.data.dataset import BucketBatchSampler, SpeechDataset, collate
from conformer_prune.data.features import (
    FeatureConfig,
    LogMelFeatures,
    SpecAugment,
    SpecAugmentConfig,
    warp_frequencies,
)
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig, TokenizerError
from conformer_prune.train.config import TrainConfig


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _libri(root: Path, texts: dict[str, str]) -> Path:
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for utt, text in texts.items():
        sf.write(chapter / f"{utt}.flac", _tone(1.0 + len(lines) * 0.25), 16000)
        lines.append(f"{utt} {text}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_feature_frames_and_batched_equals_single() -> None:
    feats = LogMelFeatures(FeatureConfig()).eval()
    a, b = torch.from_numpy(_tone(1.0)), torch.from_numpy(_tone(0.4, freq=1000.0))
    batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    out, lengths = feats(batch, torch.tensor([a.numel(), b.numel()]))
    assert out.shape == (2, 16000 // 160 + 1, 80)
    assert lengths.tolist() == [101, 41]
    single, _ = feats(b[None], torch.tensor([b.numel()]))
    torch.testing.assert_close(out[1, :41], single[0], atol=1e-4, rtol=1e-4)
    assert torch.all(out[1, 41:] == 0)
    real = out[0, :101]
    torch.testing.assert_close(real.mean(0), torch.zeros(80), atol=1e-4, rtol=0)


def test_mel_filters_peak_on_a_tone() -> None:
    out, _ = LogMelFeatures(FeatureConfig(normalize="none")).eval()(
        torch.from_numpy(_tone(0.5, freq=1000.0))[None], torch.tensor([8000])
    )
    peak = int(out[0, 10:-10].mean(0).argmax())
    assert 25 <= peak <= 35  # 1 kHz sits near mel bin 30 of 80 (Slaney scale, 8 kHz top)


def test_specaugment_masks_only_in_training() -> None:
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=0.2))
    x = torch.ones(2, 100, 80)
    lengths = torch.tensor([100, 50])
    assert torch.equal(aug.eval()(x, lengths), x)
    y = aug.train()(x, lengths, generator=torch.Generator().manual_seed(0))
    assert (y == 0).any() and (y == 1).any()


def test_the_frequency_warp_moves_a_formant_and_keeps_the_axis_ends() -> None:
    """VTLP: factor 1 is the identity; a peak below the boundary moves to about factor x its bin;
    the lowest and the top bin stay where they are; values stay within the input's range."""
    f = 80
    peak = torch.zeros(3, 5, f)
    peak[..., 20] = 1.0
    assert torch.equal(warp_frequencies(peak, torch.ones(3)), peak)
    warped = warp_frequencies(peak, torch.tensor([0.9, 1.0, 1.1]))
    assert warped.argmax(-1)[:, 0].tolist() == [18, 20, 22]
    ramp = torch.arange(f, dtype=torch.float32).expand(2, 4, f)
    moved = warp_frequencies(ramp, torch.tensor([0.85, 1.15]))
    assert torch.allclose(moved[..., 0], ramp[..., 0]) and torch.allclose(moved[..., -1], ramp[..., -1])
    assert bool((moved.diff(dim=-1) >= 0).all())  # the map is monotone: a ramp stays a ramp
    assert moved[0, 0, 40] > 40 > moved[1, 0, 40]  # 0.85 reads higher bins, 1.15 lower


def test_specaugment_warps_each_training_utterance_and_nothing_at_zero() -> None:
    """`warp` 0 draws nothing (the masks are those of a config without the field); above 0 each
    training utterance has its own factor, and evaluation is untouched."""
    x = torch.randn(3, 50, 80)
    lengths = torch.tensor([50, 40, 30])
    plain = SpecAugment(SpecAugmentConfig(time_masks=2)).train()
    zero = SpecAugment(SpecAugmentConfig(time_masks=2, warp=0.0)).train()
    same = [m(x, lengths, generator=torch.Generator().manual_seed(1)) for m in (plain, zero)]
    assert torch.equal(*same)
    warp = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0, warp=0.2))
    assert torch.equal(warp.eval()(x, lengths), x)
    y = warp.train()(x, lengths, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(y, x) and y.shape == x.shape
    assert len({round(float((y[i] - x[i]).abs().mean()), 4) for i in range(3)}) == 3
    with pytest.raises(ValueError, match="warp"):
        SpecAugmentConfig(warp=0.6)


def test_audio_resampled_and_downmixed(tmp_path: Path) -> None:
    stereo = np.stack([_tone(1.0, 8000), _tone(1.0, 8000)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 8000)
    audio = load_audio(tmp_path / "s.wav", 16000)
    assert audio.ndim == 1 and abs(audio.shape[0] - 16000) <= 1
    np.testing.assert_allclose(audio[2000:2100], _tone(1.0)[2000:2100], atol=0.02)
    with pytest.raises(ValueError, match="positive tempo factor, found 0"):
        load_audio(tmp_path / "s.wav", 16000, speed=0.0)


def _peak_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturbation_moves_tempo_and_pitch_together(tmp_path: Path, speed: float) -> None:
    sf.write(tmp_path / "t.flac", _tone(1.0), 16000)
    audio = load_audio(tmp_path / "t.flac", 16000, speed=speed)
    assert abs(audio.size - 16000 / speed) <= 1
    assert abs(_peak_hz(audio) - 440 * speed) < 3  # FFT bins are about 1 Hz apart
    assert abs(_peak_hz(load_audio(tmp_path / "t.flac", 16000)) - 440) < 3
    with pytest.raises(ValueError, match="speed"):
        load_audio(tmp_path / "t.flac", 16000, speed=0.0)


def test_speed_perturbed_training_set_has_an_entry_per_speed(tmp_path: Path) -> None:
    tok = Tokenizer.train(["HELLO WORLD", "IT'S A CAT"], TokenizerConfig(vocab_size=16))
    root = _libri(tmp_path / "c", {"19-198-0000": "HELLO", "19-198-0001": "CAT"})
    utts = read_librispeech(root)
    features = LogMelFeatures(FeatureConfig())
    plain = SpeechDataset(utts, tok, features)
    perturbed = SpeechDataset(utts, tok, features, speeds=(0.9, 1.0, 1.1))
    assert len(perturbed) == 3 * len(plain)
    assert sorted(perturbed.speeds) == [0.9, 0.9, 1.0, 1.0, 1.1, 1.1]
    for i in range(len(perturbed)):
        feats, tokens, _ = perturbed[i]
        assert abs(feats.shape[0] - perturbed.frames[i]) <= 1  # what the batch sampler budgets
        j = plain.utts.index(perturbed.utts[i])
        assert torch.equal(tokens, plain.tokens[j])
        if perturbed.speeds[i] == 1.0:
            assert torch.equal(feats, plain[j][0])
        else:  # 0.9 is longer, 1.1 shorter
            assert (feats.shape[0] > plain.frames[j]) == (perturbed.speeds[i] < 1)
    with pytest.raises(ValueError, match="for evaluation"):
        SpeechDataset(utts, tok, features, training=False, speeds=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"between 0\.5 and 2"):
        TrainConfig(speeds=(1.0, 3.0))
    assert load_config(TrainConfig, None, ["speeds=[0.9,1.0,1.1]"]).speeds == (0.9, 1.0, 1.1)


@pytest.mark.parametrize(("frame_count", "pad_to"), [("stft", 0), ("nemo", 0), ("nemo", 16)])
def test_budgeted_frames_are_the_front_ends_own(tmp_path: Path, frame_count: str, pad_to: int) -> None:
    """The frames the batch sampler budgets and the too-short check counts are the real frames the
    front end makes, with NeMo's count (one fewer) as with ours, and no `pad_to` padding."""
    tok = Tokenizer.train(["HELLO WORLD", "IT'S A CAT"], TokenizerConfig(vocab_size=16))
    root = _libri(tmp_path / "c", {"19-198-0000": "HELLO", "19-198-0001": "CAT"})
    features = LogMelFeatures(FeatureConfig(frame_count=frame_count, pad_to=pad_to))  # type: ignore[arg-type]
    for training in (True, False):
        data = SpeechDataset(read_librispeech(root), tok, features, training=training)
        assert [data[i][0].shape[0] for i in range(len(data))] == data.frames


def test_librispeech_and_manifest_readers(tmp_path: Path) -> None:
    root = _libri(tmp_path / "dev", {"19-198-0000": "HELLO WORLD", "19-198-0001": "IT'S  A CAT"})
    utts = read_librispeech(root)
    assert [u.utt_id for u in utts] == ["19-198-0000", "19-198-0001"]
    assert utts[1].text == "IT'S A CAT" and abs(utts[1].duration - 1.25) < 1e-6
    write_manifest(tmp_path / "m.jsonl", utts)
    assert read_manifest(tmp_path / "m.jsonl") == utts
    assert read_corpus(tmp_path / "m.jsonl") == read_corpus(root)


def test_reader_on_a_generated_corpus(tiny_corpus: Path) -> None:
    for split in ("train", "dev", "test"):
        utts = read_librispeech(tiny_corpus / split)
        assert utts and all(u.text and u.duration > 0 for u in utts)
    train = {u.text for u in read_librispeech(tiny_corpus / "train")}
    assert not train & {u.text for u in read_librispeech(tiny_corpus / "test")}


def test_missing_audio_names_the_file(tmp_path: Path) -> None:
    root = _libri(tmp_path / "c", {"19-198-0000": "HELLO"})
    (root / "19" / "198" / "19-198-0000.flac").unlink()
    with pytest.raises(FileNotFoundError, match=r"19-198-0000"):
        read_librispeech(root)
    with pytest.raises(FileNotFoundError, match=r"nope\.flac"):
        load_audio(tmp_path / "nope.flac")


def test_corrupt_flac_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 10)
    with pytest.raises(AudioError, match=r"bad\.flac"):
        load_audio(bad)


def test_empty_transcript_names_the_line(tmp_path: Path) -> None:
    root = _libri(tmp_path / "c", {"19-198-0000": "HELLO"})
    trans = root / "19" / "198" / "19-198.trans.txt"
    trans.write_text("19-198-0000 \n")
    with pytest.raises(ValueError, match=r"19-198.trans.txt:1: empty transcript"):
        read_librispeech(root)


def test_manifest_missing_key_names_the_line(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", _tone(1.0), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.flac", "text": "HI"}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: missing key\(s\) \['duration'\]"):
        read_manifest(manifest)


def test_unknown_character_names_the_utterance(tmp_path: Path) -> None:
    tok = Tokenizer.train(["HELLO WORLD", "IT'S A CAT"], TokenizerConfig(vocab_size=16))
    assert tok.decode(tok.encode("HELLO CAT")) == "HELLO CAT"
    root = _libri(tmp_path / "c", {"19-198-0000": "HELLO WORLD", "19-198-0001": "ÉCOLE"})
    with pytest.raises(TokenizerError, match=r"19-198-0001.*'É'"):
        SpeechDataset(read_librispeech(root), tok, LogMelFeatures(FeatureConfig()))


def test_too_short_for_ctc_depends_on_the_models_subsampling(tmp_path: Path) -> None:
    """1 s of audio is 101 feature frames: 26 encoder frames at 4x, 13 at 8x (a FastConformer)."""
    tok = Tokenizer.train(["HELLO WORLD", "IT'S A CAT"], TokenizerConfig(vocab_size=16))
    text = "HELLO WORLD CAT"
    assert 13 < len(tok.encode(text)) <= 26
    root = _libri(tmp_path / "c", {"19-198-0000": text, "19-198-0001": "CAT"})
    utts = read_librispeech(root)
    features = LogMelFeatures(FeatureConfig())
    assert SpeechDataset(utts, tok, features, subsampling_factor=4).skipped_too_short == 0
    fast = SpeechDataset(utts, tok, features, subsampling_factor=8)
    assert fast.skipped_too_short == 1 and [u.utt_id for u in fast.utts] == ["19-198-0001"]
    # evaluation scores every utterance, however short
    assert len(SpeechDataset(utts, tok, features, training=False, subsampling_factor=8)) == 2


def test_transcripts_fold_to_a_one_case_tokenizer_and_scoring_ignores_case() -> None:
    from conformer_prune.evaluate.metrics import error_rates

    lower = Tokenizer.train(["hello world", "it's a cat"], TokenizerConfig(vocab_size=16))
    assert lower.case == "lower" and lower.encode("HELLO CAT") == lower.encode("hello cat")
    mixed = Tokenizer.train(["Hello World", "it's a Cat"], TokenizerConfig(vocab_size=16))
    assert mixed.case is None
    with pytest.raises(TokenizerError, match="'D'"):  # no folding: D only occurs in lower case
        mixed.encode("HELLO WORLD")
    assert error_rates(["HELLO WORLD"], ["hello world"]) == {"wer": 0.0, "cer": 0.0}
    assert error_rates(["HELLO WORLD"], ["hello word"])["wer"] == 0.5


def test_bucketed_batches_cover_everything_within_budget() -> None:
    lengths = [100, 900, 300, 310, 50, 700, 120, 880]
    sampler = BucketBatchSampler(lengths, max_frames=1000, seed=3)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 1000 for b in batches)
    sampler.set_epoch(1)
    assert list(sampler) == batches
    halves = [list(BucketBatchSampler(lengths, 1000, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert not {i for b in halves[0] for i in b} & {i for b in halves[1] for i in b}


def test_sortagrad_epochs_run_short_to_long_then_shuffle() -> None:
    lengths = [(37 * i) % 500 + 10 for i in range(200)]
    sampler = BucketBatchSampler(lengths, max_frames=1000, seed=0, sorted_epochs=1)

    def longest(batches: list[list[int]]) -> list[int]:
        return [max(lengths[i] for i in b) for b in batches]

    first = longest(list(sampler))
    assert first == sorted(first) and len(first) > 10
    sampler.set_epoch(1)
    assert longest(list(sampler)) != sorted(first)


def test_collate_pads_with_zeros() -> None:
    batch = collate([(torch.ones(5, 80), torch.tensor([1, 2]), 0), (torch.ones(3, 80), torch.tensor([3]), 1)])
    assert batch.feats.shape == (2, 5, 80) and torch.all(batch.feats[1, 3:] == 0)
    assert batch.target_lengths.tolist() == [2, 1] and batch.feat_lengths.tolist() == [5, 3]
    padded = collate([(torch.ones(5, 80), torch.tensor([1, 2]), 0)], pad_frames_to=4)
    assert padded.feats.shape == (1, 8, 80) and torch.all(padded.feats[0, 5:] == 0)
    assert padded.feat_lengths.tolist() == [5]  # the real frames, not the padding


def test_batches_padded_to_a_multiple_budget_the_padded_frames_and_share_their_shapes() -> None:
    """With `pad_frames_to`, the budget counts padded frames, so batches of one padded length hold
    the same number of utterances (one input shape, whose CPU kernels are compiled once)."""
    lengths = [(37 * i) % 900 + 30 for i in range(400)]
    sampler = BucketBatchSampler(lengths, max_frames=4000, seed=1, pad_frames_to=64)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    padded = [-(-max(lengths[i] for i in b) // 64) * 64 for b in batches]
    assert all(len(b) * p <= 4000 for b, p in zip(batches, padded, strict=True))
    shapes = {(len(b), p) for b, p in zip(batches, padded, strict=True)}
    assert len(shapes) <= 2 * len(set(padded))  # a full batch per length, and at most one leftover
    unpadded = {(len(b), max(lengths[i] for i in b)) for b in BucketBatchSampler(lengths, 4000, seed=1)}
    assert len(unpadded) > 2 * len(shapes)
    with pytest.raises(ValueError, match="padded to a multiple of 64"):
        BucketBatchSampler([1000], max_frames=1000, pad_frames_to=64)


def test_paired_bootstrap_wer_separates_a_real_difference_from_luck() -> None:
    from conformer_prune.evaluate.metrics import error_rates, paired_bootstrap_wer

    refs = [f"THE CAT SAT ON MAT {i}" for i in range(60)]
    good = list(refs)
    bad = [r.replace("CAT", "HAT") if i % 2 else r for i, r in enumerate(refs)]  # 30 substitutions
    res = paired_bootstrap_wer(refs, good, bad)
    assert res["delta"] == pytest.approx(error_rates(refs, bad)["wer"] - error_rates(refs, good)["wer"])
    assert 0 < res["low"] < res["delta"] < res["high"]  # b is worse on every resample
    # one utterance's difference is luck: the interval straddles 0
    luck = paired_bootstrap_wer(refs, good, [refs[0].replace("CAT", "HAT"), *refs[1:]])
    assert luck["low"] <= 0 < luck["high"]
    same = paired_bootstrap_wer(refs, bad, bad)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        paired_bootstrap_wer(refs, good, bad[:-1])


def test_paired_bootstrap_over_seeds_compares_the_runs_mean_wers() -> None:
    from conformer_prune.evaluate.metrics import error_rates, paired_bootstrap_wer, paired_bootstrap_wer_runs
    from conformer_prune.evaluate.run import compare_recognition_runs

    refs = [f"THE CAT SAT ON MAT {i}" for i in range(60)]
    good = list(refs)
    bad = [r.replace("CAT", "HAT") if i % 2 else r for i, r in enumerate(refs)]
    worse = [r.replace("CAT", "HAT").replace("MAT", "HAT") if i % 2 else r for i, r in enumerate(refs)]
    # one run each: the single-run bootstrap, resample for resample
    assert paired_bootstrap_wer_runs(refs, [good], [bad]) == paired_bootstrap_wer(refs, good, bad)
    # two seeds of b: the difference of the mean WERs
    res = paired_bootstrap_wer_runs(refs, [good, good], [bad, worse])
    mean_b = (error_rates(refs, bad)["wer"] + error_rates(refs, worse)["wer"]) / 2
    assert res["delta"] == pytest.approx(mean_b - error_rates(refs, good)["wer"])
    assert 0 < res["low"] < res["delta"] < res["high"]
    # a seed that disagrees on one utterance halves that utterance's difference, not more
    lucky = [refs[0].replace("CAT", "HAT"), *refs[1:]]
    assert paired_bootstrap_wer_runs(refs, [good], [lucky, good])["delta"] == pytest.approx(1 / 6 / 60 / 2)
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        paired_bootstrap_wer_runs(refs, [good], [bad, bad[:-1]])
    runs = [{f"u{i}": pair for i, pair in enumerate(zip(refs, hyps, strict=True))} for hyps in (bad, worse)]
    assert compare_recognition_runs(runs[:1], runs)["words"] == 6 * 60
    with pytest.raises(ValueError, match="same utterances"):
        compare_recognition_runs(runs[:1], [runs[0], dict(list(runs[1].items())[1:])])


def test_compare_recogs_pairs_the_same_utterances(tmp_path: Path) -> None:
    from conformer_prune.evaluate.report import format_interval
    from conformer_prune.evaluate.run import compare_recogs

    refs = {"u1": "THE CAT SAT", "u2": "ON THE MAT", "u3": "A DOG"}

    def write(name: str, hyps: dict[str, str], refs: dict[str, str] = refs) -> Path:
        lines = [f"{u}\tref={refs[u]}\n{u}\thyp={h}" for u, h in hyps.items()]
        path = tmp_path / f"recogs-{name}.txt"
        path.write_text("# run_id x\n" + "\n".join(lines) + "\n", encoding="utf-8")
        return path

    a = write("a", {"u1": "THE CAT SAT", "u2": "ON THE MAT", "u3": "A DOG"})
    b = write("b", {"u3": "A DOG", "u1": "THE HAT SAT", "u2": "ON MAT"})  # the order does not matter
    d = compare_recogs(a, b)
    assert (d["utterances"], d["words"]) == (3, 8)
    assert d["delta"] == pytest.approx(2 / 8) and d["low"] <= d["delta"] <= d["high"]
    assert compare_recogs(b, a)["delta"] == pytest.approx(-2 / 8)
    assert format_interval({"delta": 0.025, "low": -0.001, "high": 0.05}) == "+2.50 [-0.10, +5.00]"
    with pytest.raises(ValueError, match="same utterances"):
        compare_recogs(a, write("c", {"u1": "THE CAT SAT", "u2": "ON THE MAT"}))
    with pytest.raises(ValueError, match="different references"):
        compare_recogs(a, write("d", {"u1": "X", "u2": "Y", "u3": "Z"}, {**refs, "u3": "A CAT"}))


def test_recogs_files_read_back(tmp_path: Path) -> None:
    from conformer_prune.evaluate.run import read_recogs

    path = tmp_path / "recogs-test.txt"
    path.write_text("a-1\tref=HELLO WORLD\na-1\thyp=HELLO\nb-2\tref=A=B\nb-2\thyp=\n", encoding="utf-8")
    assert read_recogs(path) == {"a-1": ("HELLO WORLD", "HELLO"), "b-2": ("A=B", "")}
    path.write_text("a-1\tref=HELLO\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"without both.*a-1"):
        read_recogs(path)
    path.write_text("a-1 HELLO\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"recogs-test.txt:1: expected"):
        read_recogs(path)
