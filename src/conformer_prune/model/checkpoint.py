"""Checkpoints as ``{config, state_dict, meta}``: the architecture travels with the weights.

A `Recognizer` bundles what transcription needs: the model, the feature front end and the
tokenizer. Loading rebuilds the model from its config and loads weights with ``strict=True``;
nothing is inferred from parameter names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conformer_prune import __version__
from conformer_prune.config import from_dict, to_dict
from conformer_prune.ctc import best_path, length_batches
from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer
from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, build_model
from conformer_prune.utils import atomic_save

__all__ = ["Recognizer", "greedy_decode", "load_recognizer", "save_recognizer"]

FORMAT_VERSION = 1


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Shapes: log_probs (B, T, V), lengths (B,) -> B token-id lists.
    """
    best = log_probs.argmax(dim=-1).cpu().numpy()
    return [best_path(row, n, blank) for row, n in zip(best, lengths.cpu().tolist(), strict=True)]


@dataclass
class Recognizer:
    """A Conformer-CTC model with its front end and tokenizer."""

    model: ConformerCTC
    features: LogMelFeatures
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        model_rate, feature_rate = self.model.config.feature_rate, self.features.config.frames_per_second
        if model_rate != feature_rate:
            raise ValueError(
                f"the model counts {model_rate:g} feature frames per second (ConformerConfig.feature_rate) "
                f"but its front end makes {feature_rate:g} (sample_rate / hop_length); set the model's "
                "feature_rate from the front end"
            )

    @torch.no_grad()
    def transcribe(
        self,
        waveforms: list[np.ndarray],
        device: torch.device | str = "cpu",
        decode: Callable[[np.ndarray, np.ndarray], list[str]] | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Transcripts of 1-D float waveforms at the front end's sample rate, in their order:
        greedy, or by `decode` (log-probabilities (B, T', V) and lengths (B,) as NumPy arrays ->
        texts). The model sees padded batches of at most `batch_size` waveforms of similar length."""
        self.model.eval().to(device)
        self.features.eval().to(device)
        texts = [""] * len(waveforms)
        for idx in length_batches([len(w) for w in waveforms], batch_size):
            tensors = [torch.as_tensor(waveforms[i], dtype=torch.float32) for i in idx]
            lengths = torch.tensor([t.numel() for t in tensors], device=device)
            batch = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True).to(device)
            feats, feat_lengths = self.features(batch, lengths)
            log_probs, out_lengths = self.model(feats, feat_lengths)
            if decode is not None:
                out = decode(log_probs.float().cpu().numpy(), out_lengths.cpu().numpy())
            else:
                paths = greedy_decode(log_probs, out_lengths, self.model.blank)
                out = [self.tokenizer.decode(ids) for ids in paths]
            for i, text in zip(idx, out, strict=True):
                texts[i] = text
        return texts


def save_recognizer(path: str | Path, rec: Recognizer, **meta: Any) -> None:
    """Write ``{config, state_dict, meta}`` atomically; `meta` adds to the recognizer's meta."""
    ckpt = {
        "config": {"model": to_dict(rec.model.config), "features": to_dict(rec.features.config)},
        "state_dict": {k: v.detach().cpu() for k, v in rec.model.state_dict().items()},
        "meta": {
            **rec.meta,
            **meta,
            "tokenizer": rec.tokenizer.to_bytes(),
            "format_version": FORMAT_VERSION,
            "conformer_prune_version": __version__,
        },
    }
    atomic_save(ckpt, path)


def load_recognizer(path: str | Path, device: str | torch.device = "cpu") -> Recognizer:
    """Rebuild a recognizer from a checkpoint written by `save_recognizer`, its model and front
    end on `device` (read on the CPU, then moved).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a conformer-prune checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} could not be read ({err})") from err
    if not isinstance(ckpt, dict) or not {"config", "state_dict", "meta"} <= set(ckpt):
        raise ValueError(
            f"{path} is not a conformer-prune checkpoint; expected keys config, state_dict, meta"
        )
    try:
        config, meta = ckpt["config"], dict(ckpt["meta"])
        feature_config = from_dict(FeatureConfig, config["features"], "features")
        # checkpoints from before `feature_rate` was recorded: their front end's rate
        model_config = {"feature_rate": feature_config.frames_per_second, **config["model"]}
        model = build_model(from_dict(ConformerConfig, model_config, "model"))
        model.load_state_dict(ckpt["state_dict"], strict=True)
        features = LogMelFeatures(feature_config)
        tokenizer = Tokenizer(meta.pop("tokenizer"))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # RuntimeError: load_state_dict
        detail = " ".join(str(err).split())
        raise ValueError(
            f"checkpoint {path} does not hold a usable model ({type(err).__name__}: {detail[:300]}); "
            "expected a file written by conformer-prune"
        ) from err
    return Recognizer(model.to(device).eval(), features.to(device).eval(), tokenizer, meta)
