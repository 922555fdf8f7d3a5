"""The benchmarks' run sharing (`benchmarks/common.py: Jobs`): however processes start, each run is
trained exactly once, a run held elsewhere is waited for, and exactly one process is the last out."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import TO_TRAIN, Jobs, _try_lock, in_fresh_process, plan_state, run_dir, run_identity, run_state

from conformer_prune.config import load_config, recipe_path
from conformer_prune.prune.config import PruneConfig
from tests import _children


def _train_or_read(run: Path, trained_by: str, seconds: float = 0.0) -> None:
    """What a benchmark's `train` does: train the run unless it finished (then only read it)."""
    if (run / "eval.json").exists():
        return
    with (run / "trained_by.txt").open("a") as f:
        f.write(f"{trained_by}\n")
    time.sleep(seconds)
    (run / "eval.json").write_text("{}")


def _worker(work: Path, runs: list[Path], name: str, last: dict[str, bool], start: Any) -> None:
    jobs = Jobs(2, work, poll_seconds=0.01)
    start.wait()  # started together
    for run in runs:
        jobs.run(run.name, run, lambda r=run: _train_or_read(r, name, 0.1))
    jobs.settle()
    last[name] = jobs.last()


def test_two_processes_train_every_run_once_and_one_is_last(tmp_path: Path) -> None:
    runs = [tmp_path / "runs" / f"r{i}" for i in range(6)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        last, start = manager.dict(), manager.Barrier(2)
        work = tmp_path / "work"
        procs = [ctx.Process(target=_worker, args=(work, runs, n, last, start)) for n in ("a", "b")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        last = dict(last)
    trained = [(run / "trained_by.txt").read_text().split() for run in runs]
    assert all(len(t) == 1 for t in trained), trained
    assert {t[0] for t in trained} == {"a", "b"}  # the work was shared
    assert sorted(last.values()) == [False, True]


def test_a_held_run_is_left_and_settled_once_let_go(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    jobs = Jobs(1, tmp_path / "work", poll_seconds=0.01)
    held = _try_lock(run)  # another process trains it
    assert held is not None
    calls: list[str] = []
    jobs.run("r", run, lambda: calls.append("trained"))
    assert calls == []
    held.close()  # that process stopped (finished or not): settle takes the run over
    jobs.settle()
    assert calls == ["trained"]
    jobs.settle()  # nothing left
    assert calls == ["trained"]
    assert jobs.last()


def test_settling_named_runs_leaves_the_others_held_elsewhere_pending(tmp_path: Path) -> None:
    """distill.py's choice waits for the candidates, not for an `l0` seed another process trains."""
    runs = {name: tmp_path / "runs" / name for name in ("candidate", "seed")}
    jobs = Jobs(1, tmp_path / "work", poll_seconds=0.01)
    held = {name: _try_lock(run) for name, run in runs.items()}
    calls: list[str] = []
    for name, run in runs.items():
        jobs.run(name, run, lambda n=name: calls.append(n))
    held["candidate"].close()  # the candidate's process let it go; the seed's still trains it
    jobs.settle(["candidate", "not-pending"])  # returns although "seed" is still held
    assert calls == ["candidate"]
    held["seed"].close()
    jobs.settle()
    assert calls == ["candidate", "seed"]


def test_shared_runs_train_on_one_thread(tmp_path: Path, places: Any) -> None:
    cfg, teacher, corpus = places
    assert cfg.threads != 1
    assert Jobs(1, tmp_path / "alone").config(cfg, teacher, corpus) == cfg
    assert Jobs(2, tmp_path / "shared").config(cfg, teacher, corpus).threads == 1


def test_a_run_finished_on_other_threads_is_read_not_trained_again(tmp_path: Path, places: Any) -> None:
    cfg, teacher, corpus = places
    assert cfg.threads == 2
    alone, shared = Jobs(1, tmp_path / "alone"), Jobs(2, tmp_path / "shared")
    one_thread = shared.config(cfg, teacher, corpus)
    assert one_thread.threads == 1 and alone.config(cfg, teacher, corpus) == cfg  # nothing finished
    run = run_dir(one_thread, teacher, corpus)
    run.mkdir(parents=True)
    (run / "prune_state.pt").write_bytes(b"")  # started on one thread: resumed there, not restarted
    assert alone.config(cfg, teacher, corpus) == one_thread
    (run / "prune_state.pt").unlink()
    held = _try_lock(run)  # held by a process sharing the cores: waited for there, not trained twice
    assert held is not None and alone.config(cfg, teacher, corpus) == one_thread
    held.close()  # neither started nor held: on the process's own threads
    assert alone.config(cfg, teacher, corpus) == cfg
    (run / "eval.json").write_text("{}")  # finished (shared, one thread): read by the lone process
    assert alone.config(cfg, teacher, corpus) == one_thread
    two = run_dir(cfg, teacher, corpus)
    two.mkdir(parents=True)
    (two / "eval.json").write_text("{}")  # finished on its own threads too: that one first
    assert alone.config(cfg, teacher, corpus) == cfg and shared.config(cfg, teacher, corpus) == cfg


@pytest.fixture
def named_run(tmp_path: Path) -> Callable[..., Path]:
    """The run directory of the reference recipe with `overrides`, for a stand-in teacher and corpus."""
    teacher, corpus = tmp_path / "teacher.pt", tmp_path / "corpus"
    teacher.write_bytes(b"weights")
    corpus.mkdir()
    (corpus / "corpus.json").write_text("{}")

    def run(*overrides: str) -> Path:
        return run_dir(load_config(PruneConfig, recipe_path("prune"), list(overrides)), teacher, corpus)

    return run


def test_a_method_that_does_not_distil_is_one_run_whatever_the_distillation_settings(
    named_run: Callable[..., Path],
) -> None:
    run = named_run
    other = ["distill.layer_map=dynamic", "distill.balance=grad-norm", "distill.kl_weight=1.0"]
    assert run("method=l0") == run("method=l0", *other)
    assert run("method=l0") != run("method=l0", "distill.ctc_weight=0.5")  # read by CTC-only too
    assert run("method=l0-distill") != run("method=l0-distill", *other)


def test_the_gradient_norm_probes_period_names_a_run_only_where_it_sets_the_scale(
    named_run: Callable[..., Path],
) -> None:
    run = named_run
    for method in ("l0-distill", "l0", "continued"):
        assert run(f"method={method}", "distill.probe_every=20") == run(f"method={method}")
    balanced = ("method=l0-distill", "distill.balance=grad-norm")
    assert run(*balanced, "distill.probe_every=20") != run(*balanced, "distill.probe_every=100")


def test_a_method_that_learns_no_masks_is_one_run_whatever_the_split_of_its_epochs(
    named_run: Callable[..., Path],
) -> None:
    run = named_run
    two_one, one_two = ("prune_epochs=2", "finetune_epochs=1"), ("prune_epochs=1", "finetune_epochs=2")
    for method in ("continued", "magnitude-distill", "torch-pruning", "scratch"):
        assert run(f"method={method}", *two_one) == run(f"method={method}", *one_two)
        assert run(f"method={method}", *two_one) != run(
            f"method={method}", "prune_epochs=2", "finetune_epochs=2"
        )
    assert run("method=l0-distill", *two_one) != run("method=l0-distill", *one_two)  # masks: 2 or 1


def test_a_plan_shows_a_run_on_the_threads_it_started_on(places: Any) -> None:
    cfg, teacher, corpus = places
    assert plan_state(cfg, teacher, corpus) == (TO_TRAIN, run_dir(cfg, teacher, corpus))
    shared = run_dir(dataclasses.replace(cfg, threads=1), teacher, corpus)
    held = _try_lock(shared)  # another process trains it on one thread
    assert held is not None
    assert plan_state(cfg, teacher, corpus) == ("training in another process", shared)
    held.close()
    (shared / "prune_state.pt").write_bytes(b"")  # that process stopped after an epoch
    (shared / "log.jsonl").write_text('{"epoch": 1, "stage": "prune"}\n')
    state, where = plan_state(cfg, teacher, corpus)
    assert where == shared and state == "started: resumes from its last saved state (1 epochs logged)"
    (shared / "eval.json").write_text("{}")
    assert run_state(shared) == "finished (restored from its record: no weights)"
    (shared / "model.pt").write_bytes(b"")
    assert run_state(shared) == "finished"


def test_a_ceiling_names_another_run_and_no_ceiling_names_the_run_as_before(
    named_run: Callable[..., Path],
) -> None:
    run = named_run
    assert run("max_latency=0.57") != run() and run("max_latency=0.57") != run("max_latency=0.6")
    assert run("max_latency=null", "max_macs=null") == run()


def test_batches_padded_to_a_multiple_are_another_run_and_unpadded_ones_are_named_as_before(
    named_run: Callable[..., Path], tmp_path: Path
) -> None:
    run = named_run
    assert run() == run("pad_frames_to=64")  # the recipe pads to 64 frames since 2026-12-05
    assert run("pad_frames_to=1") != run() and run("pad_frames_to=1") != run("pad_frames_to=128")

    def identity(*overrides: str) -> dict:
        cfg = load_config(PruneConfig, recipe_path("prune"), list(overrides))
        return run_identity(cfg, tmp_path / "teacher.pt", tmp_path / "corpus")["config"]

    assert "pad_frames_to" not in identity("pad_frames_to=1")  # unpadded: named as before the field
    assert identity()["pad_frames_to"] == 64


def test_the_measured_latency_correction_names_a_run_only_where_a_latency_limit_is_learned(
    named_run: Callable[..., Path], tmp_path: Path
) -> None:
    run = named_run
    assert run("latency_corrections=0") == run()  # nothing timed: the run named as before the field
    assert run("max_latency=0.57", "latency_corrections=0") != run("max_latency=0.57")
    assert run("max_latency=0.57", "latency_corrections=2") != run("max_latency=0.57")
    # trusting the table trains as before the field existed: the field is left out of the identity
    trusting = load_config(PruneConfig, recipe_path("prune"), ["max_latency=0.57", "latency_corrections=0"])
    identity = run_identity(trusting, tmp_path / "teacher.pt", tmp_path / "corpus")  # named_run's
    assert "latency_corrections" not in identity["config"]


def test_the_ceiling_joins_the_method_only_when_dev_is_not_worse_and_the_latency_is_met() -> None:
    from ceiling import verdict

    def record(low: float, ratio: float) -> dict[str, Any]:
        return {"ceiling_vs_recipe": {"dev": {"low": low}}, "ceiling": {"latency_vs_teacher": ratio}}

    assert verdict(record(-0.002, 0.59))["adopt"]
    assert not verdict(record(0.001, 0.59))["adopt"]  # worse on dev beyond noise
    assert not verdict(record(-0.002, 0.61))["adopt"]  # not 40% faster


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_ceilings_run_is_the_comparisons_method_at_half_in_either_precision(
    precision: str, tmp_path: Path
) -> None:
    """ceiling.py's `ceiling` run (the recipe with the latency ceiling, which joined the method) and
    compare.py's l0-distill at 50% (seed 0) are one run in a table of either precision, so an fp32
    table trains it once; the precisions never share a run. The ceiling holds for the learned-mask
    methods at 50% alone."""
    import ceiling
    import compare
    from common import precision_overrides

    table = tmp_path / "table.json"

    def run(method: str, ratio: float, p: str = precision, seed: int = 0) -> PruneConfig:
        overrides = compare.run_overrides(method, ratio, seed, 10, False, table, precision=p)  # type: ignore[arg-type]
        return load_config(PruneConfig, recipe_path("prune"), overrides)

    runs = ceiling.configs(table, precision_overrides(precision))
    assert runs["ceiling"] == run("l0-distill", 0.5) and runs["ceiling"].precision == precision
    assert runs["recipe"] != run("l0-distill", 0.5)
    other = "fp32" if precision == "bf16" else "bf16"
    assert runs["ceiling"] != run("l0-distill", 0.5, other)
    assert run("l0", 0.5, seed=1).max_latency == compare.CEILING
    assert run("l0", 0.5).latency_table == str(table)
    assert run("l0-distill", 0.3).max_latency is None and run("magnitude-distill", 0.5).max_latency is None


def test_a_run_trains_in_a_fresh_process_started_again_when_it_is_killed(tmp_path: Path) -> None:
    """What `run_stage` trains a run in: another process, whose result comes back; one killed (as
    by the kernel for memory) is started again, up to `restarts` times; an error is raised here."""
    marker = tmp_path / "deaths"
    pid = in_fresh_process(_children.pid_after_dying, marker, 2, restarts=2)
    assert pid != os.getpid() and marker.read_text().splitlines() == ["died", "died"]
    marker.unlink()
    with pytest.raises(BrokenProcessPool):
        in_fresh_process(_children.pid_after_dying, marker, 2, restarts=1)
    with pytest.raises(ValueError, match="no such split"):
        in_fresh_process(_children.fails, "no such split")


def test_a_run_in_a_fresh_process_ends_with_the_benchmark_that_started_it(tmp_path: Path) -> None:
    """A benchmark killed (SIGTERM, as at a session's end) takes its run's process with it: an
    orphan would train on without the run's lock, beside whichever process trains it next."""
    pid_file = tmp_path / "pid"
    root = Path(__file__).resolve().parents[1]
    benchmark = subprocess.Popen([sys.executable, "-m", "tests._children", str(pid_file)], cwd=root)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and benchmark.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(child, 0)  # alive
    benchmark.terminate()
    benchmark.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError(f"process {child} outlived the benchmark that started it")
