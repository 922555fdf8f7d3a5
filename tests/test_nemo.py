"""Importing .nemo archives without NeMo installed: archives written here from our own models.

The comparison with NeMo itself is in tests/nemo (``make test-nemo``). Here: the name and shape
mapping round-trips exactly (tied and untied position biases, no biases, gzip; FastConformers with
dw_striding subsampling by 4, 8 and 16; the CTC head of a hybrid RNNT-CTC model), the NeMo front-end
options keep batched equal to one-by-one and export to ONNX, and every unsupported variant is a
ValueError that names the key and its value.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conformer_prune.cli import main
from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.export import export_onnx, verify_onnx
from conformer_prune.model import ConformerConfig, ConformerCTC, build_model, load_recognizer
from conformer_prune.model.nemo import import_nemo, recognizer_from_nemo
from tests.nemo.conformer_ctc_bpe import small_conformer_ctc

TOKENIZER_NAME = "5f1e0c2a9b_tokenizer.model"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(["HELLO WORLD", "A CAT SAT ON THE MAT"], TokenizerConfig(vocab_size=20))


def _config(tokenizer: Tokenizer, untie_biases: bool = True, use_bias: bool = True) -> dict[str, Any]:
    """A small EncDecCTCModelBPE model_config.yaml, laid out as NeMo writes it."""
    return small_conformer_ctc(
        tokenizer={"dir": "/tmp/tok", "model_path": f"nemo:{TOKENIZER_NAME}"},
        preprocessor={"pad_to": 16},
        encoder={
            "n_layers": 2,
            "d_model": 16,
            "subsampling_conv_channels": 8,
            "n_heads": 2,
            "untie_biases": untie_biases,
            "conv_kernel_size": 7,
            "use_bias": use_bias,
        },
        decoder={"num_classes": tokenizer.vocab_size, "vocabulary": tokenizer.pieces},
        target="nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
        nemo_version="3.0.0",
    )


def _is_layer_bias(name: str) -> bool:
    """A bias of a Linear or Conv1d inside a block: what NeMo's use_bias: false leaves out."""
    return name.startswith("encoder.layers.") and name.endswith(".bias") and "norm" not in name


def _source_model(tokenizer: Tokenizer, untie_biases: bool, use_bias: bool) -> ConformerCTC:
    """Our model with the shape the config above describes, and what the NeMo model would hold:
    one position bias pair for all layers when tied, zero layer biases without use_bias."""
    torch.manual_seed(0)
    cfg = ConformerConfig.create(
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        n_layers=2,
        head_dim=8,
        heads=2,
        ffn1=64,
        ffn2=64,
        conv_channels=16,
        conv_kernel=7,
        subsampling_channels=[8, 8],
        dropout=0.1,
        dropout_att=0.1,
    )
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not untie_biases and "pos_bias" in name:
                p.copy_(model.encoder.layers[0].self_attn.get_parameter(name.rsplit(".", 1)[-1]))
            if not use_bias and _is_layer_bias(name):
                p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _nemo_state_dict(model: ConformerCTC, use_bias: bool) -> dict[str, torch.Tensor]:
    """`model`'s weights under NeMo's names (the CTC head is a kernel-1 Conv1d there)."""
    out = {}
    for key, value in model.state_dict().items():
        if not use_bias and _is_layer_bias(key):
            continue
        if key.startswith("decoder."):
            key = "decoder.decoder_layers.0." + key.removeprefix("decoder.")
            value = value.unsqueeze(-1) if value.dim() == 2 else value
        out[key] = value.clone()
    features = LogMelFeatures(FeatureConfig())
    out["preprocessor.featurizer.window"] = features.window.clone()
    out["preprocessor.featurizer.fb"] = features.fbank[None].clone()
    return out


def _write_nemo(
    path: Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    compression: str = "",
) -> Path:
    weights = io.BytesIO()
    torch.save(state_dict, weights)
    files = {
        "model_config.yaml": yaml.safe_dump(config, allow_unicode=True).encode(),
        "model_weights.ckpt": weights.getvalue(),
        TOKENIZER_NAME: tokenizer.to_bytes(),
    }
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _archive(
    tmp_path: Path, tokenizer: Tokenizer, untie_biases: bool = True, use_bias: bool = True, **kwargs: Any
) -> tuple[Path, ConformerCTC]:
    model = _source_model(tokenizer, untie_biases, use_bias)
    config = _config(tokenizer, untie_biases, use_bias)
    path = _write_nemo(tmp_path / "m.nemo", config, _nemo_state_dict(model, use_bias), tokenizer, **kwargs)
    return path, model


@pytest.mark.parametrize(
    ("untie_biases", "use_bias", "compression"),
    [(True, True, ""), (False, True, "gz"), (True, False, "")],
    ids=["untied", "tied-gzip", "no-bias"],
)
def test_import_round_trips_our_weights_exactly(
    tokenizer: Tokenizer, tmp_path: Path, untie_biases: bool, use_bias: bool, compression: str
) -> None:
    path, source = _archive(tmp_path, tokenizer, untie_biases, use_bias, compression=compression)
    import_nemo(path, tmp_path / "teacher.pt")
    rec = load_recognizer(tmp_path / "teacher.pt")  # strict, like every checkpoint
    assert rec.model.config == source.config
    for key, value in source.state_dict().items():
        assert torch.equal(rec.model.state_dict()[key], value), key
    assert rec.model.blank == tokenizer.vocab_size  # NeMo's blank is last as well
    assert rec.tokenizer.to_bytes() == tokenizer.to_bytes()
    assert rec.features.config == FeatureConfig(dither=1e-5, frame_count="nemo", pad_to=16)
    assert rec.meta["source"] == {
        "format": "nemo",
        "file": "m.nemo",
        "nemo_version": "3.0.0",
        "model_class": "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
    }


def test_nemo_front_end_options_batched_equals_single() -> None:
    cfg = FeatureConfig(frame_count="nemo", pad_to=16, log_guard_type="clamp")
    feats = LogMelFeatures(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    a, b = 0.1 * torch.randn(16000, generator=gen), 0.1 * torch.randn(7000, generator=gen)
    batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    out, lengths = feats(batch, torch.tensor([16000, 7000]))
    assert lengths.tolist() == [100, 43]  # NeMo's N // hop, one frame fewer than ours
    assert out.shape == (2, 112, 80)  # 101 STFT frames padded to a multiple of 16
    single, single_lengths = feats(b[None], torch.tensor([7000]))
    assert single.shape == (1, 48, 80) and single_lengths.tolist() == [43]
    torch.testing.assert_close(out[1, :43], single[0, :43], atol=1e-4, rtol=1e-4)
    assert torch.all(out[0, 100:] == 0) and torch.all(out[1, 43:] == 0)


def test_imported_model_exports_to_onnx(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path, _ = _archive(tmp_path, tokenizer, untie_biases=False)
    rec = recognizer_from_nemo(path)
    onnx_path = export_onnx(rec, tmp_path / "m.onnx", example_seconds=1.0)
    gen = np.random.default_rng(0)
    check = verify_onnx(
        rec, onnx_path, [0.1 * gen.standard_normal(n).astype(np.float32) for n in (9000, 5000)]
    )
    assert check.passed(1e-4), check


def _edited(config: dict[str, Any], section: str | None, key: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    (config[section] if section else config)[key] = value
    return config


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("encoder", "subsampling", "vggnet"),
        ("encoder", "subsampling", "dw_striding_conv1d"),
        ("encoder", "subsampling_factor", 2),
        ("encoder", "subsampling_factor", 32),
        ("encoder", "att_context_style", "chunked_limited"),
        ("encoder", "att_context_size", [[70, 13], [70, 6], [70, 1], [70, 0]]),
        ("encoder", "conv_norm_type", "layer_norm"),
        ("encoder", "self_attention_model", "abs_pos"),
        ("encoder", "causal_downsampling", True),
        ("encoder", "conv_context_size", "causal"),
        ("encoder", "att_context_size", [70, 13]),
        ("encoder", "feat_out", 32),
        ("preprocessor", "window", "hamming"),
        ("preprocessor", "normalize", "all_features"),
        ("preprocessor", "exact_pad", True),
        ("preprocessor", "frame_splicing", 3),
        ("preprocessor", "mag_power", 1.0),
        ("preprocessor", "pad_to", "max"),
        ("preprocessor", "lowfreq", 20),
        ("decoder", "_target_", "nemo.collections.asr.modules.ConvASRDecoderClassification"),
        ("encoder", "_target_", "nemo.collections.asr.modules.SqueezeformerEncoder"),
        ("tokenizer", "type", "wpe"),
        (None, "target", "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel"),
    ],
)
def test_unsupported_variant_names_key_and_value(
    tokenizer: Tokenizer, tmp_path: Path, section: str | None, key: str, value: Any
) -> None:
    model = _source_model(tokenizer, True, True)
    config = _edited(_config(tokenizer), section, key, value)
    path = _write_nemo(tmp_path / "m.nemo", config, _nemo_state_dict(model, True), tokenizer)
    with pytest.raises(ValueError) as err:
        recognizer_from_nemo(path)
    message = str(err.value)
    assert f"{key} = {value!r} is not supported; conformer-prune imports" in message


def test_unsupported_variant_is_a_clear_cli_error(
    tokenizer: Tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _source_model(tokenizer, True, True)
    config = _edited(_config(tokenizer), "encoder", "conv_norm_type", "layer_norm")
    path = _write_nemo(tmp_path / "m.nemo", config, _nemo_state_dict(model, True), tokenizer)
    assert main(["import-nemo", str(path), "--out", str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err
    assert "conv_norm_type = 'layer_norm' is not supported" in err and "batch_norm" in err
    assert not (tmp_path / "t.pt").exists()


def test_unknown_keys_extra_weights_and_bad_files_are_clear_errors(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = _source_model(tokenizer, True, True)
    weights = _nemo_state_dict(model, True)
    config = _edited(_config(tokenizer), "encoder", "chunk_mode", "wavelet")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['chunk_mode'\]"):
        recognizer_from_nemo(_write_nemo(tmp_path / "a.nemo", config, weights, tokenizer))
    adapters = {**weights, "encoder.layers.0.adapter_layer.linear.weight": torch.zeros(4, 16)}
    with pytest.raises(ValueError, match="adapters"):
        recognizer_from_nemo(_write_nemo(tmp_path / "b.nemo", _config(tokenizer), adapters, tokenizer))
    config = _edited(_config(tokenizer), "decoder", "num_classes", tokenizer.vocab_size + 1)
    with pytest.raises(ValueError, match="blank index"):
        recognizer_from_nemo(_write_nemo(tmp_path / "c.nemo", config, weights, tokenizer))
    (tmp_path / "d.nemo").write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match=r"not a \.nemo archive"):
        recognizer_from_nemo(tmp_path / "d.nemo")
    with pytest.raises(FileNotFoundError):
        recognizer_from_nemo(tmp_path / "missing.nemo")


# -- FastConformer (dw_striding) and hybrid RNNT-CTC archives -------------------------------------

HYBRID = "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel"


def _fast_archive(
    tmp_path: Path, tokenizer: Tokenizer, hybrid: bool = False, **encoder: Any
) -> tuple[Path, ConformerCTC, dict[str, torch.Tensor], dict[str, Any]]:
    """A FastConformer .nemo archive (our weights under NeMo's names), the model it holds, and the
    NeMo state dict and config written (a hybrid's also holds a transducer, which the import
    leaves out)."""
    settings = {"subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 8}
    settings |= {"xscaling": True, "untie_biases": True, "use_bias": True} | encoder
    factor, channels = settings["subsampling_factor"], settings["subsampling_conv_channels"]
    config = _config(tokenizer, settings["untie_biases"], settings["use_bias"])
    config["encoder"].update(settings, conv_kernel_size=9)
    torch.manual_seed(1)
    model = _source_model(tokenizer, settings["untie_biases"], settings["use_bias"])
    cfg = dataclasses.replace(
        model.config,
        conv_kernel=9,
        xscaling=settings["xscaling"],
        subsampling=settings["subsampling"],
        subsampling_factor=factor,
        subsampling_channels=[16 if channels == -1 else channels] * (factor.bit_length() - 1),
    )
    fast = build_model(cfg)
    with torch.no_grad():  # the blocks as _source_model made them (tied biases, zero biases)
        source = model.state_dict()
        for key, target in fast.state_dict().items():  # not the new front end and depthwise kernels
            if key in source and source[key].shape == target.shape:
                target.copy_(source[key])
    fast.eval()
    weights = _nemo_state_dict(fast, settings["use_bias"])
    if hybrid:
        config["target"] = HYBRID
        config["aux_ctc"] = {"decoder": config.pop("decoder"), "ctc_loss_weight": 0.3}
        config["decoder"] = {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "prednet": {"pred_hidden": 8},
        }
        config["joint"] = {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "jointnet": {"joint_hidden": 8},
        }
        for key in [k for k in weights if k.startswith("decoder.")]:
            weights["ctc_decoder." + key.removeprefix("decoder.")] = weights.pop(key)
        weights["decoder.prediction.embed.weight"] = torch.randn(tokenizer.vocab_size + 1, 8)
        weights["joint.pred.weight"] = torch.randn(8, 8)
        weights["joint.joint_net.2.weight"] = torch.randn(tokenizer.vocab_size + 1, 8)
    path = _write_nemo(tmp_path / "fast.nemo", config, weights, tokenizer)
    return path, fast, weights, config


@pytest.mark.parametrize(
    "encoder",
    [
        {"subsampling_factor": 8},
        {"subsampling_factor": 4, "subsampling_conv_channels": -1, "xscaling": False, "untie_biases": False},
        {"subsampling_factor": 16, "use_bias": False},
        {"subsampling": "striding", "subsampling_factor": 8},
    ],
    ids=["dw8", "dw4-tied-noxscale", "dw16-nobias", "striding8"],
)
def test_fastconformer_import_round_trips_exactly(
    tokenizer: Tokenizer, tmp_path: Path, encoder: dict[str, Any]
) -> None:
    path, source, _, _ = _fast_archive(tmp_path, tokenizer, **encoder)
    rec = recognizer_from_nemo(path)
    cfg = rec.model.config
    assert cfg.subsampling == encoder.get("subsampling", "dw_striding")
    assert cfg.subsampling_factor == encoder["subsampling_factor"]
    assert cfg.conv_kernel == 9 and cfg.xscaling == encoder.get("xscaling", True)
    for key, value in source.state_dict().items():
        assert torch.equal(rec.model.state_dict()[key], value), key
    feats, lengths = torch.randn(2, 203, 80), torch.tensor([203, 120])
    with torch.no_grad():
        torch.testing.assert_close(rec.model(feats, lengths), source(feats, lengths), rtol=0, atol=0)


def test_hybrid_rnnt_ctc_imports_encoder_and_ctc_head(
    tokenizer: Tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, source, weights, _ = _fast_archive(tmp_path, tokenizer, hybrid=True)
    assert main(["import-nemo", str(path), "--out", str(tmp_path / "t.pt")]) == 0
    out = capsys.readouterr().out
    transducer = sum(v.numel() for k, v in weights.items() if k.startswith(("decoder.", "joint.")))
    assert f"left out: the transducer (RNNT prediction network and joint, 3 tensors, {transducer:,}" in out
    rec = load_recognizer(tmp_path / "t.pt")
    assert rec.meta["source"]["model_class"] == HYBRID
    for key, value in source.state_dict().items():
        assert torch.equal(rec.model.state_dict()[key], value), key
    assert torch.equal(rec.model.decoder.weight, weights["ctc_decoder.decoder_layers.0.weight"].squeeze(-1))


def test_hybrid_without_a_ctc_head_and_streaming_fastconformers_are_refused(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    _, _, weights, config = _fast_archive(tmp_path, tokenizer, hybrid=True)
    del config["aux_ctc"]
    with pytest.raises(ValueError, match=r"EncDecHybridRNNTCTCBPEModel without an aux_ctc\.decoder"):
        recognizer_from_nemo(_write_nemo(tmp_path / "a.nemo", config, weights, tokenizer))
    for key, value in [("causal_downsampling", True), ("conv_context_size", "causal")]:
        path, _, _, _ = _fast_archive(tmp_path, tokenizer, **{key: value})
        with pytest.raises(ValueError, match=f"{key} = {value!r} is not supported"):
            recognizer_from_nemo(path)


def test_imported_fastconformer_exports_to_onnx(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path, _, _, _ = _fast_archive(tmp_path, tokenizer, subsampling_factor=8)
    rec = recognizer_from_nemo(path)
    onnx_path = export_onnx(rec, tmp_path / "fast.onnx", example_seconds=1.0)
    gen = np.random.default_rng(0)
    check = verify_onnx(
        rec, onnx_path, [0.1 * gen.standard_normal(n).astype(np.float32) for n in (9000, 5000)]
    )
    assert check.passed(1e-4), check
