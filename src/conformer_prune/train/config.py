"""Typed training configuration (YAML + dotted overrides, see `conformer_prune.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from conformer_prune.config import check_at_least
from conformer_prune.data.audio import check_speeds
from conformer_prune.data.features import FeatureConfig, SpecAugmentConfig
from conformer_prune.data.tokenizer import TokenizerConfig
from conformer_prune.model.conformer import ConformerConfig

__all__ = ["InterCTCConfig", "OptimConfig", "TrainConfig"]


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not applied to biases and norms).
        betas: Adam betas.
        warmup_steps: linear warm-up length in optimizer steps.
        min_lr_ratio: the cosine decays to lr * min_lr_ratio at the last step.
        grad_clip: maximum global gradient norm.
    """

    lr: float = 2e-3
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0


@dataclass
class InterCTCConfig:
    """Intermediate CTC (Lee and Watanabe, 2021; NeMo's `interctc`): the CTC head also reads the
    output of some earlier blocks, and the loss is ``(1 - sum(weights)) * CTC(last block) +
    sum(weights[i] * CTC(block layers[i]))``. It adds a CTC head's cost per layer listed and
    changes nothing in the model or in recognition.

    Args:
        layers: 1-based block numbers whose outputs get the extra CTC loss (NeMo's
            `apply_at_layers`); empty: none.
        weights: one weight per entry of `layers` (NeMo's `loss_weights`); their sum is below 1.
    """

    layers: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.weights):
            raise ValueError(
                f"inter_ctc: one weight per layer, found layers {self.layers} and weights {self.weights}"
            )
        if any(w <= 0 for w in self.weights) or sum(self.weights) >= 1:
            raise ValueError(f"inter_ctc.weights must be positive with a sum below 1, found {self.weights}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"inter_ctc.layers must be distinct, found {self.layers}")

    def loss(self, final: Tensor, terms: list[Tensor]) -> Tensor:
        """The combined loss of the last block's CTC and the terms of `layers`, in their order."""
        return (1 - sum(self.weights)) * final + sum(w * t for w, t in zip(self.weights, terms, strict=True))


@dataclass
class TrainConfig:
    """Everything a training run needs besides its data.

    Args:
        model: the architecture; `vocab_size` is set from the trained tokenizer.
        features: the front end (stored in the checkpoint).
        specaug: SpecAugment, training only.
        tokenizer: SentencePiece settings.
        optim: optimizer and schedule.
        epochs: passes over the training data (the schedule spans all of them).
        max_frames: padded feature frames per batch (100 frames = 1 s of audio).
        sorted_epochs: the first epochs that run short utterances first (SortaGrad).
        pad_frames_to: pad each training batch's frame axis to a multiple of this many frames (1:
            to its longest utterance), the batch budget counting the padded frames. On a CPU, bf16
            kernels (oneDNN) are compiled for every new input shape, and a batch of a length not
            seen before compiles them all again; a multiple such as 64 leaves few lengths, whose
            kernels are then reused (`benchmarks/padding.py`). More padded frames change what
            BatchNorm sees, so a run with another multiple is another run.
        inter_ctc: intermediate CTC losses on earlier blocks (none by default).
        speeds: speed perturbation: every training utterance is used once at each of these tempo
            factors (resampled, so pitch and formants move too, as another speaker's would);
            ``[0.9, 1.0, 1.1]`` is Kaldi's recipe and makes each epoch three times as long.
        seed: seeds batching, SpecAugment, dropout and initialisation.
        device: "auto" (CUDA when present), "cpu" or "cuda[:N]".
        precision: "bf16" runs forward passes under bfloat16 autocast.
        time_budget_minutes: stop after the epoch that would overrun this wall time (0 = none).
        threads: CPU intra-op threads (0 keeps PyTorch's default).
        cache_features: keep training features in memory after the first epoch.
        checkpoint_minutes: minutes between the resumable states written within an epoch (in a
            single process; 0: at epoch ends only, as under torchrun).
    """

    model: ConformerConfig = field(default_factory=ConformerConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 30
    max_frames: int = 20000
    sorted_epochs: int = 0
    pad_frames_to: int = 1
    inter_ctc: InterCTCConfig = field(default_factory=InterCTCConfig)
    speeds: tuple[float, ...] = (1.0,)
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    time_budget_minutes: float = 0.0
    threads: int = 0
    cache_features: bool = True
    checkpoint_minutes: float = 10.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected at least 1, found {self.epochs}")
        check_at_least(self, 0, "checkpoint_minutes", "time_budget_minutes", meaning="none")
        check_at_least(self, 0, "sorted_epochs")
        check_at_least(self, 1, "pad_frames_to")
        check_speeds(self.speeds)
        if any(not 1 <= k < self.model.n_layers for k in self.inter_ctc.layers):
            raise ValueError(
                f"inter_ctc.layers must be blocks 1 to {self.model.n_layers - 1} (the last block's "
                f"output is the main CTC's), found {self.inter_ctc.layers}"
            )
        if self.max_frames < 1:
            raise ValueError(f"max_frames: expected a positive number of frames, found {self.max_frames}")
