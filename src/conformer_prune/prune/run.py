"""The pruning engine: learn masks under a budget with distillation, fix them, fine-tune, slice.

Usage:
    conformer-prune prune --teacher runs/teacher/model.pt --data corpus/train --dev corpus/dev \
        --target-params 0.5 --out runs/pruned-50

Stages, in one run directory (resumable at every epoch boundary from ``prune_state.pt``, which
holds the student with its gate logits, the distillation projections, the Lagrange multipliers,
the optimizer with all three parameter groups, the scheduler and the stage; once fine-tuning
has moved to the compact student, that student and the masks it was sliced by):

1. pruning (``prune_epochs``): the student (a copy of the teacher) carries hard-concrete gates;
   loss = distillation (+ CTC) + the Lagrangian budget; the target ramps up over a warm-up;
2. at the boundary the masks become deterministic and are adjusted to meet the target exactly
   (within one unit; a latency target or ceiling is checked by timing the sliced student, and its
   budget corrected, see `measured_masks`), the kept units' expected gate values are folded into
   the following weights (``mask_switch: fold``), and the masks are frozen;
3. fine-tuning (``finetune_epochs``): fixed masks, distillation continues, on the physically
   pruned student (``finetune_compact``; its AdamW state sliced with its weights, so it is the same
   training as the gated student's with fixed masks, without computing the removed units);
4. the compact model is written to ``model.pt``.

The run directory, seeding, resume, the epoch body, validation and the state save are the training
engine's (`conformer_prune.train.loop`); pruning plugs in its student (`_student`), its loss
(`_PruningLoss`, with the `Budget` of `prune.budget`), its parameter groups
(`make_prune_optimizer`) and its stage logic (`_freeze` at the boundary, `compact_for_finetuning`
after it, `_save_compact`). The baselines differ only along the axes of their
`prune.methods.Method`; so does the control `continued`, which removes nothing (no gates) and
trains the teacher itself with distillation from its frozen copy for the same steps, so its
"compact model" is the teacher's shape.

SpecAugment and speed perturbation are the teacher's own (read from its checkpoint) unless the
config gives them; the ones used are printed and written to ``prune_config.yaml``.

Launched by torchrun, every process trains on its share of each step's batches with DDP over the
student (gate logits included), the projections and the multipliers, and rank 0 validates and
writes the run directory (see `conformer_prune.distributed`):

    torchrun --nproc_per_node 8 -m conformer_prune.cli prune --teacher runs/teacher/model.pt \
        --data corpus/train --dev corpus/dev --target-params 0.5 --out runs/pruned-50
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from conformer_prune.config import to_dict
from conformer_prune.data.corpus import Utterance
from conformer_prune.data.dataset import Batch
from conformer_prune.data.features import SpecAugment
from conformer_prune.distill.layerwise import LayerwiseDistiller
from conformer_prune.distributed import Distributed, launch
from conformer_prune.model.checkpoint import Recognizer, load_recognizer, save_recognizer
from conformer_prune.model.conformer import HIDDEN, ConformerCTC, build_model
from conformer_prune.prune.budget import Budget, Lagrangian, expected_sparsity
from conformer_prune.prune.config import PruneConfig, teacher_specaug, teacher_speeds
from conformer_prune.prune.cost import Cost, Metric, as_float, conformer_cost
from conformer_prune.prune.dense import dense_config_like
from conformer_prune.prune.gates import ConformerGates
from conformer_prune.prune.latency import LATENCY_TOLERANCE, LatencyModel
from conformer_prune.prune.magnitude import magnitude_masks
from conformer_prune.prune.methods import METHODS, Method
from conformer_prune.prune.physical import physically_prune, without_gates
from conformer_prune.prune.torch_pruning import torch_pruning_prune
from conformer_prune.train.loop import Epochs, RunDir, lr_schedule, make_data, resolve_precision, start_run
from conformer_prune.utils import resolve_device

__all__ = [
    "LATENCY_TABLE",
    "PruneResult",
    "gated_student",
    "make_prune_optimizer",
    "measured_masks",
    "one_shot_model",
    "run_pruning",
]

LATENCY_TABLE = "latency_table.json"  # in the run directory, when the run profiles the teacher

_STATE_KEYS = ["student", "distiller", "lagrangian", "optimizer", "scheduler", "epoch", "elapsed"]


@dataclass
class PruneResult:
    model_path: Path
    masks: dict[str, Tensor]
    teacher_cost: Cost
    pruned_cost: Cost
    latency_table: Path | None = None  # the table of a latency target


def _latency_model(cfg: PruneConfig, teacher: ConformerCTC, out: Path, dist: Distributed) -> LatencyModel:
    """The latency model of a latency target: `cfg.latency_table`, or the run's own profile of the
    teacher (out/latency_table.json, made once by rank 0 and reused when the run resumes)."""
    path = Path(cfg.latency_table) if cfg.latency_table else out / LATENCY_TABLE

    def table() -> dict[str, Any]:
        if cfg.latency_table or path.is_file():
            return LatencyModel.load(path).table
        from conformer_prune.evaluate.profile import HIDDEN_FRACTIONS, profile_latency, write_table

        print(
            f"profiling the teacher on {cfg.latency_runtime} ({cfg.latency_threads} threads, batch 1, "
            "10 s) for the latency target",
            flush=True,
        )
        # the model dimension's grid only where it is pruned (each point is a dozen whole models)
        hidden = HIDDEN_FRACTIONS if HIDDEN in cfg.structures else (1.0,)
        made = profile_latency(
            teacher.config, cfg.latency_runtime, cfg.latency_threads, hidden_fractions=hidden
        )
        write_table(made, path)
        return made

    model = LatencyModel(dist.from_main(table))
    model.describes(teacher.config)
    return model


def make_prune_optimizer(
    weights: list[nn.Parameter],
    gates: ConformerGates | None,
    lagrangian: Lagrangian,
    cfg: PruneConfig,
    scale: float = 1.0,
) -> torch.optim.AdamW:
    """One AdamW, three groups: weights (decay on matrices), gate logits (lr `cfg.gate_lr` x
    `scale`, the budget's, see `Budget.for_stage`; no decay; empty for a student without gates),
    Lagrange multipliers (lr `cfg.lambda_lr` x `scale`, gradient ascent). With
    `cfg.clamp_log_alpha`, every step ends by clamping the gate logits (CoFiPruning's range)."""
    decay = [p for p in weights if p.dim() >= 2]
    no_decay = [p for p in weights if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "name": "weights"},
            {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr, "name": "weights_no_decay"},
            {
                "params": gates.log_alphas() if gates is not None else [],
                "weight_decay": 0.0,
                "lr": cfg.gate_lr * scale,
                "name": "gates",
            },
            {
                "params": list(lagrangian.parameters()),
                "weight_decay": 0.0,
                "lr": cfg.lambda_lr * scale,
                "maximize": True,
                "name": "lagrange",
            },
        ],
        lr=cfg.lr,
        betas=cfg.betas if cfg.betas is not None else (0.9, 0.999),
    )
    if cfg.clamp_log_alpha and gates is not None:
        optimizer.register_step_post_hook(lambda *_: gates.clamp_())
    return optimizer


_MOMENTS = ("exp_avg", "exp_avg_sq")


def _weights(student: ConformerCTC, distiller: LayerwiseDistiller) -> list[nn.Parameter]:
    """What the weight groups train: the student's weights (not its gate logits) and the
    distillation projections."""
    return [p for n, p in student.named_parameters() if ".gate" not in n] + list(distiller.parameters())


def compactable(gates: ConformerGates) -> bool:
    """Whether fine-tuning can move to the compact student: there are masks, and they keep every
    block and model dimension (the distillation pairs blocks and projects dimensions by index)."""
    masks = gates.current_masks()
    whole = [name for name, slot in gates.slots.items() if name == HIDDEN or slot.attr == "gate_layer"]
    return bool(masks) and all(bool(masks[name].all()) for name in whole)


def compact_for_finetuning(
    student: ConformerCTC,
    masks: dict[str, Tensor],
    distiller: LayerwiseDistiller,
    lagrangian: Lagrangian,
    optimizer: torch.optim.AdamW,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: PruneConfig,
) -> tuple[ConformerCTC, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The student physically pruned by its fixed `masks` (`compactable` ones), with an optimizer
    and schedule that continue where `optimizer` and `scheduler` are: each kept weight's AdamW
    moments are sliced as the weight is (by pruning a copy of the student whose parameters hold
    them), the projections' and multipliers' state, the step counts and the learning rates carry
    over. With fixed masks the gated student's removed units get no gradient (they are multiplied
    by 0), so the next steps are the gated student's, without computing what was removed."""
    device = next(student.parameters()).device
    compact = physically_prune(student, masks).to(device).train(student.training)
    compact_opt = make_prune_optimizer(_weights(compact, distiller), None, lagrangian, cfg)
    old = dict(student.named_parameters())
    moments: dict[str, dict[str, Tensor]] = {}
    for key in _MOMENTS:
        shadow = copy.deepcopy(student)
        with torch.no_grad():
            for name, q in shadow.named_parameters():
                q.copy_(optimizer.state.get(old[name], {}).get(key, torch.zeros_like(q)))
        moments[key] = {n: q.detach() for n, q in physically_prune(shadow, masks).named_parameters()}
    for name, p in compact.named_parameters():
        state = optimizer.state.get(old[name])
        if state:
            unknown = set(state) - {"step", *_MOMENTS}
            if unknown:
                raise ValueError(f"cannot slice the optimizer's {sorted(unknown)} of {name}")
            compact_opt.state[p] = {"step": state["step"].clone()} | {
                k: moments[k][name].to(device).clone() for k in _MOMENTS
            }
    for p in [*distiller.parameters(), *lagrangian.parameters()]:
        if p in optimizer.state:
            compact_opt.state[p] = optimizer.state[p]
    for group, was in zip(compact_opt.param_groups, optimizer.param_groups, strict=True):
        group["initial_lr"] = was["initial_lr"]
    compact_scheduler = torch.optim.lr_scheduler.LambdaLR(compact_opt, scheduler.lr_lambdas)
    compact_scheduler.load_state_dict(scheduler.state_dict())
    for group, was in zip(compact_opt.param_groups, optimizer.param_groups, strict=True):
        group["lr"] = was["lr"]  # the new schedule's construction set its first step's
    return compact, compact_opt, compact_scheduler


def run_pruning(
    cfg: PruneConfig,
    teacher_path: str | Path,
    train_utts: list[Utterance],
    dev_utts: list[Utterance],
    out_dir: str | Path,
    resume: bool = False,
) -> PruneResult:
    """Prune the teacher at `teacher_path` to `cfg`'s target; returns the compact model's path.
    Under torchrun, every process trains its share of each step and rank 0 writes the run."""
    with launch(resolve_device(cfg.device)) as dist:
        return _prune(cfg, teacher_path, train_utts, dev_utts, Path(out_dir), resume, dist)


def _prune(
    cfg: PruneConfig,
    teacher_path: str | Path,
    train_utts: list[Utterance],
    dev_utts: list[Utterance],
    out: Path,
    resume: bool,
    dist: Distributed,
) -> PruneResult:
    run = RunDir(out, "prune_state.pt", "pruning", resume)
    device = dist.device
    start_run(cfg.threads, cfg.seed, cfg.pad_frames_to)

    teacher_rec = load_recognizer(teacher_path)
    teacher = teacher_rec.model.to(device).eval()
    # the teacher's augmentation unless the config gives one; resolved here, so that the written
    # config says which the run used
    specaug, source = (
        (cfg.specaug, "the pruning config") if cfg.specaug is not None else teacher_specaug(teacher_rec.meta)
    )
    speeds, speeds_source = (
        (cfg.speeds, "the pruning config") if cfg.speeds is not None else teacher_speeds(teacher_rec.meta)
    )
    cfg = dataclasses.replace(cfg, specaug=specaug, speeds=speeds)
    if dist.is_main:
        print(f"SpecAugment: {to_dict(specaug)}, from {source}", flush=True)
        if speeds != (1.0,):
            print(f"speed perturbation: {list(speeds)}, from {speeds_source}", flush=True)
    latency = _latency_model(cfg, teacher, out, dist) if cfg.uses_latency else None
    teacher_cost = conformer_cost(teacher.config, latency=latency)
    target_abs = cfg.ratio * as_float(teacher_cost.value(cfg.metric))
    ceilings = {m: c * as_float(teacher_cost.value(m)) for m, c in cfg.ceilings.items()}
    method = METHODS[cfg.method]
    student, gates, distiller = gated_student(cfg, teacher, target_abs, latency)
    lagrangian = Lagrangian(ceilings=cfg.ceilings).to(device)
    # one-shot and dense baselines and the control: nothing is learned about the shape, every
    # epoch fine-tunes with a fixed one (the same total number of steps as the method)
    prune_epochs = cfg.prune_epochs if method.learns_masks else 0
    if method.masks == "magnitude" and not resume:
        _freeze(gates, target_abs, cfg, run, magnitude_masks(gates, target_abs, cfg.metric))

    data = make_data(
        train_utts,
        dev_utts,
        teacher_rec.tokenizer,
        teacher_rec.features,
        cfg.max_frames,
        cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        subsampling_factor=teacher_rec.model.config.subsampling_factor,
        speeds=speeds,
        pad_frames_to=cfg.pad_frames_to,
    )
    steps_per_epoch = len(data.sampler)
    budget = Budget.for_stage(
        1.0 - cfg.ratio, prune_epochs * steps_per_epoch, cfg.target_warmup, cfg.budget_reference_steps
    )
    if dist.is_main and budget.scale != 1.0:
        print(
            f"a short pruning stage ({budget.steps} steps, fewer than budget_reference_steps="
            f"{cfg.budget_reference_steps}): the target ramps over {budget.ramp_steps} steps, the "
            f"multipliers' and the gates' learning rates and the quadratic multiplier are scaled by "
            f"{budget.scale:.2f}",
            flush=True,
        )
    lagrangian.quadratic_scale = budget.scale
    optimizer = make_prune_optimizer(_weights(student, distiller), gates, lagrangian, cfg, scale=budget.scale)
    total_epochs = cfg.prune_epochs + cfg.finetune_epochs
    weight_schedule = lr_schedule(cfg.warmup_steps, total_epochs * steps_per_epoch, 0.02)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [weight_schedule, weight_schedule, lambda _: 1.0, lambda _: 1.0]
    )
    trained = {"student": student, "distiller": distiller, "lagrangian": lagrangian}
    # the fixed masks of a latency budget are checked by timing them (`measured_masks`)
    measure = (
        _latency_meter(lambda: student, teacher, latency)
        if latency is not None and method.learns_masks
        else None
    )
    compact_masks: dict[str, Tensor] | None = None  # once fine-tuning runs on the compact student

    def to_compact(masks: dict[str, Tensor]) -> None:
        nonlocal student, optimizer, scheduler, compact_masks
        student, optimizer, scheduler = compact_for_finetuning(
            student, masks, distiller, lagrangian, optimizer, scheduler, cfg
        )
        trained["student"] = student
        compact_masks = masks

    start_epoch, elapsed = 0, 0.0
    partial = None  # the state's record of an epoch it was written within
    if resume:
        state = run.load_state(_STATE_KEYS, device)
        if state.get("compact_masks") is not None:  # the state is the compact student's
            gates.freeze(state["compact_masks"])
            to_compact(state["compact_masks"])
        start_epoch, elapsed = run.restore(state, trained, optimizer, scheduler, dist)
        for _, gate in gates:
            gate.log_alpha.requires_grad_(not gate.frozen)
        partial = state.get("partial")
    # only once the state fits: a refused resume leaves the run as it was
    run.write_config("prune_config.yaml", cfg, dist)

    augment = SpecAugment(specaug)
    precision = resolve_precision(cfg.precision, device)
    loss = _PruningLoss(
        student,
        distiller,
        gates,
        lagrangian,
        budget,
        teacher_cost,
        cfg.metric,
        {m: 1.0 - c for m, c in cfg.ceilings.items()},
        augment,
        specaug_gen=torch.Generator(),
        seed=cfg.seed,
        step=start_epoch * steps_per_epoch + (partial["progress"]["steps"] if partial else 0),
    )

    def save_state(epoch: int, **extra: Any) -> None:
        compact = {"compact_masks": compact_masks} if compact_masks is not None else {}
        run.save_state(cfg, epoch, elapsed, trained, optimizer, scheduler, **compact, **extra)

    def checkpoint(epoch: int, partial: dict[str, Any]) -> None:
        save_state(epoch, partial=partial | {"distiller_probe": distiller.probe_state()})

    def make_epochs() -> Epochs:
        loss.student = student
        return Epochs(
            Recognizer(student, teacher_rec.features, teacher_rec.tokenizer),
            # the multipliers and frozen gates get no gradient in some steps, hence find_unused
            dist.wrap(trained, loss, find_unused=True),
            _weights(student, distiller),
            optimizer,
            scheduler,
            data,
            augment,
            loss.specaug_gen,
            cfg.seed,
            precision,
            cfg.grad_clip,
            dist,
            checkpoint if cfg.checkpoint_minutes else None,
            60 * cfg.checkpoint_minutes,
        )

    epochs = make_epochs()
    for epoch in range(start_epoch, total_epochs):
        stage = "prune" if epoch < prune_epochs else "finetune"
        froze = stage == "finetune" and not all(g.frozen for _, g in gates)
        if froze:
            _freeze(gates, target_abs, cfg, run, ceilings=ceilings, measure=measure, dist=dist)
        if stage == "finetune" and compact_masks is None and cfg.finetune_compact and compactable(gates):
            to_compact(gates.current_masks())
            epochs = make_epochs()
        if froze and measure is not None:  # masks chosen by timing: a resumed run keeps them
            save_state(epoch)
        if partial is None:
            distiller.probe_next()  # every epoch logs gradient norms measured in it
        else:  # within the epoch: the probe continues where it was
            distiller.load_probe_state(partial["distiller_probe"])
        result = epochs.run(epoch, f"{stage} {epoch + 1}/{total_epochs}", partial)
        partial = None
        if result is None:
            continue
        elapsed += result.seconds
        mask_cost = gates.mask_cost(gates.current_masks())
        run.log(
            {
                "epoch": epoch + 1,
                "stage": stage,
                **result.stats,
                "dev_wer": result.dev["wer"],
                "dev_cer": result.dev["cer"],
                "deterministic_params": as_float(mask_cost.params),
                "deterministic_macs_per_second": as_float(mask_cost.macs_per_second),
                **(
                    {"deterministic_latency_ms": as_float(mask_cost.latency_ms)}
                    if mask_cost.latency_ms is not None
                    else {}
                ),
                "train_seconds": result.train_seconds,
                "precision": precision,
                "elapsed_seconds": elapsed,
            }
        )
        save_state(epoch + 1)
    if not all(g.frozen for _, g in gates):
        _freeze(gates, target_abs, cfg, run, ceilings=ceilings, measure=measure, dist=dist)
    masks = compact_masks if compact_masks is not None else gates.current_masks()
    sliced = student if compact_masks is not None else physically_prune(student, masks)
    pruned = _save_compact(sliced, masks, gates, teacher_rec, teacher_path, teacher_cost, cfg, out, dist)
    if latency is not None:
        pruned.latency_table = Path(cfg.latency_table) if cfg.latency_table else out / LATENCY_TABLE
    return pruned


def one_shot_model(cfg: PruneConfig, teacher: ConformerCTC) -> ConformerCTC:
    """The compact model that a one-shot method (magnitude, magnitude-distill, torch-pruning)
    fine-tunes, before any training: the shape (and so the latency) its run will end with, at
    `cfg`'s target (parameters or MACs)."""
    method = METHODS[cfg.method]
    if method.learns_masks or method.masks not in ("magnitude", "torch-pruning"):
        raise ValueError(f"method {cfg.method} does not fix its shape before training")
    target_abs = cfg.ratio * as_float(conformer_cost(teacher.config).value(cfg.metric))
    student = _student(method, teacher, target_abs, cfg.metric)
    if method.masks == "torch-pruning":
        return student
    gates = ConformerGates.attach(student, cfg.structures, cfg.init_unit_log_alpha, cfg.init_module_log_alpha)
    masks = magnitude_masks(gates, target_abs, cfg.metric)
    gates.freeze(masks)
    return physically_prune(student, gates.current_masks())


def gated_student(
    cfg: PruneConfig, teacher: ConformerCTC, target_abs: float, latency: LatencyModel | None = None
) -> tuple[ConformerCTC, ConformerGates, LayerwiseDistiller]:
    """What `cfg.method` trains, on the teacher's device: the student (`_student`) with the gates
    of `cfg.structures` attached (none for a method without gates), and the distiller that holds
    the frozen teacher (CTC only for a method that does not distil)."""
    method = METHODS[cfg.method]
    device = next(teacher.parameters()).device
    student = _student(method, teacher, target_abs, cfg.metric, latency).to(device)
    gates = ConformerGates.attach(
        student,
        cfg.structures if method.has_gates else [],
        cfg.init_unit_log_alpha,
        cfg.init_module_log_alpha,
        soft=method.learns_masks and cfg.mask_switch == "fold",
    )
    gates.latency = latency
    distill_cfg = copy.deepcopy(cfg.distill) if method.distill else cfg.distill.ctc_only()
    distiller = LayerwiseDistiller(
        teacher, student.config.n_layers, student.config.d_model, distill_cfg, cfg.inter_ctc
    )
    return student, gates, distiller.to(device)


def _student(
    method: Method,
    teacher: ConformerCTC,
    target_abs: float,
    metric: Metric,
    latency: LatencyModel | None = None,
) -> ConformerCTC:
    """The model training starts from: the teacher itself (learned or magnitude masks; unpruned for
    the control), the library's pruned teacher (torch-pruning) or a narrower dense model from
    random weights."""
    if method.masks == "dense":
        if metric != "params":
            raise ValueError(f"method {method.name} takes a parameter target (--target-params)")
        return build_model(dense_config_like(teacher.config, target_abs))
    if method.masks == "torch-pruning":  # pruned by the library before training, without gates
        return torch_pruning_prune(teacher, target_abs, metric, latency=latency)
    return copy.deepcopy(teacher)


@dataclass
class _PruningLoss:
    """The loss of one pruning step: distillation (+ CTC), plus the Lagrangian while the budget
    applies; the expected sparsity and the multipliers are logged throughout. Gate sampling is
    seeded from (seed, step), so every rank and a resumed run draw the same masks."""

    student: ConformerCTC
    distiller: LayerwiseDistiller
    gates: ConformerGates
    lagrangian: Lagrangian
    budget: Budget
    teacher_cost: Cost
    metric: Metric
    ceilings: dict[Metric, float]  # the final sparsity each ceiling asks for, by metric
    specaug: SpecAugment
    specaug_gen: torch.Generator
    seed: int
    step: int

    def __call__(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        self.gates.set_step(self.seed, self.step)
        batch.feats = self.specaug(batch.feats, batch.feat_lengths, generator=self.specaug_gen)
        loss, parts = self.distiller.loss(self.student, batch, self.gates.remaining_layers())
        expected = self.gates.expected_cost()
        sparsity = expected_sparsity(expected.value(self.metric), self.teacher_cost.value(self.metric))
        target = self.budget.target(self.step)
        if target is not None:
            lagr = self.lagrangian(torch.as_tensor(sparsity), target)
            loss = loss + lagr
            parts.update(lagrangian=float(lagr.detach()), target_sparsity=target)
        parts.update(
            expected_sparsity=as_float(sparsity),
            lambda1=float(self.lagrangian.lambda1.detach()),
            lambda2=float(self.lagrangian.quadratic.detach()),
        )
        for metric, final in self.ceilings.items():
            capped = expected_sparsity(expected.value(metric), self.teacher_cost.value(metric))
            least = self.budget.target(self.step, final)
            if least is not None:
                term = self.lagrangian.ceiling(metric, torch.as_tensor(capped), least)
                loss = loss + term
                parts[f"lagrangian_{metric}"] = float(term.detach())
            lambda1, quadratic = self.lagrangian.multipliers(metric)
            parts.update(
                {
                    f"expected_sparsity_{metric}": as_float(capped),
                    f"lambda1_{metric}": float(lambda1.detach()),
                    f"lambda2_{metric}": float(quadratic.detach()),
                }
            )
        self.step += 1
        return loss, parts


def _save_compact(
    compact: ConformerCTC,
    masks: dict[str, Tensor],
    gates: ConformerGates,
    teacher_rec: Recognizer,
    teacher_path: str | Path,
    teacher_cost: Cost,
    cfg: PruneConfig,
    out: Path,
    dist: Distributed,
) -> PruneResult:
    """The last stage: write the compact model (the student sliced by its fixed `masks`)."""
    pruned = without_gates(compact).eval()
    pruned_cost = conformer_cost(pruned.config, latency=gates.latency)
    model_path = out / "model.pt"
    if dist.is_main:
        save_recognizer(
            model_path,
            Recognizer(pruned, teacher_rec.features, teacher_rec.tokenizer),
            teacher=str(teacher_path),
            teacher_params=int(as_float(teacher_cost.params)),
            prune_config=to_dict(cfg),
            masks={k: v.cpu().tolist() for k, v in masks.items()},
        )
    return PruneResult(model_path, masks, teacher_cost, pruned_cost)


LatencyMeter = Callable[[dict[str, Tensor]], float]  # masks -> measured fraction of the teacher's latency


def _latency_meter(
    student: Callable[[], ConformerCTC], teacher: ConformerCTC, table: LatencyModel
) -> LatencyMeter:
    """The measured latency of `student()` sliced by given masks, as a fraction of `teacher`'s,
    on the table's runtime, threads, batch and length (`measured_ratios`: in new processes, not in
    this one, whose training state would skew it)."""

    def measure(masks: dict[str, Tensor]) -> float:
        from conformer_prune.evaluate.profile import measured_ratios

        with torch.random.fork_rng(devices=[]):  # the training's random stream is not consumed
            sliced = physically_prune(student(), masks)
        # (measured_ratios sends each model's config and a CPU copy of its weights)
        models = [teacher, sliced]
        return measured_ratios(models, table.runtime, table.threads, table.batch, table.seconds).ratios[1]

    return measure


def measured_masks(
    gates: ConformerGates,
    target_abs: float,
    cfg: PruneConfig,
    ceilings: dict[Metric, float],
    measure: LatencyMeter,
    log: Callable[[dict[str, Any]], None] = lambda record: None,
) -> dict[str, Tensor]:
    """The deterministic masks of a run whose latency target (or `max_latency` ceiling) is checked
    by measurement: while the sliced model's measured fraction of the teacher's latency misses the
    goal by more than half the tolerance (for a ceiling: exceeds it by more, or, once a try has
    exceeded it, falls under it by more than 1.5 times the tolerance), the absolute latency budget
    the masks are chosen under is corrected (`_next_budget`: rescaled by goal / measured after the
    first try, then along the line through two tries), up to `cfg.latency_corrections` times; it
    stops without timing them when the new budget gives masks already measured. Returns the masks
    that came closest (the first of equals). `target_abs` and `ceilings` are absolute costs, as
    `ConformerGates.deterministic_masks` takes them; every try is passed to `log`."""
    on_target = cfg.metric == "latency"
    goal = cfg.ratio if on_target else cfg.ceilings["latency"]
    budget = target_abs if on_target else ceilings["latency"]
    teacher_predicted = budget / goal
    tried: list[tuple[float, dict[str, Tensor]]] = []
    points: list[tuple[float, float]] = []  # (budget, measured fraction) of each try
    binding = on_target  # a ceiling binds once a try has measured over it
    for attempt in range(cfg.latency_corrections + 1):
        if on_target:
            masks = gates.deterministic_masks(target=budget, metric="latency", ceilings=ceilings)
        else:
            limits = {**ceilings, "latency": budget}
            masks = gates.deterministic_masks(target=target_abs, metric=cfg.metric, ceilings=limits)
        if any(all(torch.equal(masks[k], m) for k, m in earlier.items()) for _, earlier in tried):
            break  # masks measured already: the budget moved less than a unit
        ratio = measure(masks)
        error = ratio / goal - 1
        binding = binding or error > 0
        # a target is missed either way; a ceiling when over it, or, once it binds, when a
        # correction went further under it than the tolerance (more pruned than it asks)
        miss = abs(error) if on_target else max(error, 0.0) + binding * max(-error - LATENCY_TOLERANCE, 0.0)
        predicted = as_float(gates.mask_cost(masks).value("latency"))
        log(
            {
                "event": "latency_measured",
                "try": attempt,
                "kind": "target" if on_target else "ceiling",
                "goal": goal,
                "budget_ratio": budget / teacher_predicted,
                "predicted_ratio": predicted / teacher_predicted,
                "measured_ratio": ratio,
            }
        )
        tried.append((miss, masks))
        points.append((budget, ratio))
        if miss <= LATENCY_TOLERANCE / 2:
            break
        budget = _next_budget(points, goal)
    return min(tried, key=lambda t: t[0])[1]


def _next_budget(points: list[tuple[float, float]], goal: float) -> float:
    """The next latency budget from the tries so far, (budget, measured fraction) each: the budget
    where the line through two tries meets `goal` (the two closest on either side of it, else the
    last two); or the last budget rescaled by goal / measured, from one try, from a line that does
    not rise, or where the line lands outside [2/3, 3/2] of that rescaling (a line through two
    nearly equal measurements extrapolates their noise). Measured latency is not proportional to
    the table's: on the quick teacher it moved about twice as fast, so the rescaling alone went
    from 0.589 to 0.444 of the teacher."""
    budget, ratio = points[-1]
    proportional = budget * goal / ratio
    if len(points) < 2:
        return proportional
    below = [p for p in points if p[1] < goal]
    above = [p for p in points if p[1] >= goal]
    if below and above:
        (b0, r0), (b1, r1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    else:
        (b0, r0), (b1, r1) = points[-2], points[-1]
    if (r1 - r0) * (b1 - b0) <= 0:  # noise, or masks that did not move: no slope to follow
        return proportional
    line = b0 + (goal - r0) * (b1 - b0) / (r1 - r0)
    return line if 2 / 3 * proportional <= line <= 3 / 2 * proportional else proportional


def _freeze(
    gates: ConformerGates,
    target_abs: float,
    cfg: PruneConfig,
    run: RunDir,
    masks: dict[str, Tensor] | None = None,
    ceilings: dict[Metric, float] | None = None,
    measure: LatencyMeter | None = None,
    dist: Distributed | None = None,
) -> None:
    """Fix the masks (the learned gates' deterministic ones, under the target and the `ceilings`
    (absolute costs), unless `masks` is given; checked by `measure` where it is given, on rank 0,
    see `measured_masks`) and log how close they come to each."""
    if masks is None and measure is not None and cfg.latency_corrections > 0:
        check, limits = measure, ceilings or {}
        device = next(gates.model.parameters()).device
        chosen = (dist or Distributed()).from_main(  # sent from the CPU: ranks differ in device
            lambda: {
                name: mask.cpu()
                for name, mask in measured_masks(gates, target_abs, cfg, limits, check, run.log).items()
            }
        )
        masks = {name: mask.to(device) for name, mask in chosen.items()}
    if masks is None:
        masks = gates.deterministic_masks(target=target_abs, metric=cfg.metric, ceilings=ceilings)
    gates.fold(masks)  # soft gates only (mask_switch "fold"): kept units keep their E[z]
    gates.freeze(masks)
    cost = gates.mask_cost(masks)
    achieved = as_float(cost.value(cfg.metric))
    run.log(
        {
            "event": "masks_frozen",
            "metric": cfg.metric,
            "target": target_abs,
            "achieved": achieved,
            "ratio_error": achieved / target_abs - 1,
            **{
                f"ceiling_{m}": {"ceiling": c, "achieved": as_float(cost.value(m))}
                for m, c in (ceilings or {}).items()
            },
        }
    )
