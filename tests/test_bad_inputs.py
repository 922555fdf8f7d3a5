"""What a user meets on day one: every kind of bad input, through the command line.

Each case runs `conformer-prune` (its `main`, in this process, so a whole matrix takes seconds)
and requires the exit code, a one-line `conformer-prune CMD: error: ...` message that names the
file, line or key (no traceback: an exception escaping `main` fails the test), and that no input
and no earlier output changed (every file under the watched paths is hashed before and after).
Cases that are not errors check what they get instead: a counted skip, a warning, a score.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conformer_prune.cli import main
from conformer_prune.data.corpus import Utterance, read_corpus
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.evaluate.metrics import error_rates
from conformer_prune.evaluate.run import read_recogs
from tests.test_nemo import _archive

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (a missing root is recorded as missing)."""
    out = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "missing"
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    watched: list[Path],
    *fragments: str,
    absent: tuple[Path, ...] = (),
) -> str:
    """Run `argv`; require exit 2, one `error:` line holding every fragment, and no change."""
    before = snapshot(*watched)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"conformer-prune {argv[0]}: error: "), line
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert snapshot(*watched) == before
    for path in absent:
        assert not path.exists(), path
    return line


def _write_wav(path: Path, audio: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype=subtype)
    return path


def _manifest(path: Path, entries: list[dict[str, Any] | str]) -> Path:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _entry(utt: Utterance, **changes: Any) -> dict[str, Any]:
    entry = {"audio_filepath": str(utt.audio_path), "duration": utt.duration, "text": utt.text}
    return entry | changes


@dataclass
class Env:
    """What the cases share: the tiny corpus and run, a few good utterances, a scratch folder."""

    corpus: Path
    run: Path
    model: Path
    utts: list[Utterance]
    tmp: Path
    inputs: list[Path] = field(default_factory=list)

    def audio(self, i: int = 0) -> np.ndarray:
        return sf.read(self.utts[i].audio_path, dtype="float32")[0]

    def evaluate(self, data: Path, *extra: str) -> list[str]:
        return ["evaluate", str(self.model), "--data", f"x={data}", *extra]

    def train(self, data: Path, out: Path, *extra: str, dev: Path | None = None) -> list[str]:
        dev = dev or data
        return [
            "train",
            "--data",
            str(data),
            "--dev",
            str(dev),
            "--out",
            str(out),
            "--config",
            "tiny",
            *extra,
        ]

    def prune(self, data: Path, out: Path, *extra: str) -> list[str]:
        return [
            "prune",
            "--teacher",
            str(self.model),
            "--data",
            str(data),
            "--dev",
            str(data),
            "--out",
            str(out),
            "--set",
            "prune_epochs=1",
            "finetune_epochs=0",
            "device=cpu",
            *extra,
        ]

    def with_bad(self, name: str, bad: dict[str, Any], n_good: int = 3) -> Path:
        """A manifest of `n_good` good utterances, then `bad`."""
        return _manifest(self.tmp / name, [*(_entry(u) for u in self.utts[:n_good]), bad])


@pytest.fixture(scope="module")
def env(tiny_corpus: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    tmp = tmp_path_factory.mktemp("bad")
    utts = read_corpus(tiny_corpus / "dev")[:4]
    return Env(tiny_corpus, tiny_run, tiny_run / "model.pt", utts, tmp)


@pytest.fixture
def case(env: Env, tmp_path: Path) -> Env:
    """`env` with a fresh scratch folder per case."""
    return Env(env.corpus, env.run, env.model, env.utts, tmp_path)


def watched(case: Env, *more: Path) -> list[Path]:
    return [case.corpus, case.run, *more]


# ---------------------------------------------------------------------------------------------
# Audio: missing, empty, corrupt, zero-length, NaN/inf (errors); too short, too long, 8 kHz,
# stereo (decoded, or skipped and counted in training)
# ---------------------------------------------------------------------------------------------


def _bad_audio(case: Env, kind: str) -> Path:
    path = case.tmp / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"RIFF" + os.urandom(200))
    elif kind == "zero-length":
        _write_wav(path, np.zeros(0, dtype=np.float32))
    elif kind in ("nan", "inf"):
        audio = case.audio().copy()
        audio[100:110] = np.nan if kind == "nan" else np.inf
        _write_wav(path, audio, subtype="FLOAT")
    return path


AUDIO_ERRORS = {
    "missing": "does not exist",
    "empty": "could not be read",
    "corrupt": "could not be read",
    "zero-length": "holds no samples",
    "nan": "holds 10 NaN or infinite samples",
    "inf": "holds 10 NaN or infinite samples",
}


@pytest.mark.parametrize("kind", list(AUDIO_ERRORS))
def test_bad_audio_in_evaluate(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = _bad_audio(case, kind)
    duration = 0.0 if kind in ("zero-length", "missing", "empty", "corrupt") else case.utts[0].duration
    manifest = case.with_bad("m.jsonl", {"audio_filepath": str(path), "duration": duration, "text": "A B"})
    out = case.tmp / "out" / "eval.json"
    argv = case.evaluate(manifest, "--json", str(out))
    refused(capsys, argv, watched(case, case.tmp), str(path.name), AUDIO_ERRORS[kind], absent=(out,))


@pytest.mark.parametrize("kind", ["nan", "inf", "corrupt"])
def test_bad_audio_in_transcribe(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = _bad_audio(case, kind)
    refused(capsys, ["transcribe", str(case.model), str(path)], watched(case, path), str(path))


def test_nan_audio_in_training_data_stops_train_with_one_line(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_audio(case, "nan")
    manifest = case.with_bad("m.jsonl", _entry(case.utts[0], audio_filepath=str(path)))
    refused(capsys, case.train(manifest, case.tmp / "run"), watched(case, manifest, path), "NaN", path.name)


def test_nan_audio_in_training_data_stops_prune_with_one_line(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_audio(case, "nan")
    manifest = case.with_bad("m.jsonl", _entry(case.utts[0], audio_filepath=str(path)))
    refused(capsys, case.prune(manifest, case.tmp / "p"), watched(case, manifest, path), "NaN", path.name)


def _long_and_short(case: Env) -> tuple[Path, Path, Path]:
    """A 0.05 s file, a zero-length one and one of the first three utterances end to end."""
    short = _write_wav(case.tmp / "short.wav", case.audio()[:800])
    empty = _bad_audio(case, "zero-length")
    long = _write_wav(case.tmp / "long.wav", np.concatenate([case.audio(i) for i in range(3)]))
    return short, empty, long


def test_too_short_and_too_long_are_decoded_and_scored_in_evaluate(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    short, _, long = _long_and_short(case)
    text = " ".join(u.text for u in case.utts[:3])
    entries = [
        _entry(case.utts[0]),
        {"audio_filepath": str(short), "duration": 0.05, "text": case.utts[0].text},
        {"audio_filepath": str(long), "duration": sf.info(long).duration, "text": text},
    ]
    manifest = _manifest(case.tmp / "m.jsonl", entries)
    out = case.tmp / "eval.json"
    assert main(case.evaluate(manifest, "--json", str(out))) == 0
    results = json.loads(out.read_text())
    assert results["utterances_x"] == 3
    recogs = (case.tmp / "recogs-x.txt").read_text()
    assert "short\tref=" in recogs and "long\tref=" in recogs


def test_too_short_zero_length_and_too_long_are_skipped_and_counted_in_training(
    case: Env, caplog: pytest.LogCaptureFixture
) -> None:
    short, empty, long = _long_and_short(case)
    long_seconds = sf.info(long).duration
    entries = [
        *(_entry(u) for u in case.utts),
        {"audio_filepath": str(short), "duration": 0.05, "text": case.utts[0].text},
        {"audio_filepath": str(empty), "duration": 0.0, "text": case.utts[0].text},
        {
            "audio_filepath": str(long),
            "duration": long_seconds,
            "text": " ".join(u.text for u in case.utts[:3]),
        },
    ]
    manifest = _manifest(case.tmp / "m.jsonl", entries)
    dev = _manifest(case.tmp / "dev.jsonl", [_entry(u) for u in case.utts])
    longest_good = max(u.duration for u in case.utts)
    assert longest_good < long_seconds
    max_frames = int(100 * (longest_good + long_seconds) / 2)  # the long file does not fit a batch
    with caplog.at_level(logging.WARNING):
        argv = case.train(
            manifest, case.tmp / "run", "--set", "epochs=1", f"max_frames={max_frames}", dev=dev
        )
        code = main(argv)
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert any("training skips 2 of 7 utterances too short" in w for w in warnings), warnings
    assert any(f"training skips 1 of 7 utterances longer than max_frames {max_frames}" in w for w in warnings)
    log = json.loads((case.tmp / "run" / "log.jsonl").read_text().splitlines()[0])
    assert log["audio_seconds"] == pytest.approx(sum(u.duration for u in case.utts), abs=0.05)


def test_8khz_and_stereo_audio_are_resampled_and_down_mixed(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = case.audio()
    mono = _write_wav(case.tmp / "mono.wav", audio)
    stereo = _write_wav(case.tmp / "stereo.wav", np.stack([audio, audio], axis=1))
    narrow = _write_wav(case.tmp / "8k.wav", audio[::2], rate=8000)
    capsys.readouterr()
    assert main(["transcribe", str(case.model), str(mono), str(stereo), str(narrow)]) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert lines[str(stereo)] == lines[str(mono)]  # the mean of two equal channels is the channel
    assert str(narrow) in lines


# ---------------------------------------------------------------------------------------------
# Transcripts: empty (error), unspellable and lower-case (scored)
# ---------------------------------------------------------------------------------------------


def test_empty_transcript_in_librispeech_layout(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    split = case.tmp / "split"
    shutil.copytree(case.corpus / "dev", split)
    trans = sorted(split.rglob("*.trans.txt"))[0]
    first = trans.read_text().splitlines()[0].split()[0]
    trans.write_text(trans.read_text().replace(trans.read_text().splitlines()[0], first))
    refused(capsys, case.evaluate(split), watched(case, split), f"{trans}:1: empty transcript")


def test_empty_transcript_in_manifest(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = case.with_bad("m.jsonl", _entry(case.utts[0], text="   "))
    refused(capsys, case.evaluate(manifest), watched(case, manifest), "m.jsonl:4: empty transcript")


def test_unspellable_reference_counts_as_errors_with_a_warning(
    case: Env, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = Tokenizer(torch.load(case.model, weights_only=True)["meta"]["tokenizer"])
    assert tokenizer.unspellable("ÉCOLE 42") == ["2", "4", "É"]
    dirty = _manifest(
        case.tmp / "dirty.jsonl",
        [_entry(u, text=f"{u.text} ÉCOLE 42") if i == 1 else _entry(u) for i, u in enumerate(case.utts[:3])],
    )
    out = case.tmp / "eval.json"
    with caplog.at_level(logging.WARNING):
        assert main(case.evaluate(dirty, "--json", str(out))) == 0
    result = json.loads(out.read_text())
    words = sum(len(u.text.split()) for u in case.utts[:3]) + 2
    assert any(
        f"2 of {words} reference words hold characters the model cannot produce (2 4 É)" in r.getMessage()
        for r in caplog.records
    )
    # the reference is scored as the text it is
    recogs = read_recogs(case.tmp / "recogs-x.txt")
    refs, hyps = zip(*recogs.values(), strict=True)
    assert refs[1].endswith(" ÉCOLE 42") and not any("É" in h for h in hyps)
    assert result["wer_x"] == error_rates(list(refs), list(hyps))["wer"] > 0


def test_lower_case_transcripts_score_as_upper_case(case: Env) -> None:
    corpora = []
    for name, fold in (("upper", str.upper), ("lower", str.lower)):
        manifest = _manifest(case.tmp / f"{name}.jsonl", [_entry(u, text=fold(u.text)) for u in case.utts])
        corpora.append(f"{name}={manifest}")
    out = case.tmp / "eval.json"
    assert main(["evaluate", str(case.model), "--data", *corpora, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["wer_upper"], result["cer_upper"]) == (result["wer_lower"], result["cer_lower"])
    assert "hyp=" in (case.tmp / "recogs-lower.txt").read_text()


def test_unspellable_training_transcript_for_prune_names_the_utterance(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = case.with_bad("m.jsonl", _entry(case.utts[0], text="ÉCOLE"))
    refused(capsys, case.prune(manifest, case.tmp / "p"), watched(case, manifest), "'É'", "utterance")


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------

MANIFEST_CASES: dict[str, tuple[Callable[[Utterance], dict[str, Any] | str], str]] = {
    "not-json": (lambda u: "{audio_filepath: x", "m.jsonl:4: not a JSON object"),
    "array": (lambda u: "[1, 2]", "m.jsonl:4: expected a JSON object, found list"),
    "missing-key": (
        lambda u: {"audio_filepath": str(u.audio_path), "text": u.text},
        "m.jsonl:4: missing key(s) ['duration']",
    ),
    "null-path": (lambda u: _entry(u, audio_filepath=None), "m.jsonl:4: audio_filepath is None"),
    "null-text": (lambda u: _entry(u, text=None), "m.jsonl:4: text is None; expected a string"),
    "string-duration": (
        lambda u: _entry(u, duration="3.5"),
        "m.jsonl:4: duration is '3.5'; expected a number",
    ),
    "negative-duration": (lambda u: _entry(u, duration=-1), "m.jsonl:4: duration -1.0 s, but"),
    "wrong-duration": (lambda u: _entry(u, duration=1000), "m.jsonl:4: duration 1000.0 s, but"),
    "missing-audio": (lambda u: _entry(u, audio_filepath="nowhere.flac"), "m.jsonl:4: audio file"),
}


@pytest.mark.parametrize("kind", list(MANIFEST_CASES))
def test_bad_manifest_line(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    make, message = MANIFEST_CASES[kind]
    manifest = _manifest(case.tmp / "m.jsonl", [*(_entry(u) for u in case.utts[:3]), make(case.utts[0])])
    out = case.tmp / "run"
    refused(capsys, case.train(manifest, out), watched(case, manifest), message, absent=(out,))


def test_corpus_that_is_neither_folder_nor_manifest(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = case.tmp / "list.txt"
    path.write_text("a.flac\n")
    refused(capsys, case.evaluate(path), watched(case, path), "neither a directory")


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

TRAIN_CONFIG_CASES = {
    "unknown-key": (["--set", "optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    "wrong-type": (["--set", "epochs=many"], "epochs: expected an integer, found 'many'"),
    "bad-yaml-value": (["--set", "model.heads=[2"], "override 'model.heads=[2': the value is not valid YAML"),
    "no-equals": (["--set", "epochs"], "override 'epochs': expected KEY=VALUE"),
    "zero-epochs": (["--set", "epochs=0"], "epochs: expected at least 1, found 0"),
    "negative-epochs": (["--set", "epochs=-1"], "epochs: expected at least 1, found -1"),
    "zero-max-frames": (["--set", "max_frames=0"], "max_frames: expected a positive number"),
    "negative-time-budget": (["--set", "time_budget_minutes=-1"], "time_budget_minutes: expected 0 (none)"),
    "short-betas": (["--set", "optim.betas=[0.9]"], "optim.betas: expected 2 values, found 1"),
}


@pytest.mark.parametrize("kind", list(TRAIN_CONFIG_CASES))
def test_bad_train_config(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    extra, message = TRAIN_CONFIG_CASES[kind]
    out = case.tmp / "run"
    refused(capsys, case.train(case.corpus / "train", out, *extra), watched(case), message, absent=(out,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a YAML mapping"),
        (None, "does not exist"),
    ],
    ids=["malformed", "not-a-mapping", "missing"],
)
def test_bad_config_file(
    case: Env, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    config = case.tmp / "c.yaml"
    if text is not None:
        config.write_text(text)
    out = case.tmp / "run"
    argv = ["train", "--data", str(case.corpus / "train"), "--dev", str(case.corpus / "dev")]
    refused(capsys, [*argv, "--out", str(out), "--config", str(config)], watched(case, case.tmp), message)


PRUNE_CONFIG_CASES = {
    "negative-finetune": (["finetune_epochs=-1"], "finetune_epochs: expected 0 or more, found -1"),
    "no-epochs": (["prune_epochs=0", "finetune_epochs=0"], "expected at least 1 epoch in all"),
    "target-above-1": (["target_params=1.5"], "kept fraction in (0, 1), found 1.5"),
    "target-0": (["target_params=0"], "kept fraction in (0, 1), found 0"),
    "unknown-method": (["method=random"], "method: expected one of"),
}


@pytest.mark.parametrize("kind", list(PRUNE_CONFIG_CASES))
def test_bad_prune_config(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    extra, message = PRUNE_CONFIG_CASES[kind]
    out = case.tmp / "p"
    argv = [*case.prune(case.corpus / "train", out), *extra]
    refused(capsys, argv, watched(case), message, absent=(out,))


def test_resume_through_the_runs_own_config_yaml(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's resume command (no --config: the run's config.yaml, with its tuple of betas)
    on a finished run: nothing to do, nothing changed."""
    run = case.tmp / "run"
    shutil.copytree(case.run, run)
    before = snapshot(run)
    argv = ["train", "--data", str(case.corpus / "train"), "--dev", str(case.corpus / "dev")]
    assert main([*argv, "--out", str(run), "--resume"]) == 0
    assert snapshot(run) == before
    assert f"best model: {run / 'model.pt'}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Checkpoints, state files, ONNX files, .nemo archives
# ---------------------------------------------------------------------------------------------


class _Payload:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(case: Env, kind: str) -> Path:
    path = case.tmp / f"{kind}.pt"
    good = torch.load(case.model, weights_only=True)
    if kind == "garbage":
        path.write_bytes(os.urandom(1000))
    elif kind == "truncated":
        data = case.model.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle-with-code":
        torch.save({"config": _Payload(case.tmp / "ran"), "state_dict": {}, "meta": {}}, path)
    elif kind == "wrong-keys":
        torch.save({"weights": good["state_dict"]}, path)
    elif kind == "wrong-config":
        good["config"]["model"]["d_model"] = "wide"
        torch.save(good, path)
    elif kind == "wrong-shapes":
        key = next(k for k, v in good["state_dict"].items() if v.dim() == 2)
        good["state_dict"][key] = torch.zeros(3, 3)
        torch.save(good, path)
    elif kind == "wrong-tokenizer":
        good["meta"]["tokenizer"] = b"not a sentencepiece model"
        torch.save(good, path)
    return path


CHECKPOINT_CASES = {
    "missing": "does not exist",
    "garbage": "could not be read",
    "truncated": "could not be read",
    "pickle-with-code": "could not be read",
    "wrong-keys": "is not a conformer-prune checkpoint",
    "wrong-config": "model.d_model: expected an integer, found 'wide'",
    "wrong-shapes": "does not hold a usable model",
    "wrong-tokenizer": "not a SentencePiece model",
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_CASES))
def test_bad_checkpoint(case: Env, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = _bad_checkpoint(case, kind)
    flac = case.utts[0].audio_path
    refused(
        capsys,
        ["transcribe", str(path), str(flac)],
        watched(case, case.tmp),
        path.name,
        CHECKPOINT_CASES[kind],
    )
    assert not (case.tmp / "ran").exists()  # the payload never ran


def _train_argv(case: Env, run: Path, *extra: str) -> list[str]:
    data = ["--data", str(case.corpus / "train"), "--dev", str(case.corpus / "dev")]
    return ["train", *data, "--out", str(run), *extra]


@pytest.mark.parametrize(
    ("kind", "message"),
    [("truncated", "could not be read"), ("foreign", "is not a state file of this kind")],
)
def test_bad_train_state_on_resume(
    case: Env, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    run = case.tmp / "run"
    shutil.copytree(case.run, run)
    state = run / "train_state.pt"
    if kind == "truncated":
        state.write_bytes(state.read_bytes()[:5000])
    else:
        shutil.copy(run / "model.pt", state)
    refused(capsys, _train_argv(case, run, "--resume"), watched(case, run), "train_state.pt", message)


def test_resume_with_another_model_leaves_the_run_alone(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    run = case.tmp / "run"
    shutil.copytree(case.run, run)
    argv = _train_argv(case, run, "--resume", "--config", "tiny", "--set", "model.d_model=48")
    refused(capsys, argv, watched(case, run), "train_state.pt: its model does not fit")


@pytest.mark.parametrize(
    ("kind", "message"),
    [("truncated", "could not be read"), ("foreign", "is not a state file of this kind")],
)
def test_bad_prune_state_on_resume(
    case: Env, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    run = case.tmp / "p"
    run.mkdir()
    (run / "prune_config.yaml").write_text(yaml.safe_dump({"prune_epochs": 1, "finetune_epochs": 0}))
    state = run / "prune_state.pt"
    if kind == "truncated":
        state.write_bytes((case.run / "train_state.pt").read_bytes()[:5000])
    else:
        shutil.copy(case.run / "train_state.pt", state)
    argv = [*case.prune(case.corpus / "train", run), "--resume"]
    refused(capsys, argv, watched(case, run), "prune_state.pt", message)


def _onnx_without_metadata(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "is not a readable ONNX model"),
        ("no-metadata", "has no conformer-prune metadata"),
        ("missing", "does not exist"),
    ],
)
def test_bad_onnx_file(case: Env, capsys: pytest.CaptureFixture[str], kind: str, message: str) -> None:
    path = case.tmp / f"{kind}.onnx"
    if kind == "text":
        path.write_text("not a protobuf\n")
    elif kind == "no-metadata":
        _onnx_without_metadata(path)
    argv = ["transcribe", "--onnx", str(path), str(case.utts[0].audio_path)]
    refused(capsys, argv, watched(case, case.tmp), path.name, message)


def _tar(path: Path, members: dict[str, bytes], compression: str = "") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def nemo_tokenizer() -> Tokenizer:
    return Tokenizer.train(["HELLO WORLD", "A CAT SAT ON THE MAT"], TokenizerConfig(vocab_size=20))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not-tar", "is not a .nemo archive (a tar file)"),
        ("truncated-gz", "is not a .nemo archive (a tar file) or is truncated"),
        ("bad-yaml", "model_config.yaml is not valid YAML"),
        ("nested-config-only", "has no model_config.yaml"),
        ("missing", "does not exist"),
    ],
)
def test_bad_nemo_archive(
    case: Env, capsys: pytest.CaptureFixture[str], nemo_tokenizer: Tokenizer, kind: str, message: str
) -> None:
    good, _ = _archive(case.tmp, nemo_tokenizer)
    members = _members(good)
    path = case.tmp / f"{kind}.nemo"
    if kind == "not-tar":
        path.write_text("model_config.yaml\n")
    elif kind == "truncated-gz":
        data = gzip.compress(good.read_bytes())
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bad-yaml":
        _tar(path, members | {"./model_config.yaml": b"encoder: [1, 2\n"})
    elif kind == "nested-config-only":
        config = members.pop("./model_config.yaml")
        _tar(path, members | {"../../x/model_config.yaml": config})
    out = case.tmp / "out.pt"
    refused(
        capsys, ["import-nemo", str(path), "--out", str(out)], [case.tmp], path.name, message, absent=(out,)
    )


def test_nested_nemo_member_cannot_replace_the_config(case: Env, nemo_tokenizer: Tokenizer) -> None:
    good, _ = _archive(case.tmp, nemo_tokenizer)
    members = _members(good)
    hostile = yaml.safe_load(members["./model_config.yaml"])
    hostile["encoder"]["self_attention_model"] = "abs_pos"  # would be refused if it were read
    path = _tar(
        case.tmp / "hostile.nemo", members | {"../../x/model_config.yaml": yaml.safe_dump(hostile).encode()}
    )
    alone = _tar(case.tmp / "alone.nemo", members | {"./model_config.yaml": yaml.safe_dump(hostile).encode()})
    assert main(["import-nemo", str(alone), "--out", str(case.tmp / "c.pt")]) == 2  # refused when read
    assert main(["import-nemo", str(good), "--out", str(case.tmp / "a.pt")]) == 0
    assert main(["import-nemo", str(path), "--out", str(case.tmp / "b.pt")]) == 0
    a, b = (torch.load(case.tmp / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert a["config"] == b["config"]


# ---------------------------------------------------------------------------------------------
# Outputs: existing, unwritable; a run's files carry one run id
# ---------------------------------------------------------------------------------------------


def test_existing_evaluate_json_needs_force(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "eval.json"
    out.write_text('{"mine": 1}\n')
    manifest = _manifest(case.tmp / "m.jsonl", [_entry(u) for u in case.utts[:2]])
    line = refused(capsys, case.evaluate(manifest, "--json", str(out)), watched(case, case.tmp), "--force")
    assert str(out) in line
    assert not (case.tmp / "recogs-x.txt").exists()  # refused before decoding


def test_existing_recogs_beside_the_json_need_force(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    recogs = case.tmp / "recogs-x.txt"
    recogs.write_text("a\tref=A\na\thyp=A\n")
    manifest = _manifest(case.tmp / "m.jsonl", [_entry(u) for u in case.utts[:2]])
    argv = case.evaluate(manifest, "--json", str(case.tmp / "eval.json"))
    refused(capsys, argv, watched(case, case.tmp), str(recogs), "--force", absent=(case.tmp / "eval.json",))


def test_unwritable_evaluate_json_is_refused_before_decoding(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = case.tmp / "file"
    blocker.write_text("")
    manifest = _manifest(case.tmp / "m.jsonl", [_entry(u) for u in case.utts[:2]])
    argv = case.evaluate(manifest, "--json", str(blocker / "sub" / "eval.json"))
    refused(capsys, argv, watched(case, case.tmp), f"{blocker} is a file, expected a directory")


def test_forced_evaluate_writes_json_and_recogs_with_one_run_id(case: Env) -> None:
    manifest = _manifest(case.tmp / "m.jsonl", [_entry(u) for u in case.utts[:2]])
    out = case.tmp / "eval.json"
    ids = []
    for extra in ([], ["--force"]):
        assert main(case.evaluate(manifest, "--json", str(out), *extra)) == 0
        run_id = json.loads(out.read_text())["run_id"]
        assert (case.tmp / "recogs-x.txt").read_text().splitlines()[0] == f"# run_id {run_id}"
        ids.append(run_id)
    assert ids[0] != ids[1]


def test_existing_import_nemo_out_needs_force(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "teacher.pt"
    shutil.copy(case.model, out)
    refused(
        capsys, ["import-nemo", str(case.tmp / "x.nemo"), "--out", str(out)], watched(case, out), "--force"
    )


def test_existing_export_onnx_needs_force(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "m.onnx"
    out.write_text("earlier\n")
    refused(capsys, ["export", str(case.model), "--onnx", str(out)], watched(case, out), str(out), "--force")


def test_train_out_that_is_a_file(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "run"
    out.write_text("")
    refused(
        capsys, case.train(case.corpus / "train", out), watched(case, out), f"run directory {out} is a file"
    )


def test_train_into_a_finished_run_without_resume(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, case.train(case.corpus / "train", case.run), watched(case), "pass --resume")


def test_train_resume_without_a_run(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "nothing"
    argv = [*case.train(case.corpus / "train", out), "--resume"]
    refused(capsys, argv, watched(case), f"--resume: no {out / 'train_state.pt'}", absent=(out,))


def test_prune_out_that_is_a_file(case: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = case.tmp / "p"
    out.write_text("")
    refused(
        capsys, case.prune(case.corpus / "train", out), watched(case, out), f"run directory {out} is a file"
    )


# ---------------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [None, "synth", "train", "evaluate", "transcribe", "export", "import-nemo", "prune", "demo"]
)
def test_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: conformer-prune")
    assert "conformer-prune " + (command or "demo") in out  # the command to paste


def test_diverging_training_is_one_line_naming_the_utterances(
    case: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(case.tmp / "m.jsonl", [_entry(u) for u in case.utts])
    argv = case.train(manifest, case.tmp / "run", "--set", "optim.lr=1e30", "optim.warmup_steps=1")
    line = refused(capsys, argv, watched(case, manifest), "non-finite loss", "on utterances [")
    assert any(u.utt_id in line for u in case.utts)
