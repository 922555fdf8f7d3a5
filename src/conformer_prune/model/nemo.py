"""Import a NeMo Conformer-CTC model (a ``.nemo`` file) as a conformer-prune checkpoint.

Usage:
    conformer-prune import-nemo stt_en_conformer_ctc_small.nemo --out runs/nemo-small/teacher.pt

A ``.nemo`` file is a tar archive (plain or gzipped) holding ``model_config.yaml``,
``model_weights.ckpt`` (a state dict) and the artifacts the config names, among them the
SentencePiece ``tokenizer.model`` (stored as ``<hash>_tokenizer.model`` and named in the config as
``nemo:<hash>_tokenizer.model``). Reading it needs tarfile, yaml and torch only, not NeMo.

What is imported (`EncDecCTCModelBPE`, and the encoder and CTC head of
`EncDecHybridRNNTCTCBPEModel`, as NeMo 3.0.0 computes them in eval mode):

- the `AudioToMelSpectrogramPreprocessor` settings become a `FeatureConfig` with NeMo's frame
  count, log guard and `pad_to` (dither stays a training-only setting, as in NeMo);
- the `ConformerEncoder` (striding Conv2d or FastConformer's depthwise-separable `dw_striding`
  subsampling by 4, 8 or 16, relative-position attention, BatchNorm in the convolution module)
  becomes a `ConformerConfig` with the same width in every layer;
  parameter names are the same on both sides, position biases tied across layers
  (``untie_biases: false``) are copied into every layer, and with ``use_bias: false`` the biases
  of the Linear and Conv1d layers are zeros;
- the `ConvASRDecoder`'s kernel-1 Conv1d becomes the linear CTC head (a hybrid model's is its
  `aux_ctc` decoder, ``ctc_decoder`` in the state dict; its transducer, the RNNT prediction network
  and joint, is left out and the recognizer's meta says so). Both put the blank last, at index
  vocab_size, so token ids and greedy transcripts are the same;
- the tokenizer is the archive's SentencePiece model, unchanged.

Every other variant (other subsampling, attention or normalisation types, streaming models with
limited or chunked attention context, causal convolutions or causal downsampling, other front ends,
models without a CTC head) is a ValueError that names the key, its value and what is supported.
The result is an ordinary checkpoint: it evaluates, prunes and exports like any other.
Only training differs from NeMo's: our one `dropout` also stands for NeMo's `dropout_pre_encoder`,
and stochastic depth is not reproduced.
Equivalence with NeMo is tested in tests/nemo (``make test-nemo``).
"""

from __future__ import annotations

import io
import math
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import yaml
from torch import Tensor

from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer
from conformer_prune.model.checkpoint import Recognizer, save_recognizer
from conformer_prune.model.conformer import SUBSAMPLING_FACTORS, ConformerConfig, build_model

__all__ = ["NemoArchive", "import_nemo", "read_nemo", "recognizer_from_nemo"]

# The defaults of NeMo 3.0.0's AudioToMelSpectrogramPreprocessor and ConformerEncoder, for keys a
# config leaves out.
PREPROCESSOR_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000,
    "window_size": 0.02,
    "window_stride": 0.01,
    "n_window_size": None,
    "n_window_stride": None,
    "window": "hann",
    "normalize": "per_feature",
    "n_fft": None,
    "preemph": 0.97,
    "features": 64,
    "lowfreq": 0,
    "highfreq": None,
    "log": True,
    "log_zero_guard_type": "add",
    "log_zero_guard_value": 2**-24,
    "dither": 1e-5,
    "pad_to": 16,
    "frame_splicing": 1,
    "exact_pad": False,
    "pad_value": 0,
    "mag_power": 2.0,
    "mel_norm": "slaney",
}
# accepted whatever their value: training-time augmentation, or deprecated and ignored by NeMo
PREPROCESSOR_IGNORED = {
    "_target_",
    "rng",
    "nb_augmentation_prob",
    "nb_max_freq",
    "use_torchaudio",
    "stft_exact_pad",
    "stft_conv",
}
ENCODER_DEFAULTS: dict[str, Any] = {
    "feat_out": -1,
    "causal_downsampling": False,
    "subsampling": "striding",
    "subsampling_factor": 4,
    "subsampling_conv_channels": -1,
    "reduction": None,
    "ff_expansion_factor": 4,
    "self_attention_model": "rel_pos",
    "n_heads": 4,
    "att_context_size": None,
    "att_context_style": "regular",
    "xscaling": True,
    "untie_biases": True,
    "conv_kernel_size": 31,
    "conv_norm_type": "batch_norm",
    "conv_context_size": None,
    "conv_context_style": "regular",
    "use_bias": True,
    "dropout": 0.1,
    "dropout_emb": 0.1,
    "dropout_att": 0.0,
    "global_tokens": 0,
}
# accepted whatever their value: regularisation in training, memory or speed settings, and
# settings that only matter for variants rejected by other keys
ENCODER_IGNORED = {
    "_target_",
    "feat_in",
    "n_layers",
    "d_model",
    "subsampling_conv_chunking_factor",
    "reduction_position",
    "reduction_factor",
    "att_context_probs",
    "att_chunk_context_size",
    "pos_emb_max_len",
    "dropout_pre_encoder",
    "stochastic_depth_drop_prob",
    "stochastic_depth_mode",
    "stochastic_depth_start_layer",
    "global_tokens_spacing",
    "global_attn_separate",
    "use_pytorch_sdpa",
    "use_pytorch_sdpa_backends",
    "sync_max_audio_length",
}
CTC_MODEL = "EncDecCTCModelBPE"
HYBRID_MODEL = "EncDecHybridRNNTCTCBPEModel"  # its CTC head is imported, its transducer dropped
SUPPORTED_MODELS = f"CTC models with a BPE tokenizer ({CTC_MODEL}, or the CTC head of {HYBRID_MODEL})"
NEMO_SKIPPED_WEIGHTS = ("preprocessor.featurizer.window", "preprocessor.featurizer.fb")


@dataclass
class NemoArchive:
    """The parts of a ``.nemo`` file that an import needs.

    Args:
        name: the file name, for messages and the checkpoint's meta.
        config: model_config.yaml as a plain dict.
        state_dict: model_weights.ckpt.
        tokenizer: the bytes of the SentencePiece model the config names.
    """

    name: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    tokenizer: bytes


def _unsupported(where: str, key: str, value: Any, supported: str) -> ValueError:
    return ValueError(f"{where}: {key} = {value!r} is not supported; conformer-prune imports {supported}")


def _tar_files(path: Path) -> dict[str, bytes]:
    """Every regular file at the archive's top level by name (NeMo stores them flat, as ./NAME).
    Members in sub-folders, or with absolute or ``..`` paths, are never read, so that such a
    member cannot stand in for a part of the model; a name stored twice is refused."""
    files = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar.getmembers():
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if not member.isfile() or len(parts) != 1 or member.name.startswith("/"):
                    continue
                if parts[0] in files:
                    raise ValueError(f"{path}: the archive holds {parts[0]} twice; expected one")
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files[parts[0]] = extracted.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:  # gzip/tar truncated or foreign
        detail = " ".join(str(err).split())
        raise ValueError(f"{path} is not a .nemo archive (a tar file) or is truncated: {detail}") from err
    return files


def read_nemo(path: str | Path) -> NemoArchive:
    """Read config, weights and tokenizer from a ``.nemo`` archive (tar or tar.gz).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a tar archive, or a part is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NeMo model {path} does not exist")
    files = _tar_files(path)
    for name in ("model_config.yaml", "model_weights.ckpt"):
        if name not in files:
            raise ValueError(f"{path} has no {name}; found {sorted(files)}")
    try:
        config = yaml.safe_load(files["model_config.yaml"])
    except yaml.YAMLError as err:
        raise ValueError(
            f"{path}: model_config.yaml is not valid YAML ({' '.join(str(err).split())})"
        ) from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: model_config.yaml is not a mapping")
    model_path = str((config.get("tokenizer") or {}).get("model_path") or "")
    tokenizer_name = PurePosixPath(model_path.removeprefix("nemo:")).name
    if tokenizer_name not in files:  # no model_path in the config: the one *tokenizer.model file
        found = sorted(name for name in files if name.endswith("tokenizer.model"))
        if len(found) != 1:
            raise ValueError(
                f"{path}: expected the SentencePiece model named by tokenizer.model_path "
                f"({model_path or 'not set'}) or one *tokenizer.model file, found {found}"
            )
        tokenizer_name = found[0]
    try:
        state_dict = torch.load(
            io.BytesIO(files["model_weights.ckpt"]), map_location="cpu", weights_only=True
        )
    except Exception as err:
        raise ValueError(f"{path}: model_weights.ckpt could not be read ({err})") from err
    if isinstance(state_dict, dict) and "state_dict" in state_dict:  # a Lightning checkpoint
        state_dict = state_dict["state_dict"]
    return NemoArchive(path.name, config, dict(state_dict), files[tokenizer_name])


def _target(section: dict[str, Any]) -> str:
    return str(section.get("_target_", "")).rsplit(".", 1)[-1]


def _is_hybrid(archive: NemoArchive) -> bool:
    return str(archive.config.get("target", "")).rsplit(".", 1)[-1] == HYBRID_MODEL


def _ctc_decoder(archive: NemoArchive) -> tuple[str, dict[str, Any]]:
    """Where the CTC head's config is (``decoder``, or a hybrid's ``aux_ctc.decoder``) and it."""
    if _is_hybrid(archive):
        aux = archive.config.get("aux_ctc")
        if not isinstance(aux, dict) or not isinstance(aux.get("decoder"), dict):
            raise ValueError(f"{archive.name}: a {HYBRID_MODEL} without an aux_ctc.decoder section")
        return "aux_ctc.decoder", aux["decoder"]
    return "decoder", archive.config["decoder"]


def _check_model(archive: NemoArchive) -> None:
    """The archive holds a SentencePiece-tokenized Conformer model with a CTC head."""
    cfg, where = archive.config, archive.name
    model_class = str(cfg.get("target", "")).rsplit(".", 1)[-1]
    if model_class and model_class not in (CTC_MODEL, HYBRID_MODEL):
        raise _unsupported(where, "target", cfg["target"], SUPPORTED_MODELS)
    if "joint" in cfg and not _is_hybrid(archive):
        raise ValueError(
            f"{where}: a transducer (the config has a joint); conformer-prune imports CTC models "
            f"and the CTC head of {HYBRID_MODEL} models"
        )
    expected = {"preprocessor": "AudioToMelSpectrogramPreprocessor", "encoder": "ConformerEncoder"}
    for section, name in expected.items():
        if not isinstance(cfg.get(section), dict):
            raise ValueError(f"{where}: model_config.yaml has no {section} section")
        if _target(cfg[section]) != name:
            raise _unsupported(where, f"{section}._target_", cfg[section].get("_target_"), f"a {name}")
    if not _is_hybrid(archive) and not isinstance(cfg.get("decoder"), dict):
        raise ValueError(f"{where}: model_config.yaml has no decoder section")
    section, decoder = _ctc_decoder(archive)
    if _target(decoder) != "ConvASRDecoder":
        raise _unsupported(where, f"{section}._target_", decoder.get("_target_"), "a ConvASRDecoder")
    tokenizer_type = (cfg.get("tokenizer") or {}).get("type")
    if tokenizer_type != "bpe":
        raise _unsupported(where, "tokenizer.type", tokenizer_type, "SentencePiece tokenizers (bpe)")


def _settings(
    section: dict[str, Any], defaults: dict[str, Any], ignored: set[str], where: str
) -> dict[str, Any]:
    """`section` over `defaults`; a key that is neither known nor ignored is an error."""
    known = set(defaults) | ignored
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; conformer-prune knows the keys of NeMo 3.0.0 "
            f"({', '.join(sorted(known))})"
        )
    return {**defaults, **section}


def _feature_config(archive: NemoArchive) -> FeatureConfig:
    """The `FeatureConfig` that computes what NeMo's preprocessor computes in eval mode."""
    where = f"{archive.name}: preprocessor"
    p = _settings(archive.config["preprocessor"], PREPROCESSOR_DEFAULTS, PREPROCESSOR_IGNORED, where)
    sample_rate = int(p["sample_rate"])
    # as AudioToMelSpectrogramPreprocessor: seconds are converted with int(), n_fft defaults to the
    # next power of two of the window
    win = p["n_window_size"] or int(p["window_size"] * sample_rate)
    hop = p["n_window_stride"] or int(p["window_stride"] * sample_rate)
    n_fft = p["n_fft"] or 2 ** math.ceil(math.log2(win))
    required = {
        "window": ("hann", "the Hann window"),
        "log": (True, "log-mel features"),
        "frame_splicing": (1, "no frame splicing"),
        "exact_pad": (False, "centred STFT frames (exact_pad false)"),
        "mag_power": (2.0, "the power spectrum (mag_power 2)"),
        "mel_norm": ("slaney", "Slaney-normalised mel filters"),
        "lowfreq": (0, "mel filters from 0 Hz"),
        "pad_value": (0, "zero padding"),
    }
    for key, (value, supported) in required.items():
        if p[key] != value:
            raise _unsupported(where, key, p[key], supported)
    if p["highfreq"] not in (None, sample_rate / 2):
        raise _unsupported(
            where, "highfreq", p["highfreq"], "mel filters up to sample_rate / 2 (highfreq null)"
        )
    normalize = p["normalize"]
    if normalize not in ("per_feature", None, False, "none", "None"):
        raise _unsupported(where, "normalize", normalize, "per_feature or no normalisation")
    guard_type = p["log_zero_guard_type"]
    if guard_type not in ("add", "clamp"):
        raise _unsupported(where, "log_zero_guard_type", guard_type, "add or clamp")
    guard = p["log_zero_guard_value"]
    if guard in ("tiny", "eps"):  # NeMo takes these from the float32 features
        guard = getattr(torch.finfo(torch.float32), guard)
    pad_to = p["pad_to"]
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 0:
        raise _unsupported(where, "pad_to", pad_to, "pad_to 0 or a positive multiple of frames")
    return FeatureConfig(
        sample_rate=sample_rate,
        n_mels=int(p["features"]),
        win_length=int(win),
        hop_length=int(hop),
        n_fft=int(n_fft),
        preemph=float(p["preemph"] or 0.0),
        log_guard=float(guard),
        normalize="per_feature" if normalize == "per_feature" else "none",
        dither=float(p["dither"] or 0.0),
        frame_count="nemo",
        log_guard_type=guard_type,
        pad_to=pad_to,
    )


def _model_config(archive: NemoArchive, vocab_size: int) -> tuple[ConformerConfig, dict[str, Any]]:
    """Our `ConformerConfig` for the archive's encoder and decoder, and the encoder settings."""
    where = f"{archive.name}: encoder"
    e = _settings(archive.config["encoder"], ENCODER_DEFAULTS, ENCODER_IGNORED, where)
    missing = [key for key in ("feat_in", "n_layers", "d_model") if key not in e]
    if missing:
        raise ValueError(f"{where}: the config lacks {missing}")
    d_model, n_layers, n_heads = int(e["d_model"]), int(e["n_layers"]), int(e["n_heads"])
    if e["subsampling"] not in ("striding", "dw_striding"):
        raise _unsupported(
            where, "subsampling", e["subsampling"], "striding or dw_striding (FastConformer) subsampling"
        )
    if e["subsampling_factor"] not in SUBSAMPLING_FACTORS:
        raise _unsupported(where, "subsampling_factor", e["subsampling_factor"], "subsampling by 4, 8 or 16")
    required = {
        "causal_downsampling": (False, "non-causal subsampling (streaming models are not supported)"),
        "self_attention_model": ("rel_pos", "relative-position attention (rel_pos)"),
        "att_context_style": ("regular", "full-context attention (regular; not chunked_limited streaming)"),
        "conv_norm_type": ("batch_norm", "BatchNorm in the convolution module (batch_norm)"),
        "conv_context_style": ("regular", "regular convolution context"),
        "global_tokens": (0, "no global tokens"),
    }
    for key, (value, supported) in required.items():
        if e[key] != value:
            raise _unsupported(where, key, e[key], supported)
    if e["reduction"]:
        raise _unsupported(where, "reduction", e["reduction"], "no time reduction inside the encoder")
    if e["feat_out"] not in (-1, None, d_model):
        raise _unsupported(where, "feat_out", e["feat_out"], "no output projection (feat_out -1)")
    if e["att_context_size"] not in (None, [-1, -1], [[-1, -1]]):
        raise _unsupported(
            where, "att_context_size", e["att_context_size"], "unlimited attention context ([-1, -1])"
        )
    kernel = int(e["conv_kernel_size"])
    half = (kernel - 1) // 2
    if e["conv_context_size"] not in (None, [half, half]):
        raise _unsupported(
            where, "conv_context_size", e["conv_context_size"], f"a centred convolution ([{half}, {half}])"
        )
    if d_model % n_heads:
        raise ValueError(f"{where}: d_model {d_model} is not a multiple of n_heads {n_heads}")
    n_mels = int(archive.config["preprocessor"].get("features", PREPROCESSOR_DEFAULTS["features"]))
    if int(e["feat_in"]) != n_mels:
        raise ValueError(f"{where}: feat_in {e['feat_in']} differs from the preprocessor's features {n_mels}")
    section, decoder = _ctc_decoder(archive)
    if not decoder.get("add_blank", True):
        raise _unsupported(
            f"{archive.name}: {section}",
            "add_blank",
            False,
            "a CTC head with a blank output (add_blank true)",
        )
    ffn = d_model * e["ff_expansion_factor"]
    channels = int(e["subsampling_conv_channels"])
    cfg = ConformerConfig.create(
        n_mels=n_mels,
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        head_dim=d_model // n_heads,
        heads=n_heads,
        ffn1=int(ffn),
        ffn2=int(ffn),
        conv_channels=d_model,
        conv_kernel=kernel,
        subsampling=e["subsampling"],
        subsampling_factor=int(e["subsampling_factor"]),
        subsampling_channels=[d_model if channels == -1 else channels]
        * (int(e["subsampling_factor"]).bit_length() - 1),
        xscaling=bool(e["xscaling"]),
        dropout=float(e["dropout"]),
        dropout_att=float(e["dropout_att"]),
        dropout_emb=float(e["dropout_emb"]),
    )
    return cfg, e


def _nemo_key(key: str, untie_biases: bool, head: str) -> str:
    """NeMo's name of our parameter `key`: the same, except the CTC head (under `head`) and, with
    tied position biases, the one pair all layers share (NeMo's state dict repeats it under every
    layer)."""
    if key.startswith("decoder."):
        return f"{head}.decoder_layers.0." + key.removeprefix("decoder.")
    if not untie_biases and key.endswith(("self_attn.pos_bias_u", "self_attn.pos_bias_v")):
        return "encoder.layers.0.self_attn." + key.rsplit(".", 1)[-1]
    return key


def _is_layer_bias(key: str) -> bool:
    """A bias of a Linear or Conv1d inside a block: what NeMo's ``use_bias: false`` leaves out."""
    return key.startswith("encoder.layers.") and key.endswith(".bias") and "norm" not in key


def _convert_state_dict(
    archive: NemoArchive, cfg: ConformerConfig, untie_biases: bool, use_bias: bool
) -> dict[str, Tensor]:
    """Our model's state dict filled from the archive's; shapes are checked and every NeMo tensor
    must be used (adapters or other extra weights are an error)."""
    nemo = archive.state_dict
    ours = build_model(cfg).state_dict()
    out: dict[str, Tensor] = {}
    used = set(NEMO_SKIPPED_WEIGHTS)
    head = "ctc_decoder" if _is_hybrid(archive) else "decoder"
    if _is_hybrid(archive):  # the transducer: prediction network and joint
        used |= set(_transducer_weights(archive))
    for key, like in ours.items():
        name = _nemo_key(key, untie_biases, head)
        if name not in nemo and not use_bias and _is_layer_bias(key):
            out[key] = torch.zeros_like(like)
            continue
        if name not in nemo:
            raise ValueError(f"{archive.name}: model_weights.ckpt has no {name}")
        value = nemo[name]
        if key == "decoder.weight":
            value = value.squeeze(-1)  # Conv1d (V + 1, D, 1) -> Linear (V + 1, D)
        if value.shape != like.shape:
            raise ValueError(
                f"{archive.name}: {name} has shape {tuple(value.shape)}; "
                f"the config implies {tuple(like.shape)}"
            )
        out[key] = value.to(like.dtype).clone()
        used.add(name)
    if not untie_biases:  # the copies of the shared pair under the other layers' names
        used |= {k for k in nemo if k.endswith(("pos_bias_u", "pos_bias_v"))}
    extra = sorted(set(nemo) - used)
    if extra:
        raise ValueError(
            f"{archive.name}: {len(extra)} weights have no place in a Conformer-CTC model, e.g. "
            f"{extra[:5]}; adapters and extra heads are not supported"
        )
    return out


def _transducer_weights(archive: NemoArchive) -> list[str]:
    """A hybrid model's RNNT prediction network and joint, which the import leaves out."""
    return [k for k in archive.state_dict if k.startswith(("decoder.", "joint."))]


def _check_front_end(archive: NemoArchive, features: LogMelFeatures) -> None:
    """The archive's stored mel filterbank and window are the ones our front end computes."""
    fb = archive.state_dict.get("preprocessor.featurizer.fb")
    if fb is not None:
        fb = fb.reshape(fb.shape[-2], fb.shape[-1])
        if fb.shape != features.fbank.shape or not torch.allclose(fb, features.fbank, atol=1e-6, rtol=1e-4):
            raise ValueError(
                f"{archive.name}: the stored mel filterbank {tuple(fb.shape)} differs from the one "
                f"conformer-prune computes for these settings {tuple(features.fbank.shape)}"
            )
    window = archive.state_dict.get("preprocessor.featurizer.window")
    if window is not None and (
        window.shape != features.window.shape or not torch.allclose(window, features.window, atol=1e-6)
    ):
        raise ValueError(f"{archive.name}: the stored analysis window differs from a symmetric Hann window")


def recognizer_from_nemo(path: str | Path) -> Recognizer:
    """A `Recognizer` computing what the NeMo model in `path` computes in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a .nemo archive, or a variant conformer-prune does not support.
    """
    archive = read_nemo(path)
    _check_model(archive)
    tokenizer = Tokenizer(archive.tokenizer)
    _, decoder = _ctc_decoder(archive)
    num_classes = int(decoder.get("num_classes", -1))
    vocabulary = list(decoder.get("vocabulary") or [])
    if num_classes < 1:
        num_classes = len(vocabulary)
    if num_classes != tokenizer.vocab_size or len(vocabulary) not in (0, num_classes):
        raise ValueError(
            f"{archive.name}: the decoder has {num_classes} classes ({len(vocabulary)} in its "
            f"vocabulary) but the tokenizer {tokenizer.vocab_size} pieces; the blank index would differ"
        )
    features = LogMelFeatures(_feature_config(archive))
    _check_front_end(archive, features)
    cfg, encoder = _model_config(archive, tokenizer.vocab_size)
    cfg = replace(cfg, feature_rate=features.config.frames_per_second)
    model = build_model(cfg)
    state = _convert_state_dict(archive, cfg, bool(encoder["untie_biases"]), bool(encoder["use_bias"]))
    model.load_state_dict(state, strict=True)
    source = {
        "format": "nemo",
        "file": archive.name,
        "nemo_version": archive.config.get("nemo_version"),
        "model_class": archive.config.get("target"),
    }
    if _is_hybrid(archive):
        dropped = _transducer_weights(archive)
        source["dropped"] = (
            f"the transducer (RNNT prediction network and joint, {len(dropped)} tensors, "
            f"{sum(archive.state_dict[k].numel() for k in dropped):,} parameters); the CTC head "
            "aux_ctc.decoder is imported"
        )
    return Recognizer(model.eval(), features.eval(), tokenizer, {"source": source})


def import_nemo(path: str | Path, out: str | Path) -> Recognizer:
    """Convert the ``.nemo`` file `path` and save it as the checkpoint `out`."""
    rec = recognizer_from_nemo(path)
    save_recognizer(out, rec)
    return rec
