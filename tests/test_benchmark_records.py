"""A finished benchmark run outlives its machine (`benchmarks/common.py`): its record in git holds
everything a benchmark reads of it but the weights, and a new machine restores the run from it
instead of training it again."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common
from common import Jobs, keep_run_result, old_eval, restore_run, run_dir, timing_model

from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.evaluate.profile import MeasuredRatios
from conformer_prune.evaluate.run import read_recogs, recogs_path
from conformer_prune.model import Recognizer, build_model, save_recognizer
from conformer_prune.prune.budget import UnreachableTargetError
from tests.conftest import hetero_config, write_recogs

PRUNED = dict(heads=[4, 0, 1], ffn1=[64, 16, 0], ffn2=[0, 32, 8], conv_channels=[32, 8, 0])


def _finish(run: Path) -> Recognizer:
    """What the pruning engine leaves in a finished run directory."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["HELLO WORLD", "A CAT SAT"], TokenizerConfig(vocab_size=20))
    model = build_model(hetero_config(vocab_size=tokenizer.vocab_size, **PRUNED)).eval()
    rec = Recognizer(model, LogMelFeatures(FeatureConfig()).eval(), tokenizer)
    run.mkdir(parents=True, exist_ok=True)
    save_recognizer(run / "model.pt", rec)
    (run / "identity.json").write_text(json.dumps({"config": {"seed": 0}}))
    (run / common.STARTED).write_text(json.dumps({"commit": "abc1234"}))  # the code it started from
    (run / "log.jsonl").write_text('{"epoch": 1, "grad_norm_ctc": 0.9}\n{"epoch": 2, "grad_norm_ctc": 0.8}\n')
    for split in ("dev", "test"):
        lines = [f"# run_id r{split}", "u1\tref=HELLO WORLD", f"u1\thyp=HELLO {split.upper()}"]
        recogs_path(run, split).write_text("\n".join(lines) + "\n")
    (run / "eval.json").write_text(json.dumps({"pruned": {"wer_test": 0.5}}))
    return rec


def test_a_finished_run_is_restored_on_a_new_machine_with_all_but_its_weights(places: Any) -> None:
    cfg, teacher, corpus = places
    run = run_dir(cfg, teacher, corpus)
    rec = _finish(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "model.pt"}
    keep_run_result(run)
    for p in run.iterdir():  # a new machine: the cache is gone, git is not
        p.unlink()
    run.rmdir()

    assert run_dir(cfg, teacher, corpus, restore=False) == run  # a benchmark that needs weights:
    assert not run.exists()  # nothing restored, the run trains again
    assert run_dir(cfg, teacher, corpus) == run  # restores as it finds the run
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert not (run / "model.pt").exists()
    for name in ("recogs-dev.txt", "recogs-test.txt"):
        assert after[name] == before[name]
    for name in ("eval.json", "identity.json", common.STARTED):
        assert json.loads(after[name]) == json.loads(before[name])
    assert read_recogs(recogs_path(run, "test")) == {"u1": ("HELLO WORLD", "HELLO TEST")}
    logged = [json.loads(line) for line in after["log.jsonl"].decode().splitlines()]
    assert [r["grad_norm_ctc"] for r in logged] == [0.9, 0.8]

    # its shape is timed as it was trained: same architecture, same parameter count
    shape = timing_model(run)
    assert shape.config == rec.model.config
    assert sum(p.numel() for p in shape.parameters()) == sum(p.numel() for p in rec.model.parameters())
    assert not restore_run(run)  # finished here now: nothing to restore


def test_a_record_without_recognitions_is_not_restored_but_its_wer_is_read(places: Any) -> None:
    cfg, teacher, corpus = places
    run = run_dir(cfg, teacher, corpus)
    common.RUN_RECORDS.mkdir(parents=True)
    old = {"run": run.name, "identity": {}, "eval": {"pruned": {"wer_dev": 0.2}}}  # as kept until 2026-11
    (common.RUN_RECORDS / f"{run.name}.json").write_text(json.dumps(old))

    assert not restore_run(run) and not (run / "eval.json").exists()  # trains again where it must
    assert old_eval(cfg, teacher, corpus) == old["eval"]  # or is read for its WER alone
    _finish(run)
    assert old_eval(cfg, teacher, corpus) is None  # finished here: the run itself is read


def test_a_benchmark_that_reads_weights_takes_a_finished_run_only_with_its_model(places: Any) -> None:
    cfg, teacher, corpus = places
    jobs = Jobs(1, corpus.parent / "work")
    one_thread = dataclasses.replace(cfg, threads=1)  # finished while sharing the cores
    run = run_dir(one_thread, teacher, corpus)
    _finish(run)
    assert jobs.config(cfg, teacher, corpus, weights=True) == one_thread  # its model is here
    keep_run_result(run)
    for p in run.iterdir():  # a new machine
        p.unlink()
    run.rmdir()

    assert jobs.config(cfg, teacher, corpus, weights=True) == cfg  # trained again, on its own threads
    assert not run.exists()  # and nothing restored on the way
    assert jobs.config(cfg, teacher, corpus) == one_thread  # a benchmark that reads records restores it
    assert (run / "eval.json").exists() and not (run / "model.pt").exists()
    assert jobs.config(cfg, teacher, corpus, weights=True) == cfg  # restored, without weights: not taken


def test_a_run_restored_from_its_record_is_read_and_its_record_left_as_it_was(
    places: Any, tmp_path: Path
) -> None:
    """On a new machine a benchmark reads a finished run from its record; it has no weights to
    write the record again from (that once stopped every benchmark on a fresh cache)."""
    from prune import run_stage

    cfg, teacher, corpus = places
    run = run_dir(cfg, teacher, corpus)
    _finish(run)
    scored = {"pruned": {"wer_dev": 0.4, "wer_test": 0.5, "wer_test_unseen": 0.9}}
    (run / "eval.json").write_text(json.dumps(scored))
    record = keep_run_result(run)
    kept = record.read_bytes()
    for p in run.iterdir():  # a new machine
        p.unlink()
    run.rmdir()

    assert run_stage(cfg, teacher, corpus, {}, tmp_path / "work" / "base", {}) == scored
    assert not (run / "model.pt").exists() and record.read_bytes() == kept


def test_a_record_names_the_command_that_starts_the_same_run(monkeypatch: Any) -> None:
    """Under torchrun the record's command is torchrun's, with its processes per node: one process
    with the same arguments would be another run (its batches and threads differ)."""
    monkeypatch.setattr(sys, "argv", ["benchmarks/teacher.py", "--set", "threads=1"])
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert common.command_line() == "python benchmarks/teacher.py --set threads=1"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert common.command_line() == (
        "torchrun --standalone --nproc_per_node 2 benchmarks/teacher.py --set threads=1"
    )


def test_a_teachers_cached_evaluation_is_read_only_for_that_teacher_and_corpus(
    places: Any, monkeypatch: Any
) -> None:
    """A benchmark's teacher directory outlives the teacher it scored (a new reference teacher, a
    rebuilt corpus): its evaluation is made again, never read as the new teacher's."""
    import prune

    _, teacher, corpus = places
    calls: list[bytes] = []

    def evaluate(rec: Any, evaluated: dict[str, Path], **kwargs: Any) -> dict[str, float]:
        calls.append(rec)
        return {f"wer_{s}": 0.1 * len(calls) for s in prune.SPLITS}

    monkeypatch.setattr(prune, "load_recognizer", lambda path: Path(path).read_bytes())
    monkeypatch.setattr(prune, "evaluate_recognizer", evaluate)
    evaluated, out = prune.evaluated_splits(corpus), corpus.parent / "teacher-eval"
    first = prune.teacher_eval(teacher, evaluated, out)
    assert prune.teacher_eval(teacher, evaluated, out) == first and calls == [b"weights"]
    assert "scored" not in first
    teacher.write_bytes(b"other weights")
    assert prune.teacher_eval(teacher, evaluated, out)["wer_test"] == 0.2
    (corpus / "corpus.json").write_text('{"seed": 1}')
    assert prune.teacher_eval(teacher, evaluated, out)["wer_test"] == pytest.approx(0.3)
    assert calls == [b"weights", b"other weights", b"other weights"]


def test_a_latency_matched_target_is_read_only_for_the_teacher_it_matched(
    places: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    """compare.py's bisection ranks the teacher's weights, so its cached parameter target is kept
    for that teacher's bytes alone."""
    import compare

    _, teacher, _ = places
    timed: list[float] = []

    def measure(models: list[Any], runtime: str, **kwargs: Any) -> MeasuredRatios:
        timed.append(models[1])
        # a shape at target t measures t of the teacher's latency
        return MeasuredRatios([1.0, models[1]], [[1.0, models[1]]], [100.0, 100.0 * models[1]])

    monkeypatch.setattr(compare, "load_recognizer", lambda path: type("R", (), {"model": None}))
    monkeypatch.setattr(compare, "one_shot_model", lambda cfg, model: cfg.target_params)
    monkeypatch.setattr(compare, "measured_ratios", measure)
    cache = tmp_path / "matched.json"
    target = compare.matched_params("magnitude-distill", teacher, cache)
    assert abs(target / compare.LATENCY_TARGET - 1) <= 0.02
    tries = len(timed)
    assert compare.matched_params("magnitude-distill", teacher, cache) == target and len(timed) == tries
    teacher.write_bytes(b"another teacher")
    assert compare.matched_params("magnitude-distill", teacher, cache) == target and len(timed) == 2 * tries


def test_the_latency_rows_masks_are_reported_with_the_measurements_that_checked_them(tmp_path: Path) -> None:
    import compare

    run = tmp_path / "l0-distill-lat50"
    run.mkdir()
    tries = [(0.5, 0.5, 0.566), (0.442, 0.44, 0.507)]
    lines = [{"epoch": 1, "elapsed_seconds": 9.0}]
    lines += [
        {"event": "latency_measured", "try": i, "budget_ratio": b, "predicted_ratio": p, "measured_ratio": m}
        for i, (b, p, m) in enumerate(tries)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = compare.latency_tries(run)
    assert [(t["budget_ratio"], t["predicted_ratio"], t["measured_ratio"]) for t in found] == tries
    plane = [{"method": "magnitude-distill"}, {"method": "l0-distill", "mask_switch_tries": found}]
    text = compare._tries_text(plane)
    assert "2 tries: 0.566 measured for 0.500 predicted, then 0.507 measured for 0.440 predicted" in text
    assert compare._tries_text([{"method": "l0-distill"}]) == ""  # a record from before the correction


def test_a_method_whose_shapes_never_get_near_the_latency_target_is_unreachable_there(
    places: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    """A latency floor above the target (torch-pruning's shapes measured 0.60-0.63 of the teacher
    at 0.30-0.41 of its parameters while its tracer did not see the front end): the closest shape
    is not at the latency the row compares at, so the stage is recorded unreachable with the tries,
    and nothing is trained at it."""
    import compare

    from conformer_prune.prune.budget import UnreachableTargetError

    _, teacher, _ = places
    floor = 0.6  # no shape measures below this fraction of the teacher's latency

    def measure(models: list[Any], runtime: str, **kwargs: Any) -> MeasuredRatios:
        ratio = max(floor, models[1])
        return MeasuredRatios([1.0, ratio], [[1.0, ratio]], [100.0, 100.0 * ratio])

    monkeypatch.setattr(compare, "load_recognizer", lambda path: type("R", (), {"model": None}))
    monkeypatch.setattr(compare, "one_shot_model", lambda cfg, model: cfg.target_params)
    monkeypatch.setattr(compare, "measured_ratios", measure)
    cache = tmp_path / "matched.json"
    with pytest.raises(UnreachableTargetError, match=r"closest 0\.600 at"):
        compare.matched_params("torch-pruning", teacher, cache)
    assert json.loads(cache.read_text())["measured_ratio"] == pytest.approx(floor)  # the tries are kept
    with pytest.raises(UnreachableTargetError):  # and read again, not measured again
        monkeypatch.setattr(compare, "measured_ratios", None)
        compare.matched_params("torch-pruning", teacher, cache)


def test_models_are_timed_in_a_new_process(tmp_path: Path) -> None:
    """`fresh_latency_ms` times saved models, or finished runs' directories, interleaved in a
    spawned process, one time per model, on PyTorch or ONNX Runtime."""
    assert common.in_new_process(os.getpid) != os.getpid()
    _finish(tmp_path / "run")
    path = tmp_path / "run" / "model.pt"
    timed = common.fresh_latency_ms([path, tmp_path / "run"], threads=1, rounds=2)
    assert len(timed) == 2 and all(ms > 0 for ms in timed)
    timed = common.fresh_latency_ms([path, tmp_path / "run"], threads=1, rounds=2, runtime="ort")
    assert len(timed) == 2 and all(ms > 0 for ms in timed)


def test_latency_speedups_are_the_rounds_own_ratios() -> None:
    """A load that drifts over the rounds slows both runners of a round alike and leaves their
    ratio (2x here) alone; the ratio of the two medians would be moved by it (40 / 25 = 1.6x)."""
    base = [10.0, 20.0, 40.0, 80.0, 160.0]
    times = {"teacher": base, "pruned": [5.0, 10.0, 25.0, 40.0, 80.0]}  # one round hit harder
    ratios = common.speedups(times, "teacher")
    assert ratios["teacher"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}
    assert ratios["pruned"]["median"] == 2.0
    assert ratios["pruned"]["q1"] < 2.0 <= ratios["pruned"]["q3"]


def test_the_latency_check_names_a_rival_with_no_shape_at_that_latency() -> None:
    """compare.py's check of issue 17 (l0-distill below its rivals at the same measured latency)
    compares the rivals that reached it and names the one that could not."""
    import compare

    ahead = {"delta": 0.02, "low": 0.01, "high": 0.03}
    record = {
        "teacher": {"wer_test": 0.13},
        "results": [],
        "latency_plane": [
            {"method": "l0-distill", "measured_ratio": 0.51},
            {"method": "magnitude-distill", "measured_ratio": 0.5, "wer_test_vs_l0_distill": ahead},
        ],
        "unreachable": {f"torch-pruning-{compare.LATENCY_NAME}": "no shape within 5%"},
    }
    (row,) = [c for c in compare.checks(record) if c["check"].startswith("test WER at the same measured")]
    assert row["met"] is True
    assert (
        row["measured"]
        == f"1 of 1 intervals above 0; torch-pruning-{compare.LATENCY_NAME}: no shape at that latency"
    )


def test_a_check_whose_runs_are_missing_is_not_run_rather_than_met() -> None:
    """Two methods at 50% do not make l0-distill "lowest of all methods" (a table made with
    --methods, or before every stage has run); a rival timed off the target latency is not compared
    at it."""
    import compare

    below = {"delta": 0.02, "low": 0.01, "high": 0.03}
    row = {
        "target_params": 0.5,
        "seed": 0,
        "wer_test_unseen": 0.4,
        "latency_ms_ort": 5.0,
        "latency_ms_10s": 5.0,
    }
    results = [
        {**row, "method": "l0-distill", "wer_test": 0.14},
        {**row, "method": "magnitude", "wer_test": 0.16, "wer_test_vs_l0_distill": below},
    ]
    plane = [
        {"method": "l0-distill", "measured_ratio": 0.5},
        {"method": "magnitude-distill", "measured_ratio": 0.56, "wer_test_vs_l0_distill": below},
        {"method": "torch-pruning", "measured_ratio": 0.5, "wer_test_vs_l0_distill": below},
    ]
    not_run = [compare.run_name(m, 0.5, 0) for m in compare.METHODS if m not in ("l0-distill", "magnitude")]
    record = {
        "teacher": {"latency_ms_ort": 10.0, "latency_ms_10s": 10.0},
        "results": results,
        "latency_plane": plane,
        "not_run": [*not_run, compare.HIDDEN_RUN],
    }
    met = {c["check"].split(":")[0]: c for c in compare.checks(record)}
    lowest = met["test WER at 50%"]
    assert lowest["met"] is None and "not run: " in lowest["measured"]
    assert met["ranking at 50% on test-unseen as on test"]["met"] is None
    assert met["l0-distill at 50% params"]["met"] is True  # what it needs is there
    rivals = met["test WER at the same measured latency"]
    assert (
        rivals["met"] is None and "magnitude-distill measured at 0.560x, off the target" in rivals["measured"]
    )
    lat_runs = [f"{m}-{compare.LATENCY_NAME}" for m in compare.LATENCY_METHODS]
    waiting = {c["check"].split(":")[0]: c for c in compare.checks({**record, "not_run": lat_runs})}
    names = waiting["test WER at the same measured latency"]["measured"].split("not run: ")[1].split(", ")
    assert names == lat_runs  # each missing run named once, though the check needs l0-distill's twice
    record["not_run"] = []  # every run there and timed at the target: the same rows decide
    plane[1]["measured_ratio"] = 0.51
    met = {c["check"].split(":")[0]: c for c in compare.checks(record)}
    assert (
        met["test WER at 50%"]["met"] is True and met["test WER at the same measured latency"]["met"] is True
    )


def test_the_headline_ranking_is_undecided_while_a_method_at_half_has_not_run() -> None:
    """The docs' headline ("l0-distill lowest on test") says met only once every method at 50% has
    run: a table with l0-distill alone at 50% is lowest by default, not by comparison."""
    import compare

    def row(method: str, test: float, seed: int = 0) -> dict[str, Any]:
        return {"method": method, "target_params": 0.5, "seed": seed, "wer_dev": test, "wer_test": test}

    others = [m for m in compare.METHODS if m not in ("l0-distill", compare.CONTROL)]
    record = {"results": [row("l0-distill", 0.14)], "not_run": [compare.run_name(m, 0.5, 0) for m in others]}
    best, verdict = compare.ranking(record)
    assert best["test"] == ["l0-distill"] and verdict.startswith("undecided")
    record = {"results": [row("l0-distill", 0.14), *(row(m, 0.15) for m in others)], "not_run": []}
    assert compare.ranking(record)[1] == "met"
    record["results"][1]["wer_test"] = 0.13  # another method lower on test
    assert compare.ranking(record)[1] == "not met"
    record["results"][1]["wer_test"] = 0.14
    assert compare.ranking(record)[1] == "tied"


def test_a_stage_found_out_of_reach_by_other_code_is_tried_again(tmp_path: Path) -> None:
    """compare.py's unreachable markers hold the pruning code they were found with: Torch-Pruning
    at 30% was out of reach until its front end was fixed, and a marker must not outlive that."""
    import compare

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights")
    code = compare.pruning_code(teacher)
    assert code == compare.pruning_code(teacher)
    teacher.write_bytes(b"other weights")
    assert compare.pruning_code(teacher) != code
    marker = tmp_path / "torch-pruning-30.unreachable.txt"
    compare.write_unreachable(marker, UnreachableTargetError("the smallest it gave was 2,098,060"), code)
    assert compare.read_unreachable(marker, code) == "the smallest it gave was 2,098,060"
    assert compare.read_unreachable(marker, "other code") is None and not marker.exists()
    marker.write_text("the smallest it gave was 2,098,060\n")  # the form before the code was kept
    assert compare.read_unreachable(marker, code) is None and not marker.exists()
    assert compare.read_unreachable(marker, code) is None  # no marker: nothing known


def test_a_dense_model_from_random_weights_is_trained_with_the_teachers_own_recipe(tmp_path: Path) -> None:
    """compare.py's `scratch` and `dense-distill`: the learning rate, Adam betas and intermediate
    CTC of the recipe the teacher's checkpoint records (and `scratch` its warm-up); the pruning
    methods keep the pruning recipe's, and the control `continued` its own rate (chosen on dev by
    lr.py), whatever the recipe's."""
    import compare

    from conformer_prune.config import load_config, recipe_path, to_dict
    from conformer_prune.prune.config import PruneConfig
    from conformer_prune.train.config import InterCTCConfig, OptimConfig, TrainConfig

    trained = TrainConfig(
        optim=OptimConfig(lr=3e-3, betas=(0.85, 0.97), warmup_steps=250),
        inter_ctc=InterCTCConfig(layers=[6], weights=[0.3]),
    )
    teacher = tmp_path / "teacher.pt"
    save_recognizer(teacher, _finish(tmp_path / "run"), train_config=to_dict(trained))
    recipe = compare.teacher_recipe(teacher)
    pruning = load_config(PruneConfig, recipe_path("prune"))
    for method in ("scratch", "dense-distill", "l0-distill", "continued"):
        cfg = load_config(
            PruneConfig, recipe_path("prune"), compare.overrides_for(method, 0.5, 9, False, recipe)
        )
        if method == "l0-distill":
            assert (cfg.lr, cfg.betas, cfg.inter_ctc.layers) == (pruning.lr, None, [])
            continue
        if method == "continued":
            assert (cfg.lr, cfg.betas, cfg.inter_ctc.layers) == (compare.CONTROL_LR, None, [])
            continue
        assert (cfg.lr, cfg.betas) == (3e-3, (0.85, 0.97))
        assert (cfg.inter_ctc.layers, cfg.inter_ctc.weights) == ([6], [0.3])
        epochs = (cfg.prune_epochs + cfg.finetune_epochs, cfg.warmup_steps)
        budget = pruning.prune_epochs + pruning.finetune_epochs
        assert epochs == ((9, 250) if method == "scratch" else (budget, pruning.warmup_steps))
    save_recognizer(teacher, _finish(tmp_path / "run"))  # as one imported from NeMo
    with pytest.raises(SystemExit, match="keeps no training recipe"):
        compare.teacher_recipe(teacher)


def test_the_latency_model_check_times_shapes_spread_over_their_sizes() -> None:
    from latency_model import spread

    params = {f"run{i}": size for i, size in enumerate([50, 10, 40, 20, 30, 60, 70])}
    assert spread(params, 3) == ["run1", "run2", "run6"]  # smallest, middle, largest
    assert spread(params, 10) == sorted(params, key=lambda k: params[k])  # all, when few


def test_a_benchmark_refuses_to_train_a_bf16_run_where_it_would_compute_in_fp32(
    monkeypatch: Any, tmp_path: Path
) -> None:
    import prune

    from conformer_prune.config import load_config, recipe_path
    from conformer_prune.prune.config import PruneConfig

    cfg = load_config(PruneConfig, recipe_path("prune"), [])
    assert cfg.precision == "bf16"
    monkeypatch.setattr(prune, "native_bf16", lambda device: False)
    with pytest.raises(SystemExit, match="l0-distill-x: this machine has no native bfloat16"):
        prune.check_precision(cfg, tmp_path / "l0-distill-x")
    prune.check_precision(dataclasses.replace(cfg, precision="fp32"), tmp_path / "run")  # fp32: anywhere
    monkeypatch.setattr(prune, "native_bf16", lambda device: True)
    prune.check_precision(cfg, tmp_path / "run")


def test_the_comparison_trains_every_stage_once_and_the_checked_rows_first() -> None:
    """compare.py's training order holds each of its stages exactly once, the 50% rows with the
    control before any other, and `scratch` (the teacher's epochs) last."""
    import compare

    stages = [compare.run_name(*key) for key in compare.RUNS]
    stages += [f"{m}-{compare.LATENCY_NAME}" for m in compare.LATENCY_METHODS] + [compare.HIDDEN_RUN]
    order = compare.TRAIN_ORDER
    assert sorted(order) == sorted(stages) and len(set(order)) == len(order)
    at_half = [compare.run_name(m, 0.5, 0) for m in compare.METHODS if m not in ("continued", "scratch")]
    assert set(order[: len(at_half) + 1]) == {*at_half, compare.run_name("continued", 1.0, 0)}
    assert order[0] == "l0-distill-50" and order[-1] == "scratch-50"


def test_the_comparison_names_a_precision_only_where_it_is_not_the_recipes(monkeypatch: Any) -> None:
    """A bf16 table keeps the run identities it had before `--precision` existed (the recipe's
    bf16 is not named); fp32 is named in every run's overrides, so the two tables never share a run;
    the quick table takes fp32 by itself where bf16 is not native."""
    import compare

    assert not any(o.startswith("precision") for o in compare.overrides_for("l0", 0.5, 10, quick=False))
    fp32 = compare.overrides_for("l0", 0.5, 10, quick=False, precision="fp32")
    assert "precision=fp32" in fp32
    assert compare.table_precision("fp32", quick=False) == "fp32"
    assert compare.table_precision(None, quick=False) == "bf16"
    monkeypatch.setattr(compare, "native_bf16", lambda device: False)
    assert compare.table_precision(None, quick=True) == "fp32"
    assert compare.table_precision(None, quick=False) == "bf16"  # the reference asks for fp32 by name
    monkeypatch.setattr(compare, "native_bf16", lambda device: True)
    assert compare.table_precision(None, quick=True) == "bf16"


def test_a_benchmark_run_trains_in_a_fresh_process_and_its_record_is_kept(
    places: Any, tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run_stage` trains, evaluates and reports a run in a spawned process (pruning here would
    fail: the engine is replaced in this one), then keeps its record here."""
    from prune import run_stage

    from conformer_prune.config import load_config
    from conformer_prune.evaluate import evaluate_recognizer
    from conformer_prune.model import load_recognizer
    from conformer_prune.prune import report as prune_report
    from conformer_prune.prune.config import PruneConfig

    def not_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained in the benchmark's own process")

    monkeypatch.setattr(prune_report, "run_pruning", not_here)
    settings = ["method=l0", "prune_epochs=1", "finetune_epochs=1", "max_frames=4000", "device=cpu"]
    cfg = load_config(PruneConfig, None, [*settings, "threads=1"])
    teacher, evaluated = tiny_run / "model.pt", {"test": tiny_corpus / "test"}
    teacher_result = evaluate_recognizer(load_recognizer(teacher), evaluated, threads=1, latency=False)
    work = tmp_path / "work" / "l0"
    report = run_stage(cfg, teacher, tiny_corpus, evaluated, work, teacher_result, latency=False)
    assert abs(report["pruned"]["params"] / (0.5 * report["teacher"]["params"]) - 1) <= 0.01
    record = json.loads((common.RUN_RECORDS / f"{run_dir(cfg, teacher, tiny_corpus).name}.json").read_text())
    assert record["eval"] == report and [r["epoch"] for r in record["log"] if "epoch" in r] == [1, 2]


def test_a_sweep_changes_the_recipe_only_on_evidence_from_dev() -> None:
    """sweep.py's rule: the lowest-dev value replaces the recipe's only when its dev interval
    against it lies below 0; until every value has run, nothing is chosen."""
    import lr
    import sweep

    values = lr.LRS
    base, mid, high = values
    better = {"dev": {"delta": -0.01, "low": -0.02, "high": -0.001}}
    noisy = {"dev": {"delta": -0.01, "low": -0.02, "high": 0.001}}
    rows: dict[float, dict[str, Any]] = {
        base: {"wer_dev": 0.15},
        mid: {"wer_dev": 0.14, "vs_recipe": better},
        high: {"wer_dev": 0.145, "vs_recipe": better},
    }
    assert sweep.choose(values, rows)["chosen"] == mid
    rows[mid]["vs_recipe"] = noisy
    assert sweep.choose(values, rows) | {"reason": ""} == {"chosen": base, "lowest_dev": mid, "reason": ""}
    rows[base]["wer_dev"] = 0.13
    assert sweep.choose(values, rows)["chosen"] == base
    del rows[high]
    assert sweep.choose(values, rows)["chosen"] is None


def _sweep_finished(chosen: Any, wers: dict[str, dict[float, float]]) -> dict[str, dict[str, Any]]:
    return {
        chosen.key(kind, v): {"pruned": {"wer_dev": w, "wer_test": w, "wer_test_unseen": 3 * w, "params": 1}}
        for kind, by_value in wers.items()
        for v, w in by_value.items()
    }


def _patch_sweep(monkeypatch: pytest.MonkeyPatch) -> Any:
    import sweep

    better = {"utterances": 10, "words": 100, "delta": -0.02, "low": -0.03, "high": -0.01}
    monkeypatch.setattr(sweep, "versus", lambda a, b, split: better)
    monkeypatch.setattr(sweep, "split_sizes", lambda d, s, h: {"utterances": 10, "words": 100, "hours": h})
    return sweep


TEACHER = {f"{k}_{s}": 0.1 for k in ("wer", "hours") for s in ("dev", "test", "test_unseen")}


def test_the_learning_rate_record_compares_the_chosen_rates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """lr.py's record: each finished run's WER with its intervals against the recipe's rate, the
    rule per kind, the pruned/continued test ratio at each rate both ran at, and at the chosen rates
    with their paired interval; the docs section says what was chosen and what has not run."""
    import lr

    sweep = _patch_sweep(monkeypatch)
    wers = {"pruned": {5e-4: 0.15, 1e-3: 0.14, 2e-3: 0.16}, "continued": {5e-4: 0.13, 1e-3: 0.135}}
    finished = _sweep_finished(lr.SWEEP, wers)
    record = sweep.make_record(lr.SWEEP, TEACHER, tmp_path, finished) | {"commit": "abc"}
    assert record["choice_pruned"]["chosen"] == 1e-3  # lowest dev, interval below 0
    assert record["choice_continued"]["chosen"] is None  # 2e-3 has not run
    assert record["not_run"] == ["continued-lr0.002"]
    assert set(record["runs"]["pruned-lr0.001"]["vs_recipe"]) == {"dev", "test", "test_unseen"}
    ratios = {v: r["test_ratio"] for v, r in record["versus_continued"].items()}
    assert ratios == pytest.approx({"0.0005": 0.15 / 0.13, "0.001": 0.14 / 0.135})
    assert "chosen" not in record
    finished[lr.SWEEP.key("continued", 2e-3)] = {
        "pruned": {**finished["continued-lr0.0005"]["pruned"], "wer_dev": 0.2}
    }
    record = sweep.make_record(lr.SWEEP, TEACHER, tmp_path, finished) | {"commit": "abc"}
    assert record["chosen"]["values"] == {"pruned": 1e-3, "continued": 5e-4}
    assert record["chosen"]["test_ratio"] == pytest.approx(0.14 / 0.13)
    text = sweep.section(lr.SWEEP, record)
    assert "- pruned: **0.001**" in text and "**1.077**" in text and "Not run" not in text


def test_the_budget_gives_continued_the_pruned_models_epochs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """budget.py chooses for the pruned model only: `continued` (the equal-training control) is
    compared at the pruned model's chosen number of epochs, even where another was its best; each
    budget trains one pruning epoch, the rest fine-tuning."""
    import budget

    sweep = _patch_sweep(monkeypatch)
    assert budget.SWEEP.overrides(5) == ["prune_epochs=1", "finetune_epochs=4"]
    finished = _sweep_finished(budget.SWEEP, {"pruned": {3: 0.15, 5: 0.14}, "continued": {3: 0.12}})
    record = sweep.make_record(budget.SWEEP, TEACHER, tmp_path, finished)
    assert record["choice_pruned"]["chosen"] == 5 and "chosen" not in record  # continued's 5: not run
    assert record["not_run"] == ["continued-epochs5"]
    finished = _sweep_finished(budget.SWEEP, {"pruned": {3: 0.15, 5: 0.14}, "continued": {3: 0.12, 5: 0.13}})
    record = sweep.make_record(budget.SWEEP, TEACHER, tmp_path, finished) | {"commit": "abc"}
    assert "choice_continued" not in record
    assert record["chosen"]["values"] == {"pruned": 5, "continued": 5}
    assert record["chosen"]["test_ratio"] == pytest.approx(0.14 / 0.13)
    text = sweep.section(budget.SWEEP, record)
    assert "- pruned: **5 epochs (1 + 4)**" in text and "continued takes the pruned model's value" in text


def test_the_wide_teacher_replaces_the_reference_one_only_on_dev_unseen_evidence(tmp_path: Path) -> None:
    """teacher_choice.py's fixed rule: the wide teacher is chosen where its dev-unseen WER is lower
    with the interval below 0 and it is not measurably worse on dev; a better test-unseen alone
    does not choose it, and without a wide teacher the record is the reference's baseline."""
    import teacher_choice

    refs = [f"THE CAT SAT ON MAT {i}" for i in range(200)]
    wrong = [" ".join(["X"] * 5) + f" {i}" for i in range(200)]  # five errors of six words
    report = {"params": 10, **{f"utterances_{s}": 200 for s in teacher_choice.SPLITS}}
    report |= {f"words_{s}": 1200 for s in teacher_choice.SPLITS}

    def teacher(directory: Path, bad: set[str]) -> dict[str, Any]:
        for s in teacher_choice.SPLITS:  # wrong on every 4th utterance of the splits in `bad`
            pairs = enumerate(zip(refs, wrong, strict=True))
            hyps = [w if s in bad and i % 4 == 0 else r for i, (r, w) in pairs]
            write_recogs(recogs_path(directory, s), list(zip(refs, hyps, strict=True)))
        return report | {f"wer_{s}": (5 / 24 if s in bad else 0.0) for s in teacher_choice.SPLITS}

    reference = teacher(tmp_path / "reference", {"dev_unseen", "test_unseen"})
    record = teacher_choice.make_record({"reference": reference}, tmp_path)
    assert record["chosen"] == "reference" and record["not_run"] == ["wide"]
    assert "baseline" in teacher_choice.section(record | {"command": "c", "commit": "x"})

    wide = teacher(tmp_path / "wide", set())
    record = teacher_choice.make_record({"reference": reference, "wide": wide}, tmp_path)
    assert record["wide_minus_reference"]["dev_unseen"]["high"] < 0
    assert record["chosen"] == "wide"

    wide = teacher(tmp_path / "wide", {"dev", "dev_unseen"})  # no better on dev-unseen, worse on dev
    record = teacher_choice.make_record({"reference": reference, "wide": wide}, tmp_path)
    assert record["wide_minus_reference"]["test_unseen"]["high"] < 0  # better where it is not chosen
    assert record["chosen"] == "reference"
    wide = teacher(tmp_path / "wide", {"dev"})  # better on dev-unseen, but worse on dev
    record = teacher_choice.make_record({"reference": reference, "wide": wide}, tmp_path)
    assert record["wide_minus_reference"]["dev"]["low"] > 0 and record["chosen"] == "reference"
