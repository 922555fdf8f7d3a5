"""Log-mel filterbank features and SpecAugment.

One module, `LogMelFeatures`, turns padded 16 kHz waveforms into normalised 80-dimensional log-mel
frames (25 ms window, 10 ms hop). The same module serves training, evaluation, transcription and
the export checks, so features never drift between them. Its steps follow NeMo's
`FilterbankFeatures` (pre-emphasis, centred STFT with zero padding, power spectrum, Slaney mel
filters, log with a small guard, per-utterance per-bin normalisation) so that imported NeMo models
see the features they were trained on; the few places where NeMo's settings differ from ours are
options (`frame_count`, `log_guard_type`, `pad_to`) whose defaults keep our own behaviour.

Padding never leaks into real frames: the waveform is zeroed past each length after pre-emphasis,
and statistics are taken over real frames only, so a batch gives the same frames as one-by-one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureConfig",
    "LogMelFeatures",
    "MatmulDFTLogMel",
    "SpecAugment",
    "SpecAugmentConfig",
    "mel_filterbank",
    "warp_frequencies",
]


@dataclass
class FeatureConfig:
    """Front-end settings. Defaults are NeMo's for its English Conformer-CTC models.

    Args:
        sample_rate: expected audio rate in Hz; other rates are resampled on load.
        n_mels: mel bins.
        win_length: analysis window in samples (400 = 25 ms at 16 kHz).
        hop_length: hop in samples (160 = 10 ms at 16 kHz).
        n_fft: FFT size (the window is zero-padded to it).
        preemph: pre-emphasis coefficient, 0 to disable.
        log_guard: added to the mel power before the log (NeMo: 2**-24).
        normalize: "per_feature" standardises each mel bin over an utterance's real frames.
        dither: Gaussian noise amplitude added in training only.
        frame_count: which STFT frames of N samples count as real: "stft" all N // hop_length + 1
            centred frames; "nemo" NeMo's (N + 2 * (n_fft // 2) - n_fft) // hop_length
            (`FilterbankFeatures.get_seq_len`, N // hop_length for an even n_fft), which leaves the
            last frame out of the normalisation statistics and zeroes it.
        log_guard_type: "add" takes log(mel + log_guard), "clamp" log(max(mel, log_guard)).
        pad_to: pad the frame axis with zeros to a multiple of this (0: no padding), as NeMo's
            `pad_to`; lengths are unchanged.
    """

    sample_rate: int = 16000
    n_mels: int = 80
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    preemph: float = 0.97
    log_guard: float = 2.0**-24
    normalize: Literal["per_feature", "none"] = "per_feature"
    dither: float = 0.0
    frame_count: Literal["stft", "nemo"] = "stft"
    log_guard_type: Literal["add", "clamp"] = "add"
    pad_to: int = 0

    def __post_init__(self) -> None:
        if self.pad_to < 0:
            raise ValueError(f"pad_to must be 0 (no padding) or positive, found {self.pad_to}")
        if self.sample_rate < 1 or self.hop_length < 1:
            raise ValueError(
                f"sample_rate and hop_length must be positive, found {self.sample_rate} and {self.hop_length}"
            )

    @property
    def frames_per_second(self) -> float:
        """Feature frames per second of audio (100 for a 10 ms hop)."""
        return self.sample_rate / self.hop_length


def _hz_to_mel(freq: Tensor) -> Tensor:
    # Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above (as librosa's default).
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + torch.log(torch.clamp(freq, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(freq >= min_log_hz, log, linear)


def _mel_to_hz(mel: Tensor) -> Tensor:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = f_sp * mel
    log = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """Slaney-normalised triangular mel filters, shape (n_mels, n_fft // 2 + 1), float64."""
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_min = _hz_to_mel(torch.tensor(0.0, dtype=torch.float64))
    mel_max = _hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    mel_points = _mel_to_hz(torch.linspace(float(mel_min), float(mel_max), n_mels + 2, dtype=torch.float64))
    fdiff = mel_points[1:] - mel_points[:-1]  # (n_mels + 1,)
    ramps = mel_points[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_points[2:] - mel_points[:-2])  # equal area per filter
    return weights * enorm[:, None]


class LogMelFeatures(nn.Module):
    """Waveforms to normalised log-mel frames.

    Args:
        config: the front-end settings.

    Shapes:
        waveforms (B, N) float, lengths (B,) samples -> features (B, T, n_mels), lengths (B,)
        with T = N // hop_length + 1 (rounded up to a multiple of `pad_to`) and each length
        = samples // hop_length + 1 (see `FeatureConfig.frame_count` for NeMo's count).
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        if config.win_length > config.n_fft:
            raise ValueError(f"win_length {config.win_length} must not exceed n_fft {config.n_fft}")
        self.window: Tensor
        self.fbank: Tensor
        window = torch.hann_window(config.win_length, periodic=False, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        fbank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels).float()
        self.register_buffer("fbank", fbank, persistent=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        cfg = self.config
        if cfg.frame_count == "nemo":
            padded = lengths + 2 * (cfg.n_fft // 2) - cfg.n_fft
            return torch.div(padded, cfg.hop_length, rounding_mode="floor")
        return torch.div(lengths, cfg.hop_length, rounding_mode="floor") + 1

    def power_spectrum(self, x: Tensor) -> Tensor:
        """|STFT|^2 of centred, zero-padded frames: (B, N) -> (B, n_fft // 2 + 1, N // hop + 1)."""
        cfg = self.config
        spec = torch.stft(
            x,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, n_freqs, T)
        return spec.real.pow(2) + spec.imag.pow(2)

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), found {tuple(waveforms.shape)}")
        x = waveforms.to(self.fbank.dtype)  # float32, or float64 for a module made .double()
        n = x.shape[1]
        sample_mask = torch.arange(n, device=x.device)[None, :] < lengths[:, None]  # (B, N)
        if self.training and cfg.dither > 0:
            x = x + cfg.dither * torch.randn_like(x)
        if cfg.preemph > 0:
            x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemph * x[:, :-1]], dim=1)
        x = x.masked_fill(~sample_mask, 0.0)
        power = self.power_spectrum(x)  # (B, n_freqs, T)
        mel = torch.matmul(self.fbank, power)  # (B, n_mels, T)
        if cfg.log_guard_type == "clamp":
            feats = torch.log(torch.clamp(mel, min=cfg.log_guard))
        else:
            feats = torch.log(mel + cfg.log_guard)
        out_lengths = self.output_lengths(lengths)
        frame_mask = torch.arange(feats.shape[-1], device=x.device)[None, :] < out_lengths[:, None]
        if cfg.normalize == "per_feature":
            feats = _normalize_per_feature(feats, frame_mask, out_lengths)
        feats = feats.masked_fill(~frame_mask[:, None, :], 0.0)
        if cfg.pad_to > 0:
            feats = F.pad(feats, (0, (-feats.shape[-1]) % cfg.pad_to))
        return feats.transpose(1, 2), out_lengths  # (B, T, n_mels)


class MatmulDFTLogMel(LogMelFeatures):
    """`LogMelFeatures` with its STFT computed as two matrix products, for export.

    ONNX Runtime runs the exported `torch.stft` (an ONNX STFT) about three times slower than
    PyTorch's FFT. Here the frames are cut by reshaping the padded waveform into hop-long blocks
    and concatenating neighbours (no gather), and the real DFT is a matrix product with cosine
    and sine kernels that hold the window. The window is symmetric about the frame centre, so
    the cosine part sees x[j] + x[win-1-j] and the sine part x[j] - x[win-1-j]: half the products
    of a plain real DFT, and the phase about the centre, which |X|^2 ignores. Only the spectrum
    differs in how it is computed: pre-emphasis, masking, log, normalisation and frame counts are
    `LogMelFeatures`' own (dither too: added in training mode only; the export graph is in eval
    mode).

    Args:
        config: the front-end settings.
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__(config)
        n, win, hop = config.n_fft, config.win_length, config.hop_length
        # torch.stft centres the window in the n_fft frame: its first sample is at `offset`
        offset = (n - win) // 2
        # centring pads n_fft // 2 zeros before the first frame, `offset` of them in the
        # window's zero margin
        self.pad_left = n // 2 - offset
        self.fold = win // 2
        self.blocks = -(-win // hop)  # hop-long blocks that one frame spans
        k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
        j = torch.arange(win, dtype=torch.float64)[None, :]
        # twice the distance of sample j from the window centre, an integer, so that the phase
        # k * twice mod 2 n is exact in float64 and the kernels exact to float32
        twice = 2 * j - (win - 1)
        phase = math.pi * torch.remainder(k * twice, 2 * n) / n  # (F, win)
        window = self.window.double()[None, :]
        self.cos_t: Tensor
        self.sin_t: Tensor
        cos = (torch.cos(phase) * window)[:, : win - self.fold]  # (F, ceil(win / 2))
        sin = (torch.sin(phase) * window)[:, : self.fold]  # (F, win // 2)
        self.register_buffer("cos_t", cos.T.float().contiguous(), persistent=False)
        self.register_buffer("sin_t", sin.T.float().contiguous(), persistent=False)

    def power_spectrum(self, x: Tensor) -> Tensor:
        cfg = self.config
        hop, win, fold, blocks = cfg.hop_length, cfg.win_length, self.fold, self.blocks
        b, t = x.shape[0], x.shape[1] // hop + 1
        padded = F.pad(x, (self.pad_left, (blocks + 1) * hop))
        chunks = padded[:, : (t + blocks - 1) * hop].reshape(b, t + blocks - 1, hop)
        frames = torch.cat([chunks[:, i : i + t] for i in range(blocks)], dim=-1)[..., :win]  # (B, T, win)
        head, tail = frames[..., :fold], frames[..., win - fold :].flip(-1)  # (B, T, win // 2)
        even = head + tail
        if win % 2:  # the centre sample pairs with itself, and only in the cosine part
            even = torch.cat([even, frames[..., fold : fold + 1]], dim=-1)
        real = torch.matmul(even, self.cos_t)  # (B, T, F)
        imag = torch.matmul(head - tail, self.sin_t)
        return (real * real + imag * imag).transpose(1, 2)  # (B, F, T)


def _normalize_per_feature(feats: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """Standardise each bin over real frames (unbiased std, +1e-5, as NeMo)."""
    m = mask[:, None, :].to(feats.dtype)  # (B, 1, T)
    n = lengths.to(feats.dtype)[:, None]  # (B, 1)
    mean = (feats * m).sum(-1) / n  # (B, F)
    var = (((feats - mean[..., None]) * m) ** 2).sum(-1) / torch.clamp(n - 1, min=1)
    std = torch.sqrt(var) + 1e-5
    return (feats - mean[..., None]) / std[..., None]


@dataclass
class SpecAugmentConfig:
    """SpecAugment (Park et al. 2019) with the masks NeMo's Conformer recipes use, and an optional
    frequency warp of each utterance (VTLP, Jaitly and Hinton 2013), which moves formants as
    another speaker's vocal tract would.

    Args:
        freq_masks: number of frequency masks.
        freq_width: largest frequency mask in bins.
        time_masks: number of time masks.
        time_width: largest time mask as a fraction of the utterance.
        warp: largest frequency warp: each training utterance's mel axis is scaled by a factor
            drawn uniformly in [1 - warp, 1 + warp] (piecewise linear, so that the top bin stays
            the top bin); 0 (the default) warps nothing and draws no random number.
    """

    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 10
    time_width: float = 0.05
    warp: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.warp < 0.5:
            raise ValueError(f"specaug.warp: expected a fraction in [0, 0.5), found {self.warp}")


class SpecAugment(nn.Module):
    """Zero random frequency and time bands of (B, T, F) features; identity in eval mode."""

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, feats: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return feats
        cfg = self.config
        b, t, f = feats.shape
        if cfg.warp > 0:
            factors = 1.0 + cfg.warp * (2.0 * torch.rand(b, generator=generator) - 1.0)
            feats = warp_frequencies(feats, factors.to(feats.device))
        keep = torch.ones(b, t, f, dtype=torch.bool)
        time_idx = torch.arange(t)
        freq_idx = torch.arange(f)
        for i in range(b):
            for _ in range(cfg.freq_masks):
                width = int(torch.randint(0, cfg.freq_width + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(1, f - width), (1,), generator=generator))
                keep[i] &= ~((freq_idx >= start) & (freq_idx < start + width))[None, :]
            length = int(lengths[i])
            max_width = max(1, int(cfg.time_width * length))
            for _ in range(cfg.time_masks):
                width = int(torch.randint(0, max_width + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(1, length - width), (1,), generator=generator))
                keep[i] &= ~((time_idx >= start) & (time_idx < start + width))[:, None]
        return feats * keep.to(feats.device, feats.dtype)


def warp_frequencies(feats: Tensor, factors: Tensor, boundary: float = 0.8) -> Tensor:
    """VTLP's piecewise-linear warp of (B, T, F) features along F: utterance i's bin j takes the
    value at source position j / factors[i] (linearly interpolated) up to `boundary` of the axis
    (times min(1, factor)), and above it a straight line to the top bin, so that the axis maps onto
    itself. A factor above 1 moves spectral content up (a shorter vocal tract)."""
    f = feats.shape[-1]
    top = float(f - 1)
    j = torch.arange(f, dtype=torch.float32, device=feats.device)[None, :]  # (1, F)
    a = factors.float()[:, None]  # (B, 1)
    cut = boundary * top * torch.clamp(a, max=1.0)  # below it the plain scaling
    low = j / a
    high = cut / a + (j - cut) * (top - cut / a) / (top - cut)
    src = torch.where(j <= cut, low, high).clamp(0.0, top)  # (B, F)
    lo = src.floor().long().clamp(max=f - 2)
    frac = (src - lo.float()).to(feats.dtype)[:, None, :]  # (B, 1, F)
    index = lo[:, None, :].expand(-1, feats.shape[1], -1)
    below, above = feats.gather(-1, index), feats.gather(-1, index + 1)
    return below + frac * (above - below)
