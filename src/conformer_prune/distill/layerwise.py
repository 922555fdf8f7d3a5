"""Layerwise distillation: the pruned student follows the frozen teacher block by block.

The loss (weights configurable, every part logged) is

    w_ctc CTC(student, labels)
      + w_layer mean_l MSE(P_l h_l^student, h_l^teacher)
      + w_kl KL(p^teacher || p^student)

where h_l are the outputs of Conformer block l (real frames only) and P_l a learned d x d linear
projection initialised to the identity (DPHuBERT's prediction heads start as identity too), so at
the start of pruning the student matches the teacher exactly and the term is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conformer_prune.data.dataset import Batch
from conformer_prune.model.conformer import ConformerCTC

__all__ = ["DistillConfig", "LayerwiseDistiller"]


@dataclass
class DistillConfig:
    """Args:
    ctc_weight: weight of CTC on the labels.
    layer_weight: weight of the layerwise MSE (0 turns distillation off, the `l0` ablation).
    kl_weight: weight of the KL divergence between teacher and student CTC posteriors.
    """

    ctc_weight: float = 1.0
    layer_weight: float = 1.0
    kl_weight: float = 0.0


class LayerwiseDistiller(nn.Module):
    """Projections and the combined loss for a student and a frozen teacher of equal depth.

    Args:
        teacher: the unpruned model; put in eval mode and frozen here.
        n_layers: student blocks (one projection each, paired with the teacher's block of the
            same index).
        d_model: model dimension of the student (the teacher's may be larger: dense-distill).
        config: loss weights.
    """

    def __init__(self, teacher: ConformerCTC, n_layers: int, d_model: int, config: DistillConfig) -> None:
        super().__init__()
        if teacher.config.n_layers != n_layers:
            raise ValueError(
                f"teacher has {teacher.config.n_layers} blocks, student {n_layers}; expected equal"
            )
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not saved
        self.config = config
        # student width -> teacher width (identity on the shared leading dimensions when they differ)
        projections = [nn.Linear(d_model, teacher.config.d_model) for _ in range(n_layers)]
        for p in projections:
            nn.init.eye_(p.weight)
            nn.init.zeros_(p.bias)
        self.proj = nn.ModuleList(projections)

    def loss(self, student: ConformerCTC, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        student_layers: list[Tensor] = []
        x, lengths = student.encoder(batch.feats, batch.feat_lengths, student_layers)
        log_probs = torch.log_softmax(student.decoder(x).float(), dim=-1)  # (B, T, V)
        ctc = F.ctc_loss(
            log_probs.transpose(0, 1),
            batch.targets,
            lengths,
            batch.target_lengths,
            blank=student.blank,
            reduction="mean",
            zero_infinity=True,
        )
        total = cfg.ctc_weight * ctc
        parts = {"ctc": float(ctc.detach())}
        if cfg.layer_weight == 0 and cfg.kl_weight == 0:
            return total, parts
        teacher = self.teacher[0]
        teacher_layers: list[Tensor] = []
        with torch.no_grad():
            t_x, _ = teacher.encoder(batch.feats, batch.feat_lengths, teacher_layers)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[..., None]
        n_real = mask.sum() * x.shape[-1]
        if cfg.layer_weight:
            mse = torch.stack(
                [
                    (((proj(s) - t) ** 2) * mask).sum() / n_real
                    for proj, s, t in zip(self.proj, student_layers, teacher_layers, strict=True)
                ]
            ).mean()
            total = total + cfg.layer_weight * mse
            parts["layer_mse"] = float(mse.detach())
        if cfg.kl_weight:
            with torch.no_grad():
                t_log_probs = torch.log_softmax(teacher.decoder(t_x).float(), dim=-1)
            kl = ((t_log_probs.exp() * (t_log_probs - log_probs)).sum(-1) * mask[..., 0]).sum() / mask.sum()
            total = total + cfg.kl_weight * kl
            parts["kl"] = float(kl.detach())
        return total, parts
