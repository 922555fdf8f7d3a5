"""Typed configuration of a pruning run (YAML + dotted overrides, see `conformer_prune.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from conformer_prune.config import check_at_least, from_dict
from conformer_prune.data.audio import check_speeds
from conformer_prune.data.features import SpecAugmentConfig
from conformer_prune.distill.layerwise import DistillConfig
from conformer_prune.prune.cost import Metric
from conformer_prune.prune.latency import Runtime
from conformer_prune.prune.methods import METHODS, MethodName
from conformer_prune.train.config import InterCTCConfig

__all__ = ["PruneConfig", "teacher_specaug", "teacher_speeds"]


@dataclass
class PruneConfig:
    """L0 pruning with a Lagrangian budget and layerwise distillation, then fine-tuning.

    Args:
        method: a name from `conformer_prune.prune.methods.METHODS`: "l0-distill" (the method),
            "l0" (the same gates and budget, CTC loss only), "magnitude" and "magnitude-distill"
            (one-shot L1 structured pruning, the same kept fraction in every gate), "torch-pruning"
            (the Torch-Pruning library's one-shot group-L2 global pruning), "scratch" and
            "dense-distill" (a dense model of the teacher's depth, narrower to the parameter
            target, from random weights), "continued" (the control: the teacher, unpruned, trained
            with distillation from its frozen copy; the target is ignored). Every method but the
            learned ones fine-tunes its fixed shape for all prune_epochs + finetune_epochs.
        target_params: kept fraction of the teacher's parameters (exactly one target is set).
        target_macs: kept fraction of the teacher's MACs per second of audio.
        target_latency: kept fraction of the teacher's latency on a runtime, as a latency table
            predicts it (`conformer_prune.prune.latency`); the sliced model's measured latency is
            reported beside the prediction.
        max_params, max_macs, max_latency: ceilings on the other metrics, as kept fractions of the
            teacher's, met together with the target: the learned methods (l0, l0-distill) hold
            each with a Lagrangian of its own that acts only while the ceiling is exceeded, and
            their final masks meet every ceiling (`ConformerGates.deterministic_masks`). For
            example ``target_params: 0.5, max_latency: 0.6`` asks for half the parameters and at
            most 60% of the teacher's latency.
        latency_table: the table (``conformer-prune profile``) of a latency target or ceiling; None
            profiles the teacher on `latency_runtime` at the start of the run (into the run
            directory's latency_table.json, which a resumed run reuses).
        latency_runtime: "torch", "ort" or "ort-int8", for a table the run profiles.
        latency_threads: threads of that profile (batch 1, a 10 s utterance).
        latency_corrections: for a latency target or ceiling, the masks fixed at the end of
            pruning are checked by measurement: the sliced student is timed interleaved with the
            teacher on the table's runtime, in new processes, and while its measured fraction is
            off the target by more than half the 5% tolerance (over the ceiling, for
            `max_latency`), the latency budget given to the deterministic masks is corrected
            (`conformer_prune.prune.run.measured_masks`) and the masks chosen again, up to this
            many times; the closest is kept. 0 trusts the table alone.
            Every try is logged (``latency_measured`` in log.jsonl). Time it on quiet cores: what
            shares them skews the measurement.
        structures: what may be pruned (see `conformer_prune.prune.gates.STRUCTURES`).
        prune_epochs: epochs with learned gates and the budget.
        finetune_epochs: epochs with fixed masks afterwards.
        target_warmup: fraction of the pruning steps over which the target ramps up from 0.
        budget_reference_steps: a pruning stage shorter than this ramps longer and scales up the
            quadratic Lagrange multiplier and the gates' learning rate, so that a short stage
            neither lags nor overshoots its target (`Budget.for_stage`); longer stages are
            unaffected.
        lr: peak learning rate of the weights (and distillation projections). The reference
            recipe (recipes/prune.yaml) takes 2e-3, the reference teacher's own peak rate, chosen
            on dev over 5e-4 and 1e-3 (benchmarks/lr.py); this default stays at 5e-4, a quarter of
            a typical from-scratch peak, for models whose own rate is not known.
        gate_lr: learning rate of the gates' log_alpha (no weight decay).
        lambda_lr: learning rate of the Lagrange multipliers (gradient ascent).
        clamp_log_alpha: clamp every gate's log_alpha to CoFiPruning's range [ln 0.01, ln 100]
            after each step (`HardConcrete.LOG_ALPHA_RANGE`).
        weight_decay: on weight matrices only.
        betas: AdamW's betas for every group; None (the default): PyTorch's (0.9, 0.999).
            `benchmarks/compare.py` gives the dense models trained from random weights (`scratch`,
            `dense-distill`) the teacher's (`TrainConfig.optim.betas`), as the rest of its recipe.
        inter_ctc: intermediate CTC in the student's label loss (`TrainConfig.inter_ctc`); none by
            default. `benchmarks/compare.py` gives the dense models trained from random weights
            the teacher's own.
        warmup_steps: linear learning-rate warm-up of the weights.
        grad_clip: max norm of the weights' gradient.
        init_unit_log_alpha: initial log_alpha of head, neuron and channel gates.
        init_module_log_alpha: initial log_alpha of module and layer gates.
        mask_switch: what kept units become when the masks are fixed after pruning: "fold" (their
            expected gate value E[z], which the gates also apply in eval mode while pruning, is
            folded into the following weights, so the model does not change at the switch; as
            CoFiPruning and DPHuBERT do when they slice) or "hard" (they jump from E[z] to 1; the
            default, chosen on dev by benchmarks/distill.py: 14.35% dev WER against the fold's
            14.73%, 687 utterances, 8,114 words).
        finetune_compact: fine-tune the physically pruned student once the masks are fixed, rather
            than the gated one with fixed masks: the same function, gradients and AdamW state
            (the moments are sliced with the weights), without computing the removed units, so
            the fine-tuning steps cost what the compact model costs. Masks that remove whole
            blocks or model dimensions keep the gated student (the distillation pairs blocks and
            projects dimensions by the teacher's index).
        distill: loss weights (method "l0" sets the distillation weights to zero).
        specaug: SpecAugment of the shared input of teacher and student; None (the default) takes
            the one the teacher was trained with, from its checkpoint (`teacher_specaug`), so that
            pruning does not train under a harder augmentation than the teacher learned under
            (NeMo's 10 time masks kept models from learning on the reference corpus's short
            utterances, see recipes/teacher.yaml). A value given here replaces it whole (fields
            not given take `SpecAugmentConfig`'s defaults). The resolved one is written to the
            run's prune_config.yaml.
        speeds: speed perturbation of the training set (`TrainConfig.speeds`); None (the default)
            takes the teacher's (`teacher_speeds`), as for SpecAugment. The resolved one is
            written to prune_config.yaml.
        max_frames: padded feature frames per batch.
        pad_frames_to: the multiple a batch's frame axis is padded to (`TrainConfig.pad_frames_to`).
        seed: seeds batching, augmentation, dropout and gate sampling.
        device: "auto", "cpu" or "cuda[:N]".
        precision: "bf16" autocast or "fp32".
        threads: CPU threads (0 keeps PyTorch's default).
        checkpoint_minutes: minutes between the resumable states written within an epoch (in a
            single process; 0: at epoch ends only, as under torchrun).
    """

    method: MethodName = "l0-distill"
    target_params: float | None = 0.5
    target_macs: float | None = None
    target_latency: float | None = None
    max_params: float | None = None
    max_macs: float | None = None
    max_latency: float | None = None
    latency_table: str | None = None
    latency_runtime: Runtime = "ort"
    latency_threads: int = 2
    latency_corrections: int = 3
    structures: list[str] = field(default_factory=lambda: ["heads", "ffn", "conv", "modules", "frontend"])
    prune_epochs: int = 10
    finetune_epochs: int = 5
    target_warmup: float = 0.3
    budget_reference_steps: int = 1000
    lr: float = 5e-4
    gate_lr: float = 0.05
    lambda_lr: float = 0.05
    clamp_log_alpha: bool = True
    weight_decay: float = 1e-3
    betas: tuple[float, float] | None = None
    inter_ctc: InterCTCConfig = field(default_factory=InterCTCConfig)
    warmup_steps: int = 50
    grad_clip: float = 1.0
    init_unit_log_alpha: float = 3.0
    init_module_log_alpha: float = 5.0
    mask_switch: Literal["fold", "hard"] = "hard"
    finetune_compact: bool = True
    distill: DistillConfig = field(default_factory=DistillConfig)
    specaug: SpecAugmentConfig | None = None
    speeds: tuple[float, ...] | None = None
    max_frames: int = 10000
    pad_frames_to: int = 1
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int = 0
    checkpoint_minutes: float = 10.0

    def __post_init__(self) -> None:
        check_at_least(self, 0, "checkpoint_minutes", meaning="none")
        given = [x for x in (self.target_params, self.target_macs, self.target_latency) if x is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of target_params, target_macs and target_latency")
        if not 0 < given[0] < 1:
            raise ValueError(f"the target is a kept fraction in (0, 1), found {given[0]}")
        if self.ceilings and not METHODS[self.method].learns_masks:
            raise ValueError(
                f"{', '.join(f'max_{m}' for m in self.ceilings)}: only the methods that learn their masks "
                f"(l0, l0-distill) meet ceilings, not {self.method}"
            )
        for metric, ceiling in self.ceilings.items():
            if metric == self.metric:
                raise ValueError(f"max_{metric}: the target is on {metric}; a ceiling caps another metric")
            if not 0 < ceiling < 1:
                raise ValueError(f"max_{metric}: expected a kept fraction in (0, 1), found {ceiling}")
        check_at_least(self, 0, "prune_epochs", "finetune_epochs", "latency_corrections")
        check_at_least(self, 1, "pad_frames_to")
        if self.prune_epochs + self.finetune_epochs < 1:
            raise ValueError(
                "prune_epochs + finetune_epochs: expected at least 1 epoch in all, found "
                f"{self.prune_epochs} + {self.finetune_epochs}"
            )
        if self.max_frames < 1:
            raise ValueError(f"max_frames: expected a positive number of frames, found {self.max_frames}")
        if self.speeds is not None:
            check_speeds(self.speeds)

    @property
    def metric(self) -> Metric:
        if self.target_params is not None:
            return "params"
        return "macs" if self.target_macs is not None else "latency"

    @property
    def ceilings(self) -> dict[Metric, float]:
        """The ceilings given (max_params, max_macs, max_latency), by metric."""
        given: dict[Metric, float | None] = {
            "params": self.max_params,
            "macs": self.max_macs,
            "latency": self.max_latency,
        }
        return {metric: value for metric, value in given.items() if value is not None}

    @property
    def uses_latency(self) -> bool:
        """Whether the run needs a latency model: a latency target or ceiling."""
        return self.metric == "latency" or "latency" in self.ceilings

    @property
    def ratio(self) -> float:
        value = {"params": self.target_params, "macs": self.target_macs, "latency": self.target_latency}
        ratio = value[self.metric]
        assert ratio is not None
        return ratio


def teacher_specaug(meta: dict[str, Any]) -> tuple[SpecAugmentConfig, str]:
    """The SpecAugment a teacher was trained with, and where it was read: its training config
    (``train_config``, written by `conformer-prune train`) or, for a teacher that is itself a
    pruned model, its pruning config (``prune_config``). A teacher that records neither (e.g. one
    imported from NeMo) gets `SpecAugmentConfig`'s defaults, which are NeMo's own recipe's."""
    found = _teacher_recorded(meta, "specaug")
    if found is None:
        return SpecAugmentConfig(), "SpecAugmentConfig defaults (NeMo's; the teacher records none)"
    recorded, key = found
    return from_dict(SpecAugmentConfig, recorded, f"teacher {key}.specaug"), f"the teacher's {key}"


def teacher_speeds(meta: dict[str, Any]) -> tuple[tuple[float, ...], str]:
    """The speed perturbation a teacher was trained with, and where it was read (as
    `teacher_specaug`); a teacher that records none was trained without: (1.0,)."""
    found = _teacher_recorded(meta, "speeds")
    if found is None:
        return (1.0,), "none (the teacher records none)"
    recorded, key = found
    speeds = tuple(float(s) for s in recorded)
    check_speeds(speeds)
    return speeds, f"the teacher's {key}"


def _teacher_recorded(meta: dict[str, Any], name: str) -> tuple[Any, str] | None:
    """Training setting `name` as a teacher's checkpoint records it, with the config it came from:
    its training config (``train_config``) or, for a teacher that is itself a pruned model, its
    pruning config (``prune_config``); None when neither records it."""
    for key in ("train_config", "prune_config"):
        recorded = meta.get(key, {}).get(name)
        if recorded is not None:
            return recorded, key
    return None
