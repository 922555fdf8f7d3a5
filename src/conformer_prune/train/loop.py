"""The training engine: plain PyTorch, resumable at every epoch boundary and, in a single process,
within an epoch. Pruning runs on it too.

Usage:
    conformer-prune train --data corpus/train --dev corpus/dev --out runs/teacher \
        --config teacher [--resume]

A run directory holds ``config.yaml`` (resolved), ``train_state.pt`` (model, optimizer, scheduler,
epoch; written atomically every epoch, and every ``checkpoint_minutes`` within one), ``model.pt``
(the best recognizer on dev so far) and ``log.jsonl`` (one line per epoch). Each epoch seeds
batching, SpecAugment and dropout from ``seed + epoch``, so a run resumed at a boundary follows
exactly the path of an uninterrupted one. A state written within an epoch also holds the epoch's
progress (`EpochProgress`) and the random generators' states, and a run resumed from it skips the
epoch's batches already trained on and follows the same path too (an epoch of a large corpus takes
hours). Under torchrun the states are written at epoch boundaries only.

The engine, shared with `conformer_prune.prune.run`: `RunDir` (the guard against starting over a
run, the resolved config, the resumable state and the log), `start_run` (threads and seed),
`Epochs` (the body of an epoch: seeding it, `train_one_epoch`, `validate`) and `RunDir.restore`. A
run plugs in its model, loss, parameter groups and stage logic.

Launched by torchrun, every process trains on its share of each step's batches with DDP, and rank 0
validates and writes the run directory (see `conformer_prune.distributed`):

    torchrun --nproc_per_node 8 -m conformer_prune.cli train --data corpus/train --dev corpus/dev \
        --out runs/teacher --config teacher
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from conformer_prune.config import to_dict
from conformer_prune.data.corpus import Utterance
from conformer_prune.data.dataset import Batch, BucketBatchSampler, SpeechDataset, collate
from conformer_prune.data.features import LogMelFeatures, SpecAugment
from conformer_prune.data.tokenizer import Tokenizer
from conformer_prune.distributed import SINGLE_PROCESS, Distributed, LossFn, is_main_process, launch
from conformer_prune.evaluate.metrics import error_rates
from conformer_prune.evaluate.run import recognize_dataset
from conformer_prune.model.checkpoint import Recognizer, save_recognizer
from conformer_prune.model.conformer import FEATURE_FRAMES_PER_SECOND, SUBSAMPLING, ConformerCTC, build_model
from conformer_prune.train.config import InterCTCConfig, TrainConfig
from conformer_prune.utils import (
    atomic_save,
    atomic_write_text,
    keep_freed_memory,
    load_state,
    log_size,
    resolve_device,
    truncate_log,
)
from conformer_prune.utils import restore as restore_state

__all__ = [
    "EpochProgress",
    "EpochResult",
    "Epochs",
    "RunDir",
    "TrainData",
    "append_log",
    "autocast",
    "ctc_loss",
    "lr_schedule",
    "make_data",
    "make_optimizer",
    "run_training",
    "seed_epoch",
    "start_run",
    "train_one_epoch",
    "validate",
]


_STATE_KEYS = ["model", "optimizer", "scheduler", "epoch", "best_wer", "elapsed", "tokenizer"]


@dataclass
class TrainData:
    """The training loader (its sampler reshuffles per epoch) and the dev set."""

    sampler: BucketBatchSampler
    loader: DataLoader[Any]
    dev: SpeechDataset


def make_data(
    train_utts: list[Utterance],
    dev_utts: list[Utterance],
    tokenizer: Tokenizer,
    features: LogMelFeatures,
    max_frames: int,
    seed: int,
    cache: bool = True,
    rank: int = 0,
    world_size: int = 1,
    subsampling_factor: int = SUBSAMPLING,
    sorted_epochs: int = 0,
    speeds: tuple[float, ...] = (1.0,),
    pad_frames_to: int = 1,
) -> TrainData:
    """Datasets and a loader of this rank's batches (every `world_size`-th of the epoch's list);
    `subsampling_factor`: the model's, which decides which utterances are too short for CTC;
    `speeds`: the training set's speed perturbation (see `SpeechDataset`); `pad_frames_to`: the
    multiple a batch's frame axis is padded to (`BucketBatchSampler`)."""
    train_set = SpeechDataset(
        train_utts,
        tokenizer,
        features,
        cache,
        max_frames=max_frames,
        subsampling_factor=subsampling_factor,
        speeds=speeds,
    )
    dev_set = SpeechDataset(dev_utts, tokenizer, features, cache=True, training=False)
    sampler = BucketBatchSampler(
        train_set.frames,
        max_frames,
        seed=seed,
        num_replicas=world_size,
        rank=rank,
        sorted_epochs=sorted_epochs,
        pad_frames_to=pad_frames_to,
    )
    if len(sampler) == 0:
        raise ValueError(
            f"the training set makes fewer batches of {max_frames} frames than the {world_size} "
            "ranks; lower max_frames"
        )
    pad = functools.partial(collate, pad_frames_to=pad_frames_to)
    return TrainData(sampler, DataLoader(train_set, batch_sampler=sampler, collate_fn=pad), dev_set)


def seed_epoch(
    seed: int, epoch: int, sampler: BucketBatchSampler, generator: torch.Generator, rank: int = 0
) -> None:
    """Seed dropout, batching and augmentation of `epoch`, so a resumed run repeats it exactly.
    Ranks draw their own dropout and SpecAugment masks (rank 0 those of a single process)."""
    torch.manual_seed(seed * 100003 + epoch + (rank << 32))
    generator.manual_seed(seed * 100003 + epoch + (rank << 32))
    sampler.set_epoch(epoch)


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Print an epoch's record and append it to a JSON-lines log (rank 0 only under torchrun)."""
    if not is_main_process():
        return
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
    with open(path, "a", encoding="utf-8") as log_file:
        log_file.write(json.dumps(record) + "\n")


def ctc_loss(
    model: ConformerCTC, batch: Batch, inter: InterCTCConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """CTC loss averaged over utterances (each normalised by its target length), with `inter`'s
    intermediate CTC terms on earlier blocks' outputs (through the same CTC head) if it lists any.
    The parts logged: "ctc" (the last block's) and "inter_ctc" (the intermediate terms' mean)."""
    targets = (batch.targets, batch.target_lengths)
    if inter is None or not inter.layers:
        log_probs, lengths = model(batch.feats, batch.feat_lengths)
        loss = model.ctc_loss(log_probs, lengths, *targets)
        return loss, {"ctc": float(loss.detach())}
    outputs: list[Tensor] = []
    x, lengths = model.encoder(batch.feats, batch.feat_lengths, outputs)
    read = [x, *(outputs[k - 1] for k in inter.layers)]  # the last block's output, then the others
    final, *terms = (model.ctc_loss(model.log_probs(y), lengths, *targets) for y in read)
    loss = inter.loss(final, terms)
    inter_mean = sum(float(t.detach()) for t in terms) / len(terms)
    return loss, {"ctc": float(final.detach()), "inter_ctc": inter_mean}


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and convolution kernels only (not biases or norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "weights"},
        {"params": no_decay, "weight_decay": 0.0, "name": "biases_norms"},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_schedule(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# x86 and Arm CPU flags of native bfloat16 arithmetic (/proc/cpuinfo)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16(device: torch.device, cpuinfo: str | None = None) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA device that supports it, or a CPU with
    one of `BF16_CPU_FLAGS` in /proc/cpuinfo (`cpuinfo`: its text, read when None; a system
    without it counts as native, so nothing changes there). Without them PyTorch emulates bfloat16
    matrix products: on an AMD EPYC with AVX2 alone, a bf16 matmul ran 50x slower than fp32 and a
    pruning step 10x slower (26 s against 2.7 s, 2 threads)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.split(":", 1)[0].strip() in ("flags", "Features")
        for flag in line.split(":", 1)[1].split()
    }
    return bool(flags & set(BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """The precision a run computes in: `precision`, except "bf16" on a device without native
    bfloat16 (`native_bf16`), which runs in fp32 (more exact, and many times faster there than
    emulated bf16) with a message saying so. Runs log the precision they used."""
    if precision == "bf16" and not native_bf16(device, cpuinfo):
        print(
            f"precision bf16 asked, fp32 used: this {device.type} has no native bfloat16 (none of "
            f"{', '.join(BF16_CPU_FLAGS)}), where bf16 autocast runs about 10x slower than fp32",
            flush=True,
        )
        return "fp32"
    return precision


@dataclass
class EpochProgress:
    """How far an epoch has come: its steps, the sums of its logged loss parts, its audio frames
    and its training seconds (what a state written within the epoch records of it)."""

    steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    audio_frames: int = 0
    seconds: float = 0.0


def train_one_epoch(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    loader: Iterator[Batch] | DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    precision: str,
    grad_clip: float,
    desc: str,
    total: int | None = None,
    dist: Distributed = SINGLE_PROCESS,
    progress: EpochProgress | None = None,
    checkpoint: Callable[[EpochProgress], None] | None = None,
    checkpoint_seconds: float = 0.0,
    dataset: object = None,
    frames_per_second: float = FEATURE_FRAMES_PER_SECOND,
) -> dict[str, float]:
    """One pass; returns the mean of every logged loss part and the audio seconds seen, over all
    ranks. Each rank's loss is weighted by its share of the step's utterances (see
    `conformer_prune.distributed`); in a single process the weight is 1.

    `progress`: where an interrupted pass stopped (`loader` then yields the rest of its batches);
    `checkpoint`: called with the progress after any step that ends `checkpoint_seconds` or more
    after the last call (or the start); `dataset`: names the utterances of a non-finite loss (by
    default `loader.dataset`); `frames_per_second`: the feature rate that turns frames into audio
    seconds."""
    done = progress or EpochProgress()
    sums, steps, audio_frames = dict(done.sums), done.steps, done.audio_frames
    start = last_checkpoint = time.perf_counter()
    bar = tqdm(
        loader,
        desc=desc,
        total=total,
        initial=steps,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not dist.is_main,
    )
    for batch in bar:
        batch = batch.to(device)
        with autocast(device, precision):
            loss, parts = loss_fn(batch)
        finite = bool(torch.isfinite(loss))
        share, all_finite = dist.batch_share(len(batch.indices), finite)
        if not all_finite:
            dataset = dataset or getattr(loader, "dataset", None)
            names = (
                [dataset.utts[i].utt_id for i in batch.indices.tolist()]
                if isinstance(dataset, SpeechDataset)
                else []
            )
            where = f"utterances {names or batch.indices.tolist()}" if not finite else "another rank"
            raise FloatingPointError(f"non-finite loss {float(loss.detach())} on {where}")
        optimizer.zero_grad(set_to_none=True)
        (loss * share).backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        audio_frames += int(batch.feat_lengths.sum())
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        now = time.perf_counter()
        if checkpoint is not None and now - last_checkpoint >= checkpoint_seconds:
            checkpoint(EpochProgress(steps, dict(sums), audio_frames, done.seconds + now - start))
            last_checkpoint = time.perf_counter()
    totals = dist.sum({**sums, "audio_frames": float(audio_frames)})
    audio_seconds = totals.pop("audio_frames") / frames_per_second
    means = {k: v / max(1, steps * dist.world_size) for k, v in totals.items()}
    return {**means, "steps": steps, "audio_seconds": audio_seconds}


def validate(
    rec: Recognizer, dataset: SpeechDataset, device: torch.device, dist: Distributed = SINGLE_PROCESS
) -> dict[str, float] | None:
    """The dev error rates on rank 0 (None on the others). Under torchrun every rank transcribes
    every W-th utterance with rank 0's buffers (its BatchNorm statistics are the ones kept), and
    rank 0 scores all the transcripts together."""
    dist.buffers_from_main(rec.model)
    mine = range(dist.rank, len(dataset), dist.world_size)
    recs = recognize_dataset(
        rec, dataset, device=device, desc="validate", indices=mine, progress=dist.is_main
    )
    gathered = dist.gather([(r.ref, r.hyp) for r in recs])
    if gathered is None:
        return None
    pairs = [pair for part in gathered for pair in part]
    return error_rates([ref for ref, _ in pairs], [hyp for _, hyp in pairs])


class RunDir:
    """A run directory: it refuses to start over an existing run unless resuming, and holds the
    resolved config, the resumable state (written atomically after every epoch) and ``log.jsonl``.

    Args:
        out: the directory (created).
        state_name: the state file, e.g. ``train_state.pt``.
        what: the kind of run, for the error messages ("training", "pruning").
        resume: continue the run in `out` (its state file must exist).
    """

    def __init__(self, out: Path, state_name: str, what: str, resume: bool) -> None:
        self.out = out
        self.state_path = out / state_name
        if self.state_path.exists() and not resume:
            raise FileExistsError(
                f"{out} already holds a {what} run; pass --resume to continue it or pick another --out"
            )
        if resume and not self.state_path.exists():
            raise FileNotFoundError(f"--resume: no {self.state_path} to resume from")
        out.mkdir(parents=True, exist_ok=True)

    def write_config(self, name: str, cfg: Any, dist: Distributed) -> None:
        """The resolved config as YAML (rank 0 only)."""
        if dist.is_main:
            atomic_write_text(self.out / name, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def log(self, record: dict[str, Any]) -> None:
        append_log(self.out / "log.jsonl", record)

    def load_state(self, keys: list[str], map_location: str | torch.device) -> dict[str, Any]:
        """The state file, which must hold `keys` (a truncated or foreign file is a ValueError)."""
        return load_state(self.state_path, keys, map_location)

    def save_state(
        self,
        cfg: Any,
        epoch: int,
        elapsed: float,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        **extra: Any,
    ) -> None:
        """Everything `restore` needs to continue after `epoch` epochs, plus `extra`, and the size
        the log has now."""
        state: dict[str, Any] = {name: module.state_dict() for name, module in modules.items()}
        state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        state |= {"epoch": epoch, "elapsed": elapsed, **extra, "config": to_dict(cfg)}
        state["log_bytes"] = log_size(self.out / "log.jsonl")
        atomic_save(state, self.state_path)

    def restore(
        self,
        state: dict[str, Any],
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        dist: Distributed,
    ) -> tuple[int, float]:
        """Load a state written by `save_state` (one that does not fit is a ValueError naming the
        file) and cut the log back to the size it had then, so that a resumed run's log is that of
        an uninterrupted one; returns (epochs done, elapsed seconds)."""
        restore_state(self.state_path, state, **modules, optimizer=optimizer, scheduler=scheduler)
        if dist.is_main:
            truncate_log(self.out / "log.jsonl", state.get("log_bytes"))
        return state["epoch"], state["elapsed"]


# oneDNN's cache of compiled CPU kernels, in entries, where batches are padded to a multiple: a
# few dozen lengths of about 260 kernels each (a compact student's; oneDNN's default keeps 1024)
PADDED_KERNEL_CACHE = 16384


def start_run(threads: int, seed: int, pad_frames_to: int = 1) -> None:
    """CPU threads (0 keeps PyTorch's default), an allocator that reuses freed memory
    (`keep_freed_memory`), the seed of everything built before epoch 1, and, where batches are
    padded to a multiple (`TrainConfig.pad_frames_to`), a cache of compiled CPU kernels that holds
    every length's (unless ONEDNN_PRIMITIVE_CACHE_CAPACITY says otherwise; oneDNN reads it when it
    first compiles a kernel, so a process that has already computed keeps its own)."""
    keep_freed_memory()
    if pad_frames_to > 1:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PADDED_KERNEL_CACHE))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)


@dataclass
class EpochResult:
    """What one epoch gives rank 0: the training means, the dev error rates and the time."""

    stats: dict[str, float]
    dev: dict[str, float]
    train_seconds: float
    seconds: float  # training and validation


@dataclass
class Epochs:
    """The body of an epoch, for training and pruning alike: seed the epoch, train on it, validate.

    Args:
        rec: the recognizer whose model is trained (validated as it transcribes).
        step_loss: the loss of one batch (wrapped by `Distributed.wrap`).
        params: the parameters whose gradient norm is clipped.
        specaug: SpecAugment inside `step_loss` (train mode during training).
        specaug_gen: its generator, seeded per epoch.
        checkpoint: writes the run's state within an epoch, given the epoch (from 0) and what
            `run` must get back to continue it (`partial`); None, or under torchrun: at epoch
            boundaries only.
        checkpoint_seconds: the time between two such states.
    """

    rec: Recognizer
    step_loss: LossFn
    params: Sequence[Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: TrainData
    specaug: SpecAugment
    specaug_gen: torch.Generator
    seed: int
    precision: str
    grad_clip: float
    dist: Distributed
    checkpoint: Callable[[int, dict[str, Any]], None] | None = None
    checkpoint_seconds: float = 600.0

    def run(self, epoch: int, desc: str, partial: dict[str, Any] | None = None) -> EpochResult | None:
        """Epoch `epoch` (from 0), continued from `partial` (a state's record of it, written
        within it) if given; None on ranks other than 0 (which validate their share only)."""
        seed_epoch(self.seed, epoch, self.data.sampler, self.specaug_gen, self.dist.rank)
        progress = EpochProgress(**partial["progress"]) if partial is not None else None
        if progress is not None:
            self.data.sampler.set_epoch(epoch, start=progress.steps)
        # the loader draws its base seed from the global generator as its iterator starts, so the
        # iterator starts here, before a resumed epoch puts the generators back where they were
        batches = iter(self.data.loader)
        device = self.dist.device
        if partial is not None:  # a state loaded onto a GPU holds the CPU generators' states there
            torch.set_rng_state(partial["rng"].cpu())
            self.specaug_gen.set_state(partial["specaug_rng"].cpu())
            if "cuda_rng" in partial and device.type == "cuda":  # dropout's stream on the GPU
                torch.cuda.set_rng_state(partial["cuda_rng"].cpu(), device)
        save = None
        if self.checkpoint is not None and not self.dist.enabled:
            write = self.checkpoint

            def save(p: EpochProgress) -> None:
                rng = {"rng": torch.get_rng_state(), "specaug_rng": self.specaug_gen.get_state()}
                if device.type == "cuda":
                    rng["cuda_rng"] = torch.cuda.get_rng_state(device)
                write(epoch, {"progress": asdict(p), **rng})

        model = self.rec.model
        model.train()
        self.specaug.train()
        t0 = time.perf_counter() - (progress.seconds if progress else 0.0)
        stats = train_one_epoch(
            self.step_loss,
            self.params,
            batches,
            self.optimizer,
            self.scheduler,
            self.dist.device,
            self.precision,
            self.grad_clip,
            desc=desc,
            total=len(self.data.sampler),
            dist=self.dist,
            progress=progress,
            checkpoint=save,
            checkpoint_seconds=self.checkpoint_seconds,
            dataset=self.data.loader.dataset,
            frames_per_second=self.rec.features.config.frames_per_second,
        )
        train_seconds = time.perf_counter() - t0
        model.eval()
        dev = validate(self.rec, self.data.dev, self.dist.device, self.dist)
        if dev is None:  # the other ranks wait for rank 0 in their next step
            return None
        return EpochResult(stats, dev, train_seconds, time.perf_counter() - t0)


def run_training(
    cfg: TrainConfig,
    train_utts: list[Utterance],
    dev_utts: list[Utterance],
    out_dir: str | Path,
    resume: bool = False,
) -> Path:
    """Train a Conformer-CTC recognizer; returns the path of the best model (``model.pt``).
    Under torchrun, every process trains its share of each step and rank 0 writes the run."""
    with launch(resolve_device(cfg.device)) as dist:
        return _train(cfg, train_utts, dev_utts, Path(out_dir), resume, dist)


def _train(
    cfg: TrainConfig,
    train_utts: list[Utterance],
    dev_utts: list[Utterance],
    out: Path,
    resume: bool,
    dist: Distributed,
) -> Path:
    run = RunDir(out, "train_state.pt", "training", resume)
    device = dist.device
    start_run(cfg.threads, cfg.seed, cfg.pad_frames_to)

    state = run.load_state(_STATE_KEYS, "cpu") if resume else None
    tokenizer = Tokenizer(  # trained on rank 0 only, so every rank has the same pieces
        state["tokenizer"]
        if state
        else dist.from_main(lambda: Tokenizer.train((u.text for u in train_utts), cfg.tokenizer).to_bytes())
    )
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.feature_rate = cfg.features.frames_per_second

    features = LogMelFeatures(cfg.features)
    data = make_data(
        train_utts,
        dev_utts,
        tokenizer,
        features,
        cfg.max_frames,
        cfg.seed,
        cfg.cache_features,
        rank=dist.rank,
        world_size=dist.world_size,
        subsampling_factor=cfg.model.subsampling_factor,
        sorted_epochs=cfg.sorted_epochs,
        speeds=cfg.speeds,
        pad_frames_to=cfg.pad_frames_to,
    )

    model = build_model(cfg.model).to(device)
    specaug = SpecAugment(cfg.specaug)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    total_steps = cfg.epochs * len(data.sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
    )
    start_epoch, best_wer, elapsed = 0, math.inf, 0.0
    partial = None  # the state's record of an epoch it was written within
    if state:
        start_epoch, elapsed = run.restore(state, {"model": model}, optimizer, scheduler, dist)
        best_wer = state["best_wer"]
        partial = state.get("partial")
    # only once the state fits: a refused resume leaves the run as it was
    run.write_config("config.yaml", cfg, dist)
    rec = Recognizer(model, features, tokenizer)
    specaug_gen = torch.Generator()

    def loss_fn(batch: Batch) -> tuple[Tensor, dict[str, float]]:
        batch.feats = specaug(batch.feats, batch.feat_lengths, generator=specaug_gen)
        return ctc_loss(model, batch, cfg.inter_ctc)

    def checkpoint(epoch: int, partial: dict[str, Any] | None = None) -> None:
        """The resumable state after `epoch` epochs, and within the next one if `partial`."""
        run.save_state(
            cfg,
            epoch,
            elapsed,
            {"model": model},
            optimizer,
            scheduler,
            best_wer=best_wer,
            tokenizer=tokenizer.to_bytes(),
            **({"partial": partial} if partial is not None else {}),
        )

    precision = resolve_precision(cfg.precision, device)
    epochs = Epochs(
        rec,
        dist.wrap({"model": model}, loss_fn),
        list(model.parameters()),
        optimizer,
        scheduler,
        data,
        specaug,
        specaug_gen,
        cfg.seed,
        precision,
        cfg.optim.grad_clip,
        dist,
        checkpoint if cfg.checkpoint_minutes else None,
        60 * cfg.checkpoint_minutes,
    )
    last_epoch_seconds = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        budget = cfg.time_budget_minutes * 60
        if budget and dist.agree(elapsed + last_epoch_seconds > budget):  # rank 0's clock decides
            if dist.is_main:
                print(f"time budget of {cfg.time_budget_minutes} min reached after {epoch} epochs")
            break
        result = epochs.run(epoch, f"epoch {epoch + 1}/{cfg.epochs}", partial)
        partial = None
        if result is None:
            continue
        last_epoch_seconds = result.seconds
        elapsed += last_epoch_seconds
        run.log(
            {
                "epoch": epoch + 1,
                **result.stats,
                "lr": scheduler.get_last_lr()[0],
                "dev_wer": result.dev["wer"],
                "dev_cer": result.dev["cer"],
                "train_seconds": result.train_seconds,
                "audio_seconds_per_second": result.stats["audio_seconds"] / result.train_seconds,
                "precision": precision,
                "elapsed_seconds": elapsed,
            }
        )
        if result.dev["wer"] < best_wer:
            best_wer = result.dev["wer"]
            save_recognizer(
                out / "model.pt",
                rec,
                epoch=epoch + 1,
                dev_wer=result.dev["wer"],
                train_config=to_dict(cfg),
            )
        checkpoint(epoch + 1)
    return out / "model.pt"
