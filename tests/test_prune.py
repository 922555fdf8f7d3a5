from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from conformer_prune.cli import build_parser, main
from conformer_prune.config import ConfigError, load_config, recipe_path
from conformer_prune.data.dataset import Batch
from conformer_prune.distill.layerwise import DistillConfig, LayerwiseDistiller
from conformer_prune.evaluate.metrics import count_params, macs_per_second
from conformer_prune.model import ConformerConfig, ConformerCTC, build_model, load_recognizer
from conformer_prune.model.conformer import HIDDEN
from conformer_prune.prune.budget import Budget, Lagrangian, UnreachableTargetError, target_sparsity
from conformer_prune.prune.config import PruneConfig
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.prune.dense import dense_config_like, dense_params
from conformer_prune.prune.gates import STRUCTURES, ConformerGates
from conformer_prune.prune.hardconcrete import LOG_ALPHA_RANGE, HardConcrete
from conformer_prune.prune.magnitude import magnitude_masks, unit_scores
from conformer_prune.prune.methods import METHODS
from conformer_prune.prune.physical import physically_prune
from conformer_prune.prune.report import kept_per_layer
from conformer_prune.prune.run import (
    compact_for_finetuning,
    compactable,
    make_prune_optimizer,
    one_shot_model,
)
from conformer_prune.prune.torch_pruning import _prune_once, torch_pruning_prune
from conformer_prune.train import loop
from conformer_prune.train.config import TrainConfig
from tests.conftest import (
    assert_same_real_frames,
    hetero_config,
    interrupt_within_epoch,
    log_without_wall_clock,
)

ALL = list(STRUCTURES)


def _model(seed: int = 0, **overrides: Any) -> ConformerCTC:
    torch.manual_seed(seed)
    fields: dict[str, Any] = dict(
        n_layers=4,
        heads=[4, 2, 3, 4],
        ffn1=[64, 16, 32, 8],
        ffn2=[32, 32, 8, 8],
        conv_channels=[32, 8, 16, 4],
    )
    fields.update(overrides)
    model = build_model(hetero_config(**fields))
    for m in model.modules():  # non-trivial BatchNorm statistics, so slicing them is checked
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([83, 61, 24])
    feats = torch.randn(3, 83, 80, generator=torch.Generator().manual_seed(1))
    return feats * (torch.arange(83)[None, :, None] < lengths[:, None, None]), lengths


def test_all_one_gates_equal_the_ungated_model() -> None:
    dense = _model()
    gated = _model()
    gates = ConformerGates.attach(gated, ALL)
    gates.freeze({name: torch.ones(g.n) for name, g in gates})
    assert_same_real_frames(dense, gated, *_inputs(), atol=1e-6)  # multiplying by 1 may change kernel paths
    sampled = _model()
    ConformerGates.attach(sampled, ALL, init_unit=50.0, init_module=50.0)  # P(z = 1) -> 1 in training too
    sampled.train()
    for m in sampled.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.Dropout):
            m.eval()
    assert_same_real_frames(dense, sampled, *_inputs(), atol=1e-6)


def _random_masks(gates: ConformerGates, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.rand(gate.n, generator=g) < 0.6).float() for name, gate in gates}


@pytest.mark.parametrize(
    "case", ["random", "no_heads", "one_head", "no_ffn", "no_conv", "no_layer", "all_edges"]
)
def test_gated_model_equals_physically_pruned_model(case: str) -> None:
    model = _model(seed=2)
    gates = ConformerGates.attach(model, ALL)
    masks = {name: torch.ones(g.n) for name, g in gates} if case != "random" else _random_masks(gates, 3)
    if case in ("no_heads", "all_edges"):
        masks["layers.0.attn.units"] = torch.zeros(4)  # every head removed, module gate still open
    if case in ("one_head", "all_edges"):
        masks["layers.3.attn.units"] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    if case in ("no_ffn", "all_edges"):
        masks["layers.1.ffn2"] = torch.zeros(1)
    if case in ("no_conv", "all_edges"):
        masks["layers.2.conv"] = torch.zeros(1)
    if case in ("no_layer", "all_edges"):
        masks["layers.1"] = torch.zeros(1)
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    assert_same_real_frames(model, pruned, *_inputs())
    assert not any(".gate" in k for k in pruned.state_dict())
    cost = gates.mask_cost(gates.current_masks())
    assert as_float(cost.params) == count_params(pruned)
    assert as_float(cost.macs_per_second) == pytest.approx(macs_per_second(pruned), rel=1e-9)
    final = gates.current_masks()  # the per-layer report agrees with the masks
    for row in kept_per_layer(model.config, pruned.config, final):
        i = row["layer"]
        assert row["kept"] == (final[f"layers.{i}"].sum() > 0)
        attn_open = row["kept"] and final[f"layers.{i}.attn"].sum() > 0
        assert row["attn"][0] == (int(final[f"layers.{i}.attn.units"].sum()) if attn_open else 0)
    if case == "all_edges":
        assert pruned.config.n_layers == 3
        assert pruned.config.heads[0] == 0 and pruned.encoder.layers[0].self_attn is None
        assert pruned.config.heads[2] == 1 and pruned.encoder.layers[2].self_attn.linear_q.weight.shape == (
            8,
            32,
        )
        assert pruned.config.conv_channels[1] == 0 and pruned.encoder.layers[1].conv is None


def test_glu_pairs_and_position_biases_are_sliced_together() -> None:
    model = _model(seed=4)
    gates = ConformerGates.attach(model, ["heads", "conv"])
    masks = gates.current_masks()
    masks["layers.0.conv.units"] = torch.zeros(32)
    masks["layers.0.conv.units"][[3, 17, 30]] = 1.0
    masks["layers.0.attn.units"] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    conv, new_conv = model.encoder.layers[0].conv, pruned.encoder.layers[0].conv
    keep = torch.tensor([3, 17, 30])
    w, new_w = conv.pointwise_conv1.weight, new_conv.pointwise_conv1.weight  # (2C, D, 1)
    assert new_w.shape == (6, 32, 1)
    assert torch.equal(new_w[:3], w[keep]) and torch.equal(new_w[3:], w[32 + keep])
    assert torch.equal(new_conv.batch_norm.running_var, conv.batch_norm.running_var[keep])
    attn, new_attn = model.encoder.layers[0].self_attn, pruned.encoder.layers[0].self_attn
    assert torch.equal(new_attn.pos_bias_u, attn.pos_bias_u[[1, 3]])
    assert torch.equal(
        new_attn.linear_pos.weight, attn.linear_pos.weight.view(4, 8, 32)[[1, 3]].reshape(16, 32)
    )
    assert pruned.config.heads[0] == 2 and pruned.config.conv_channels[0] == 3


def test_expected_cost_is_exact_for_the_dense_model_and_differentiable() -> None:
    model = _model()
    assert as_float(conformer_cost(model.config).params) == count_params(model)
    gates = ConformerGates.attach(model, ALL)
    cost = gates.expected_cost()
    cost.params.backward()  # type: ignore[union-attr]
    assert all(la.grad is not None and torch.all(la.grad > 0) for la in gates.log_alphas())


@pytest.mark.parametrize(("metric", "ratio"), [("params", 0.5), ("params", 0.3), ("macs", 0.6)])
def test_deterministic_masks_meet_the_target_within_one_percent(metric: str, ratio: float) -> None:
    model = _model(seed=5, d_model=64, head_dim=16)
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv", "modules", "frontend"])
    for _, gate in gates:
        gate.log_alpha.data = torch.randn(gate.n, generator=torch.Generator().manual_seed(gate.n)) * 2 + 1
    dense = conformer_cost(model.config)
    full = as_float(dense.params if metric == "params" else dense.macs_per_second)
    masks = gates.deterministic_masks(target=ratio * full, metric=metric)  # type: ignore[arg-type]
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    achieved = count_params(pruned) if metric == "params" else macs_per_second(pruned)
    assert abs(achieved / (ratio * full) - 1) <= 0.01


def test_lagrangian_drives_expected_sparsity_to_the_target() -> None:
    torch.manual_seed(0)
    model = _model()
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv"])
    lagrangian = Lagrangian()
    opt = torch.optim.AdamW(
        [
            {"params": gates.log_alphas(), "lr": 0.05, "weight_decay": 0.0},
            {"params": list(lagrangian.parameters()), "lr": 0.05, "weight_decay": 0.0, "maximize": True},
        ]
    )
    full = count_params(model) - sum(la.numel() for la in gates.log_alphas())
    for step in range(400):
        sparsity = 1 - gates.expected_cost().params / full
        loss = lagrangian(torch.as_tensor(sparsity), target_sparsity(step, 100, 0.4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = 1 - as_float(gates.expected_cost().params) / full
    assert abs(final - 0.4) < 0.03, final


def test_budget_ramps_then_stops_applying_after_the_pruning_stage() -> None:
    budget = Budget(final=0.5, steps=10, ramp_steps=4)
    assert [budget.target(step) for step in (0, 2, 4, 9)] == [0.0, 0.25, 0.5, 0.5]
    assert budget.target(10) is None and budget.target(25) is None  # fine-tuning: masks are fixed
    assert Budget(final=0.3, steps=0, ramp_steps=0).target(0) is None  # one-shot and dense methods


def test_hard_concrete_sampling_is_seeded_per_step() -> None:
    a, b = HardConcrete(16, init_log_alpha=0.0), HardConcrete(16, init_log_alpha=0.0)
    b.log_alpha.data.copy_(a.log_alpha.data)
    a.generator = torch.Generator().manual_seed(7)
    b.generator = torch.Generator().manual_seed(7)
    za, zb = a.train()(), b.train()()
    assert torch.equal(za, zb) and float(za.detach().min()) >= 0 and float(za.detach().max()) <= 1
    assert float(a.prob_nonzero().detach()[0]) == pytest.approx(
        torch.sigmoid(a.log_alpha[0] + 2 / 3 * 2.3979).item(), 1e-4
    )


def _prune_argv(tiny_corpus: Path, tiny_run: Path, out: Path) -> list[str]:
    return [
        "prune",
        "--teacher",
        str(tiny_run / "model.pt"),
        "--data",
        str(tiny_corpus / "train"),
        "--dev",
        str(tiny_corpus / "dev"),
        "--test",
        str(tiny_corpus / "test"),
        "--target-params",
        "0.5",
        "--out",
        str(out),
        "--set",
        "prune_epochs=2",
        "finetune_epochs=1",
        "max_frames=4000",
        "device=cpu",
    ]


def test_prune_command_end_to_end(tiny_corpus: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert main(_prune_argv(tiny_corpus, tiny_run, out)) == 0
    report = json.loads((out / "eval.json").read_text())
    teacher, pruned = report["teacher"], report["pruned"]
    assert abs(pruned["params"] / (0.5 * teacher["params"]) - 1) <= 0.01
    assert pruned["macs_per_second"] < teacher["macs_per_second"]
    assert {"wer_dev", "wer_test", "latency_ms_10s"} <= set(pruned)
    rec = load_recognizer(out / "model.pt")  # loads on its own, without the teacher
    assert count_params(rec.model) == pruned["params"]
    assert (out / "layers.png").stat().st_size > 0 and "| layer |" in (out / "layers.md").read_text()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]  # each loss part's gradient norm, every epoch
    assert all(r["grad_norm_ctc"] > 0 and r["grad_norm_layer"] >= 0 for r in epochs)
    assert len({r["grad_norm_ctc"] for r in epochs}) == len(epochs)  # measured in every epoch


def test_prune_resume_continues_from_the_same_step(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_epoch = loop.train_one_epoch  # the epoch engine that pruning shares with training
    calls: list[int] = []

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_prune_argv(tiny_corpus, tiny_run, tmp_path / "a"))
    state = torch.load(tmp_path / "a" / "prune_state.pt", weights_only=True)
    assert state["epoch"] == 1 and "lambda1" in str(state["lagrangian"].keys())
    assert any("log_alpha" in k for k in state["student"]) and len(state["optimizer"]["param_groups"]) == 4
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    assert main([*_prune_argv(tiny_corpus, tiny_run, tmp_path / "a"), "--resume"]) == 0
    assert main(_prune_argv(tiny_corpus, tiny_run, tmp_path / "b")) == 0
    resumed = torch.load(tmp_path / "a" / "prune_state.pt", weights_only=True)
    straight = torch.load(tmp_path / "b" / "prune_state.pt", weights_only=True)
    for key, value in straight["student"].items():
        torch.testing.assert_close(resumed["student"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("epoch", [1, 2], ids=["pruning", "fine-tuning"])
def test_prune_resume_within_an_epoch_matches_an_uninterrupted_run(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: int
) -> None:
    """Stopped one step into the second pruning epoch or into the fine-tuning epoch (on the
    compact student), after a state written there: the resumed run ends with the uninterrupted
    run's weights, gates, multipliers and log (the gate samples, the budget and the
    gradient-norm probe continue from that step)."""

    def argv(out: Path) -> list[str]:
        return [*_prune_argv(tiny_corpus, tiny_run, out), "max_frames=2000", "checkpoint_minutes=1e-9"]

    assert main(argv(tmp_path / "b")) == 0
    interrupt_within_epoch(monkeypatch, epoch=epoch, steps=1)
    with pytest.raises(KeyboardInterrupt):
        main(argv(tmp_path / "a"))
    state = torch.load(tmp_path / "a" / "prune_state.pt", weights_only=True)
    assert state["epoch"] == epoch and state["partial"]["progress"]["steps"] == 1
    compact = epoch == 2  # fine-tuning runs on the compact student: no gates left in the state
    assert (state.get("compact_masks") is not None) == compact
    assert any("log_alpha" in k for k in state["student"]) != compact
    monkeypatch.undo()
    assert main([*argv(tmp_path / "a"), "--resume"]) == 0
    resumed = torch.load(tmp_path / "a" / "prune_state.pt", weights_only=True)
    straight = torch.load(tmp_path / "b" / "prune_state.pt", weights_only=True)
    for part in ("student", "distiller", "lagrangian"):
        for key, value in straight[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=0, msg=f"{part}.{key}")
    assert log_without_wall_clock(tmp_path / "a") == log_without_wall_clock(tmp_path / "b")


def test_magnitude_masks_keep_each_gates_largest_units_and_meet_the_target() -> None:
    model = _model()
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv", "modules", "frontend"])
    teacher = as_float(conformer_cost(model.config).params)
    masks = magnitude_masks(gates, 0.5 * teacher, "params")
    achieved = as_float(gates.mask_cost(masks).params)
    assert 0.98 * 0.5 * teacher <= achieved <= 0.5 * teacher
    scores = unit_scores(model)
    for name, score in scores.items():
        kept, removed = score[masks[name] == 1], score[masks[name] == 0]
        assert kept.numel() >= 1, name
        if removed.numel():
            assert kept.min() >= removed.max(), name  # a top-k set in every gate
    # the scores are the L1 norms of the unit's weights: check one FFN neuron by hand
    ffn = model.encoder.layers[0].feed_forward1
    by_hand = (
        ffn.linear1.weight[3].abs().sum() + ffn.linear1.bias[3].abs() + ffn.linear2.weight[:, 3].abs().sum()
    )
    torch.testing.assert_close(scores["layers.0.ffn1.units"][3], by_hand.detach())


@pytest.mark.parametrize("method", ["magnitude", "magnitude-distill"])
def test_magnitude_baselines_end_to_end(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, method: str
) -> None:
    out = tmp_path / method
    assert main([*_prune_argv(tiny_corpus, tiny_run, out), "--method", method]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert abs(report["pruned"]["params"] / (0.5 * report["teacher"]["params"]) - 1) <= 0.02
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "masks_frozen"  # one shot, before any training
    epochs = [r for r in records if "epoch" in r]
    assert len(epochs) == 3 and all(r["stage"] == "finetune" for r in epochs)  # same steps as l0
    assert (DistillConfig().layer_key in epochs[0]) == (
        method == "magnitude-distill"
    )  # distillation or CTC only
    rec = load_recognizer(out / "model.pt")
    assert count_params(rec.model) == report["pruned"]["params"]


def _kept_rows(pruned: torch.Tensor, full: torch.Tensor, block: int = 1) -> torch.Tensor:
    """0/1 mask over `full`'s blocks of `block` rows: which of them reappear in `pruned`."""
    full_blocks = full.reshape(-1, block, *full.shape[1:])
    mask = torch.zeros(full_blocks.shape[0])
    for rows in pruned.reshape(-1, block, *pruned.shape[1:]):
        (match,) = [i for i, w in enumerate(full_blocks) if torch.equal(w, rows)]
        mask[match] = 1
    return mask


@pytest.mark.parametrize(("metric", "ratio"), [("params", 0.5), ("params", 0.7), ("macs", 0.6)])
def test_torch_pruning_removes_whole_units_consistently_and_meets_the_target(
    metric: Literal["params", "macs"], ratio: float
) -> None:
    teacher = _model().eval()  # (at 30% of parameters this tiny model's unprunable parts weigh more)
    full = count_params(teacher)
    full_cost = conformer_cost(teacher.config)
    total = as_float(full_cost.value(metric))
    pruned = torch_pruning_prune(teacher, ratio * total, metric)
    achieved = as_float(conformer_cost(pruned.config).value(metric))
    # parameters within 4%: one step of the global ratio can remove a whole head of this tiny model
    # (3% of its parameters) with other units (measured: 0.721 -> 0.685 of them from ratio 0.30 to
    # 0.31, a gap the 70% target falls in); MACs move in coarser steps: one of the 8
    # first-convolution channels carries 1/8 of the second convolution's MACs
    slack = 0.04 if metric == "params" else 0.15
    assert (1 - slack) * ratio * total <= achieved <= ratio * total
    assert pruned.config.d_model == teacher.config.d_model
    # the first stage's channels are the library's to prune (its tracer once never saw them); the
    # last stage's are too (below), where its global ranking puts them
    assert pruned.config.subsampling_channels[0] < teacher.config.subsampling_channels[0]
    # the library's choice, read back as masks over our units: slicing the teacher by them with
    # our own physical pruning must give exactly the library's model (whole heads with their
    # position biases, GLU pairs, BatchNorm statistics)
    conv0 = teacher.encoder.pre_encode.conv[0].weight
    masks = {"frontend.0": _kept_rows(pruned.encoder.pre_encode.conv[0].weight, conv0)}
    conv1 = teacher.encoder.pre_encode.conv[2].weight[:, masks["frontend.0"].bool()]  # kept inputs
    masks["frontend.1"] = _kept_rows(pruned.encoder.pre_encode.conv[2].weight, conv1)
    for i, (t, p) in enumerate(zip(teacher.encoder.layers, pruned.encoder.layers, strict=True)):
        if t.self_attn is not None:
            hd = t.self_attn.head_dim
            masks[f"layers.{i}.attn.units"] = _kept_rows(
                p.self_attn.linear_q.weight, t.self_attn.linear_q.weight, hd
            )
        for name in ("feed_forward1", "feed_forward2"):
            if getattr(t, name) is not None:
                unit = f"layers.{i}.ffn{name[-1]}.units"
                masks[unit] = _kept_rows(getattr(p, name).linear1.weight, getattr(t, name).linear1.weight)
        if t.conv is not None:
            masks[f"layers.{i}.conv.units"] = _kept_rows(
                p.conv.depthwise_conv.weight, t.conv.depthwise_conv.weight
            )
    expected = physically_prune(teacher, masks)
    assert expected.config == pruned.config
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(pruned.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert count_params(teacher) == full  # the teacher is untouched


def test_torch_pruning_prunes_the_last_front_end_stage_with_its_columns_of_out() -> None:
    """The channel-major flatten into `out`: Torch-Pruning alone removed one column per channel."""
    teacher = _model().eval()
    pruned = _prune_once(teacher, 0.5, frames=200)  # a ratio at which the library removes 4 of 6
    t, p = teacher.encoder.pre_encode, pruned.encoder.pre_encode
    assert p.conv[2].out_channels < t.conv[2].out_channels
    first = _kept_rows(p.conv[0].weight, t.conv[0].weight).bool()
    last = _kept_rows(p.conv[2].weight, t.conv[2].weight[:, first]).bool()
    columns = t.out.weight.view(t.out.out_features, t.conv[2].out_channels, t.freq)[:, last]
    assert torch.equal(p.out.weight, columns.reshape(t.out.out_features, -1))
    feats, lengths = torch.randn(2, 120, teacher.config.n_mels), torch.tensor([120, 77])
    with torch.no_grad():
        assert torch.isfinite(pruned(feats, lengths)[0]).all()


def test_torch_pruning_says_when_a_target_is_out_of_its_reach() -> None:
    teacher = _model().eval()
    target = 0.05 * as_float(conformer_cost(teacher.config).params)
    with pytest.raises(
        UnreachableTargetError, match=r"the smallest it gave was .*pick a larger target"
    ) as err:
        torch_pruning_prune(teacher, target, "params")
    smallest = float(str(err.value).split("smallest it gave was ")[1].split(" ")[0].replace(",", ""))
    assert smallest > target  # the reported size is one it really could not go below


def test_torch_pruning_baseline_end_to_end(tiny_corpus: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tp"
    assert main([*_prune_argv(tiny_corpus, tiny_run, out), "--method", "torch-pruning"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert abs(report["pruned"]["params"] / (0.5 * report["teacher"]["params"]) - 1) <= 0.02
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and all(r["stage"] == "finetune" for r in epochs)  # same steps as l0
    assert "layer_mse" not in epochs[0]  # fine-tuned with CTC, as the library's users would
    rec = load_recognizer(out / "model.pt")
    assert count_params(rec.model) == report["pruned"]["params"]


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_dense_baseline_shape_meets_the_parameter_target(ratio: float) -> None:
    teacher = ConformerConfig()  # Conformer-S
    target = ratio * dense_params(teacher)
    cfg = dense_config_like(teacher, target)
    assert 0.99 * target <= dense_params(cfg) <= target
    assert cfg.n_layers == teacher.n_layers and cfg.d_model < teacher.d_model
    assert len(set(cfg.ffn1)) == 1 and cfg.ffn1 == cfg.ffn2  # uniform: a plain dense model
    model = build_model(cfg).eval()
    assert count_params(model) == dense_params(cfg)
    log_probs, _ = model(torch.randn(1, 40, 80), torch.tensor([40]))  # it runs
    assert log_probs.shape == (1, 10, cfg.vocab_size + 1)


@pytest.mark.parametrize("method", ["scratch", "dense-distill"])
def test_dense_baselines_end_to_end(tiny_corpus: Path, tiny_run: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    inter = ["inter_ctc.layers=[1]", "inter_ctc.weights=[0.3]"] if method == "scratch" else []
    prune, *args = _prune_argv(tiny_corpus, tiny_run, out)  # its --set last, extended
    assert main([prune, "--method", method, *args, *inter]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert abs(report["pruned"]["params"] / (0.5 * report["teacher"]["params"]) - 1) <= 0.02
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and all(r["stage"] == "finetune" for r in epochs)
    assert (DistillConfig().layer_key in epochs[0]) == (method == "dense-distill")
    assert ("inter_ctc" in epochs[0]) == (method == "scratch")  # as the teacher's recipe may ask
    rec = load_recognizer(out / "model.pt")
    teacher = load_recognizer(tiny_run / "model.pt")
    assert rec.model.config.d_model < teacher.model.config.d_model
    assert f"Model dimension {rec.model.config.d_model}/" in (out / "layers.md").read_text()
    assert count_params(rec.model) == report["pruned"]["params"]


MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


def test_committed_checkpoints_load_strictly_and_their_masks_name_our_units() -> None:
    """The reference teacher and the 50% model pruned from it load with strict=True; the masks the
    pruned one records are named as our gates name them, and slicing the teacher by them gives the
    pruned model's shapes and, in closed form, its exact parameter count."""
    teacher = load_recognizer(MODELS / "teacher.pt").model  # strict
    assert teacher.config.n_layers == 12
    pruned = load_recognizer(MODELS / "pruned-50.pt")
    masks = {k: torch.tensor(v) for k, v in pruned.meta["masks"].items()}
    gates = ConformerGates.attach(build_model(teacher.config), list(STRUCTURES))
    assert set(masks) <= {name for name, _ in gates}
    sliced = physically_prune(teacher, masks)
    assert sliced.config == pruned.model.config
    assert {k: v.shape for k, v in sliced.state_dict().items()} == {
        k: v.shape for k, v in pruned.model.state_dict().items()
    }
    kept = {k: float(m.sum()) for k, m in masks.items()}
    assert as_float(conformer_cost(teacher.config, kept).params) == count_params(pruned.model)


def test_one_registry_names_the_methods_for_config_and_command_line() -> None:
    prune_parser = build_parser()._subparsers._group_actions[0].choices["prune"]  # type: ignore[union-attr]
    (method_arg,) = [a for a in prune_parser._actions if a.dest == "method"]
    assert list(method_arg.choices) == list(METHODS)
    for name in METHODS:
        assert load_config(PruneConfig, None, [f"method={name}"]).method == name
    with pytest.raises(ConfigError, match="method"):
        load_config(PruneConfig, None, ["method=l1-distill"])


def test_target_matching_never_reopens_a_module_that_its_gate_closed() -> None:
    """The deterministic masks close layer 0's first feed-forward module (its gate's P(z != 0) is
    tiny) while its unit gates are stale and open; the shortfall to the target is larger than
    the whole module, so a restore loop that treats module gates as candidates reopens it."""
    model = _model(seed=5)
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv", "modules", "frontend"])
    with torch.no_grad():
        for name, gate in gates:
            gate.log_alpha.fill_(3.0 if gates.slots[name].unit else 5.0)
        gates.slots["layers.0.ffn1"].gate.log_alpha.fill_(-3.0)
        for name in ("layers.0.ffn2.units", "layers.1.ffn1.units", "layers.2.conv.units"):
            gates.slots[name].gate.log_alpha.fill_(-4.0)  # closed, ranked below the module gate
    full = as_float(conformer_cost(model.config).params)
    closed = gates.deterministic_masks()
    assert closed["layers.0.ffn1"].sum() == 0
    assert full - as_float(gates.mask_cost(closed).params) > 0.1 * full  # a large shortfall ...
    module = 64 * (2 * 32 + 1) + 3 * 32
    assert module < 0.1 * full  # ... larger than the module
    masks = gates.deterministic_masks(target=full, metric="params")
    assert masks["layers.0.ffn1"].sum() == 0
    assert as_float(gates.mask_cost(masks).params) <= full


def test_target_matching_ranks_units_by_probability_per_unit_of_cost() -> None:
    """Heads are a little more likely to stay than neurons but cost 20 times more each: to shed
    1,000 parameters, one head goes (P(z != 0) per parameter ranks it last), not 16 neurons."""
    model = _model(seed=5)
    gates = ConformerGates.attach(model, ["heads", "ffn"])
    with torch.no_grad():
        for name, gate in gates:
            gate.log_alpha.fill_(5.5 if name.endswith("attn.units") else 5.0)
    kept = gates.deterministic_masks()
    assert all(bool(m.all()) for m in kept.values())
    target = as_float(gates.mask_cost(kept).params) - 1000
    masks = gates.deterministic_masks(target=target, metric="params")
    removed = {name: int((m == 0).sum()) for name, m in masks.items() if (m == 0).any()}
    assert sum(removed.values()) == 1 and next(iter(removed)).endswith("attn.units"), removed
    assert as_float(gates.mask_cost(masks).params) <= target


def _budget_only(
    steps: int,
    reference_steps: int,
    clamp: bool = True,
    resist: float = 0.0,
    scale_gates: bool = True,
    scale_multipliers: bool = True,
) -> tuple[list[float], ConformerGates]:
    """The kept fraction at every step of a pruning stage of `steps` steps in which only the budget
    acts (no data), with the run's optimizer, ramp and multipliers; target 50% of parameters.
    `resist` x the expected sparsity stands for a task loss that holds the gates open.
    `scale_gates`/`scale_multipliers`: the budget's scale on the gates' and the multipliers' learning
    rates (both in a run; either off to see what it does)."""
    model = _model()
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv", "modules", "frontend"])
    cfg = PruneConfig(budget_reference_steps=reference_steps, clamp_log_alpha=clamp)
    budget = Budget.for_stage(1 - cfg.ratio, steps, cfg.target_warmup, cfg.budget_reference_steps)
    lagrangian = Lagrangian(budget.scale)
    optimizer = make_prune_optimizer([], gates, lagrangian, cfg, budget.scale)
    for group in optimizer.param_groups:
        if group["name"] == "gates" and not scale_gates:
            group["lr"] = cfg.gate_lr
        if group["name"] == "lagrange" and not scale_multipliers:
            group["lr"] = cfg.lambda_lr
    full = as_float(conformer_cost(model.config).params)
    kept = []
    for step in range(steps):
        target = budget.target(step)
        assert target is not None
        sparsity = 1 - gates.expected_cost().params / full
        loss = lagrangian(torch.as_tensor(sparsity), target) + resist * sparsity
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kept.append(1 - float(torch.as_tensor(sparsity).detach()))
    return kept, gates


def test_a_one_epoch_pruning_stage_does_not_overshoot_below_half_its_target() -> None:
    before, _ = _budget_only(100, reference_steps=100)  # the plain ramp and multipliers
    after, _ = _budget_only(100, reference_steps=1000)  # scaled for a stage of 100 steps
    assert min(before) < 0.25  # what a one-epoch stage did
    assert min(after) >= 0.25 and abs(after[-1] - 0.5) < 0.1, (min(after), after[-1])
    long = Budget.for_stage(0.5, 2000, 0.3, 1000)  # a long stage is left as it was
    assert (long.ramp_steps, long.scale) == (600, 1.0)


def test_a_short_pruning_stage_held_back_by_its_task_loss_keeps_up_with_its_target() -> None:
    """The demo's 174-step stage, with a task loss that holds the gates open: at the gates' own
    learning rate they lag (kept 0.94 against a target of 0.59 half-way) and then overshoot below
    0.42; scaled with the multiplier (`Budget.for_stage`), they keep within 0.05 of the target."""
    steps, half = 174, 86
    target = Budget.for_stage(0.5, steps, 0.3, 1000).target(half)
    assert target is not None
    lagging, _ = _budget_only(
        steps, reference_steps=1000, resist=5.0, scale_gates=False, scale_multipliers=False
    )
    kept, _ = _budget_only(steps, reference_steps=1000, resist=5.0)
    assert lagging[half] - (1 - target) > 0.2 and min(lagging) < 0.42, (lagging[half], min(lagging))
    assert abs(kept[half] - (1 - target)) < 0.05 and min(kept) > 0.48 and abs(kept[-1] - 0.5) < 0.02, (
        kept[half],
        min(kept),
        kept[-1],
    )


def test_a_short_pruning_stage_meets_its_target_against_a_task_loss_that_outgrows_fixed_multipliers() -> None:
    """The demo's 174-step stage against a task loss four times as strong: with the multipliers at
    their own learning rate (Adam moves them about that much per step), they cannot grow past the
    loss in time and the stage ends with 0.6 kept; scaled with the gates (`Budget.for_stage`), it
    ends at its target."""
    steps = 174
    fixed, _ = _budget_only(steps, reference_steps=1000, resist=20.0, scale_multipliers=False)
    scaled, _ = _budget_only(steps, reference_steps=1000, resist=20.0)
    assert fixed[-1] > 0.58, fixed[-1]
    assert abs(scaled[-1] - 0.5) < 0.02 and min(scaled) > 0.45, (scaled[-1], min(scaled))


def test_log_alpha_is_clamped_to_cofis_range_after_every_step() -> None:
    low, high = LOG_ALPHA_RANGE
    assert (low, high) == pytest.approx((-4.60517, 4.60517))

    def pushed(clamp: bool) -> torch.Tensor:
        """log_alpha after 200 steps of a loss that pushes unit gates down and module gates up."""
        gates = ConformerGates.attach(_model(), ["heads", "ffn", "modules"])
        optimizer = make_prune_optimizer([], gates, Lagrangian(), PruneConfig(clamp_log_alpha=clamp))
        for _ in range(200):
            loss = sum((1 if gates.slots[name].unit else -1) * gate.log_alpha.sum() for name, gate in gates)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
        return torch.cat([la.detach() for la in gates.log_alphas()])

    free, clamped = pushed(clamp=False), pushed(clamp=True)
    assert float(free.min()) < low - 1 and float(free.max()) > high + 1
    bounds = torch.tensor([low, high])  # in float32, as log_alpha is
    assert bool(clamped.min() >= bounds[0]) and bool(clamped.max() <= bounds[1])


def test_the_optimizer_takes_the_betas_asked_for_and_pytorchs_otherwise() -> None:
    """`scratch` and `dense-distill` train from random weights with the teacher recipe's betas."""
    weight = torch.nn.Parameter(torch.ones(3, 3))
    for betas, expected in ((None, (0.9, 0.999)), ((0.9, 0.98), (0.9, 0.98))):
        optimizer = make_prune_optimizer([weight], None, Lagrangian(), PruneConfig(betas=betas))
        assert {tuple(group["betas"]) for group in optimizer.param_groups} == {expected}
    teacher_betas = load_config(TrainConfig, recipe_path("teacher")).optim.betas
    cfg = load_config(PruneConfig, recipe_path("prune"), [f"betas=[{teacher_betas[0]},{teacher_betas[1]}]"])
    assert cfg.betas == teacher_betas == (0.9, 0.98)


@torch.no_grad()
def _real_frames(model: ConformerCTC) -> torch.Tensor:
    feats, lengths = _inputs()
    out, out_lengths = model(feats, lengths)
    return torch.cat([out[i, :n] for i, n in enumerate(out_lengths.tolist())])


@pytest.mark.parametrize(
    "front_end",
    [{}, {"subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_channels": [8, 6, 7]}],
    ids=["striding-4x", "dw_striding-8x"],
)
def test_folding_soft_gate_values_makes_the_switch_to_fixed_masks_smooth(front_end: dict[str, Any]) -> None:
    """In eval mode, the soft-gated model just before the masks are fixed equals the model with
    E[z] folded into its weights and 0/1 masks just after (and the physically pruned one), with
    either front end."""
    model, unfolded = _model(seed=6, **front_end), _model(seed=6, **front_end)
    gates = ConformerGates.attach(model, ALL, soft=True)
    plain = ConformerGates.attach(unfolded, ALL)
    for (name, gate), (_, other) in zip(gates, plain, strict=True):
        values = torch.empty(gate.n).uniform_(-3.0, 4.0, generator=torch.Generator().manual_seed(gate.n))
        gate.log_alpha.data.copy_(values if name != "layers.1" else torch.full((1,), 4.0))
        other.log_alpha.data.copy_(gate.log_alpha.data)
    soft_values = gates.slots["layers.0.ffn1.units"].gate.eval()()
    assert 0 < float(soft_values[soft_values > 0].min()) < 0.9  # the gates really are soft
    before = _real_frames(model.eval())
    masks = gates.deterministic_masks()
    gates.fold(masks)
    gates.freeze(masks)
    after = _real_frames(model)
    assert float((after - before).abs().max()) <= 1e-5
    plain.freeze(plain.deterministic_masks())  # kept units jump from E[z] to 1: a visible change
    assert float((_real_frames(unfolded.eval()) - before).abs().max()) > 0.1
    pruned = physically_prune(model, gates.current_masks())
    assert float((_real_frames(pruned) - after).abs().max()) <= 1e-4


def test_expected_gate_value_matches_the_sampled_mean() -> None:
    gate = HardConcrete(3, init_log_alpha=0.0, init_std=0.0)
    gate.log_alpha.data = torch.tensor([-1.0, 0.0, 2.0])
    gate.generator = torch.Generator().manual_seed(0)
    sampled = torch.stack([gate.sample() for _ in range(20000)]).mean(0)
    torch.testing.assert_close(gate.expected_value(), sampled, atol=0.01, rtol=0)
    assert float(gate.expected_value()[1]) == pytest.approx(0.5, abs=1e-4)  # symmetric at 0


@pytest.mark.parametrize("method", ["magnitude-distill", "torch-pruning"])
def test_one_shot_model_is_the_shape_the_method_fine_tunes(method: str) -> None:
    teacher = _model(seed=3, d_model=64, head_dim=16)
    cfg = PruneConfig(method=method, target_params=0.6)  # type: ignore[arg-type]
    shape = one_shot_model(cfg, teacher)
    target = 0.6 * count_params(teacher)
    assert 0.95 * target <= count_params(shape) <= target
    with pytest.raises(ValueError, match="does not fix its shape"):
        one_shot_model(PruneConfig(method="l0-distill"), teacher)


def _gated_after_two_steps(
    cfg: PruneConfig,
) -> tuple[ConformerCTC, ConformerGates, LayerwiseDistiller, Lagrangian, Any, Any, Batch]:
    """A student with fixed random masks (no layer or model dimension removed) trained two AdamW
    steps with distillation, so its optimizer holds moments; the same every call."""
    teacher = _model(seed=7).train()
    student = copy.deepcopy(teacher)
    gates = ConformerGates.attach(student, ["heads", "ffn", "conv", "modules", "frontend"])
    gates.freeze(_random_masks(gates, 8))
    distiller = LayerwiseDistiller(teacher, teacher.config.n_layers, teacher.config.d_model, cfg.distill)
    lagrangian = Lagrangian()
    weights = [p for n, p in student.named_parameters() if ".gate" not in n] + list(distiller.parameters())
    optimizer = make_prune_optimizer(weights, gates, lagrangian, cfg)
    warmup = lambda step: min(1.0, (step + 1) / 4)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [warmup, warmup, lambda _: 1.0, lambda _: 1.0])
    g = torch.Generator().manual_seed(9)
    feats, lengths = _inputs()
    batch = Batch(
        feats, lengths, torch.randint(0, 20, (3, 5), generator=g), torch.tensor([5, 4, 2]), torch.arange(3)
    )
    for _ in range(2):
        _train_step(student, distiller, optimizer, scheduler, batch)
    return student, gates, distiller, lagrangian, optimizer, scheduler, batch


def _train_step(
    model: ConformerCTC, distiller: LayerwiseDistiller, optimizer: Any, scheduler: Any, batch: Batch
) -> float:
    loss, _ = distiller.loss(model, batch)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.detach())


# weights whose gradient is 0 in exact arithmetic, so that AdamW turns rounding noise into steps
# of up to lr: a key bias (softmax is shift-invariant), a depthwise bias (BatchNorm in training
# subtracts the batch mean) and the position projection (the sinusoid's slow dimensions are
# nearly constant over a short utterance)
_INVARIANT = ("linear_k.bias", "depthwise_conv.bias", "linear_pos.weight")


def test_fine_tuning_the_compact_student_continues_the_gated_one() -> None:
    """After two steps of a gated student with fixed masks, one more step of the compact student
    (`compact_for_finetuning`: weights sliced, AdamW moments sliced with them) gives the gated
    student's loss and, sliced, its weights; a fresh optimizer's step (no moments) does not."""
    cfg = PruneConfig(lr=1e-2)
    student, gates, distiller, _, optimizer, scheduler, batch = _gated_after_two_steps(cfg)
    gated_loss = _train_step(student, distiller, optimizer, scheduler, batch)
    expected = physically_prune(student, gates.current_masks())
    expected_proj = [p.detach().clone() for p in distiller.parameters()]

    student, gates, distiller, lagrangian, optimizer, scheduler, batch = _gated_after_two_steps(cfg)
    assert compactable(gates)
    masks = gates.current_masks()
    compact, compact_opt, compact_scheduler = compact_for_finetuning(
        student, masks, distiller, lagrangian, optimizer, scheduler, cfg
    )
    assert compact.training and count_params(compact) < count_params(student)
    assert [g["lr"] for g in compact_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert compact_scheduler.last_epoch == scheduler.last_epoch == 2
    assert not compact_opt.param_groups[2]["params"]  # no gates left to learn
    compact_loss = _train_step(compact, distiller, compact_opt, compact_scheduler, batch)
    assert compact_loss == pytest.approx(gated_loss, rel=1e-5)
    for (name, a), b in zip(expected.named_parameters(), compact.parameters(), strict=True):
        if not name.endswith(_INVARIANT):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # the invariant directions do not change what the model computes
        after_gated = float(distiller.loss(expected.train(), batch)[0])
        assert float(distiller.loss(compact, batch)[0]) == pytest.approx(after_gated, rel=1e-5)
    for a, b in zip(expected_proj, distiller.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)

    student, gates, distiller, lagrangian, optimizer, _, batch = _gated_after_two_steps(cfg)
    fresh = physically_prune(student, masks).train()
    weights = list(fresh.parameters()) + list(distiller.parameters())
    fresh_opt = make_prune_optimizer(weights, None, lagrangian, cfg)
    for group, was in zip(fresh_opt.param_groups, optimizer.param_groups, strict=True):
        group["lr"] = was["lr"]
    _train_step(
        fresh, distiller, fresh_opt, torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda _: 1.0), batch
    )
    moved = max(
        float((a - b).detach().abs().max())
        for (name, a), b in zip(expected.named_parameters(), fresh.parameters(), strict=True)
        if not name.endswith(_INVARIANT)
    )
    assert moved > 1e-3


def test_masks_that_remove_blocks_or_model_dimensions_keep_the_gated_student() -> None:
    gates = ConformerGates.attach(_model(seed=2), ALL)
    masks = {name: torch.ones(g.n) for name, g in gates}
    gates.freeze(masks)
    assert compactable(gates)
    for closed in ("layers.1", HIDDEN):
        gates = ConformerGates.attach(_model(seed=2), ALL)
        gates.freeze(masks | {closed: torch.ones_like(masks[closed]).index_fill_(0, torch.tensor([0]), 0.0)})
        assert not compactable(gates)
    assert not compactable(ConformerGates.attach(_model(seed=2), []))  # nothing to slice by
