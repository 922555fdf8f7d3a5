"""Export for sherpa-onnx's NeMo-CTC loader, and transcription through sherpa-onnx itself.

Usage:
    conformer-prune export runs/pruned-50/model.pt --sherpa-onnx sherpa/ --data corpus/test

What sherpa-onnx reads (from its sources: `sherpa-onnx/csrc/offline-nemo-enc-dec-ctc-model.cc`,
`offline-recognizer-ctc-impl.h`, `features.cc`, and the NeMo export scripts under `scripts/nemo/`):

- one ONNX graph with two inputs, taken by position: features (N, C, T) float32 (sherpa-onnx
  computes (N, T, C) frames and transposes them) and their lengths (N,) int64; its first output is
  the CTC log-probabilities (N, T', V). The output lengths are not read: sherpa-onnx takes
  ``length // subsampling_factor``, which our subsampling (T halved, rounded up, once per
  stride-2 stage) never exceeds.
- metadata ``vocab_size`` (V, blank included), ``subsampling_factor`` and ``normalize_type``
  (``per_feature`` or empty), which switches on its per-utterance, per-bin normalisation.
- ``tokens.txt``: one ``piece id`` per line, with the blank as ``<blk>``.
- padded frames of a batch hold log(1e-10); our model masks them by length.

The features differ from ours: sherpa-onnx computes kaldi-native-fbank log-mel frames (librosa mel
filters, Hann window, no DC removal, ``snip_edges=false`` framing, per-frame pre-emphasis) where
we compute a centred STFT (NeMo's `FilterbankFeatures`); per-utterance normalisation removes the
scale and offset differences, and `benchmarks/deploy.py` measures what the rest costs in WER.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import Utterance
from conformer_prune.evaluate.metrics import error_rates
from conformer_prune.export.onnx import exported_proto, onnx_metadata, quantize_int8
from conformer_prune.export.runtime import ort_session
from conformer_prune.model.checkpoint import Recognizer
from conformer_prune.utils import atomic_write_bytes, atomic_write_text

__all__ = [
    "SHERPA_FILES",
    "SherpaExport",
    "export_sherpa",
    "export_sherpa_with_report",
    "sherpa_error_rates",
    "sherpa_features",
    "sherpa_recognizer",
    "sherpa_transcribe",
]

BATCH = 8
SHERPA_FILES = ("model.onnx", "model.int8.onnx", "tokens.txt")  # what `export_sherpa` writes


class _SherpaGraph(nn.Module):
    """features (N, n_mels, T), lengths (N,) -> log_probs (N, T', V), NeMo's layout."""

    def __init__(self, rec: Recognizer) -> None:
        super().__init__()
        self.model = rec.model

    def forward(self, audio_signal: Tensor, length: Tensor) -> Tensor:
        log_probs, _ = self.model(audio_signal.transpose(1, 2), length)  # (N, T', V)
        return log_probs


@dataclass
class SherpaExport:
    """The files of a sherpa-onnx export."""

    model: Path
    model_int8: Path
    tokens: Path
    max_abs_diff: float


def tokens_txt(rec: Recognizer) -> str:
    """``piece id`` per line, the blank last as ``<blk>`` (the blank is our last index)."""
    pieces = rec.tokenizer.pieces
    if rec.model.blank != len(pieces):
        raise ValueError(f"expected the blank after the {len(pieces)} pieces, found it at {rec.model.blank}")
    return "".join(f"{p} {i}\n" for i, p in enumerate(pieces)) + f"<blk> {len(pieces)}\n"


def sherpa_metadata(rec: Recognizer) -> dict[str, str]:
    """What sherpa-onnx's NeMo-CTC loader reads, plus our own record of the model."""
    cfg = rec.features.config
    meta = {key: value for key, value in onnx_metadata(rec, frontend=False).items() if key not in ("input",)}
    meta |= {
        "vocab_size": str(rec.model.config.vocab_size + 1),  # with the blank, as NeMo's
        "subsampling_factor": str(rec.model.config.subsampling_factor),
        "normalize_type": "per_feature" if cfg.normalize == "per_feature" else "",
        "model_type": "EncDecCTCModelBPE",
        "comment": "conformer-prune export for sherpa-onnx (NeMo CTC layout)",
    }
    return meta


def _check_features(rec: Recognizer) -> None:
    cfg = rec.features.config
    if cfg.sample_rate != 16000 or cfg.hop_length * 100 != cfg.sample_rate:
        raise ValueError(
            f"sherpa-onnx computes 10 ms frames at 16 kHz; this model expects {cfg.sample_rate} Hz "
            f"with a hop of {cfg.hop_length} samples"
        )


def export_sherpa(rec: Recognizer, out_dir: str | Path, example_seconds: float = 3.0) -> SherpaExport:
    """Write ``model.onnx``, ``model.int8.onnx`` and ``tokens.txt`` into `out_dir`, and check
    ONNX Runtime against PyTorch on a random padded batch.

    Raises:
        ValueError: the model's front end is not one sherpa-onnx computes, or the export differs
            from PyTorch by more than 1e-4.
    """
    import onnx

    _check_features(rec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = _SherpaGraph(rec).eval().cpu()
    gen = torch.Generator().manual_seed(0)
    n_mels, frames = rec.model.config.n_mels, int(example_seconds * rec.model.config.feature_rate)
    x = torch.randn(2, n_mels, frames, generator=gen)
    lengths = torch.tensor([frames, frames * 2 // 3])
    dims = (
        {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("time", min=16)},
        {0: torch.export.Dim("batch", min=1, max=1024)},
    )
    meta = sherpa_metadata(rec)
    proto = exported_proto(graph, (x, lengths), ["audio_signal", "length"], ["logprobs"], dims, meta)
    model_path = out_dir / "model.onnx"
    atomic_write_bytes(model_path, proto.SerializeToString())
    tokens = out_dir / "tokens.txt"
    atomic_write_text(tokens, tokens_txt(rec))

    with torch.no_grad():
        ref, ref_lengths = rec.model.eval()(x.transpose(1, 2), lengths)
    session = ort_session(model_path)
    (out,) = session.run(None, {"audio_signal": x.numpy(), "length": lengths.numpy()})
    real = np.arange(ref.shape[1])[None, :] < ref_lengths.numpy()[:, None]
    diff = float(np.abs(out - ref.numpy())[real].max())
    if diff > 1e-4:
        raise ValueError(f"sherpa-onnx export {model_path} differs from PyTorch by {diff}; expected <= 1e-4")

    int8 = quantize_int8(model_path, out_dir / "model.int8.onnx")
    quantized = onnx.load(str(int8))
    if {p.key for p in quantized.metadata_props} != set(meta):  # the quantizer may drop them
        del quantized.metadata_props[:]
        for key, value in meta.items():
            entry = quantized.metadata_props.add()
            entry.key, entry.value = key, value
        atomic_write_bytes(int8, quantized.SerializeToString())
    return SherpaExport(model_path, int8, tokens, diff)


def sherpa_features(waveform: np.ndarray, n_mels: int = 80, normalize: bool = True) -> np.ndarray:
    """The frames (T, n_mels) sherpa-onnx feeds a NeMo CTC model, computed with
    kaldi-native-fbank (the library sherpa-onnx itself uses) and the options its NeMo-CTC path
    sets (`offline-recognizer-ctc-impl.h`, `offline-stream.cc`): 25 ms Hann frames every 10 ms,
    ``snip_edges=false``, no dither, no DC removal, librosa mel filters over 0-8 kHz, then, for
    ``normalize_type=per_feature``, each bin standardised with the population variance and
    1e-5 added to the standard deviation."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.remove_dc_offset = False
    opts.frame_opts.window_type = "hann"
    opts.mel_opts.num_bins = n_mels
    opts.mel_opts.low_freq = 0
    opts.mel_opts.high_freq = 0
    opts.mel_opts.is_librosa = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, np.ascontiguousarray(waveform, dtype=np.float32).tolist())
    fbank.input_finished()
    frames = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32)
    if normalize:
        # the variance as the mean squared deviation, as sherpa-onnx computes it since 1.13.5:
        # E[x^2] - E[x]^2 cancels catastrophically in float32 for a mel bin that sits at the log
        # floor (a synthetic voice with nothing above 4 kHz), and its 1/std then blows up
        mean = frames.mean(axis=0, dtype=np.float64)
        var = ((frames - mean) ** 2).mean(axis=0)
        frames = ((frames - mean) / (np.sqrt(var) + 1e-5)).astype(np.float32)
    return frames


def sherpa_recognizer(model_dir: str | Path, int8: bool = False, threads: int = 1) -> Any:
    """A `sherpa_onnx.OfflineRecognizer` (greedy search) for a directory `export_sherpa` wrote."""
    try:
        import sherpa_onnx
    except ImportError as err:
        raise ImportError("sherpa-onnx is not installed: pip install sherpa-onnx") from err
    model_dir = Path(model_dir)
    model = model_dir / ("model.int8.onnx" if int8 else "model.onnx")
    tokens = model_dir / "tokens.txt"
    for path in (model, tokens):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; expected a directory `conformer-prune export --sherpa-onnx` wrote"
            )
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    n_mels = int(json.loads(meta["config"])["model"]["n_mels"]) if "config" in meta else 80
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(model),
        tokens=str(tokens),
        num_threads=threads,
        sample_rate=16000,
        feature_dim=n_mels,
        decoding_method="greedy_search",
    )


def sherpa_transcribe(
    recognizer: Any, waveforms: list[np.ndarray], sample_rate: int = 16000, batch_size: int = BATCH
) -> list[str]:
    """sherpa-onnx's transcripts of 1-D float waveforms, in their order, decoded `batch_size` at a
    time (a whole test split in one batch holds every utterance's encoder output at once: 24 GB
    for the reference test split)."""
    out: list[str] = []
    for i in range(0, len(waveforms), batch_size):
        streams = []
        for wave in waveforms[i : i + batch_size]:
            stream = recognizer.create_stream()
            stream.accept_waveform(sample_rate, np.ascontiguousarray(wave, dtype=np.float32))
            streams.append(stream)
        recognizer.decode_streams(streams)
        # sherpa-onnx joins the pieces as they are; SentencePiece's word marker is a space
        out += [" ".join(s.result.text.replace("▁", " ").split()) for s in streams]
    return out


def sherpa_error_rates(recognizer: Any, utts: list[Utterance]) -> dict[str, float]:
    """WER and CER of sherpa-onnx's greedy transcripts on a corpus, in batches of 8."""
    refs, hyps = [], []
    ordered = sorted(utts, key=lambda u: u.duration)  # batches of similar lengths
    for i in range(0, len(ordered), BATCH):  # the audio of one batch at a time
        chunk = ordered[i : i + BATCH]
        refs += [u.text for u in chunk]
        hyps += sherpa_transcribe(recognizer, [load_audio(u.audio_path, 16000) for u in chunk])
    return error_rates(refs, hyps)


def export_sherpa_with_report(
    model: Path, out_dir: Path, data: Path | None = None, threads: int | None = 2
) -> dict[str, Any]:
    """Export `model` for sherpa-onnx into `out_dir`; with `data`, the WER of our greedy decoding
    (PyTorch, our front end) beside sherpa-onnx's (its front end) for fp32 and int8."""
    from conformer_prune.data.corpus import read_corpus
    from conformer_prune.model.checkpoint import load_recognizer

    rec = load_recognizer(model)
    utts = read_corpus(data) if data else []
    files = export_sherpa(rec, out_dir)
    report: dict[str, Any] = {
        "model": str(model),
        "sherpa_onnx_dir": str(out_dir),
        "files": [str(files.model), str(files.model_int8), str(files.tokens)],
        "max_abs_diff": files.max_abs_diff,
    }
    if utts:
        refs, hyps = [], []
        ordered = sorted(utts, key=lambda u: u.duration)
        for i in range(0, len(ordered), BATCH):
            chunk = ordered[i : i + BATCH]
            refs += [u.text for u in chunk]
            hyps += rec.transcribe([load_audio(u.audio_path, 16000) for u in chunk])
        report["utterances"] = len(utts)
        report["wer_torch"] = error_rates(refs, hyps)["wer"]
        for name, int8 in (("fp32", False), ("int8", True)):
            recognizer = sherpa_recognizer(out_dir, int8=int8, threads=threads or 1)
            report[f"wer_sherpa_onnx_{name}"] = sherpa_error_rates(recognizer, utts)["wer"]
    return report
