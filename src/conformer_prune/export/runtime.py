"""Transcription with ONNX Runtime alone: no PyTorch is imported on this path.

An exported file (see `conformer_prune.export.onnx`) carries everything needed in its metadata:
the SentencePiece tokenizer, the blank id, the sample rate and which input the graph takes
(``waveforms`` when the feature front end is inside the graph, ``features`` otherwise; only the
first can transcribe audio without PyTorch).

Usage:
    rec = OnnxRecognizer("model.onnx", threads=2)
    rec.transcribe([load_audio("a.flac", rec.sample_rate)])
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from conformer_prune.ctc import best_path, length_batches
from conformer_prune.data.tokenizer import Tokenizer

__all__ = ["OnnxRecognizer", "ort_session", "read_metadata"]


def ort_session(
    model: str | Path | bytes,
    threads: int | None = None,
    spinning: bool = False,
    profile_prefix: str | Path | None = None,
) -> Any:
    """An ONNX Runtime CPU session of a model file (or its serialized bytes).

    Args:
        threads: intra-op threads, with one inter-op thread (None: ONNX Runtime's defaults).
        spinning: let idle worker threads spin after a run. Off by default: spinning threads take
            the cores from whatever runs next, which skews interleaved timings and costs a
            device's power for a latency gain of well under a millisecond.
        profile_prefix: where ONNX Runtime writes its profile of every kernel run (a JSON trace
            named from this prefix; `session.end_profiling()` returns its path). None: no profile.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def read_metadata(session: Any) -> dict[str, str]:
    """The conformer-prune metadata of an ONNX Runtime session (custom metadata map)."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxRecognizer:
    """An exported Conformer-CTC model in an ONNX Runtime session, with its tokenizer.

    Args:
        path: a file written by `conformer-prune export`.
        threads: intra-op threads (None: ONNX Runtime's default); idle threads do not spin
            (see `ort_session`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a conformer-prune export.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        try:
            self.session = ort_session(path, threads)
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"{path} is not a readable ONNX model ({detail})") from err
        self.meta = read_metadata(self.session)
        missing = {"tokenizer", "blank", "input", "sample_rate"} - set(self.meta)
        if missing:
            raise ValueError(
                f"{path} has no conformer-prune metadata {sorted(missing)}; "
                "expected a file written by `conformer-prune export`"
            )
        self.tokenizer = Tokenizer(base64.b64decode(self.meta["tokenizer"]))
        self.blank = int(self.meta["blank"])
        self.input = self.meta["input"]
        self.sample_rate = int(self.meta["sample_rate"])
        self.config: dict[str, Any] = json.loads(self.meta.get("config", "{}"))

    def log_probs(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on a padded batch of waveforms (N,) or feature matrices (T, n_mels).

        Returns log-probabilities (B, T', V) and output lengths (B,).
        """
        lengths = np.array([len(x) for x in inputs], dtype=np.int64)
        shape = (len(inputs), int(lengths.max()), *np.asarray(inputs[0]).shape[1:])
        batch = np.zeros(shape, dtype=np.float32)
        for i, x in enumerate(inputs):
            batch[i, : len(x)] = x
        log_probs, out_lengths = self.session.run(None, {self.input: batch, "lengths": lengths})
        return log_probs, out_lengths

    def decode(self, log_probs: np.ndarray, lengths: np.ndarray) -> list[str]:
        best = log_probs.argmax(axis=-1)
        return [
            self.tokenizer.decode(best_path(row, int(n), self.blank))
            for row, n in zip(best, lengths, strict=True)
        ]

    def transcribe(self, waveforms: list[np.ndarray], batch_size: int = 8) -> list[str]:
        """Greedy transcripts of 1-D float waveforms at `sample_rate`, in their order; the graph
        runs on padded batches of at most `batch_size` waveforms of similar length."""
        if self.input != "waveforms":
            raise ValueError(
                "this ONNX file takes log-mel features, not audio; export it with the front end "
                "(`conformer-prune export MODEL --onnx OUT.onnx`, without --no-frontend)"
            )
        texts = [""] * len(waveforms)
        for idx in length_batches([len(w) for w in waveforms], batch_size):
            for i, text in zip(idx, self.decode(*self.log_probs([waveforms[i] for i in idx])), strict=True):
                texts[i] = text
        return texts
