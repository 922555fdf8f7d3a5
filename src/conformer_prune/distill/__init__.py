"""Layerwise distillation from a frozen teacher."""

from conformer_prune.distill.layerwise import DistillConfig, LayerwiseDistiller

__all__ = ["DistillConfig", "LayerwiseDistiller"]
