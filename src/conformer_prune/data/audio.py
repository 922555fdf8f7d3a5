"""Audio input: any file `soundfile` reads, down-mixed to mono and resampled to the model's rate."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["AudioError", "load_audio"]


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty or not decodable."""


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`.

    Stereo (or more channels) is averaged; another rate is resampled with a polyphase filter.

    Args:
        path: an audio file (FLAC, WAV, OGG, ... whatever libsndfile decodes).
        sample_rate: the rate the model expects.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file cannot be decoded, holds no samples or holds NaN or infinite ones.
    """
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
    if rate != sample_rate:
        g = gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
