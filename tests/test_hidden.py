"""Hidden-dimension (d_model) pruning: one mask shared by every writer and reader of the residual
stream (CoFiPruning's ``hidden_z``), on tiny CPU models."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.distill.layerwise import DistillConfig, LayerwiseDistiller
from conformer_prune.evaluate.metrics import count_params, macs_per_second
from conformer_prune.export import export_onnx, verify_onnx
from conformer_prune.model import ConformerConfig, Recognizer, load_recognizer, save_recognizer
from conformer_prune.model.conformer import HIDDEN, HiddenMask
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.prune.gates import STRUCTURES, ConformerGates
from conformer_prune.prune.magnitude import magnitude_masks
from conformer_prune.prune.physical import physically_prune
from tests.conftest import assert_same_real_frames
from tests.test_distill import _batch
from tests.test_prune import _inputs, _model, _prune_argv

FRONT_ENDS = [{}, {"subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_channels": [8, 6, 7]}]
FRONT_END_IDS = ["striding-4x", "dw_striding-8x"]


def _random_masks(gates: ConformerGates, seed: int) -> dict[str, torch.Tensor]:
    """About 60% of every gate's units, the first front-end channel and model dimension always."""
    g = torch.Generator().manual_seed(seed)
    masks = {name: (torch.rand(gate.n, generator=g) < 0.6).float() for name, gate in gates}
    for name in masks:
        if name.startswith("frontend.") or name == HIDDEN:
            masks[name][0] = 1.0
    return masks


@pytest.mark.parametrize("front_end", FRONT_ENDS, ids=FRONT_END_IDS)
@pytest.mark.parametrize("structures", [[HIDDEN], list(STRUCTURES)], ids=["hidden", "all"])
def test_gated_hidden_mask_equals_the_sliced_model_and_its_closed_form_cost(
    front_end: dict[str, Any], structures: list[str]
) -> None:
    model = _model(seed=7, **front_end)
    gates = ConformerGates.attach(model, structures)
    masks = _random_masks(gates, 11)
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    kept = torch.nonzero(masks[HIDDEN]).flatten().tolist()
    assert 0 < len(kept) < 32 and pruned.config.d_model == len(kept)
    assert pruned.config.hidden_dims == kept and pruned.config.d_model_unpruned == 32
    assert pruned.decoder.weight.shape[1] == len(kept)
    assert_same_real_frames(model, pruned, *_inputs())
    cost = gates.mask_cost(gates.current_masks())
    assert as_float(cost.params) == count_params(pruned)
    assert as_float(cost.macs_per_second) == pytest.approx(macs_per_second(pruned), rel=1e-9)
    assert as_float(conformer_cost(pruned.config).params) == count_params(pruned)


@torch.no_grad()
def test_layer_norms_normalise_over_the_kept_dimensions_only() -> None:
    """Masking a LayerNorm's output is not enough: its mean and variance must come from the kept
    dimensions, else the gated model differs from the sliced one."""
    model = _model(seed=7)
    gates = ConformerGates.attach(model, [HIDDEN])
    mask = torch.ones(32)
    mask[::3] = 0.0
    gates.freeze({HIDDEN: mask})
    x = torch.randn(2, 5, 32) * mask
    norm = model.encoder.layers[0].norm_out
    hidden = model.encoder.layers[0]._norm(norm, x, HiddenMask.of(mask))
    index = torch.nonzero(mask).flatten()
    sliced = torch.nn.functional.layer_norm(
        x[..., index], (len(index),), norm.weight[index], norm.bias[index]
    )
    torch.testing.assert_close(hidden[..., index], sliced, rtol=0, atol=1e-6)
    assert float(hidden[..., mask == 0].abs().max()) == 0.0
    assert float((norm(x).detach()[..., index] - sliced).abs().max()) > 0.05  # over all dims: different


def test_hidden_pruning_composes_and_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    """A hidden-pruned model keeps the unpruned sinusoid's dimensions and xscaling; pruned again,
    its dimensions compose; the checkpoint rebuilds it from the config alone, strictly."""
    model = _model(seed=8)
    gates = ConformerGates.attach(model, [HIDDEN, "ffn"])
    gates.freeze(_random_masks(gates, 12))
    once = physically_prune(model, gates.current_masks())
    again = copy.deepcopy(once)
    second = ConformerGates.attach(again, [HIDDEN, "heads"])
    second.freeze(_random_masks(second, 13))
    twice = physically_prune(again, second.current_masks())
    assert twice.config.d_model < once.config.d_model < 32
    kept = torch.nonzero(second.current_masks()[HIDDEN]).flatten()
    assert twice.config.hidden_dims == [once.config.hidden_dims[i] for i in kept.tolist()]
    assert_same_real_frames(again, twice, *_inputs())
    tokenizer = Tokenizer.train(["HELLO WORLD", "A CAT SAT ON THE MAT"], TokenizerConfig(vocab_size=20))
    rec = load_recognizer(_save(tmp_path, twice, tokenizer))
    assert rec.model.config == twice.config
    assert_same_real_frames(twice, rec.model.eval(), *_inputs(), atol=0.0)
    with pytest.raises(ValueError, match="hidden_dims"):
        ConformerConfig.create(d_model=4, heads=1, head_dim=4, d_model_unpruned=8, hidden_dims=[0, 1, 2, 9])


def _save(tmp_path: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> Path:
    from conformer_prune.data.features import FeatureConfig, LogMelFeatures

    path = tmp_path / "hidden.pt"
    save_recognizer(path, Recognizer(model, LogMelFeatures(FeatureConfig()), tokenizer))
    return path


def test_distillation_projections_read_the_kept_dimensions_only() -> None:
    """The distillation loss of a student with a hidden mask equals that of the sliced student
    with each projection's columns sliced the same way: the projections see the kept dimensions
    only, layers and front end alike."""
    torch.manual_seed(0)
    teacher = _model(seed=9)
    student = copy.deepcopy(teacher)
    gates = ConformerGates.attach(student, [HIDDEN])
    mask = (torch.rand(32, generator=torch.Generator().manual_seed(5)) < 0.6).float()
    gates.freeze({HIDDEN: mask})
    config = DistillConfig(frontend_weight=1.0)
    distiller = LayerwiseDistiller(teacher, 4, 32, config)
    with torch.no_grad():
        for proj in [*distiller.proj, distiller.proj_frontend]:
            assert proj is not None
            proj.weight.add_(0.1 * torch.randn(proj.weight.shape))  # no longer the identity
    index = torch.nonzero(mask).flatten()
    sliced = physically_prune(student, gates.current_masks())
    sliced_distiller = LayerwiseDistiller(teacher, 4, len(index), config)
    with torch.no_grad():
        for new, old in zip(
            [*sliced_distiller.proj, sliced_distiller.proj_frontend],
            [*distiller.proj, distiller.proj_frontend],
            strict=True,
        ):
            assert new is not None and old is not None
            new.weight.copy_(old.weight[:, index])
            new.bias.copy_(old.bias)
        _, gated_parts = distiller.loss(student.eval(), _batch())
        _, sliced_parts = sliced_distiller.loss(sliced, _batch())
    layer = config.layer_key
    assert gated_parts[layer] > 0.01 and gated_parts["frontend"] > 1e-3
    for part in ("ctc", layer, "frontend"):
        assert gated_parts[part] == pytest.approx(sliced_parts[part], rel=1e-4), part


def test_prune_with_the_hidden_structure_meets_the_target_and_exports_to_onnx(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hidden"
    structures = "structures=[heads,ffn,conv,modules,frontend,hidden]"
    assert main([*_prune_argv(tiny_corpus, tiny_run, out), structures]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert abs(report["pruned"]["params"] / (0.5 * report["teacher"]["params"]) - 1) <= 0.01
    rec = load_recognizer(out / "model.pt")
    teacher = load_recognizer(tiny_run / "model.pt").model.config
    masks = rec.meta["masks"]
    assert rec.model.config.d_model == sum(masks[HIDDEN]) < teacher.d_model, (
        rec.model.config.d_model,
        teacher.d_model,
    )
    assert count_params(rec.model) == report["pruned"]["params"]
    onnx_path = export_onnx(rec, tmp_path / "hidden.onnx")
    gen = np.random.default_rng(0)
    check = verify_onnx(
        rec, onnx_path, [0.1 * gen.standard_normal(n).astype(np.float32) for n in (16000, 9000)]
    )
    assert check.lengths_equal and max(check.max_abs_diff.values()) <= 1e-4, check.max_abs_diff


def test_magnitude_masks_rank_model_dimensions_by_all_their_weights() -> None:
    model = _model(seed=10)
    gates = ConformerGates.attach(model, ["ffn", HIDDEN])
    teacher = as_float(conformer_cost(model.config).params)
    masks = magnitude_masks(gates, 0.5 * teacher, "params")
    assert 0.98 * 0.5 * teacher <= as_float(gates.mask_cost(masks).params) <= 0.5 * teacher
    score = model.hidden_scores().detach()
    kept, removed = score[masks[HIDDEN] == 1], score[masks[HIDDEN] == 0]
    assert removed.numel() > 0 and kept.min() >= removed.max()  # a top-k set of dimensions
    # dimension 5 by hand: its rows in the writers, LayerNorm entries, columns in the readers
    enc, j = model.encoder, 5
    by_hand = enc.pre_encode.out.weight[j].abs().sum() + enc.pre_encode.out.bias[j].abs()
    by_hand = by_hand + model.decoder.weight[:, j].abs().sum()
    for block in enc.layers:
        for norm in block.norms():
            by_hand = by_hand + norm.weight[j].abs() + norm.bias[j].abs()
        for _, module in block.branches():
            if module is None:
                continue
            for writer in module.residual_writers():
                by_hand = by_hand + writer.weight[j].abs().sum() + writer.bias[j].abs()
            for reader in module.residual_readers():
                by_hand = by_hand + reader.weight[:, j].abs().sum()
    torch.testing.assert_close(score[j], by_hand.detach())
    gates.freeze(masks)
    assert_same_real_frames(model, physically_prune(model, gates.current_masks()), *_inputs())


def test_expected_cost_is_the_mean_cost_of_sampled_masks() -> None:
    """The closed-form expected cost, a polynomial in the gates' expected counts, is the mean of
    the exact cost over independently sampled masks (within 4 standard errors): a weight that the
    hidden mask and another gate both mask counts the product of their expectations. Counting the
    model dimension as dense instead is far outside."""
    model = _model(seed=11)
    gates = ConformerGates.attach(model, ["heads", "ffn", "conv", "frontend", HIDDEN])
    g = torch.Generator().manual_seed(0)
    for _, gate in gates:
        gate.log_alpha.data.uniform_(-2.0, 3.0, generator=g)
    probs = {name: (gate.fixed if gate.frozen else gate.prob_nonzero()).detach() for name, gate in gates}
    expected = gates.expected_cost()
    closed_form = torch.tensor([as_float(expected.params), as_float(expected.macs_per_second)])
    dense_hidden = conformer_cost(model.config, {k: p.sum() for k, p in probs.items() if k != HIDDEN})
    samples = []
    for _ in range(4000):
        kept = {name: float(torch.bernoulli(p, generator=g).sum()) for name, p in probs.items()}
        cost = conformer_cost(model.config, kept)
        samples.append([as_float(cost.params), as_float(cost.macs_per_second)])
    sampled = torch.tensor(samples, dtype=torch.float64)
    mean, error = sampled.mean(0), sampled.std(0) / len(samples) ** 0.5
    assert bool(((mean - closed_form.double()).abs() <= 4 * error).all()), (mean, closed_form, error)
    wrong = torch.tensor([as_float(dense_hidden.params), as_float(dense_hidden.macs_per_second)])
    assert bool(((mean - wrong.double()).abs() > 20 * error).all())
