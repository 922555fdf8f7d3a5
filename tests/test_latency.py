"""The latency budget: profile tables, the latency model, latency targets in pruning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.evaluate import profile as profiling
from conformer_prune.evaluate.profile import measure_models_ms, measured_ratios, profile_latency, write_table
from conformer_prune.model import ConformerConfig, build_model
from conformer_prune.model.conformer import HIDDEN
from conformer_prune.prune.budget import Budget, Lagrangian
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import Metric, as_float, conformer_cost
from conformer_prune.prune.gates import ConformerGates
from conformer_prune.prune.latency import FORMAT, LATENCY_TOLERANCE, LatencyModel, interpolate
from conformer_prune.prune.run import make_prune_optimizer, measured_masks
from tests.conftest import hetero_config

SMALL_GRID: dict[str, Any] = dict(
    unit_fractions=(0.5, 1.0), hidden_fractions=(0.5, 1.0), frontend_fractions=(0.5, 1.0), progress=False
)


def _table(cfg: ConformerConfig) -> dict[str, Any]:
    """A hand-made table: every part costs 0.01 ms per unit plus 0.1 ms, at d_model; half at d/2."""
    hidden = [cfg.d_model // 2, cfg.d_model]
    parts: dict[str, Any] = {}
    for part, top in (("ffn", 64), ("heads", 4), ("conv", 32)):
        units = [1, top // 2, top]
        parts[part] = {"units": units, "ms": [[s * (0.1 + 0.01 * u) for u in units] for s in (0.5, 1.0)]}
    parts["frontend"] = {"fraction": [0.25, 1.0], "ms": [[0.5, 1.0], [1.0, 2.0]]}
    return {
        "format": FORMAT,
        "runtime": "torch",
        "threads": 1,
        "batch": 1,
        "seconds": 10.0,
        "config": dataclasses.asdict(cfg),
        "hidden": hidden,
        "parts": parts,
        "rest_ms": [1.0, 3.0],
    }


def test_interpolation_is_piecewise_linear_and_differentiable() -> None:
    xs, ys = [1.0, 3.0, 7.0], [2.0, 4.0, 0.0]
    assert [interpolate(x, xs, ys) for x in xs] == ys
    assert interpolate(2.0, xs, ys) == 3.0 and interpolate(5.0, xs, ys) == 2.0
    assert interpolate(0.0, xs, ys) == 1.0  # extrapolated from the first segment
    x = torch.tensor(2.0, requires_grad=True)
    value = interpolate(x, xs, ys)
    assert isinstance(value, torch.Tensor)
    value.backward()
    assert float(x.grad) == pytest.approx(1.0)  # type: ignore[arg-type]


def test_latency_model_sums_the_parts_weighted_by_their_presence() -> None:
    cfg = hetero_config()  # heads [4, 0, 1], ffn1 [64, 16, 0], ffn2 [0, 32, 8], conv [32, 8, 0]
    model = LatencyModel(_table(cfg))
    ms = {u: 0.1 + 0.01 * u for u in (64, 16, 32, 8, 4, 1)}
    modules = ms[64] + ms[4] + ms[32] + ms[16] + ms[32] + ms[8] + ms[1] + ms[8]
    dense = as_float(model.predict(cfg))
    assert dense == pytest.approx(3.0 + 2.0 + modules)
    # a module closed by its gate, and a layer at half probability
    assert as_float(model.predict(cfg, {"layers.0.conv": 0.0})) == pytest.approx(dense - ms[32])
    half = as_float(model.predict(cfg, {"layers.2": 0.5}))
    assert half == pytest.approx(dense - 0.5 * (ms[1] + ms[8]))
    # half the model dimension: every part and the rest at the d/2 row of the table
    assert as_float(model.predict(cfg, {HIDDEN: 16.0})) == pytest.approx(1.0 + 1.0 + 0.5 * modules)
    # the expected count of units is differentiable
    units = torch.tensor(40.0, requires_grad=True)
    value = model.predict(cfg, {"layers.0.ffn1.units": units})
    assert isinstance(value, torch.Tensor)
    value.backward()
    assert float(units.grad) == pytest.approx(0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conv_kernel"):
        model.describes(dataclasses.replace(cfg, conv_kernel=9))


def test_a_table_of_one_model_dimension_refuses_to_predict_another() -> None:
    cfg = hetero_config()
    both = _table(cfg)
    one = dict(both, hidden=[cfg.d_model], rest_ms=both["rest_ms"][-1:])
    one["parts"] = {name: dict(part, ms=part["ms"][-1:]) for name, part in both["parts"].items()}
    dense = as_float(LatencyModel(both).predict(cfg))
    assert as_float(LatencyModel(one).predict(cfg)) == pytest.approx(dense)
    with pytest.raises(ValueError, match="profiled at d_model 32 alone"):
        LatencyModel(one).predict(cfg, {HIDDEN: 16.0})


def test_a_table_that_is_not_one_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"runtime": "ort"}))
    with pytest.raises(ValueError, match=r"table\.json.*not a latency table"):
        LatencyModel.load(path)
    with pytest.raises(FileNotFoundError, match="conformer-prune profile"):
        LatencyModel.load(tmp_path / "missing.json")
    table = _table(hetero_config())
    table["runtime"] = "tflite"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="tflite"):
        LatencyModel.load(path)


def test_deterministic_masks_meet_a_latency_target() -> None:
    torch.manual_seed(0)
    cfg = hetero_config(heads=[4, 2, 1], ffn1=[64, 16, 32], ffn2=[32, 32, 8], conv_channels=[32, 8, 16])
    gates = ConformerGates.attach(build_model(cfg), ["heads", "ffn", "conv", "modules"])
    gates.latency = LatencyModel(_table(cfg))
    for _, gate in gates:
        gate.log_alpha.data = torch.randn(gate.n, generator=torch.Generator().manual_seed(gate.n)) * 2 + 1
    full = as_float(conformer_cost(cfg, latency=gates.latency).value("latency"))
    expected = gates.expected_cost().value("latency")
    assert isinstance(expected, torch.Tensor) and expected.requires_grad
    target = 0.8 * full
    masks = gates.deterministic_masks(target=target, metric="latency")
    achieved = as_float(gates.mask_cost(masks).value("latency"))
    assert 0.98 * target <= achieved <= target


def _gates_with_table() -> tuple[ConformerGates, float, float]:
    """The gates of a small model with random log_alpha and the hand-made table, and the dense
    model's parameters and predicted latency."""
    cfg = hetero_config(heads=[4, 2, 1], ffn1=[64, 16, 32], ffn2=[32, 32, 8], conv_channels=[32, 8, 16])
    gates = ConformerGates.attach(build_model(cfg), ["heads", "ffn", "conv", "modules"])
    gates.latency = LatencyModel(_table(cfg))
    for _, gate in gates:
        gate.log_alpha.data = torch.randn(gate.n, generator=torch.Generator().manual_seed(gate.n)) * 2 + 1
    full = conformer_cost(cfg, latency=gates.latency)
    return gates, as_float(full.params), as_float(full.value("latency"))


def test_deterministic_masks_meet_a_parameter_target_under_a_latency_ceiling() -> None:
    """The masks of a 60% parameter target alone keep 90% of the latency; under a ceiling 10%
    below that, the adjustment removes the units with the least P(z != 0) per millisecond and
    restores none that would break either limit."""
    gates, params, latency = _gates_with_table()
    alone = gates.mask_cost(gates.deterministic_masks(target=0.6 * params, metric="params"))
    ceiling = 0.9 * as_float(alone.value("latency"))
    masks = gates.deterministic_masks(target=0.6 * params, metric="params", ceilings={"latency": ceiling})
    both = gates.mask_cost(masks)
    assert as_float(alone.params) <= 0.6 * params < 1.01 * as_float(alone.params)
    assert as_float(both.value("latency")) <= ceiling and as_float(both.params) <= 0.6 * params
    assert 0.97 * ceiling < as_float(both.value("latency"))  # at the ceiling, not far under it
    # a ceiling the target already meets changes nothing
    loose = gates.deterministic_masks(target=0.6 * params, metric="params", ceilings={"latency": latency})
    assert all(torch.equal(loose[k], m) for k, m in gates.deterministic_masks(0.6 * params, "params").items())


def _predicted_ratio(gates: ConformerGates, masks: dict[str, torch.Tensor], latency: float) -> float:
    return as_float(gates.mask_cost(masks).value("latency")) / latency


def test_measured_ratios_are_each_new_processs_round_by_round_ratios_and_their_median() -> None:
    cfg = hetero_config(heads=[4, 2, 1], ffn1=[64, 16, 32], ffn2=[32, 32, 8], conv_channels=[32, 8, 16])
    small = hetero_config(heads=[1, 1, 1], ffn1=[8, 8, 8], ffn2=[8, 8, 8], conv_channels=[8, 8, 8])
    models = [build_model(cfg), build_model(small)]
    timed = measured_ratios(models, "torch", threads=1, seconds=1.0, rounds=3, processes=2)
    assert len(timed.per_process) == 2 and all(len(p) == 2 and p[0] == 1.0 for p in timed.per_process)
    assert timed.ratios[0] == 1.0 and timed.ratios[1] == pytest.approx(
        sum(p[1] for p in timed.per_process) / 2
    )
    assert all(ms > 0 for ms in timed.ms)


def test_masks_checked_by_measurement_move_until_the_measured_latency_meets_the_target() -> None:
    """A table 13% too fast (as the quick teacher's was on ONNX Runtime: 0.566 measured for 0.5
    predicted): the masks of the table alone miss a 0.75 target by more than the 5% tolerance; the
    measured correction rescales the budget until the measurement is within it, and logs each try."""
    gates, _, latency = _gates_with_table()
    cfg = PruneConfig(target_params=None, target_latency=0.75)
    measured: list[float] = []

    def meter(masks: dict[str, torch.Tensor]) -> float:
        measured.append(1.13 * _predicted_ratio(gates, masks, latency))
        return measured[-1]

    log: list[dict[str, Any]] = []
    masks = measured_masks(gates, 0.75 * latency, cfg, {}, meter, log.append)
    alone = gates.deterministic_masks(target=0.75 * latency, metric="latency")
    assert abs(1.13 * _predicted_ratio(gates, alone, latency) / 0.75 - 1) > LATENCY_TOLERANCE
    final = 1.13 * _predicted_ratio(gates, masks, latency)
    assert abs(final / 0.75 - 1) <= LATENCY_TOLERANCE
    assert 2 <= len(log) <= cfg.latency_corrections + 1 and [r["try"] for r in log] == list(range(len(log)))
    assert [r["measured_ratio"] for r in log] == measured and log[0]["budget_ratio"] == pytest.approx(0.75)
    assert log[1]["budget_ratio"] == pytest.approx(0.75 * 0.75 / measured[0])  # rescaled by goal / measured
    # none asked: the table alone decides, and is measured once
    log.clear()
    trust = dataclasses.replace(cfg, latency_corrections=0)
    none = measured_masks(gates, 0.75 * latency, trust, {}, meter, log.append)
    assert len(log) == 1 and all(torch.equal(none[k], m) for k, m in alone.items())


def test_a_measured_latency_that_moves_faster_than_the_table_is_followed_along_its_slope() -> None:
    """Measured latency moving twice as fast as the table's (as on the quick teacher: 0.589, then
    0.444 after rescaling by goal / measured): the rescaled budget overshoots, and the next try
    interpolates between the two, landing within half the tolerance."""
    gates, _, latency = _gates_with_table()
    cfg = PruneConfig(target_params=None, target_latency=0.75)

    def meter(masks: dict[str, torch.Tensor]) -> float:
        return 2 * _predicted_ratio(gates, masks, latency) - 0.7

    log: list[dict[str, Any]] = []
    masks = measured_masks(gates, 0.75 * latency, cfg, {}, meter, log.append)
    assert len(log) == 3
    first, second, third = (r["budget_ratio"] for r in log)
    assert abs(log[1]["measured_ratio"] / 0.75 - 1) > LATENCY_TOLERANCE / 2  # the rescaling overshot
    assert min(first, second) < third < max(first, second)  # between the tries on either side
    assert abs(meter(masks) / 0.75 - 1) <= LATENCY_TOLERANCE / 2


def test_the_next_budget_follows_a_line_only_where_the_line_can_be_trusted() -> None:
    from conformer_prune.prune.run import _next_budget

    assert _next_budget([(0.5, 0.6)], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)  # one try: rescaled
    # tries on either side of the goal: the line between them
    assert _next_budget([(0.5, 0.6), (0.4, 0.45)], 0.5) == pytest.approx(0.4 + 0.05 * 0.1 / 0.15)
    # two nearly equal measurements on one side: their line would go to 0.281; rescaled instead
    flat = [(0.5, 0.515), (0.4854, 0.514)]
    assert _next_budget(flat, 0.5) == pytest.approx(0.4854 * 0.5 / 0.514)
    # a line that falls as the budget rises (noise): rescaled
    assert _next_budget([(0.5, 0.55), (0.45, 0.58)], 0.5) == pytest.approx(0.45 * 0.5 / 0.58)


def test_a_ceiling_overshot_by_a_correction_is_corrected_back_towards_it() -> None:
    """Over the ceiling, the correction tightens; when the measured latency moves twice as fast as
    the table's, the rescaled budget falls far under the ceiling (more pruned than it asks), and
    the next try comes back up to within the tolerance of it, still under it."""
    gates, params, latency = _gates_with_table()
    cfg = PruneConfig(target_params=0.6, max_latency=0.8)
    ceilings: dict[Metric, float] = {"latency": 0.8 * latency}

    def meter(masks: dict[str, torch.Tensor]) -> float:
        return 2 * _predicted_ratio(gates, masks, latency) - 0.7

    log: list[dict[str, Any]] = []
    masks = measured_masks(gates, 0.6 * params, cfg, ceilings, meter, log.append)
    measured = [r["measured_ratio"] for r in log]
    assert measured[0] > 0.8 * (1 + LATENCY_TOLERANCE / 2) and measured[1] < 0.8 * (1 - LATENCY_TOLERANCE)
    assert len(log) >= 3
    assert 0.8 * (1 - 1.5 * LATENCY_TOLERANCE) <= meter(masks) <= 0.8 * (1 + LATENCY_TOLERANCE / 2)


def test_of_the_masks_measured_the_closest_to_the_target_is_kept() -> None:
    """A noisy measurement that never meets the target: the tries stop at latency_corrections, and
    the masks kept are those whose measurement came closest, not the last."""
    gates, _, latency = _gates_with_table()
    cfg = PruneConfig(target_params=None, target_latency=0.75, latency_corrections=2)
    readings = iter([0.85, 0.78, 0.66])
    tried: list[dict[str, torch.Tensor]] = []

    def meter(masks: dict[str, torch.Tensor]) -> float:
        tried.append({k: m.clone() for k, m in masks.items()})
        return next(readings)

    masks = measured_masks(gates, 0.75 * latency, cfg, {}, meter)
    assert len(tried) == 3
    assert not all(torch.equal(tried[1][k], tried[2][k]) for k in masks)  # the tries differ
    assert all(torch.equal(masks[k], tried[1][k]) for k in masks)


def test_a_latency_ceiling_is_corrected_only_when_measured_over_it() -> None:
    """Under `max_latency` the parameter target stays exact: a measurement under the ceiling keeps
    the masks of the table; one over it tightens the ceiling's budget, never loosens it."""
    gates, params, latency = _gates_with_table()
    cfg = PruneConfig(target_params=0.6, max_latency=0.8)
    ceilings: dict[Metric, float] = {"latency": 0.8 * latency}
    table_masks = gates.deterministic_masks(target=0.6 * params, metric="params", ceilings=ceilings)
    log: list[dict[str, Any]] = []
    under = measured_masks(gates, 0.6 * params, cfg, ceilings, lambda m: 0.5, log.append)
    assert len(log) == 1 and log[0]["kind"] == "ceiling"
    assert all(torch.equal(under[k], m) for k, m in table_masks.items())
    log.clear()
    over = measured_masks(
        gates, 0.6 * params, cfg, ceilings, lambda m: 1.2 * _predicted_ratio(gates, m, latency), log.append
    )
    assert len(log) >= 2 and log[-1]["budget_ratio"] < 0.8
    assert _predicted_ratio(gates, over, latency) < _predicted_ratio(gates, table_masks, latency)
    assert as_float(gates.mask_cost(over).params) <= 0.6 * params


def _budget_with_ceiling(ceiling: float | None, steps: int = 300) -> tuple[float, float]:
    """Kept parameters and predicted latency (fractions of the dense model's) after a pruning stage
    in which only a 50% parameter budget, a `ceiling` on latency and a task loss that holds the
    gates open act."""
    gates, params, latency = _gates_with_table()
    budget = Budget(final=0.5, steps=steps, ramp_steps=100)
    lagrangian = Lagrangian(ceilings=["latency"] if ceiling is not None else [])
    optimizer = make_prune_optimizer([], gates, lagrangian, PruneConfig())
    for step in range(steps):
        cost = gates.expected_cost()
        sparsity = 1 - cost.params / params
        target = budget.target(step)
        assert target is not None
        loss = lagrangian(torch.as_tensor(sparsity), target) - 2.0 * sparsity
        if ceiling is not None:
            least = budget.target(step, 1 - ceiling)
            assert least is not None
            loss = loss + lagrangian.ceiling("latency", 1 - cost.value("latency") / latency, least)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cost = gates.expected_cost()
    return as_float(cost.params) / params, as_float(cost.value("latency")) / latency


def test_a_latency_ceiling_holds_beside_an_exact_parameter_target() -> None:
    kept, latency = _budget_with_ceiling(None)
    assert abs(kept - 0.5) < 0.01 and latency > 0.75, (kept, latency)
    kept, latency = _budget_with_ceiling(0.72)
    assert abs(kept - 0.5) < 0.02 and latency <= 0.72, (kept, latency)


def test_a_ceiling_term_is_zero_while_the_ceiling_holds() -> None:
    lagrangian = Lagrangian(ceilings=["latency"])
    lagrangian.ceilings["latency_1"].data.fill_(-3.0)
    lagrangian.ceilings["latency_2"].data.fill_(2.0)
    sparsity = torch.tensor(0.45, requires_grad=True)
    held = lagrangian.ceiling("latency", sparsity, 0.4)
    held.backward()
    assert float(held.detach()) == 0.0 and float(sparsity.grad) == 0.0  # type: ignore[arg-type]
    sparsity.grad = None
    exceeded = lagrangian.ceiling("latency", sparsity, 0.5)
    exceeded.backward()
    assert float(exceeded.detach()) == pytest.approx(3.0 * 0.05 + 2.0 * 0.05**2)
    assert float(sparsity.grad) < 0  # type: ignore[arg-type]  # descending it raises the sparsity
    assert set(Lagrangian().state_dict()) == {"lambda1", "lambda2"}  # runs without ceilings resume


def test_ceilings_are_checked_when_the_config_is_made() -> None:
    assert PruneConfig(max_latency=0.6).ceilings == {"latency": 0.6}
    with pytest.raises(ValueError, match="max_params: the target is on params"):
        PruneConfig(max_params=0.6)
    with pytest.raises(ValueError, match=r"max_latency: expected a kept fraction in \(0, 1\), found 1.5"):
        PruneConfig(max_latency=1.5)
    with pytest.raises(ValueError, match=r"only the methods that learn their masks.*not magnitude"):
        PruneConfig(method="magnitude", max_macs=0.5)


@pytest.fixture(scope="module")
def torch_table() -> tuple[ConformerConfig, dict[str, Any]]:
    cfg = ConformerConfig.create(
        n_layers=2, d_model=144, head_dim=36, heads=4, ffn1=576, ffn2=576, conv_channels=144, conv_kernel=9,
        subsampling="dw_striding", subsampling_factor=8, subsampling_channels=[64, 64, 64], vocab_size=128,
    )  # fmt: skip
    return cfg, profile_latency(cfg, "torch", threads=2, seconds=10.0, rounds=5, **SMALL_GRID)


def test_profile_names_the_runtime_and_reproduces_the_dense_model(
    torch_table: tuple[ConformerConfig, dict[str, Any]], tmp_path: Path
) -> None:
    cfg, table = torch_table
    assert table["runtime"] == "torch" and table["threads"] == 2 and table["batch"] == 1
    assert {"cpu", "cores"} <= set(table["machine"]) and "torch" in table["versions"]
    assert table["hidden"] == [72, 144] and table["parts"]["heads"]["units"] == [1, 2, 3, 4]
    write_table(table, tmp_path / "t.json")
    model = LatencyModel.load(tmp_path / "t.json")
    for d, measured in zip(table["hidden"], table["model_ms"], strict=True):
        assert as_float(model.predict(cfg, {HIDDEN: float(d)})) == pytest.approx(measured)
    for part, units in (("ffn", [288, 576]), ("heads", [1, 2, 3, 4]), ("conv", [72, 144])):
        assert table["parts"][part]["units"] == units
        assert len(table["parts"][part]["ms"]) == 2 and all(
            len(row) == len(units) for row in table["parts"][part]["ms"]
        )


@pytest.mark.slow  # a timing check: on a loaded machine the measured tables are noise
def test_profile_predicts_a_pruned_models_measured_latency(
    torch_table: tuple[ConformerConfig, dict[str, Any]],
) -> None:
    """The prediction for widths and modules the grid does not hold, against a measurement made
    interleaved with the dense model: the ratios agree within 0.1 (passed on a quiet machine; the
    teacher's own check is `latency_target` in a pruning run's eval.json)."""
    cfg, table = torch_table
    model = LatencyModel(table)
    pruned = dataclasses.replace(cfg, heads=[2, 3], ffn1=[400, 0], ffn2=[200, 576], conv_channels=[0, 100])
    dense_ms, pruned_ms = measure_models_ms([build_model(cfg), build_model(pruned)], "torch", 2, rounds=9)
    predicted = as_float(model.predict(pruned)) / as_float(model.predict(cfg))
    assert predicted < 0.9
    assert abs(predicted - pruned_ms / dense_ms) < 0.1, (predicted, pruned_ms / dense_ms)


@pytest.mark.parametrize("runtime", ["ort", "ort-int8"])
def test_onnx_runtime_profiles(runtime: str) -> None:
    cfg = hetero_config(n_layers=1, heads=2, ffn1=32, ffn2=32, conv_channels=16, subsampling_channels=[8, 8])
    grid = dict(SMALL_GRID, unit_fractions=(1.0,), hidden_fractions=(1.0,), frontend_fractions=(1.0,))
    table = profile_latency(cfg, runtime, threads=1, seconds=2.0, rounds=2, **grid)  # type: ignore[arg-type]
    model = LatencyModel(table)
    assert model.runtime == runtime and "onnxruntime" in table["versions"]
    assert as_float(model.predict(cfg)) == pytest.approx(table["model_ms"][-1])


def test_prune_to_a_latency_target_end_to_end(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run budgeted by a given table (hand-made, so the predicted ratio does not depend on this
    machine's load) and told to trust it (no measured correction) meets the prediction and reports
    the measured latency beside it."""
    monkeypatch.setattr(profiling, "MEASURE_PROCESSES", 1)  # one new process per measurement, for speed
    from conformer_prune.model import load_recognizer

    table_path = tmp_path / "table.json"
    write_table(_table(load_recognizer(tiny_run / "model.pt").model.config), table_path)
    out = tmp_path / "pruned"
    argv = [
        "prune", "--teacher", str(tiny_run / "model.pt"), "--data", str(tiny_corpus / "train"),
        "--dev", str(tiny_corpus / "dev"), "--out", str(out), "--target-latency", "0.6",
        "--latency-table", str(table_path), "--set", "prune_epochs=1", "finetune_epochs=1",
        "max_frames=4000", "device=cpu", "latency_corrections=0",
    ]  # fmt: skip
    assert main(argv) == 0
    check = json.loads((out / "eval.json").read_text())["latency_target"]
    assert check["runtime"] == "torch" and check["target_latency"] == 0.6
    assert 0.55 <= check["predicted_ratio"] <= 0.6  # the deterministic masks meet the prediction
    assert check["latency_ms_measured"] > 0 and check["latency_ms_teacher"] > 0
    assert check["measured_ratio_per_process"] == [check["measured_ratio"]]  # the one process's
    assert isinstance(check["target_met"], bool)
    assert not (out / "latency_table.json").exists()  # given a table, the run does not profile
    # the profile command writes a table of the same model, and refuses to overwrite it
    profile = ["profile", str(tiny_run / "model.pt"), "--out", str(tmp_path / "t.json")]
    assert main([*profile, "--runtime", "torch"]) == 0
    assert LatencyModel.load(tmp_path / "t.json").config.d_model == 32
    assert main(profile) == 2


def test_prune_to_a_parameter_target_under_a_latency_ceiling_end_to_end(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--target-params 0.6 --max-latency 0.6`: the pruned model has 60% of the parameters at most
    and a predicted latency under the ceiling, measured beside it; the log shows the ceiling's
    multipliers, and the frozen masks record both limits."""
    monkeypatch.setattr(profiling, "MEASURE_PROCESSES", 1)
    from conformer_prune.model import load_recognizer

    table_path = tmp_path / "table.json"
    teacher = load_recognizer(tiny_run / "model.pt").model
    write_table(_table(teacher.config), table_path)
    out = tmp_path / "pruned"
    argv = [
        "prune", "--teacher", str(tiny_run / "model.pt"), "--data", str(tiny_corpus / "train"),
        "--dev", str(tiny_corpus / "dev"), "--out", str(out), "--target-params", "0.6",
        "--max-latency", "0.6", "--latency-table", str(table_path), "--set", "prune_epochs=1",
        "finetune_epochs=1", "max_frames=4000", "device=cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "eval.json").read_text())
    check = report["latency_target"]
    assert report["ceilings"] == {"latency": 0.6} and check["kind"] == "ceiling"
    assert check["predicted_ratio"] <= 0.6 and isinstance(check["target_met"], bool)
    pruned = load_recognizer(out / "model.pt").model
    assert sum(p.numel() for p in pruned.parameters()) <= 0.6 * sum(p.numel() for p in teacher.parameters())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {entry["precision"] for entry in log if "epoch" in entry} == {"fp32"}  # the precision used
    frozen = next(entry for entry in log if entry.get("event") == "masks_frozen")
    assert frozen["ceiling_latency"]["achieved"] <= frozen["ceiling_latency"]["ceiling"]
    # the masks were timed before they were fixed (the tiny model's time is not the table's)
    tries = [entry for entry in log if entry.get("event") == "latency_measured"]
    assert tries and all(t["kind"] == "ceiling" and t["measured_ratio"] > 0 for t in tries)
    assert log.index(tries[-1]) < log.index(frozen)
