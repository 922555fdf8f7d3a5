"""Audio input: any file `soundfile` reads, down-mixed to mono and resampled to the model's rate
(and, for speed perturbation, to a changed speed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["AudioError", "check_speeds", "load_audio"]


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty or not decodable."""


def check_speeds(speeds: tuple[float, ...] | list[float]) -> None:
    """Speed-perturbation factors: at least one, each between 0.5 and 2 (Kaldi's are 0.9, 1.0, 1.1)."""
    if not speeds or any(not 0.5 <= s <= 2.0 for s in speeds):
        raise ValueError(f"speeds: expected tempo factors between 0.5 and 2, found {list(speeds)}")


def load_audio(path: str | Path, sample_rate: int = 16000, speed: float = 1.0) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`.

    Stereo (or more channels) is averaged; another rate is resampled with a polyphase filter.
    `speed` plays the audio that much faster (Kaldi's speed perturbation, Ko et al. 2015): the
    file is read as if recorded at `speed` times its rate, so tempo, pitch and formants all move
    together, as a different speaker's would, and the result is `1 / speed` times as long.

    Args:
        path: an audio file (FLAC, WAV, OGG, ... whatever libsndfile decodes).
        sample_rate: the rate the model expects.
        speed: tempo factor (1.0 unchanged, 1.1 ten percent faster and shorter); its ratio is
            rounded to a fraction with a denominator of at most 100.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file cannot be decoded, holds no samples or holds NaN or infinite ones.
        ValueError: `speed` is not positive (checked before the file is read).
    """
    if not speed > 0:
        raise ValueError(f"speed: expected a positive tempo factor, found {speed}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(
            f"audio file {path} could not be decoded ({err}); expected a readable FLAC/WAV file"
        ) from err
    if audio.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples; expected speech audio")
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        raise AudioError(f"audio file {path} holds {bad} NaN or infinite samples; expected finite samples")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    ratio = Fraction(int(sample_rate), int(rate)) / Fraction(speed).limit_denominator(100)
    if ratio != 1:
        mono = resample_poly(mono, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
