"""Data-parallel training and pruning with torchrun: one process per device, DDP gradients.

Usage:
    torchrun --nproc_per_node 8 -m conformer_prune.cli prune --teacher runs/teacher/model.pt \
        --data corpus/train --dev corpus/dev --target-params 0.5 --out runs/pruned-50
    # two nodes: the same command on each, with
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0:29500 \
        --rdzv_id prune50 -m conformer_prune.cli prune ...

Without torchrun (no ``WORLD_SIZE`` in the environment) a run is one process, exactly as before.

- Backend: NCCL when the device is CUDA (process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), gloo on
  the CPU.
- Data: every rank builds the same seeded batch list of an epoch and takes every W-th batch of it
  (`BucketBatchSampler`), so step i trains on batches iW ... iW + W - 1 of the single-process list.
  The last (number of batches mod W) batches of an epoch are left out, a different set every epoch
  as the order is reshuffled, so that every rank takes the same number of steps and no collective
  waits for a rank that has run out. ``max_frames`` stays per rank: a step's global batch holds up to
  W x max_frames padded frames.
- Loss: rank k scales its loss L_k by W B_k / B (B_k its utterances, B those of the step on all
  ranks; one all-reduce), so DDP's average of the gradients is sum_k (B_k / B) grad L_k. For CTC,
  a mean over utterances, that is the gradient of the union batch; a term that is the same on
  every rank (the Lagrangian budget) keeps its weight 1, as sum_k B_k / B = 1. The distillation
  terms, frame means within a micro-batch, are weighted by the micro-batch's share of utterances.
- BatchNorm: statistics per rank, so the exact single-process reference of a step is gradient
  accumulation over the same micro-batches weighted by B_k / B (the union batch where nothing
  couples utterances); SyncBatchNorm would cost two collectives per convolution module and refuses
  CPU tensors (torch 2.13). DDP broadcasts rank 0's buffers (running statistics, frozen masks)
  before every forward, so rank 0's running statistics are the ones that are kept.
- Models: DDP over every trained module (the student with its gate logits, the distillation
  projections, the Lagrange multipliers), so they stay identical on all ranks; the frozen teacher
  is not wrapped. Gates are sampled from (seed, step), the same masks on every rank; dropout and
  SpecAugment are seeded per rank (rank 0 draws those of a single process).
- Validation: every rank transcribes every W-th dev utterance with rank 0's buffers, and rank 0
  scores the gathered transcripts (the error rates of the whole dev set, as one process computes
  them).
- Rank 0 alone shows progress, logs and writes checkpoints; every rank reads the same checkpoint on
  --resume (so --out must be on a file system all nodes share).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from conformer_prune.data.dataset import Batch

__all__ = ["SINGLE_PROCESS", "Distributed", "LossFn", "is_main_process", "launch"]

LossFn = Callable[[Batch], tuple[Tensor, dict[str, float]]]
T = TypeVar("T")

# Rank 0 writes checkpoints and logs (and, after a pruning run, evaluates) while the other ranks
# wait in their next collective; give it time.
_TIMEOUT = timedelta(minutes=30)


class _Replicated(nn.Module):
    """The trained modules under one root, so that DDP averages all their gradients; the forward
    pass is the loss."""

    def __init__(self, modules: dict[str, nn.Module], loss_fn: LossFn) -> None:
        super().__init__()
        self.trained = nn.ModuleDict(modules)
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return self.loss_fn(batch)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (the only rank of one without torchrun).

    Args:
        rank: global rank.
        world_size: number of processes.
        device: this process's device.
        enabled: a process group exists (collectives run, even with one process).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, modules: dict[str, nn.Module], loss_fn: LossFn, find_unused: bool = False) -> LossFn:
        """`loss_fn` computed through DDP over `modules` (they hold every trained parameter), or
        `loss_fn` itself in a single process. `find_unused` is needed when some parameters get no
        gradient in some steps (the multipliers while fine-tuning, frozen gates)."""
        if not self.enabled:
            return loss_fn
        return DistributedDataParallel(
            _Replicated(modules, loss_fn),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    def batch_share(self, size: int, finite: bool) -> tuple[float, bool]:
        """The loss weight W B_k / B of this rank's `size` = B_k utterances among the step's B,
        and whether the loss is finite on every rank."""
        if not self.enabled:
            return 1.0, finite
        counts = torch.tensor([float(size), float(not finite)], dtype=torch.float64, device=self.device)
        dist.all_reduce(counts)
        total, non_finite = counts.tolist()
        return self.world_size * size / total, non_finite == 0

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Every value summed over the ranks (the same keys on every rank)."""
        if not self.enabled:
            return values
        keys = sorted(values)
        summed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return dict(zip(keys, summed.tolist(), strict=True))

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (for decisions taken on measured times)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def buffers_from_main(self, module: nn.Module) -> None:
        """Every buffer of `module` (BatchNorm statistics, frozen masks) set to rank 0's."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def gather(self, value: T) -> list[T] | None:
        """Every rank's `value` (picklable), in rank order, on rank 0; None on the others."""
        if not self.enabled:
            return [value]
        values: list[T] | None = [value] * self.world_size if self.is_main else None
        dist.gather_object(value, values, dst=0)
        return values

    def from_main(self, make: Callable[[], T]) -> T:
        """`make()` computed on rank 0 and sent to every rank (a picklable value)."""
        if not self.enabled:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]


SINGLE_PROCESS = Distributed()


def is_main_process() -> bool:
    """Rank 0 of the current (or just finished) torchrun run, or a process without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def launch(device: torch.device) -> Iterator[Distributed]:
    """Join torchrun's process group when the environment names one, else run as one process.

    A group this call creates is destroyed when the block ends, after a barrier, so that no rank
    leaves while rank 0 still writes; a group that already exists is used and left alone. When the
    block raises, the group is left to the dying process: its traceback still holds the DDP
    wrappers, and a DDP reducer that drops the last reference to a destroyed gloo group can
    deadlock (its destructor joins gloo's threads holding the GIL; seen with torch 2.13, see
    pytorch/pytorch#56297).

    Args:
        device: the configured device; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    if not (dist.is_available() and (dist.is_initialized() or "WORLD_SIZE" in os.environ)):
        yield Distributed(device=device)
        return
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.index is not None and device.index != local_rank:
            raise ValueError(
                f"under torchrun process LOCAL_RANK={local_rank} uses cuda:{local_rank}; "
                f"set device to auto or cuda, found {device}"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=_TIMEOUT, device_id=device if device.type == "cuda" else None
        )
    yield Distributed(dist.get_rank(), dist.get_world_size(), device, enabled=True)
    if created:
        gc.collect()  # DDP wrappers sit in reference cycles: free them while the group lives
        dist.barrier()
        dist.destroy_process_group()
