"""Layerwise distillation's options, each chosen by name, on tiny CPU models."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conformer_prune.config import ConfigError, load_config
from conformer_prune.data.dataset import Batch
from conformer_prune.distill.layerwise import (
    CTC_ONLY_FIELDS,
    DistillConfig,
    LayerwiseDistiller,
    _distance,
    default_teacher_layers,
)
from conformer_prune.model import ConformerCTC, build_model
from conformer_prune.prune.config import PruneConfig
from tests.conftest import hetero_config


def _pair(seed: int = 0) -> tuple[ConformerCTC, ConformerCTC]:
    torch.manual_seed(seed)
    teacher = build_model(hetero_config()).eval()
    return teacher, copy.deepcopy(teacher).eval()


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([83, 61, 40])
    feats = torch.randn(3, 83, 80, generator=g) * (torch.arange(83)[None, :, None] < lengths[:, None, None])
    targets = torch.randint(0, 20, (3, 6), generator=g)
    return Batch(feats, lengths, targets, torch.tensor([6, 4, 5]), torch.arange(3))


def _perturb(model: ConformerCTC, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_options_are_chosen_by_name_in_the_typed_config() -> None:
    cfg = load_config(
        PruneConfig,
        None,
        ["distill.layer_loss=l1-cosine", "distill.layer_map=dynamic", "distill.balance=grad-norm"],
    )
    assert (cfg.distill.layer_loss, cfg.distill.layer_map, cfg.distill.balance) == (
        "l1-cosine",
        "dynamic",
        "grad-norm",
    )
    with pytest.raises(ConfigError, match="layer_loss"):
        load_config(PruneConfig, None, ["distill.layer_loss=cosine"])
    assert default_teacher_layers(12) == [2, 5, 8, 11]  # CoFiPruning's four of twelve


def test_distances_are_zero_on_equal_outputs_and_normalized_mse_ignores_scale() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    mask = torch.ones(2, 7, 1)
    mask[1, 5:] = 0
    assert float(_distance("mse", t, t, mask)) == 0.0
    assert float(_distance("normalized-mse", 10 * s, 10 * t, mask)) == pytest.approx(
        float(_distance("normalized-mse", s, t, mask)), rel=1e-5
    )
    assert float(_distance("mse", 10 * s, 10 * t, mask)) == pytest.approx(
        100 * float(_distance("mse", s, t, mask))
    )
    # L1 + -log sigmoid(cos): its minimum, at equal outputs, is -log sigmoid(1)
    assert float(_distance("l1-cosine", t, t, mask)) == pytest.approx(-F.logsigmoid(torch.tensor(1.0)).item())
    assert float(_distance("l1-cosine", s, t, mask)) > float(_distance("l1-cosine", t, t, mask)) + 0.1
    padded = t.clone()
    padded[1, 5:] += 100.0  # padded frames do not count
    assert float(_distance("normalized-mse", s, padded, mask)) == pytest.approx(
        float(_distance("normalized-mse", s, t, mask)), rel=1e-5
    )


def test_dynamic_map_matches_each_teacher_layer_to_the_nearest_remaining_student_layer() -> None:
    teacher, student = _pair()
    cfg = DistillConfig(layer_loss="mse", layer_map="dynamic", teacher_layers=[0, 2])
    distiller = LayerwiseDistiller(teacher, 3, 32, cfg)
    _, parts = distiller.loss(student, _batch())
    assert distiller.last_alignment == [(0, 0), (2, 2)] and parts["layer_mse"] == 0.0
    # without student block 0, teacher block 0 goes to the nearest block below block 2's match
    distiller.loss(student, _batch(), remaining=[False, True, True])
    assert distiller.last_alignment == [(0, 1), (2, 2)]
    # the order holds: a teacher block's match lies below the next one's; none is left for 0 here
    distiller.loss(student, _batch(), remaining=[False, False, True])
    assert distiller.last_alignment == [(2, 2)]
    same = LayerwiseDistiller(teacher, 3, 32, DistillConfig(layer_loss="mse", layer_map="same-index"))
    _perturb(student)
    _, dynamic_parts = distiller.loss(student, _batch(), remaining=[True, True, True])
    _, same_parts = same.loss(student, _batch())
    assert dynamic_parts["layer_mse"] > 0 and same_parts["layer_mse"] > 0


def test_kl_with_temperature_and_front_end_distillation() -> None:
    teacher, student = _pair()
    cfg = DistillConfig(
        layer_weight=0.0, kl_weight=1.0, kl_temperature=2.0, frontend_weight=1.0, layer_loss="mse"
    )
    distiller = LayerwiseDistiller(teacher, 3, 32, cfg)
    _, parts = distiller.loss(student, _batch())
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6) and parts["frontend"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():  # change only the front end: both terms see it
        student.encoder.pre_encode.out.weight.mul_(1.5)
    _, parts = distiller.loss(student, _batch())
    assert parts["frontend"] > 1e-3 and parts["kl"] > 1e-4
    # the KL term is T^2 KL(p_T^teacher || p_T^student) over real frames
    batch = _batch()
    with torch.no_grad():
        s_logits = student.decoder(student.encoder(batch.feats, batch.feat_lengths)[0])
        t_logits = teacher.decoder(teacher.encoder(batch.feats, batch.feat_lengths)[0])
    lengths = student.encoder(batch.feats, batch.feat_lengths)[1]
    frames = [
        F.kl_div(
            F.log_softmax(s_logits[i, :n] / 2, -1),
            F.log_softmax(t_logits[i, :n] / 2, -1),
            log_target=True,
            reduction="sum",
        )
        for i, n in enumerate(lengths.tolist())
    ]
    assert parts["kl"] == pytest.approx(4 * float(sum(frames)) / int(lengths.sum()), rel=1e-4)


def test_gradient_norms_are_logged_and_grad_norm_balance_matches_ctcs_scale() -> None:
    teacher, student = _pair()
    student.train()
    _perturb(student)
    fixed = LayerwiseDistiller(teacher, 3, 32, DistillConfig(kl_weight=0.5))
    _, parts = fixed.loss(student, _batch())
    assert {"grad_norm_ctc", "grad_norm_layer", "grad_norm_kl", "grad_norm_distill"} <= set(parts)
    assert parts["grad_norm_ctc"] > 0 and parts["grad_norm_layer"] > 0
    assert student.encoder.pre_encode.out.weight.grad is None  # the probe leaves .grad alone
    balanced = LayerwiseDistiller(teacher, 3, 32, DistillConfig(kl_weight=0.5, balance="grad-norm"))
    _, parts = balanced.loss(student, _batch())
    ratio = parts["grad_norm_ctc"] / parts["grad_norm_distill"]
    assert parts["distill_scale"] == pytest.approx(ratio, rel=1e-5) and ratio != pytest.approx(1.0, abs=0.05)
    # the probe runs every `probe_every` steps and holds its figures in between
    balanced.config.balance = "fixed"  # (so a second probe would not change the scale)
    _, again = balanced.loss(student, _batch())
    assert again["grad_norm_ctc"] == parts["grad_norm_ctc"] and float(balanced.probe_step) == 2
    _perturb(student, seed=4)
    balanced.probe_next()  # as the engine does at every epoch's start
    _, fresh = balanced.loss(student, _batch())
    assert fresh["grad_norm_ctc"] != again["grad_norm_ctc"]


def test_the_probes_period_changes_nothing_trained_unless_it_sets_the_scale() -> None:
    """What lets the benchmarks' run identity ignore `probe_every` outside "grad-norm": the same
    steps probing at every step or never after the first train the same weights, to the bit."""
    trained = []
    for every in (1, 1000):
        teacher, student = _pair()
        student.train()
        _perturb(student)
        cfg = DistillConfig(kl_weight=0.5, frontend_weight=0.5, probe_every=every)
        assert not cfg.probe_trains and dataclasses.replace(cfg, balance="grad-norm").probe_trains
        distiller = LayerwiseDistiller(teacher, 3, 32, cfg)
        opt = torch.optim.AdamW([*student.parameters(), *distiller.parameters()], lr=1e-2)
        for _ in range(3):
            total, _ = distiller.loss(student, _batch())
            opt.zero_grad()
            total.backward()
            opt.step()
        assert float(distiller.probe_step) == 3
        trained.append({n: p.detach().clone() for n, p in student.named_parameters()})
    for name, value in trained[0].items():
        torch.testing.assert_close(trained[1][name], value, rtol=0, atol=0, msg=name)
    assert not DistillConfig(balance="grad-norm").ctc_only().probe_trains  # CTC alone: nothing to scale


def test_a_loss_without_distillation_reads_only_the_ctc_only_fields() -> None:
    """What lets a method that does not distil (`l0`) be one run whatever the distillation
    settings (the benchmarks' run identity keeps only CTC_ONLY_FIELDS for it)."""
    other = DistillConfig(
        layer_weight=2.0,
        kl_weight=0.5,
        layer_loss="normalized-mse",
        layer_map="same-index",
        teacher_layers=[1, 2],
        kl_temperature=3.0,
        frontend_weight=0.5,  # every field but the CTC-only ones differs from the default
        balance="grad-norm",
        max_balance=10.0,
    )
    changed = {
        f.name
        for f in dataclasses.fields(DistillConfig)
        if getattr(other, f.name) != getattr(DistillConfig(), f.name)
    }
    assert changed | set(CTC_ONLY_FIELDS) == {f.name for f in dataclasses.fields(DistillConfig)}
    runs = []
    for cfg in (DistillConfig().ctc_only(), other.ctc_only()):
        teacher, student = _pair()
        student.train()
        _perturb(student)
        torch.manual_seed(5)
        distiller = LayerwiseDistiller(teacher, 3, 32, cfg)
        steps = []
        for _ in range(2):  # the first step probes the gradient norms, the second does not
            total, parts = distiller.loss(student, _batch())
            total.backward()
            steps.append((float(total.detach()), parts))
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        runs.append((distiller.state_dict(), steps, grads))
    (state_a, steps_a, grads_a), (state_b, steps_b, grads_b) = runs
    assert steps_a == steps_b and "grad_norm_ctc" in steps_a[0][1]
    assert state_a.keys() == state_b.keys() and grads_a.keys() == grads_b.keys()
    for key, value in state_a.items():
        torch.testing.assert_close(state_b[key], value, rtol=0, atol=0, msg=key)
    for key, value in grads_a.items():
        torch.testing.assert_close(grads_b[key], value, rtol=0, atol=0, msg=key)


def test_intermediate_ctc_in_the_pruning_loss_is_the_training_loss_of_train() -> None:
    """`PruneConfig.inter_ctc` (for dense models trained from random weights as the teacher was):
    the label loss is `train`'s, (1 - w) CTC(last block) + w CTC(block k), and "ctc" logs the last
    block's alone."""
    from conformer_prune.train.config import InterCTCConfig
    from conformer_prune.train.loop import ctc_loss

    teacher, student = _pair()
    _perturb(student)
    inter = InterCTCConfig(layers=[1], weights=[0.3])
    ctc_only = DistillConfig().ctc_only()
    plain = LayerwiseDistiller(teacher, 3, 32, ctc_only)
    with_inter = LayerwiseDistiller(teacher, 3, 32, ctc_only, inter)
    loss, parts = with_inter.loss(student, _batch())
    expected, expected_parts = ctc_loss(student, _batch(), inter)
    torch.testing.assert_close(loss, expected)
    assert parts["ctc"] == pytest.approx(expected_parts["ctc"]) and parts["inter_ctc"] == pytest.approx(
        expected_parts["inter_ctc"]
    )
    last, last_parts = plain.loss(student, _batch())
    assert last_parts["ctc"] == pytest.approx(parts["ctc"]) and "inter_ctc" not in last_parts
    assert float((loss - 0.7 * last).detach() / 0.3) == pytest.approx(parts["inter_ctc"], rel=1e-5)
    with pytest.raises(ValueError, match=r"inter_ctc\.layers must be blocks 1 to 2"):
        LayerwiseDistiller(teacher, 3, 32, ctc_only, InterCTCConfig(layers=[3], weights=[0.3]))
