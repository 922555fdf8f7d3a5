"""Layerwise distillation: the pruned student follows the frozen teacher block by block.

The loss (weights configurable, every part logged) is

    w_ctc CTC(student, labels)
      + s (w_layer mean_(k, l) D(P_l h_l^student, h_k^teacher)
           + w_frontend D(P_0 f^student, f^teacher)
           + w_kl T^2 KL(p_T^teacher || p_T^student))

where h_l are the outputs of Conformer block l and f the front end's output (real frames only),
P a learned d x d linear projection initialised to the identity (DPHuBERT's prediction heads start
as identity too), so at the start of pruning the student matches the teacher exactly and the
distillation terms are zero; p_T are the CTC posteriors softened by the temperature T. With
hidden-dimension pruning the student's h_l and f are masked by its hidden gate (0 on removed
dimensions), so each projection reads, and learns from, the kept dimensions only: its columns go
with the student's model dimensions, as CoFiPruning's distillation layer does with ``hidden_z``.

Each choice is named in `DistillConfig`:
- the distance D (`layer_loss`): "mse"; "normalized-mse", the MSE divided by the variance of the
  teacher's output of that layer (so every layer weighs the same whatever its scale); "l1-cosine",
  L1 plus -log sigmoid(cosine similarity) per frame (DPHuBERT's `DistillLoss` with its "log_sig"
  cosine, after DistilHuBERT);
- the pairing (`layer_map`): "same-index" pairs every student block with the teacher's block of
  the same index; "dynamic" is CoFiPruning's layer distillation (Xia et al. 2022, Sec. 3.2; their
  trainer's `calculate_layer_distillation_loss`): a few teacher blocks (`teacher_layers`, by
  default every third one ending at the last: 2, 5, 8, 11 of 12, CoFi's choice) are each matched,
  at every step, to the student block with the smallest distance among the student's remaining
  blocks, searching from the last teacher block down and keeping the order (a teacher block's match
  lies below the match of the next one), as CoFi does;
- the scale s (`balance`): "fixed" (s = 1) or "grad-norm": every `probe_every` steps the gradient
  norm of CTC and of the weighted distillation terms on the student's weights are measured and s
  set to their ratio (at most `max_balance`), so the distillation gradient is on CTC's scale (in
  the reference run it was 12 times smaller). The ratio is ours, in the spirit of GradNorm (Chen et
  al. 2018) without its learned weights.

Every `probe_every` steps, and at the first step of every epoch, the gradient norm of each part on
the student's weights is measured and logged (``grad_norm_ctc``, ``grad_norm_layer``, ...; held
between probes, so an epoch's mean is the mean of its probes weighted by how long each held).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conformer_prune.data.dataset import Batch
from conformer_prune.model.conformer import ConformerCTC
from conformer_prune.train.config import InterCTCConfig

__all__ = [
    "CTC_ONLY_FIELDS",
    "Balance",
    "DistillConfig",
    "LayerLoss",
    "LayerMap",
    "LayerwiseDistiller",
    "default_teacher_layers",
]

LayerLoss = Literal["mse", "normalized-mse", "l1-cosine"]
LayerMap = Literal["same-index", "dynamic"]
Balance = Literal["fixed", "grad-norm"]
# the fields a loss without distillation terms reads (CTC's weight; the probe's period, which
# decides only when the gradient norm is logged): a method that does not distil trains the same
# whatever the others say
CTC_ONLY_FIELDS = ("ctc_weight", "probe_every")


@dataclass
class DistillConfig:
    """The defaults are the choices benchmarks/distill.py made on dev at the reference budget
    (issue 16): each of KL, the front end, `l1-cosine` and the `dynamic` map brought a candidate's
    dev WER under that of the earlier defaults (MSE on every block paired by index, no KL, no front
    end), and `l1-cosine` did better than `normalized-mse`; `grad-norm` did worse.

    Args:
    ctc_weight: weight of CTC on the labels.
    layer_weight: weight of the layerwise distance (0 turns layer distillation off, the `l0`
        ablation).
    kl_weight: weight of the KL divergence between teacher and student CTC posteriors.
    layer_loss: the distance between a projected student output and a teacher output: "mse",
        "normalized-mse" or "l1-cosine".
    layer_map: "same-index" or "dynamic" (CoFiPruning's minimum-distance mapping).
    teacher_layers: the teacher blocks the "dynamic" map distils (empty: every third block
        ending at the last).
    kl_temperature: temperature of the KL term's posteriors (CoFiPruning uses 2); the term is
        multiplied by its square (Hinton et al. 2015).
    frontend_weight: weight of the distance between the front ends' outputs.
    balance: "fixed" or "grad-norm" (distillation rescaled to CTC's gradient norm).
    probe_every: steps between gradient-norm measurements (logging and "grad-norm"). Each probe
        takes one more backward pass per loss part (four with the defaults): a step that probes
        took 2.79x a plain one (benchmarks/prune_step.py, 1 thread), so every 20 steps (the
        default before) adds 9.0% to the mean pruning step and every 100 1.8%, still some ten
        probes a reference epoch.
    max_balance: the largest scale "grad-norm" may apply.
    """

    ctc_weight: float = 1.0
    layer_weight: float = 1.0
    kl_weight: float = 1.0
    layer_loss: LayerLoss = "l1-cosine"
    layer_map: LayerMap = "dynamic"
    teacher_layers: list[int] = field(default_factory=list)
    kl_temperature: float = 2.0
    frontend_weight: float = 1.0
    balance: Balance = "fixed"
    probe_every: int = 100
    max_balance: float = 100.0

    def __post_init__(self) -> None:
        if self.kl_temperature <= 0:
            raise ValueError(f"kl_temperature must be positive, found {self.kl_temperature}")
        if self.probe_every < 1:
            raise ValueError(f"probe_every must be at least 1, found {self.probe_every}")

    @property
    def layer_key(self) -> str:
        """The layer term's name in the loss's parts and log.jsonl: layer_mse, layer_l1-cosine, ..."""
        return f"layer_{self.layer_loss}"

    @property
    def distils(self) -> bool:
        return bool(self.layer_weight or self.kl_weight or self.frontend_weight)

    @property
    def probe_trains(self) -> bool:
        """Whether `probe_every` changes what is trained: only when the probe sets the "grad-norm"
        scale; otherwise it decides when the norms are logged (gradients taken by autograd.grad,
        nothing accumulates: tests/test_distill.py)."""
        return self.distils and self.balance == "grad-norm"

    def ctc_only(self) -> DistillConfig:
        """This config with every distillation weight 0: the loss of a method that does not distil."""
        return replace(self, layer_weight=0.0, kl_weight=0.0, frontend_weight=0.0)


def default_teacher_layers(n_layers: int) -> list[int]:
    """Every third block ending at the last: [2, 5, 8, 11] of 12 (CoFiPruning's choice)."""
    return list(range(n_layers - 1, -1, -3))[::-1]


def _distance(kind: LayerLoss, s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """Mean distance over the real frames `mask` (B, T, 1) between student `s` and teacher `t`,
    both (B, T, D)."""
    n_real = mask.sum() * s.shape[-1]
    if kind == "l1-cosine":
        l1 = ((s - t).abs() * mask).sum() / n_real
        cos = -F.logsigmoid(F.cosine_similarity(s, t, dim=-1))  # (B, T)
        return l1 + (cos * mask[..., 0]).sum() / mask.sum()
    mse = (((s - t) ** 2) * mask).sum() / n_real
    if kind == "normalized-mse":
        mean = (t * mask).sum((0, 1)) / mask.sum()
        variance = (((t - mean) ** 2) * mask).sum() / n_real
        return mse / variance.clamp_min(1e-8)
    return mse


class LayerwiseDistiller(nn.Module):
    """Projections and the combined loss for a student and a frozen teacher of equal depth.

    Args:
        teacher: the unpruned model; put in eval mode and frozen here.
        n_layers: student blocks (one projection each).
        d_model: model dimension of the student (the teacher's may be larger: dense-distill).
        config: the loss's weights and choices.
        inter_ctc: intermediate CTC terms of the student's label loss (as `train`'s); None or no
            layers: the last block's CTC alone.
    """

    def __init__(
        self,
        teacher: ConformerCTC,
        n_layers: int,
        d_model: int,
        config: DistillConfig,
        inter_ctc: InterCTCConfig | None = None,
    ) -> None:
        super().__init__()
        if teacher.config.n_layers != n_layers:
            raise ValueError(
                f"teacher has {teacher.config.n_layers} blocks, student {n_layers}; expected equal"
            )
        self.inter_ctc = inter_ctc if inter_ctc is not None and inter_ctc.layers else None
        if self.inter_ctc is not None and not all(1 <= k < n_layers for k in self.inter_ctc.layers):
            raise ValueError(
                f"inter_ctc.layers must be blocks 1 to {n_layers - 1} (the last block's output is the "
                f"main CTC's), found {self.inter_ctc.layers}"
            )
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not saved
        self.config = config
        self.teacher_layers = config.teacher_layers or default_teacher_layers(n_layers)
        if not all(0 <= k < n_layers for k in self.teacher_layers):
            raise ValueError(f"teacher_layers must lie in [0, {n_layers}), found {self.teacher_layers}")

        def identity() -> nn.Linear:  # student width -> teacher width
            p = nn.Linear(d_model, teacher.config.d_model)
            nn.init.eye_(p.weight)
            nn.init.zeros_(p.bias)
            return p

        self.proj = nn.ModuleList(identity() for _ in range(n_layers))
        self.proj_frontend = identity() if config.frontend_weight else None
        # the distillation scale and the probe's step counter travel with the resumable state
        self.scale: Tensor
        self.probe_step: Tensor
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("probe_step", torch.zeros((), dtype=torch.long))
        self._norms: dict[str, float] = {}
        self._probe_next = True
        self.last_alignment: list[tuple[int, int]] = []

    def loss(
        self, student: ConformerCTC, batch: Batch, remaining: list[bool] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The combined loss and its parts. `remaining` says which student blocks may be matched by
        the "dynamic" map (default: all)."""
        cfg = self.config
        student_layers: list[Tensor] = []
        with _FrontEndOutput(student) as s_front:
            x, lengths = student.encoder(batch.feats, batch.feat_lengths, student_layers)
        logits = student.decoder(x).float()  # (B, T, V)
        log_probs = torch.log_softmax(logits, dim=-1)
        ctc = student.ctc_loss(log_probs, lengths, batch.targets, batch.target_lengths)
        parts: dict[str, float] = {"ctc": float(ctc.detach())}  # the last block's, as `train` logs
        if self.inter_ctc is not None:  # the label loss with intermediate CTC, as `train`'s
            inter = [
                student.ctc_loss(
                    student.log_probs(student_layers[k - 1]), lengths, batch.targets, batch.target_lengths
                )
                for k in self.inter_ctc.layers
            ]
            ctc = self.inter_ctc.loss(ctc, inter)
            parts["inter_ctc"] = sum(float(t.detach()) for t in inter) / len(inter)
        terms: dict[str, tuple[float, Tensor]] = {}  # distillation part -> (weight, value)
        if cfg.distils:
            teacher = self.teacher[0]
            teacher_layers: list[Tensor] = []
            with torch.no_grad(), _FrontEndOutput(teacher) as t_front:
                t_x, _ = teacher.encoder(batch.feats, batch.feat_lengths, teacher_layers)
            mask = _real(lengths, x)
            if cfg.layer_weight:
                terms["layer"] = (
                    cfg.layer_weight,
                    self._layer_term(student_layers, teacher_layers, mask, remaining),
                )
            if self.proj_frontend is not None:
                fe = _distance(cfg.layer_loss, self.proj_frontend(s_front[0]), t_front[0], mask)
                terms["frontend"] = (cfg.frontend_weight, fe)
            if cfg.kl_weight:
                temp = cfg.kl_temperature
                with torch.no_grad():
                    t_log_probs = torch.log_softmax(teacher.decoder(t_x).float() / temp, dim=-1)
                s_log_probs = torch.log_softmax(logits / temp, dim=-1)
                kl_frames = (t_log_probs.exp() * (t_log_probs - s_log_probs)).sum(-1)  # (B, T)
                terms["kl"] = (cfg.kl_weight, temp * temp * (kl_frames * mask[..., 0]).sum() / mask.sum())
        if torch.is_grad_enabled() and (int(self.probe_step) % cfg.probe_every == 0 or self._probe_next):
            self._probe(student, ctc, terms)
            self._probe_next = False
        if torch.is_grad_enabled():
            self.probe_step += 1
        distill = sum((w * v for w, v in terms.values()), torch.zeros((), device=ctc.device))
        total = cfg.ctc_weight * ctc + self.scale * distill
        names = {"layer": cfg.layer_key}
        parts |= {names.get(k, k): float(v.detach()) for k, (_, v) in terms.items()}
        parts |= self._norms
        if cfg.balance == "grad-norm" and cfg.distils:
            parts["distill_scale"] = float(self.scale)
        return total, parts

    def probe_next(self) -> None:
        """Measure the gradient norms at the next step too (the engine asks at every epoch's
        start, so every epoch's log has figures of its own however few steps it has)."""
        self._probe_next = True

    def probe_state(self) -> dict[str, Any]:
        """The probe's state between steps (the last norms, whether the next step probes), for
        a state written within an epoch; the counter and the scale are buffers."""
        return {"norms": dict(self._norms), "probe_next": self._probe_next}

    def load_probe_state(self, state: dict[str, Any]) -> None:
        self._norms = dict(state["norms"])
        self._probe_next = bool(state["probe_next"])

    def _layer_term(
        self, student: list[Tensor], teacher: list[Tensor], mask: Tensor, remaining: list[bool] | None
    ) -> Tensor:
        cfg = self.config
        projected = [proj(s) for proj, s in zip(self.proj, student, strict=True)]
        if cfg.layer_map == "same-index":
            return torch.stack(
                [_distance(cfg.layer_loss, s, t, mask) for s, t in zip(projected, teacher, strict=True)]
            ).mean()
        open_ = remaining if remaining is not None else [True] * len(student)
        candidates = [j for j, keep in enumerate(open_) if keep]
        # distances (teacher block k, student block j) of the chosen teacher blocks
        distances = {
            (k, j): _distance(cfg.layer_loss, projected[j], teacher[k], mask)
            for k in self.teacher_layers
            for j in candidates
        }
        alignment: list[tuple[int, int]] = []
        below = len(student)  # a match must lie below the next teacher block's match (CoFi)
        for k in sorted(self.teacher_layers, reverse=True):
            allowed = [j for j in candidates if j < below]
            if not allowed:
                continue
            j = min(allowed, key=lambda j: float(distances[k, j].detach()))
            alignment.append((k, j))
            below = j
        self.last_alignment = alignment[::-1]
        if not alignment:
            return torch.zeros((), device=mask.device)
        return torch.stack([distances[pair] for pair in alignment]).mean()

    def _probe(self, student: ConformerCTC, ctc: Tensor, terms: dict[str, tuple[float, Tensor]]) -> None:
        """Measure each part's gradient norm on the student's weights (and set the "grad-norm"
        scale). The gradients are taken with autograd.grad, so nothing accumulates in .grad."""
        params = [p for n, p in student.named_parameters() if p.requires_grad and ".gate" not in n]
        if not params:
            return

        def grads(value: Tensor) -> list[Tensor]:
            if not value.requires_grad:
                return [torch.zeros_like(p) for p in params]
            out = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out, strict=True)]

        def norm(gs: list[Tensor]) -> float:
            return float(torch.sqrt(sum((g.float() ** 2).sum() for g in gs)))  # type: ignore[arg-type]

        ctc_grads = grads(self.config.ctc_weight * ctc)
        self._norms = {"grad_norm_ctc": norm(ctc_grads)}
        total: list[Tensor] | None = None
        for name, (weight, value) in terms.items():
            part = grads(weight * value)
            self._norms[f"grad_norm_{name}"] = norm(part)
            total = part if total is None else [a + b for a, b in zip(total, part, strict=True)]
        if total is not None:
            self._norms["grad_norm_distill"] = norm(total)
        if self.config.balance == "grad-norm" and total is not None and self.config.ctc_weight:
            ratio = self._norms["grad_norm_ctc"] / max(self._norms["grad_norm_distill"], 1e-12)
            self.scale.fill_(min(self.config.max_balance, ratio))


def _real(lengths: Tensor, x: Tensor) -> Tensor:
    """(B, T, 1) ones on the real frames of `x` (B, T, D)."""
    return (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[..., None]


class _FrontEndOutput:
    """Holds the front end's output of `model` during a forward pass, as the blocks see it: the
    input of the positional encoding (masked by the hidden gate when the model has one, so the
    projection reads only the kept dimensions, as it would after slicing)."""

    def __init__(self, model: ConformerCTC) -> None:
        self.module = model.encoder.pos_enc
        self.out: list[Tensor] = []

    def __enter__(self) -> list[Tensor]:
        def hook(_module: nn.Module, inputs: tuple[Tensor]) -> None:
            self.out.append(inputs[0])

        self.handle = self.module.register_forward_pre_hook(hook)
        return self.out

    def __exit__(self, *_: object) -> None:
        self.handle.remove()
