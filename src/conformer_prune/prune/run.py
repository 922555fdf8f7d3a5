"""The pruning engine: learn masks under a budget with distillation, fix them, fine-tune, slice.

Usage:
    conformer-prune prune --teacher runs/teacher/model.pt --data corpus/train --dev corpus/dev \
        --target-params 0.5 --out runs/pruned-50

Stages, in one run directory (resumable at every epoch boundary from ``prune_state.pt``, which
holds the student with its gate logits, the distillation projections, the Lagrange multipliers,
the optimizer with all three parameter groups, the scheduler and the stage):

1. pruning (``prune_epochs``): the student (a copy of the teacher) carries hard-concrete gates;
   loss = distillation (+ CTC) + the Lagrangian budget; the target ramps up over a warm-up;
2. at the boundary the masks become deterministic and are adjusted to meet the target exactly
   (within one unit), then frozen;
3. fine-tuning (``finetune_epochs``): fixed masks, distillation continues;
4. physical pruning: the compact model is written to ``model.pt``.

Launched by torchrun, every process trains on its share of each step's batches with DDP over the
student (gate logits included), the projections and the multipliers, and rank 0 validates and
writes the run directory (see `conformer_prune.distributed`):

    torchrun --nproc_per_node 8 -m conformer_prune.cli prune --teacher runs/teacher/model.pt \
        --data corpus/train --dev corpus/dev --target-params 0.5 --out runs/pruned-50
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from conformer_prune.config import to_dict
from conformer_prune.data.corpus import Utterance
from conformer_prune.data.dataset import Batch
from conformer_prune.data.features import SpecAugment
from conformer_prune.distill.layerwise import LayerwiseDistiller
from conformer_prune.distributed import Distributed, launch
from conformer_prune.model.checkpoint import Recognizer, load_recognizer, save_recognizer
from conformer_prune.model.conformer import build_model
from conformer_prune.prune.budget import Lagrangian, target_sparsity
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import Cost, as_float, conformer_cost, dense_counts
from conformer_prune.prune.dense import dense_config_like
from conformer_prune.prune.gates import ConformerGates
from conformer_prune.prune.magnitude import magnitude_masks
from conformer_prune.prune.physical import physically_prune
from conformer_prune.prune.torch_pruning import torch_pruning_prune
from conformer_prune.train.loop import (
    append_log,
    lr_schedule,
    make_data,
    seed_epoch,
    train_one_epoch,
    validate,
)
from conformer_prune.utils import (
    atomic_save,
    atomic_write_text,
    load_state,
    log_size,
    resolve_device,
    restore,
    truncate_log,
)

__all__ = ["PruneResult", "make_prune_optimizer", "run_pruning"]


@dataclass
class PruneResult:
    model_path: Path
    masks: dict[str, Tensor]
    teacher_cost: Cost
    pruned_cost: Cost


def make_prune_optimizer(
    weights: list[nn.Parameter], gates: list[Tensor], lagrangian: Lagrangian, cfg: PruneConfig
) -> torch.optim.AdamW:
    """One AdamW, three groups: weights (decay on matrices), gate logits (own lr, no decay),
    Lagrange multipliers (own lr, gradient ascent)."""
    decay = [p for p in weights if p.dim() >= 2]
    no_decay = [p for p in weights if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "name": "weights"},
            {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr, "name": "weights_no_decay"},
            {"params": gates, "weight_decay": 0.0, "lr": cfg.gate_lr, "name": "gates"},
            {
                "params": list(lagrangian.parameters()),
                "weight_decay": 0.0,
                "lr": cfg.lambda_lr,
                "maximize": True,
                "name": "lagrange",
            },
        ],
        lr=cfg.lr,
    )


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
    state_path = out / "prune_state.pt"
    if state_path.exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a pruning run; pass --resume to continue it or pick another --out"
        )
    if resume and not state_path.exists():
        raise FileNotFoundError(f"--resume: no {state_path} to resume from")
    out.mkdir(parents=True, exist_ok=True)
    device = dist.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    teacher_rec = load_recognizer(teacher_path)
    teacher = teacher_rec.model.to(device).eval()
    teacher_cost = conformer_cost(teacher.config, dense_counts(teacher.config))
    target_abs = cfg.ratio * as_float(teacher_cost.value(cfg.metric))
    dense = cfg.method in ("scratch", "dense-distill")
    if dense:  # a narrower dense model of the target size, from random weights, without gates
        if cfg.metric != "params":
            raise ValueError(f"method {cfg.method} takes a parameter target (--target-params)")
        student = build_model(dense_config_like(teacher.config, target_abs)).to(device)
    elif cfg.method == "torch-pruning":  # pruned by the library before training, without gates
        student = torch_pruning_prune(teacher, target_abs, cfg.metric).to(device)
    else:
        student = copy.deepcopy(teacher)
    no_gates = dense or cfg.method == "torch-pruning"
    gates = ConformerGates.attach(
        student, [] if no_gates else cfg.structures, cfg.init_unit_log_alpha, cfg.init_module_log_alpha
    )
    distill_cfg = copy.deepcopy(cfg.distill)
    if cfg.method in ("l0", "magnitude", "scratch", "torch-pruning"):  # CTC loss only
        distill_cfg.layer_weight = distill_cfg.kl_weight = 0.0
    distiller = LayerwiseDistiller(teacher, student.config.n_layers, student.config.d_model, distill_cfg).to(
        device
    )
    lagrangian = Lagrangian().to(device)
    # one-shot and dense baselines: nothing is learned about the shape, every epoch fine-tunes
    # with a fixed one (the same total number of steps as the method)
    one_shot = cfg.method.startswith("magnitude")
    prune_epochs = 0 if one_shot or no_gates else cfg.prune_epochs
    if one_shot and not resume:
        _freeze(gates, target_abs, cfg, out, magnitude_masks(gates, target_abs, cfg.metric))

    data = make_data(
        train_utts,
        dev_utts,
        teacher_rec.tokenizer,
        teacher_rec.features,
        cfg.max_frames,
        cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    weights = [p for n, p in student.named_parameters() if ".gate" not in n] + list(distiller.parameters())
    optimizer = make_prune_optimizer(weights, gates.log_alphas(), lagrangian, cfg)
    steps_per_epoch = len(data.sampler)
    total_epochs = cfg.prune_epochs + cfg.finetune_epochs
    weight_schedule = lr_schedule(cfg.warmup_steps, total_epochs * steps_per_epoch, 0.02)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [weight_schedule, weight_schedule, lambda _: 1.0, lambda _: 1.0]
    )
    ramp_steps = int(cfg.target_warmup * prune_epochs * steps_per_epoch)
    final_sparsity = 1.0 - cfg.ratio
    start_epoch, elapsed = 0, 0.0
    if resume:
        parts = dict(student=student, distiller=distiller, lagrangian=lagrangian)
        state = load_state(state_path, [*parts, "optimizer", "scheduler", "epoch", "elapsed"], device)
        restore(state_path, state, **parts, optimizer=optimizer, scheduler=scheduler)
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        if dist.is_main:
            truncate_log(out / "log.jsonl", state.get("log_bytes"))
        for _, gate in gates:
            gate.log_alpha.requires_grad_(not gate.frozen)
    if dist.is_main:  # only once the state fits: a refused resume leaves the run as it was
        atomic_write_text(out / "prune_config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    specaug = SpecAugment(cfg.specaug)
    specaug_gen = torch.Generator()
    step = start_epoch * steps_per_epoch

    def loss_fn(batch: Batch) -> tuple[Tensor, dict[str, float]]:
        nonlocal step
        gates.set_step(cfg.seed, step)
        batch.feats = specaug(batch.feats, batch.feat_lengths, generator=specaug_gen)
        loss, parts = distiller.loss(student, batch)
        expected = gates.expected_cost()
        sparsity = 1.0 - expected.value(cfg.metric) / teacher_cost.value(cfg.metric)
        if step < prune_epochs * steps_per_epoch:
            target = target_sparsity(step, ramp_steps, final_sparsity)
            lagr = lagrangian(torch.as_tensor(sparsity), target)
            loss = loss + lagr
            parts.update(lagrangian=float(lagr.detach()), target_sparsity=target)
        parts.update(
            expected_sparsity=as_float(sparsity),
            lambda1=float(lagrangian.lambda1.detach()),
            lambda2=float(lagrangian.lambda2.detach()),
        )
        step += 1
        return loss, parts

    # the multipliers and frozen gates get no gradient in some steps, hence find_unused
    step_loss = dist.wrap(
        {"student": student, "distiller": distiller, "lagrangian": lagrangian}, loss_fn, find_unused=True
    )
    rec = Recognizer(student, teacher_rec.features, teacher_rec.tokenizer)
    for epoch in range(start_epoch, total_epochs):
        stage = "prune" if epoch < prune_epochs else "finetune"
        if stage == "finetune" and not all(g.frozen for _, g in gates):
            _freeze(gates, target_abs, cfg, out)
        seed_epoch(cfg.seed, epoch, data.sampler, specaug_gen, dist.rank)
        student.train()
        specaug.train()
        t0 = time.perf_counter()
        stats = train_one_epoch(
            step_loss,
            weights,
            data.loader,
            optimizer,
            scheduler,
            device,
            cfg.precision,
            cfg.grad_clip,
            desc=f"{stage} {epoch + 1}/{total_epochs}",
            total=steps_per_epoch,
            dist=dist,
        )
        train_seconds = time.perf_counter() - t0
        if not dist.is_main:  # the others wait for rank 0 in their next step
            continue
        student.eval()
        dev = validate(rec, data.dev, device)
        elapsed += time.perf_counter() - t0
        mask_cost = gates.mask_cost(gates.current_masks())
        append_log(
            out / "log.jsonl",
            {
                "epoch": epoch + 1,
                "stage": stage,
                **stats,
                "dev_wer": dev["wer"],
                "dev_cer": dev["cer"],
                "deterministic_params": as_float(mask_cost.params),
                "deterministic_macs_per_second": as_float(mask_cost.macs_per_second),
                "train_seconds": train_seconds,
                "elapsed_seconds": elapsed,
            },
        )
        atomic_save(
            {
                "student": student.state_dict(),
                "distiller": distiller.state_dict(),
                "lagrangian": lagrangian.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "elapsed": elapsed,
                "config": to_dict(cfg),
                "log_bytes": log_size(out / "log.jsonl"),
            },
            state_path,
        )
    if not all(g.frozen for _, g in gates):
        _freeze(gates, target_abs, cfg, out)
    masks = gates.current_masks()
    pruned = physically_prune(student, masks)
    pruned_cost = conformer_cost(pruned.config, dense_counts(pruned.config))
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


def _freeze(
    gates: ConformerGates,
    target_abs: float,
    cfg: PruneConfig,
    out: Path,
    masks: dict[str, Tensor] | None = None,
) -> None:
    """Fix the masks (the learned gates' deterministic ones unless `masks` is given) and log how
    close they come to the target."""
    if masks is None:
        masks = gates.deterministic_masks(target=target_abs, metric=cfg.metric)
    gates.freeze(masks)
    achieved = as_float(gates.mask_cost(masks).value(cfg.metric))
    append_log(
        out / "log.jsonl",
        {
            "event": "masks_frozen",
            "metric": cfg.metric,
            "target": target_abs,
            "achieved": achieved,
            "ratio_error": achieved / target_abs - 1,
        },
    )
