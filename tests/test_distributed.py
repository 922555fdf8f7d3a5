"""Data-parallel runs (two gloo processes on the CPU) against their single-process references.

One spawn of two workers runs every distributed leg (training, an interrupted and resumed training,
pruning, a one-step gradient with BatchNorm and distillation); the tests compare what they wrote.
The references see the union of the two ranks' batches of each step as one batch. That is exact
for CTC, a mean over utterances, when nothing couples the utterances of a batch: so the engine runs
use a model without the convolution module (its BatchNorm has per-rank statistics) and without
SpecAugment (each rank draws its own masks); dropout is already 0 in the `tiny` recipe.
"""

from __future__ import annotations

import copy
import gc
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from conformer_prune.cli import main
from conformer_prune.config import load_config
from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.dataset import Batch, BucketBatchSampler, SpeechDataset
from conformer_prune.distill.layerwise import DistillConfig, LayerwiseDistiller
from conformer_prune.distributed import SINGLE_PROCESS, Distributed, LossFn, launch
from conformer_prune.model import Recognizer, build_model, load_recognizer
from conformer_prune.prune import run as prune_run
from conformer_prune.prune.budget import Lagrangian
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import as_float
from conformer_prune.prune.gates import ConformerGates
from conformer_prune.train import loop
from tests.conftest import hetero_config

WORLD = 2
SETTINGS = ["specaug.freq_masks=0", "specaug.time_masks=0", "threads=1"]  # no SpecAugment, one thread


def _train_argv(corpus: Path, out: Path) -> list[str]:
    return [
        "train",
        *("--data", str(corpus / "train"), "--dev", str(corpus / "dev"), "--out", str(out)),
        *("--config", "tiny", "--set", "max_frames=2000", "model.conv_channels=0", *SETTINGS),
    ]


def _prune_config() -> PruneConfig:
    overrides = ["method=l0", "prune_epochs=1", "finetune_epochs=1", "max_frames=2000", "device=cpu"]
    return load_config(PruneConfig, None, [*overrides, "warmup_steps=2", *SETTINGS])


def _recording(real: Callable[..., dict[str, float]], out: Path, stop_at: int = 0) -> Callable[..., Any]:
    """`train_one_epoch` that saves every parameter group after the epoch (and the gradients of the
    first step), or raises KeyboardInterrupt at its `stop_at`-th call (a machine stopping)."""
    calls: list[int] = []

    def epoch(
        loss_fn: LossFn, params: Any, loader: Any, optimizer: torch.optim.Optimizer, *args: Any, **kw: Any
    ) -> dict[str, float]:
        calls.append(1)
        if len(calls) == stop_at:
            torch.distributed.barrier()  # after rank 0 wrote the last checkpoint
            raise KeyboardInterrupt
        first: list[dict[str, list[Tensor | None]]] = []

        def record(opt: torch.optim.Optimizer, *_: Any) -> None:
            if not first:
                first.append({g["name"]: [_clone(p.grad) for p in g["params"]] for g in opt.param_groups})

        hook = optimizer.register_step_pre_hook(record)
        stats = real(loss_fn, params, loader, optimizer, *args, **kw)
        hook.remove()
        number = kw["desc"].split()[-1].split("/")[0]  # "epoch 2/2", "finetune 2/2"
        groups = {g["name"]: [p.detach().clone() for p in g["params"]] for g in optimizer.param_groups}
        who = f"rank{os.environ['RANK']}" if "RANK" in os.environ else "reference"
        torch.save({"params": groups, "first_grads": first[0]}, out / f"{who}-epoch{number}.pt")
        return stats

    return epoch


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


class _UnionSampler(BucketBatchSampler):
    """The single-process reference: each step's batches of the two ranks as one batch."""

    def _batches(self) -> list[list[int]]:
        batches = super()._batches()
        usable = len(batches) - len(batches) % WORLD
        return [batches[i] + batches[i + 1] for i in range(0, usable, WORLD)]


# -- a one-step problem with BatchNorm, distillation and the budget --------------------------------


def _gradient_problem() -> tuple[dict[str, torch.nn.Module], LossFn, list[Batch]]:
    torch.manual_seed(0)
    student = build_model(hetero_config())  # convolution modules with BatchNorm in layers 0 and 1
    teacher = copy.deepcopy(student)
    gates = ConformerGates.attach(student, ["heads", "ffn", "conv", "modules"])
    distiller = LayerwiseDistiller(teacher, 3, 32, DistillConfig(layer_weight=1.0, kl_weight=0.5))
    lagrangian = Lagrangian()
    lagrangian.lambda1.data.fill_(0.3)
    lagrangian.lambda2.data.fill_(0.2)
    full = as_float(gates.expected_cost().params)

    def loss_fn(batch: Batch) -> tuple[Tensor, dict[str, float]]:
        gates.set_step(0, 0)  # the same gate samples on both ranks
        loss, parts = distiller.loss(student, batch)
        return loss + lagrangian(1 - gates.expected_cost().params / full, 0.4), parts

    g = torch.Generator().manual_seed(1)
    batches = []
    for lengths in ([83, 61, 40], [70, 52]):  # unequal micro-batches: 3 and 2 utterances
        n, t = len(lengths), max(lengths)
        real = torch.arange(t)[None, :, None] < torch.tensor(lengths)[:, None, None]
        feats = torch.randn(n, t, 80, generator=g) * real
        targets = torch.randint(0, 20, (n, 6), generator=g)
        target_lengths = torch.tensor([6, 4, 5][:n])
        batches.append(Batch(feats, torch.tensor(lengths), targets, target_lengths, torch.arange(n)))
    modules = {"student": student, "distiller": distiller, "lagrangian": lagrangian}
    return modules, loss_fn, batches


def _named_grads(modules: dict[str, torch.nn.Module]) -> dict[str, Tensor]:
    return {
        f"{key}.{name}": p.grad.clone()
        for key, module in modules.items()
        for name, p in module.named_parameters()
        if p.grad is not None
    }


def _one_step(dist: Distributed, modules: dict[str, torch.nn.Module], loss_fn: LossFn, batch: Batch) -> None:
    """One DDP step of train_one_epoch with learning rate 0 (the gradients stay in .grad)."""
    step_loss = dist.wrap(modules, loss_fn, find_unused=True)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    cpu = torch.device("cpu")
    loop.train_one_epoch(
        step_loss, params, [batch], optimizer, scheduler, cpu, "fp32", 1e9, "step", dist=dist
    )


# -- the two workers -------------------------------------------------------------------------------


def _worker(rank: int, ports: list[int], corpus: Path, root: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    real_epoch = loop.train_one_epoch  # the epoch engine of training and pruning

    os.environ["MASTER_PORT"] = str(ports[0])  # training, two epochs
    loop.train_one_epoch = _recording(real_epoch, root / "train")
    assert main(_train_argv(corpus, root / "train")) == 0

    os.environ["MASTER_PORT"] = str(ports[1])  # the same, stopped in the second epoch ...
    loop.train_one_epoch = _recording(real_epoch, root / "resumed", stop_at=2)
    try:
        main(_train_argv(corpus, root / "resumed"))
        raise AssertionError("the run was not interrupted")
    except KeyboardInterrupt:
        pass
    gc.collect()  # the interrupted run's DDP wrapper first, then its process group (see launch)
    torch.distributed.destroy_process_group()
    os.environ["MASTER_PORT"] = str(ports[2])  # ... and resumed
    loop.train_one_epoch = _recording(real_epoch, root / "resumed")
    assert main([*_train_argv(corpus, root / "resumed"), "--resume"]) == 0

    os.environ["MASTER_PORT"] = str(ports[3])  # pruning the trained model, one epoch of each stage
    loop.train_one_epoch = _recording(real_epoch, root / "prune")
    train, dev = read_corpus(corpus / "train"), read_corpus(corpus / "dev")
    prune_run.run_pruning(_prune_config(), root / "train" / "model.pt", train, dev, root / "prune")
    loop.train_one_epoch = real_epoch

    os.environ["MASTER_PORT"] = str(ports[4])  # one step on a micro-batch of 3 or 2 utterances
    modules, loss_fn, batches = _gradient_problem()
    with launch(torch.device("cpu")) as dist:
        _one_step(dist, modules, loss_fn, batches[rank])
    torch.save(_named_grads(modules), root / f"grads-rank{rank}.pt")

    os.environ["MASTER_PORT"] = str(ports[5])  # validation, each rank its share of dev
    rec, dev_set = _validation_problem(root, corpus)
    with torch.no_grad():  # BatchNorm statistics of rank 1's own: validation must use rank 0's
        for m in rec.model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.add_(float(rank))
    with launch(torch.device("cpu")) as dist:
        result = loop.validate(rec, dev_set, torch.device("cpu"), dist)
    assert (result is None) == (rank != 0)
    if rank == 0:
        torch.save(result, root / "validate.pt")


def _validation_problem(root: Path, corpus: Path) -> tuple[Recognizer, SpeechDataset]:
    """The trained tiny model's tokenizer and front end on a seeded model with convolution modules
    (BatchNorm), and the dev set."""
    trained = load_recognizer(root / "train" / "model.pt")
    cfg = hetero_config()
    cfg.vocab_size = trained.tokenizer.vocab_size
    torch.manual_seed(3)
    rec = Recognizer(build_model(cfg).eval(), trained.features, trained.tokenizer)
    dev_set = SpeechDataset(read_corpus(corpus / "dev"), rec.tokenizer, rec.features, training=False)
    return rec, dev_set


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def runs(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The distributed legs, then the single-process references in this process."""
    root = tmp_path_factory.mktemp("ddp")
    for name in ("train", "resumed", "prune", "train_ref", "prune_ref"):
        (root / name).mkdir()
    mp.start_processes(_worker, (_free_ports(6), tiny_corpus, root), nprocs=WORLD, start_method="spawn")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(loop, "BucketBatchSampler", _UnionSampler)
        real_epoch = loop.train_one_epoch  # the epoch engine of training and pruning
        mp_.setattr(loop, "train_one_epoch", _recording(real_epoch, root / "train_ref"))
        assert main(_train_argv(tiny_corpus, root / "train_ref")) == 0
        mp_.setattr(loop, "train_one_epoch", _recording(real_epoch, root / "prune_ref"))
        train, dev = read_corpus(tiny_corpus / "train"), read_corpus(tiny_corpus / "dev")
        prune_run.run_pruning(_prune_config(), root / "train" / "model.pt", train, dev, root / "prune_ref")
    torch.set_num_threads(threads)
    yield root


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)  # type: ignore[no-any-return]


def _max_difference(a: dict[str, list[Tensor | None]], b: dict[str, list[Tensor | None]]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert (x is None) == (y is None), name
            if x is not None and y is not None:
                worst = max(worst, float((x - y).abs().max()))
    return worst


def _assert_ranks_equal_and_close_to(reference: Path, run: Path, epochs: int) -> list[float]:
    """Both ranks bitwise equal after every epoch and close to the reference: the first step's
    gradients within 1e-6, the parameters within 1e-4 (Adam's normalisation magnifies round-off
    in small gradients, the union batch has other matrix shapes); returns the largest differences
    (gradients, then parameters after each epoch)."""
    differences = []
    for epoch in range(1, epochs + 1):
        ref = _load(reference / f"reference-epoch{epoch}.pt")
        ranks = [_load(run / f"rank{r}-epoch{epoch}.pt") for r in range(WORLD)]
        assert _max_difference(ranks[0]["params"], ranks[1]["params"]) == 0.0
        if epoch == 1:
            assert _max_difference(ranks[0]["first_grads"], ranks[1]["first_grads"]) == 0.0
            differences.append(_max_difference(ref["first_grads"], ranks[0]["first_grads"]))
        differences.append(_max_difference(ref["params"], ranks[0]["params"]))
    assert differences[0] <= 1e-6 and max(differences[1:]) <= 1e-4, differences
    return differences


def test_ddp_training_equals_training_on_the_union_batch(runs: Path) -> None:
    differences = _assert_ranks_equal_and_close_to(runs / "train_ref", runs / "train", 2)
    print("training: largest differences to the union batch", differences)
    assert _load(runs / "train" / "train_state.pt")["epoch"] == 2
    assert len((runs / "train" / "log.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs


def test_ddp_pruning_equals_pruning_on_the_union_batch(runs: Path) -> None:
    differences = _assert_ranks_equal_and_close_to(runs / "prune_ref", runs / "prune", 2)
    print("pruning: largest differences to the union batch", differences)
    ranks = [_load(runs / "prune" / f"rank{r}-epoch1.pt")["params"] for r in range(WORLD)]
    assert ranks[0]["gates"] and ranks[0]["lagrange"][0] != 0  # gates and multipliers were learned
    run, ref = _load(runs / "prune" / "prune_state.pt"), _load(runs / "prune_ref" / "prune_state.pt")
    for key, value in ref["student"].items():  # the same masks were frozen
        if key.endswith(".fixed"):
            assert torch.equal(run["student"][key], value), key


def test_resumed_ddp_run_equals_the_uninterrupted_one(runs: Path) -> None:
    straight = _load(runs / "train" / "train_state.pt")
    resumed = _load(runs / "resumed" / "train_state.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    for r in range(WORLD):  # and the second rank too, which writes no checkpoint
        a, b = (_load(runs / d / f"rank{r}-epoch2.pt")["params"] for d in ("train", "resumed"))
        assert _max_difference(a, b) == 0.0


def test_ddp_gradient_is_the_utterance_weighted_sum_of_micro_batch_gradients(runs: Path) -> None:
    """With BatchNorm, distillation and the budget: sum_k (B_k / B) grad L_k, as gradient
    accumulation over the two micro-batches would compute it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: oneDNN's reductions are split by thread count
    try:
        modules, loss_fn, batches = _gradient_problem()
        total = sum(len(b.indices) for b in batches)
        for batch in batches:
            loss, _ = loss_fn(batch)
            (loss * len(batch.indices) / total).backward()
    finally:
        torch.set_num_threads(threads)
    reference = _named_grads(modules)
    assert any(k.startswith("lagrangian") for k in reference) and any("log_alpha" in k for k in reference)
    for rank in range(WORLD):
        grads = _load(runs / f"grads-rank{rank}.pt")
        assert grads.keys() == reference.keys()
        worst = max(float((grads[k] - reference[k]).abs().max()) for k in reference)
        print(f"rank {rank}: largest gradient difference {worst:.2e}")  # the largest gradients are ~1.7
        for key, value in reference.items():
            torch.testing.assert_close(grads[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_ddp_validation_equals_one_process_validating_all_of_dev(runs: Path, tiny_corpus: Path) -> None:
    """Two ranks, each transcribing half of dev (rank 1 with other BatchNorm statistics, which it
    must replace by rank 0's), give the error rates of one process transcribing all of it."""
    rec, dev_set = _validation_problem(runs, tiny_corpus)
    expected = loop.validate(rec, dev_set, torch.device("cpu"))
    assert expected is not None and len(dev_set) >= 2 * WORLD
    assert _load(runs / "validate.pt") == expected
    for m in rec.model.modules():  # and the BatchNorm statistics matter to the result
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.add_(1.0)
    assert loop.validate(rec, dev_set, torch.device("cpu")) != expected


def test_without_torchrun_a_run_is_one_process_without_collectives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with launch(torch.device("cpu")) as dist:
        assert dist == SINGLE_PROCESS and not torch.distributed.is_initialized()
    assert dist.batch_share(7, True) == (1.0, True) and dist.batch_share(7, False) == (1.0, False)
    assert dist.sum({"a": 1.5}) == {"a": 1.5} and dist.from_main(lambda: 3) == 3 and dist.agree(True)
