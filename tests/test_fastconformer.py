"""FastConformer front ends (`subsampling: dw_striding`, factors 4, 8 and 16): layout and length
arithmetic as NeMo's, padding, and pruning (gates, closed-form size, slicing, baselines)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from unittest.mock import patch

import pytest
import torch

from conformer_prune.cli import recipe_path
from conformer_prune.config import load_config
from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.evaluate.metrics import count_params, macs_per_second
from conformer_prune.export.sherpa import sherpa_metadata
from conformer_prune.model import ConformerCTC, Recognizer, build_model
from conformer_prune.model.conformer import ConvSubsampling, subsampled_length
from conformer_prune.prune.cost import as_float, conformer_cost
from conformer_prune.prune.dense import dense_config_like, dense_params
from conformer_prune.prune.gates import STRUCTURES, ConformerGates
from conformer_prune.prune.magnitude import magnitude_masks
from conformer_prune.prune.physical import physically_prune, without_gates
from conformer_prune.prune.torch_pruning import torch_pruning_prune
from conformer_prune.train import TrainConfig
from tests.conftest import assert_same_real_frames, hetero_config

ALL = list(STRUCTURES)


def _nemo_calc_length(frames: int, stages: int) -> int:
    """NeMo's `calc_length` for its striding front ends: float arithmetic, kernel 3, padding 1 on
    each side, stride 2, floor; once per stage."""
    length = float(frames)
    for _ in range(stages):
        length = math.floor((length + 2 - 3) / 2 + 1)
    return int(length)


def _fast(factor: int = 8, seed: int = 0, **overrides: Any) -> ConformerCTC:
    """A small heterogeneous FastConformer with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    stages = factor.bit_length() - 1
    fields: dict[str, Any] = dict(
        subsampling="dw_striding",
        subsampling_factor=factor,
        subsampling_channels=[8, 6, 7, 5][:stages],
    )
    fields.update(overrides)
    model = build_model(hetero_config(**fields))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _inputs(frames: int = 171) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([frames, 118, 45])
    feats = torch.randn(3, frames, 80, generator=torch.Generator().manual_seed(1))
    return feats * (torch.arange(frames)[None, :, None] < lengths[:, None, None]), lengths


@pytest.mark.parametrize("factor", [4, 8, 16])
@pytest.mark.parametrize("frames", [1, 2, 3, 7, 8, 9, 15, 16, 17, 99, 1001])
def test_dw_striding_lengths_are_nemos(factor: int, frames: int) -> None:
    stages = factor.bit_length() - 1
    sub = ConvSubsampling(80, [4] * stages, 16, "dw_striding")
    y, lengths = sub(torch.randn(1, frames, 80), torch.tensor([frames]))
    expected = _nemo_calc_length(frames, stages)
    assert y.shape == (1, expected, 16)
    assert int(lengths[0]) == expected == subsampled_length(frames, factor)
    assert sub.freq == _nemo_calc_length(80, stages)  # the flattened frequency bins, too


def test_dw_striding_layout_and_parameter_names_are_nemos() -> None:
    sub = ConvSubsampling(80, [16, 16, 16], 32, "dw_striding")  # factor 8
    shapes = {k: tuple(v.shape) for k, v in sub.state_dict().items()}
    assert shapes == {
        "conv.0.weight": (16, 1, 3, 3),
        "conv.0.bias": (16,),
        "conv.2.weight": (16, 1, 3, 3),  # depthwise
        "conv.2.bias": (16,),
        "conv.3.weight": (16, 16, 1, 1),  # pointwise
        "conv.3.bias": (16,),
        "conv.5.weight": (16, 1, 3, 3),
        "conv.5.bias": (16,),
        "conv.6.weight": (16, 16, 1, 1),
        "conv.6.bias": (16,),
        "out.weight": (32, 16 * 10),  # 80 -> 40 -> 20 -> 10 frequency bins
        "out.bias": (32,),
    }
    assert [type(m).__name__ for m in sub.conv] == [
        "Conv2d", "ReLU", "Conv2d", "Conv2d", "ReLU", "Conv2d", "Conv2d", "ReLU"
    ]  # fmt: skip
    assert sub.conv[2].groups == 16 and sub.conv[3].kernel_size == (1, 1)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"subsampling": "vggnet"},
            r"subsampling: expected one of \('striding', 'dw_striding'\), found 'vggnet'",
        ),
        ({"subsampling_factor": 6}, r"subsampling_factor must be one of \(4, 8, 16\), found 6"),
        (
            {"subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_channels": [8, 8]},
            r"subsampling_channels must be 3 positive ints .* subsampling_factor 8\), found \[8, 8\]",
        ),
    ],
)
def test_bad_front_end_settings_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hetero_config(**fields)


@pytest.mark.parametrize("factor", [8, 16])
def test_fastconformer_batched_equals_one_by_one(factor: int) -> None:
    model = _fast(factor)
    feats, lengths = _inputs()
    with torch.no_grad():
        batched, out_lengths = model(feats, lengths)
        assert out_lengths.tolist() == [subsampled_length(n, factor) for n in lengths.tolist()]
        assert batched.shape[1] == subsampled_length(int(lengths.max()), factor)
        for i, n in enumerate(lengths.tolist()):
            single, single_len = model(feats[i : i + 1, :n], lengths[i : i + 1])
            assert int(single_len[0]) == int(out_lengths[i])
            torch.testing.assert_close(batched[i, : int(single_len[0])], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factor", [4, 8, 16])
@pytest.mark.parametrize("subsampling", ["striding", "dw_striding"])
def test_closed_form_size_equals_numel_and_the_flop_counter(factor: int, subsampling: str) -> None:
    model = _fast(factor, subsampling=subsampling)
    cost = conformer_cost(model.config)
    assert as_float(cost.params) == count_params(model)
    assert as_float(cost.macs_per_second) == pytest.approx(macs_per_second(model), rel=1e-9)
    assert model.config.frames_per_second == 100 / factor


@pytest.mark.parametrize("factor", [8, 16])
def test_gated_fastconformer_equals_physically_pruned(factor: int) -> None:
    model = _fast(factor, seed=2)
    gates = ConformerGates.attach(model, ALL)
    g = torch.Generator().manual_seed(3)
    masks = {name: (torch.rand(gate.n, generator=g) < 0.6).float() for name, gate in gates}
    for name in masks:  # never a whole front-end stage: the model would have no input
        if name.startswith("frontend."):
            masks[name][0] = 1.0
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    assert_same_real_frames(model, pruned, *_inputs())
    cost = gates.mask_cost(gates.current_masks())
    assert as_float(cost.params) == count_params(pruned)
    assert as_float(cost.macs_per_second) == pytest.approx(macs_per_second(pruned), rel=1e-9)
    kept = [int(masks[f"frontend.{i}"].sum()) for i in range(factor.bit_length() - 1)]
    assert pruned.config.subsampling_channels == kept
    assert pruned.config.subsampling == "dw_striding"
    assert build_model(pruned.config).state_dict().keys() == pruned.state_dict().keys()


def _gated_front_end_by_activations(
    front: ConvSubsampling, x: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """The gated front end as the gates are defined: each stage's ReLU output times its gate, and
    (dw_striding) each depthwise output times the previous stage's gate; (B, T, F) -> (B, C, T', F')."""
    x, previous = x.unsqueeze(1), None
    for i, stage in enumerate(front._stage_layers()):
        if i > 0:
            x = x * (torch.arange(x.shape[2])[None, :] < lengths[:, None])[:, None, :, None]
        for k, layer in enumerate(stage):
            x = layer(x)
            if k == 0 and i > 0 and front.kind == "dw_striding":
                x = x * previous[None, :, None, None]
        previous = getattr(front, front.GATES[str(i)])()
        x = x * previous[None, :, None, None]
        lengths = front.output_lengths(lengths)
    return x


@pytest.mark.parametrize("subsampling", ["striding", "dw_striding"])
def test_channel_gates_scale_the_filters_as_they_would_the_activations(subsampling: str) -> None:
    """The front end folds each channel gate into the filters before the ReLU; with soft gate
    values (and zeros) in [0, 1] that is the same function as scaling the activations after it."""
    model = _fast(8, seed=5, subsampling=subsampling)
    front = model.encoder.pre_encode
    gates = ConformerGates.attach(model, ["frontend"])
    g = torch.Generator().manual_seed(6)
    values = {name: 0.1 + 0.9 * torch.rand(gate.n, generator=g) for name, gate in gates}
    for v in values.values():
        v[1] = 0.0  # and a closed gate in every stage
    gates.freeze(values)  # the values themselves, soft, as the gates give them while pruning
    x = torch.randn(3, 61, model.config.n_mels, generator=g)
    lengths = torch.tensor([61, 40, 17])
    x = x * (torch.arange(61)[None, :] < lengths[:, None])[..., None]
    expected = _gated_front_end_by_activations(front, x, lengths)
    got, _ = front._convolve(x.unsqueeze(1), lengths, channels_last=True)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert torch.count_nonzero(expected) > expected.numel() // 10  # not trivially zero


@pytest.mark.parametrize("subsampling", ["striding", "dw_striding"])
def test_the_padding_is_zeroed_as_a_frame_mask_would_forward_and_backward(subsampling: str) -> None:
    """The ReLU that writes zeros into the padding computes what the ReLU times the frame mask
    computes (the traced path's), and so do the gradients of the filters and the input."""
    model = _fast(8, seed=7, subsampling=subsampling)
    front = model.encoder.pre_encode
    gates = ConformerGates.attach(model, ["frontend"])
    g = torch.Generator().manual_seed(8)
    gates.freeze({name: 0.1 + 0.9 * torch.rand(gate.n, generator=g) for name, gate in gates})
    x = torch.randn(4, 63, model.config.n_mels, generator=g)
    lengths = torch.tensor([63, 41, 17, 30])  # odd lengths: a stage reads its first padded frame
    x = x * (torch.arange(63)[None, :] < lengths[:, None])[..., None]

    def run(traced: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs = x.clone().requires_grad_()
        with patch("torch.compiler.is_compiling", return_value=traced):
            out, _ = front._convolve(inputs.unsqueeze(1), lengths, channels_last=True)
        weights = list(front.conv.parameters())
        (out * torch.linspace(-1, 1, out.shape[2])[None, None, :, None]).sum().backward()
        grads = [inputs.grad, *(p.grad for p in weights)]
        for p in weights:
            p.grad = None
        return out.detach(), grads

    (got, got_grads), (expected, expected_grads) = run(False), run(True)
    assert torch.equal(got, expected)
    for a, b in zip(got_grads, expected_grads, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()
    assert torch.count_nonzero(expected_grads[0]) > expected_grads[0].numel() // 4


@pytest.mark.parametrize("subsampling", ["striding", "dw_striding"])
def test_module_calls_compute_the_same_front_end_through_hooked_modules(subsampling: str) -> None:
    """With `module_calls` (for Torch-Pruning's tracer) every front-end convolution runs as a module
    call, so forward hooks see it, and the output is the fast path's."""
    model = _fast(8, seed=9, subsampling=subsampling).eval()
    front = model.encoder.pre_encode
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 57, model.config.n_mels, generator=g)
    lengths = torch.tensor([57, 40, 23])
    x = x * (torch.arange(57)[None, :] < lengths[:, None])[..., None]
    convs = [m for m in front.conv if isinstance(m, torch.nn.Conv2d)]
    seen: list[torch.nn.Module] = []
    for conv in convs:
        conv.register_forward_hook(lambda m, *_: seen.append(m))
    with torch.no_grad():
        expected, expected_lengths = front(x, lengths)
        assert seen == []  # the fast path calls the convolutions as functions
        front.module_calls = True
        got, got_lengths = front(x, lengths)
    assert seen == convs
    assert torch.equal(got_lengths, expected_lengths)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_depthwise_filter_is_kept_exactly_when_its_input_channel_is() -> None:
    model = _fast(8, seed=4)
    gates = ConformerGates.attach(model, ["frontend"])
    masks = gates.current_masks()
    masks["frontend.0"] = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])  # conv.0's outputs
    masks["frontend.1"] = torch.tensor([0.0, 1, 1, 0, 1, 0])  # conv.3's outputs
    gates.freeze(masks)
    pruned = physically_prune(model, gates.current_masks())
    old, new = model.encoder.pre_encode.conv, pruned.encoder.pre_encode.conv
    k0, k1 = torch.tensor([0, 2, 5, 6]), torch.tensor([1, 2, 4])
    assert torch.equal(new[0].weight, old[0].weight[k0])
    assert torch.equal(new[2].weight, old[2].weight[k0]) and new[2].groups == 4  # depthwise of k0
    assert torch.equal(new[2].bias, old[2].bias[k0])
    assert torch.equal(new[3].weight, old[3].weight[k1][:, k0])  # pointwise: rows k1, columns k0
    assert torch.equal(new[5].weight, old[5].weight[k1]) and new[5].groups == 3
    assert torch.equal(new[6].weight, old[6].weight[:, k1])  # stage 3 keeps its 7 outputs
    assert_same_real_frames(model, pruned, *_inputs())


def test_magnitude_and_dense_baselines_prune_a_fastconformer() -> None:
    model = _fast(8, seed=5)
    full = count_params(model)
    gates = ConformerGates.attach(model, ALL)
    gates.freeze(magnitude_masks(gates, 0.5 * full))
    pruned = physically_prune(model, gates.current_masks())
    assert 0.49 * full <= count_params(pruned) <= 0.5 * full
    assert_same_real_frames(model, pruned, *_inputs())
    uniform = _fast(8, heads=4, ffn1=64, ffn2=64, conv_channels=32).config  # dense: every layer alike
    full = count_params(build_model(uniform))
    dense = dense_config_like(uniform, 0.5 * full)
    assert dense.subsampling == "dw_striding" and dense.subsampling_factor == 8
    assert 0.95 * 0.5 * full <= count_params(build_model(dense)) == dense_params(dense) <= 0.5 * full


def test_torch_pruning_prunes_a_fastconformer() -> None:
    teacher = _fast(8, seed=6)
    total = as_float(conformer_cost(teacher.config).params)
    pruned = torch_pruning_prune(teacher, 0.6 * total, "params")
    achieved = count_params(pruned)
    assert 0.98 * 0.6 * total <= achieved <= 0.6 * total
    assert pruned.config.subsampling == "dw_striding"
    kept, full = pruned.config.subsampling_channels, teacher.config.subsampling_channels
    assert all(k < f for k, f in zip(kept, full, strict=True))  # every stage is pruned
    # the depthwise convolutions stay depthwise, each with the channels its stage reads
    pre = pruned.encoder.pre_encode
    for dw, c in zip(pre.conv[2::3], pruned.config.subsampling_channels, strict=False):
        assert dw.groups == dw.in_channels == dw.out_channels == c
    feats, lengths = _inputs()
    with torch.no_grad():
        out, out_lengths = pruned(feats, lengths)
    assert torch.equal(out_lengths, teacher(feats, lengths)[1]) and torch.isfinite(out).all()


def test_prune_slices_layers_built_without_biases() -> None:
    """NeMo's `use_bias: false` leaves the Linear and Conv1d layers of a block without biases."""
    model = _fast(8, seed=7)
    for block in model.blocks():
        for module in (block.feed_forward1, block.feed_forward2):
            if module is not None:
                module.linear1.bias = module.linear2.bias = None
        if block.conv is not None:
            block.conv.pointwise_conv1.bias = block.conv.depthwise_conv.bias = None
        if block.self_attn is not None:
            block.self_attn.linear_q.bias = block.self_attn.linear_k.bias = None
    gates = ConformerGates.attach(model, ALL)
    gates.freeze(magnitude_masks(gates, 0.6 * count_params(model)))
    sliced = without_gates(model)
    sliced.prune(gates.current_masks())  # in place: the config cannot say "no biases"
    assert_same_real_frames(model, sliced, *_inputs())
    assert count_params(sliced) < 0.6 * count_params(model)
    assert all(not k.endswith("linear1.bias") for k in sliced.state_dict())


def test_fastconformer_recipe_is_the_reference_shape_with_nemos_front_end() -> None:
    teacher = load_config(TrainConfig, recipe_path("teacher")).model
    fast = load_config(TrainConfig, recipe_path("fastconformer")).model
    assert (fast.subsampling, fast.subsampling_factor, fast.conv_kernel) == ("dw_striding", 8, 9)
    assert (
        dataclasses.replace(
            fast,
            subsampling="striding",
            subsampling_factor=4,
            subsampling_channels=teacher.subsampling_channels,
            conv_kernel=teacher.conv_kernel,
        )
        == teacher
    )
    assert count_params(build_model(fast)) == as_float(conformer_cost(fast).params)


def test_reference_teacher_recipe_is_the_teacher_recipe_for_the_larger_corpus() -> None:
    """The reference teacher has the teacher recipe's model shape, vocabulary and augmentation (see
    reference-teacher.yaml for why not the FastConformer's); for its short budget it drops dropout
    and adds intermediate CTC, and its epochs differ."""
    teacher = load_config(TrainConfig, recipe_path("teacher"))
    reference = load_config(TrainConfig, recipe_path("reference-teacher"))
    assert reference.model.dropout == reference.model.dropout_att == 0.0
    no_dropout = dataclasses.replace(teacher.model, dropout=0.0, dropout_att=0.0)
    assert reference.model == no_dropout and reference.tokenizer == teacher.tokenizer
    assert reference.specaug == teacher.specaug and reference.precision == teacher.precision == "bf16"
    assert reference.inter_ctc.layers == [teacher.model.n_layers // 2]


def test_sherpa_metadata_gives_the_models_subsampling_factor() -> None:
    tokenizer = Tokenizer.train(["HELLO WORLD", "A CAT SAT ON THE MAT"], TokenizerConfig(vocab_size=20))
    for factor in (4, 8, 16):
        model = _fast(factor, vocab_size=tokenizer.vocab_size)
        rec = Recognizer(model, LogMelFeatures(FeatureConfig()), tokenizer)
        assert sherpa_metadata(rec)["subsampling_factor"] == str(factor)
