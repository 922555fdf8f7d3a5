"""Best-path CTC decoding and transcription batches on plain arrays, shared by the PyTorch and
the ONNX Runtime paths.

Kept free of PyTorch so that `conformer-prune transcribe --onnx` runs without it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_path", "length_batches"]


def best_path(best: np.ndarray, length: int, blank: int) -> list[int]:
    """Token ids of one utterance from its per-frame argmax: merge repeats, drop blanks.

    Shapes: best (T,) integer ids, of which the first `length` frames are real.
    """
    frames = np.asarray(best)[:length]
    if frames.size == 0:
        return []
    keep = np.ones(frames.shape[0], dtype=bool)
    keep[1:] = frames[1:] != frames[:-1]
    return [int(i) for i in frames[keep] if int(i) != blank]


def length_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices of items of these lengths in batches of at most `size`, longest first, so that
    each padded batch wastes little and a long list never becomes one batch."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, found {size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]
