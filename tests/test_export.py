"""ONNX export: parity with PyTorch, metadata, int8, and transcription with ONNX Runtime alone."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.features import FeatureConfig, LogMelFeatures, MatmulDFTLogMel
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.export import OnnxRecognizer, export_onnx, quantize_int8, verify_onnx
from conformer_prune.export.onnx import CALIBRATED_MODES, INT8_MODULES, int8_nodes
from conformer_prune.export.run import calibration_inputs
from conformer_prune.model import Recognizer, build_model, load_recognizer
from tests.conftest import hetero_config

# A physically pruned shape: layer 0 has no second feed-forward, layer 1 no attention, layer 2
# one head and neither convolution nor first feed-forward; every width differs per layer.
PRUNED = dict(heads=[4, 0, 1], ffn1=[64, 16, 0], ffn2=[0, 32, 8], conv_channels=[32, 8, 0])
DENSE = dict(heads=4, ffn1=64, ffn2=64, conv_channels=32)


def _recognizer(shape: dict[str, object]) -> Recognizer:
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["HELLO WORLD", "A CAT SAT ON THE MAT"], TokenizerConfig(vocab_size=20))
    model = build_model(hetero_config(vocab_size=tokenizer.vocab_size, **shape))
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    return Recognizer(model.eval(), LogMelFeatures(FeatureConfig()).eval(), tokenizer)


def _check_parity(rec: Recognizer, path: Path, frontend: bool) -> None:
    gen = np.random.default_rng(0)
    real = [0.1 * gen.standard_normal(n).astype(np.float32) for n in (16000, 23456, 9000)]
    check = verify_onnx(rec, path, real)
    assert check.lengths_equal
    assert set(check.max_abs_diff) == {"random_b1", "random_b3", "real"}
    assert max(check.max_abs_diff.values()) <= 1e-4, check.max_abs_diff
    meta = OnnxRecognizer(path).meta
    assert meta["input"] == ("waveforms" if frontend else "features")
    assert float(meta["sparsity"]) == pytest.approx(1 - count_params(rec.model) / 10**6, abs=1e-6)
    assert json.loads(meta["config"])["model"]["heads"] == list(rec.model.config.heads)
    assert len(json.loads(meta["vocabulary"])) == rec.tokenizer.vocab_size


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recognizer, Path]:
    """The dense shape exported with its front end, once for the tests that read it (an export
    takes 15-25 s on 2 cores, most of it in torch.export's tracing)."""
    rec = _recognizer(DENSE)
    path = tmp_path_factory.mktemp("onnx") / "dense.onnx"
    return rec, export_onnx(rec, path, teacher_params=10**6)


def test_onnx_runtime_matches_pytorch_from_waveforms(
    dense_export: tuple[Recognizer, Path], tmp_path: Path
) -> None:
    import onnx

    rec, fast = dense_export
    # by default the front end's spectrum is matrix products, not ONNX Runtime's slow STFT
    _check_parity(rec, fast, frontend=True)
    ops = {node.op_type for node in onnx.load(fast).graph.node}
    assert not ops & {"STFT", "DFT"}, ops
    # on request an ONNX STFT (the encoder's graph does not depend on which front end reads it)
    path = export_onnx(rec, tmp_path / "m.onnx", teacher_params=10**6, matmul_frontend=False)
    _check_parity(rec, path, frontend=True)
    assert "STFT" in {node.op_type for node in onnx.load(path).graph.node}


def test_onnx_runtime_matches_pytorch_for_a_pruned_shape_from_waveforms(tmp_path: Path) -> None:
    rec = _recognizer(PRUNED)
    _check_parity(rec, export_onnx(rec, tmp_path / "pruned.onnx", teacher_params=10**6), frontend=True)


FRONT_ENDS = {
    "ours": FeatureConfig(),
    "nemo": FeatureConfig(frame_count="nemo", log_guard_type="clamp", pad_to=16),
    "odd_window": FeatureConfig(win_length=401, hop_length=150, preemph=0.0, normalize="none"),
}


@pytest.mark.parametrize("config", FRONT_ENDS.values(), ids=FRONT_ENDS.keys())
@pytest.mark.parametrize("samples", [1600, 1601, 16000, 23457, 48001])
def test_matmul_dft_front_end_equals_log_mel_features(config: FeatureConfig, samples: int) -> None:
    """The exported front end (the STFT as matrix products) gives PyTorch's features: within
    1e-4 of the exact (float64) features, and no further from them than PyTorch's own float32
    `LogMelFeatures`. (The two float32 computations can differ from each other by up to the sum
    of their errors: 1.1e-4 on one of these inputs.)"""
    gen = torch.Generator().manual_seed(samples)
    waves = 0.1 * torch.randn(2, samples, generator=gen)
    lengths = torch.tensor([samples, samples * 2 // 3 + 1])
    with torch.no_grad():
        exact, exact_lengths = LogMelFeatures(config).double().eval()(waves.double(), lengths)
        ref, ref_lengths = LogMelFeatures(config).eval()(waves, lengths)
        out, out_lengths = MatmulDFTLogMel(config).eval()(waves, lengths)
    assert torch.equal(out_lengths, ref_lengths) and torch.equal(out_lengths, exact_lengths)
    assert out.shape == ref.shape == exact.shape
    error, torch_error = (out.double() - exact).abs().max(), (ref.double() - exact).abs().max()
    assert error <= 1e-4 and error <= torch_error + 1e-5, (error, torch_error)
    assert (out - ref).abs().max() <= 2e-4


@pytest.fixture(scope="module")
def features_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recognizer, Path]:
    """The pruned shape exported without its front end (features to log-probabilities)."""
    rec = _recognizer(PRUNED)
    path = tmp_path_factory.mktemp("onnx") / "features.onnx"
    return rec, export_onnx(rec, path, frontend=False, teacher_params=10**6)


def test_onnx_runtime_matches_pytorch_from_features(features_export: tuple[Recognizer, Path]) -> None:
    _check_parity(*features_export, frontend=False)


@pytest.fixture(scope="module")
def tiny_export(tiny_corpus: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`conformer-prune export --int8 --data` on the tiny trained model; returns the fp32 file
    (its printed report is saved beside it as report.json)."""
    onnx_path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    argv = ["export", str(tiny_run / "model.pt"), "--onnx", str(onnx_path), "--int8"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--data", str(tiny_corpus / "test")]) == 0
    (onnx_path.parent / "report.json").write_text(out.getvalue())
    return onnx_path


def test_export_command_int8_and_onnx_transcription(
    tiny_corpus: Path, tiny_run: Path, tiny_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, onnx_path = tiny_run / "model.pt", tiny_export
    report = json.loads((onnx_path.parent / "report.json").read_text())
    assert max(report["max_abs_diff"].values()) <= 1e-4 and "real" in report["max_abs_diff"]
    assert {"wer_torch", "wer_ort_fp32", "wer_ort_int8", "int8_wer_change_relative"} <= set(report)
    assert report["wer_ort_fp32"] == report["wer_torch"]
    assert report["latency_ms_10s_ort_fp32"] > 0 and report["latency_ms_10s_ort_int8"] > 0
    int8_file = onnx_path.with_name("tiny.int8.onnx")
    assert int8_file.stat().st_size < onnx_path.stat().st_size

    # int8 keeps almost every frame's best token (this barely trained model's transcripts are
    # near-ties, so their equality is checked on the reference teacher below)
    utts = read_corpus(tiny_corpus / "test")[:4]
    fp32, int8 = OnnxRecognizer(onnx_path), OnnxRecognizer(int8_file)
    audio = [load_audio(u.audio_path, fp32.sample_rate) for u in utts]
    lp32, n32 = fp32.log_probs(audio)
    lp8, n8 = int8.log_probs(audio)
    assert np.array_equal(n32, n8)
    real = np.arange(lp32.shape[1])[None, :] < n32[:, None]
    agreement = (lp32.argmax(-1) == lp8.argmax(-1))[real].mean()
    assert agreement >= 0.95, agreement

    # transcribe via ONNX Runtime gives the text PyTorch gives
    files = [str(u.audio_path) for u in utts]
    assert main(["transcribe", str(model), *files]) == 0
    via_torch = capsys.readouterr().out
    assert main(["transcribe", "--onnx", str(onnx_path), *files]) == 0
    assert capsys.readouterr().out == via_torch
    rec = load_recognizer(model)
    assert via_torch.splitlines()[0].split("\t")[1] == rec.transcribe([audio[0]])[0]


def test_onnx_transcription_runs_without_pytorch(tiny_corpus: Path, tiny_export: Path) -> None:
    path = tiny_export
    wav = str(read_corpus(tiny_corpus / "test")[0].audio_path)
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('PyTorch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from conformer_prune.cli import main\n"
        f"code = main(['transcribe', '--onnx', {str(path)!r}, {wav!r}])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(wav + "\t")


def test_quantized_features_model_runs(features_export: tuple[Recognizer, Path], tmp_path: Path) -> None:
    rec, path = features_export
    q = quantize_int8(path, tmp_path / "m.int8.onnx")
    feats = [np.random.default_rng(1).standard_normal((120, 80)).astype(np.float32)]
    log_probs, lengths = OnnxRecognizer(q).log_probs(feats)
    assert log_probs.shape == (1, 30, rec.model.config.vocab_size + 1) and lengths.tolist() == [30]
    assert np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-3)


def _calibration(n: int) -> list[dict[str, np.ndarray]]:
    gen = np.random.default_rng(n)
    waves = [0.1 * gen.standard_normal((1, 16000 + 1601 * i)).astype(np.float32) for i in range(n)]
    return [{"waveforms": w, "lengths": np.array([w.shape[1]])} for w in waves]


def _weight_consumers(path: Path) -> set[str]:
    """Names of the nodes that read an int8 weight, statically or dynamically quantized."""
    static, dynamic = _int8_forms(path)
    return static | dynamic


def _int8_forms(path: Path) -> tuple[set[str], set[str]]:
    """Names of the nodes that read an int8 weight: through a DequantizeLinear of an initializer
    (static, QDQ), and as the node that replaced them (dynamic: NAME_quant)."""
    import onnx

    graph = onnx.load(path).graph
    weights = {t.name for t in graph.initializer}
    dequantized = {
        out
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in weights
        for out in n.output
    }
    static = {n.name for n in graph.node if set(n.input) & dequantized}
    dynamic = {
        n.name.removesuffix("_quant") for n in graph.node if n.op_type in ("MatMulInteger", "ConvInteger")
    }
    return static, dynamic


def _weighted(path: Path, names: set[str]) -> set[str]:
    """Those of `names` that multiply by a weight (an initializer), not two activations (as the
    attention scores do)."""
    import onnx

    graph = onnx.load(path).graph
    weights = {t.name for t in graph.initializer}
    return {n.name for n in graph.node if n.name in names and set(n.input) & weights}


@pytest.mark.parametrize(
    ("mode", "op_types", "modules"),
    [
        ("dynamic", ["MatMul", "Gemm"], INT8_MODULES),
        ("dynamic", ["MatMul"], ["feed_forward"]),
        ("static", ["Conv"], ["subsampling"]),
        ("static", ["MatMul", "Conv"], ["attention", "convolution"]),
        ("hybrid", ["MatMul", "Gemm", "Conv"], INT8_MODULES),
        ("hybrid", ["MatMul", "Conv"], ["subsampling", "feed_forward"]),
    ],
)
def test_int8_quantizes_only_the_chosen_operators(
    mode: str, op_types: list[str], modules: list[str], dense_export: tuple[Recognizer, Path], tmp_path: Path
) -> None:
    import onnx

    _, fp32 = dense_export
    chosen = set(int8_nodes(onnx.load(fp32), op_types, modules))
    graph = onnx.load(fp32).graph
    front_end = {n.name for n in graph.node if any("'features'" in p.value for p in n.metadata_props)}
    assert front_end and not chosen & front_end  # the log-mel front end stays fp32
    assert {n.op_type for n in graph.node if n.name in chosen} <= set(op_types)
    calibration = _calibration(3) if mode in CALIBRATED_MODES else None
    q = quantize_int8(fp32, tmp_path / "q.onnx", mode, op_types, modules, calibration)  # type: ignore[arg-type]
    assert _weight_consumers(q) == _weighted(fp32, chosen) != set()
    if mode == "hybrid":  # the convolutions static, the matrix products dynamic
        convs = {n.name for n in graph.node if n.name in chosen and n.op_type == "Conv"}
        assert _int8_forms(q) == (_weighted(fp32, convs), _weighted(fp32, chosen - convs))
        assert convs and chosen - convs


def test_static_int8_stays_close_to_fp32(tiny_corpus: Path, tiny_run: Path, tiny_export: Path) -> None:
    """Static int8 (MatMul, Gemm and Conv calibrated on 8 train utterances) of the tiny trained
    model keeps its log-probabilities near fp32 on test audio and the best token of every frame
    where fp32 has one."""
    rec = load_recognizer(tiny_run / "model.pt")
    calibration = calibration_inputs(rec, read_corpus(tiny_corpus / "train"), count=8)
    assert len(calibration) == 8 and set(calibration[0]) == {"waveforms", "lengths"}
    q = quantize_int8(
        tiny_export,
        tiny_export.with_name("tiny.static.onnx"),
        "static",
        ["MatMul", "Gemm", "Conv"],
        INT8_MODULES,
        calibration,
    )
    audio = [load_audio(u.audio_path, 16000) for u in read_corpus(tiny_corpus / "test")[:4]]
    lp32, n32 = OnnxRecognizer(tiny_export).log_probs(audio)
    lp8, n8 = OnnxRecognizer(q).log_probs(audio)
    assert np.array_equal(n32, n8)
    real = np.arange(lp32.shape[1])[None, :] < n32[:, None]
    probs32, probs8 = np.exp(lp32)[real], np.exp(lp8)[real]  # (frames, V)
    assert np.abs(probs8 - probs32).max() <= 0.2, np.abs(probs8 - probs32).max()
    assert np.abs(probs8 - probs32).mean() <= 0.01, np.abs(probs8 - probs32).mean()
    # the best token is kept wherever fp32 has one: the tiny model ties its two best tokens (to
    # 0.2%) on many frames, and int8 may break such a tie either way
    top2 = np.sort(probs32, -1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 0.01
    assert decided.sum() >= 50, decided.sum()
    assert (probs32.argmax(-1) == probs8.argmax(-1))[decided].all()


def test_export_command_static_int8(tiny_corpus: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    onnx_path = tmp_path / "m.onnx"
    argv = ["export", str(tiny_run / "model.pt"), "--onnx", str(onnx_path), "--int8", "static"]
    argv += ["--calibration", str(tiny_corpus / "train"), "--calibration-utterances", "4"]
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--int8-ops", "MatMul", "--int8-modules", "feed_forward", "attention"]) == 0
    report = json.loads(out.getvalue())
    assert report["int8_mode"] == "static" and report["int8_modules"] == ["feed_forward", "attention"]
    assert report["latency_ms_10s_ort_int8"] > 0
    import onnx

    chosen = int8_nodes(onnx.load(onnx_path), ["MatMul"], ["feed_forward", "attention"])
    assert _weight_consumers(onnx_path.with_name("m.int8.onnx")) == _weighted(onnx_path, set(chosen)) != set()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8", "static"], "--int8 static needs --calibration"),
        (["--int8", "hybrid"], "--int8 hybrid needs --calibration"),
        (["--int8", "dynamic", "--calibration", "corpus"], "--calibration is for --int8 static or hybrid"),
        (["--int8", "--int8-ops", "Softmax"], "int8 op types must be some of"),
        (["--int8", "--int8-modules", "ffn"], "int8 modules must be some of"),
        (["--int8", "static", "--calibration", "c", "--calibration-utterances", "0"], "at least 1"),
        (["--int8-ops", "MatMul"], "add --int8"),
    ],
)
def test_bad_int8_options_are_clear_errors(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "model.pt"), "--onnx", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_int8_arguments_are_clear_errors(
    features_export: tuple[Recognizer, Path], tmp_path: Path
) -> None:
    path = features_export[1]
    with pytest.raises(ValueError, match=r"mode must be one of \['dynamic', 'static', 'hybrid'\]"):
        quantize_int8(path, tmp_path / "q.onnx", "fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs calibration inputs"):
        quantize_int8(path, tmp_path / "q.onnx", "static")
    with pytest.raises(ValueError, match="hybrid int8 needs calibration inputs"):
        quantize_int8(path, tmp_path / "q.onnx", "hybrid")
    with pytest.raises(ValueError, match="no Conv node in the modules"):
        quantize_int8(path, tmp_path / "q.onnx", "dynamic", ["Conv"], ["feed_forward"])
    assert not (tmp_path / "q.onnx").exists()


def test_transcribing_audio_with_a_features_model_is_a_clear_error(
    features_export: tuple[Recognizer, Path],
) -> None:
    with pytest.raises(ValueError, match="takes log-mel features"):
        OnnxRecognizer(features_export[1]).transcribe([np.zeros(16000, dtype=np.float32)])


def test_a_foreign_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="no conformer-prune metadata"):
        OnnxRecognizer(tmp_path / "other.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxRecognizer(tmp_path / "missing.onnx")


REFERENCE_TEACHER = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "teacher.pt"


def test_int8_keeps_the_reference_teachers_transcripts(tiny_corpus: Path, tmp_path: Path) -> None:
    """On the trained 12-layer reference teacher, int8 gives the fp32 greedy transcripts."""
    rec = load_recognizer(REFERENCE_TEACHER)
    path = export_onnx(rec, tmp_path / "teacher.onnx")
    fp32 = OnnxRecognizer(path)
    int8 = OnnxRecognizer(quantize_int8(path, tmp_path / "teacher.int8.onnx"))
    audio = [load_audio(u.audio_path, 16000) for u in read_corpus(tiny_corpus / "test")[:4]]
    expected = fp32.transcribe(audio)
    assert any(len(t.split()) >= 3 for t in expected), expected  # real words, not blanks
    assert expected == rec.transcribe(audio)
    # in batches of any size, in the caller's order (a long list is never one padded batch)
    assert fp32.transcribe(audio, batch_size=1) == expected == rec.transcribe(audio, batch_size=3)
    # int8 keeps the best token of every frame that fp32 does not call a near-tie (a lead of 0.1
    # or more in log-probability). Whole transcripts are not always equal: on the test utterances
    # of the corpus that keeps apostrophes, a frame with a lead of 0.004 flips one letter.
    log_probs, lengths = fp32.log_probs(audio)
    int8_log_probs, int8_lengths = int8.log_probs(audio)
    assert np.array_equal(lengths, int8_lengths)
    for fp32_lp, int8_lp, n in zip(log_probs, int8_log_probs, lengths, strict=True):
        top2 = np.sort(fp32_lp[:n], axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] >= 0.1
        assert clear.mean() > 0.9
        assert np.array_equal(fp32_lp[:n].argmax(-1)[clear], int8_lp[:n].argmax(-1)[clear])
