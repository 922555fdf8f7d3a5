"""Conformer-CTC model, its config and its checkpoints."""

from conformer_prune.model.checkpoint import Recognizer, load_recognizer, save_recognizer
from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, build_model

__all__ = [
    "ConformerCTC",
    "ConformerConfig",
    "Recognizer",
    "build_model",
    "load_recognizer",
    "save_recognizer",
]
