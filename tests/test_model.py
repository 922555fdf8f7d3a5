from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conformer_prune.config import ConfigError, from_dict, load_config
from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.model import (
    ConformerConfig,
    Recognizer,
    build_model,
    load_recognizer,
    save_recognizer,
)
from conformer_prune.model.conformer import (
    ConvolutionModule,
    ConvSubsampling,
    FeedForward,
    RelPositionMultiHeadAttention,
    subsampled_length,
)
from conformer_prune.prune.hardconcrete import HardConcrete
from conformer_prune.train import TrainConfig
from tests.conftest import hetero_config


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 7, 8, 99, 100, 101, 1001])
def test_subsampling_length_arithmetic(frames: int) -> None:
    sub = ConvSubsampling(80, [4, 4], 16)
    y, lengths = sub(torch.randn(1, frames, 80), torch.tensor([frames]))
    assert y.shape == (1, subsampled_length(frames), 16)
    assert int(lengths[0]) == y.shape[1] == math.ceil(math.ceil(frames / 2) / 2)


def test_encoder_shapes() -> None:
    cfg = hetero_config()
    model = build_model(cfg).eval()
    log_probs, lengths = model(torch.randn(2, 57, 80), torch.tensor([57, 30]))
    assert log_probs.shape == (2, subsampled_length(57), cfg.vocab_size + 1)
    assert lengths.tolist() == [subsampled_length(57), subsampled_length(30)]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, log_probs.shape[1]), atol=1e-5)


def test_padding_does_not_change_real_frames() -> None:
    torch.manual_seed(0)
    model = build_model(hetero_config()).eval()
    lengths = torch.tensor([101, 64, 37, 5])
    feats = torch.randn(4, 101, 80) * (torch.arange(101)[None, :, None] < lengths[:, None, None])
    batched, out_lengths = model(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        single, single_len = model(feats[i : i + 1, :n], lengths[i : i + 1])
        assert int(single_len[0]) == int(out_lengths[i])
        torch.testing.assert_close(batched[i, : int(single_len[0])], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_attention_gives_padded_keys_exactly_zero_weight(autocast: bool) -> None:
    """Whatever the padded frames hold, the real frames' attention output and the gradient that
    reaches the real frames are bitwise the same: a padded key's probability is exactly 0 (its
    score is -10000 before the softmax, and no second mask is needed after it)."""
    torch.manual_seed(0)
    module = RelPositionMultiHeadAttention(16, 4, 4, 0.0).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 11, 16, generator=gen)
    pos = torch.randn(1, 21, 16, generator=gen)
    mask = torch.tensor([[True] * 11, [True] * 7 + [False] * 4])

    def real_output_and_grad(padding_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.where(mask[..., None], x, padding_scale * x).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(inputs, pos, mask)
        (out * mask[..., None]).float().square().sum().backward()
        assert inputs.grad is not None
        return out[mask], inputs.grad[mask]

    out, grad = real_output_and_grad(1.0)
    other_out, other_grad = real_output_and_grad(50.0)
    assert torch.equal(out, other_out) and torch.equal(grad, other_grad)
    assert torch.count_nonzero(grad) == grad.numel()


@pytest.mark.parametrize("traced", [False, True])
def test_rel_shift_picks_each_keys_relative_position(traced: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Query i's score for key j is its score at relative position i - j (column T-1-i+j of the
    positions T-1..-(T-1)), as Transformer-XL's pad-reshape-slice shift gives it, gradients too:
    the eager strided view and the traced graph's gather alike."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: traced)
    b, h, t = 2, 3, 9
    raw = torch.randn(b, h, t, 2 * t - 1, requires_grad=True)
    shifted = RelPositionMultiHeadAttention.rel_shift(raw)
    for i in range(t):
        for j in range(t):
            assert torch.equal(shifted[:, :, i, j], raw[:, :, i, t - 1 - (i - j)])
    padded = F.pad(raw, (1, 0)).view(b, h, 2 * t, t)[:, :, 1:].reshape(b, h, t, 2 * t - 1)[..., :t]
    assert torch.equal(shifted, padded)
    grad = torch.randn(b, h, t, t)
    (ours,) = torch.autograd.grad(shifted, raw, grad)
    (theirs,) = torch.autograd.grad(padded, raw, grad)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("autocast", [False, True])
def test_added_key_mask_gives_masked_fills_probabilities(autocast: bool) -> None:
    """-10000 added to a padded key's score (and -0.0 to a real one's) leaves every probability
    and its gradient bitwise those of filling the padded scores with -10000."""
    gen = torch.Generator().manual_seed(0)
    scores = (4 * torch.randn(2, 3, 7, 7, generator=gen)).requires_grad_()
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    grad = torch.randn(2, 3, 7, 7, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        filled = torch.softmax(scores.masked_fill(~mask[:, None, None, :], -10000.0), -1)
        added = torch.softmax(scores + (~mask).to(scores.dtype)[:, None, None, :] * -10000.0, -1)
    assert torch.equal(filled, added) and torch.count_nonzero(added[1, ..., 4:]) == 0
    assert torch.equal(*(torch.autograd.grad(p, scores, grad)[0] for p in (filled, added)))


def _recognizer(cfg: ConformerConfig) -> Recognizer:
    tokenizer = Tokenizer.train(
        ["HELLO WORLD", "A CAT SAT ON THE MAT", "IT'S FINE"], TokenizerConfig(vocab_size=20)
    )
    cfg.vocab_size = tokenizer.vocab_size
    return Recognizer(build_model(cfg), LogMelFeatures(FeatureConfig()), tokenizer)


def test_save_load_round_trip_is_strict_and_exact(tmp_path: Path) -> None:
    rec = _recognizer(hetero_config())
    save_recognizer(tmp_path / "m.pt", rec, note="x")
    loaded = load_recognizer(tmp_path / "m.pt")
    assert loaded.model.config == rec.model.config
    assert loaded.meta["note"] == "x"
    for (k, a), (k2, b) in zip(
        rec.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    feats, lengths = torch.randn(1, 40, 80), torch.tensor([40])
    torch.testing.assert_close(rec.model.eval()(feats, lengths)[0], loaded.model(feats, lengths)[0])
    assert loaded.tokenizer.encode("HELLO") == rec.tokenizer.encode("HELLO")


def test_a_recognizer_loads_onto_the_device_it_is_asked_for(tmp_path: Path) -> None:
    """The model and its front end land on `device` (on a GPU, the former `map_location` left the
    model on the CPU; "meta" stands in here for a device CI does not have)."""
    save_recognizer(tmp_path / "m.pt", _recognizer(hetero_config()))
    loaded = load_recognizer(tmp_path / "m.pt", device="meta")
    tensors = [*loaded.model.parameters(), *loaded.model.buffers(), *loaded.features.buffers()]
    assert tensors and {t.device.type for t in tensors} == {"meta"}
    assert {p.device.type for p in load_recognizer(tmp_path / "m.pt").model.parameters()} == {"cpu"}


def test_heterogeneous_model_trains_one_step_and_round_trips(tmp_path: Path) -> None:
    rec = _recognizer(hetero_config())
    model = rec.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log_probs, lengths = model(torch.randn(2, 80, 80), torch.tensor([80, 60]))
    loss = F.ctc_loss(
        log_probs.transpose(0, 1),
        torch.tensor([[1, 2, 3], [4, 5, 0]]),
        lengths,
        torch.tensor([3, 2]),
        blank=model.blank,
    )
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.encoder.layers[1].self_attn is None and model.encoder.layers[2].conv is None
    assert model.encoder.layers[0].self_attn.linear_q.out_features == 4 * 8
    save_recognizer(tmp_path / "h.pt", rec)
    assert load_recognizer(tmp_path / "h.pt").model.config.heads == [4, 0, 1]


def test_config_broadcasts_and_rejects_bad_values(tmp_path: Path) -> None:
    cfg = ConformerConfig.create(n_layers=3, heads=2)
    assert cfg.heads == [2, 2, 2] and cfg.ffn1 == [576, 576, 576]
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.n_head'"):
        from_dict(TrainConfig, {"model": {"n_head": 4}})
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
        from_dict(TrainConfig, {"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="heads has 2 entries; expected n_layers = 3"):
        ConformerConfig.create(n_layers=3, heads=[1, 2])
    with pytest.raises(ConfigError, match="d_model must be even"):
        ConformerConfig.create(d_model=101)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: 3\nmodel:\n  n_layers: 2\n")
    cfg2 = load_config(TrainConfig, yaml_file, ["optim.lr=1e-3", "model.heads=[1,3]"])
    assert (cfg2.epochs, cfg2.optim.lr, cfg2.model.heads) == (3, 0.001, [1, 3])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_config(TrainConfig, yaml_file, ["optim.learning_rate=1"])


def test_the_model_counts_frames_at_its_front_ends_rate(tmp_path: Path) -> None:
    """A recognizer whose model and front end disagree on the feature rate is refused; a checkpoint
    written before the model recorded its rate takes its front end's."""
    rec = _recognizer(hetero_config())
    fine = LogMelFeatures(FeatureConfig(hop_length=128))
    with pytest.raises(ValueError, match=r"counts 100 feature frames per second .* front end makes 125"):
        Recognizer(rec.model, fine, rec.tokenizer)
    rec.model.config.feature_rate = 125.0
    save_recognizer(tmp_path / "m.pt", Recognizer(rec.model, fine, rec.tokenizer))
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ckpt["config"]["model"].pop("feature_rate") == 125.0
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_recognizer(tmp_path / "old.pt").model.config.feature_rate == 125.0
    assert load_recognizer(tmp_path / "m.pt").model.config == rec.model.config


def _soft_gate(n: int, gen: torch.Generator) -> tuple[HardConcrete, torch.Tensor]:
    """A frozen gate holding soft values in [0.1, 1] and one closed unit, as gates give them
    while pruning, and those values."""
    values = 0.1 + 0.9 * torch.rand(n, generator=gen)
    values[1] = 0.0
    gate = HardConcrete(n)
    gate.freeze(values)
    return gate, values


@pytest.mark.parametrize("kind", ["ffn", "attention", "conv"])
def test_unit_gates_scale_the_reader_as_they_would_the_activations(kind: str) -> None:
    """A unit gate folds into the input columns of the layer that reads its units; with soft
    values (and a closed unit) that is the same function as scaling the activations it reads."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 12, generator=gen)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    if kind == "ffn":
        module: torch.nn.Module = FeedForward(12, 20, 0.0)
        reader, units, per_unit = module.linear2, 20, 1
        call = lambda: module(x)  # noqa: E731
    elif kind == "attention":
        module = RelPositionMultiHeadAttention(12, 4, 3, 0.0)
        reader, units, per_unit = module.linear_out, 4, 3
        pos = torch.randn(1, 17, 12, generator=gen)
        call = lambda: module(x, pos, mask)  # noqa: E731
    else:
        module = ConvolutionModule(12, 10, 5)
        reader, units, per_unit = module.pointwise_conv2, 10, 1
        call = lambda: module(x, mask)  # noqa: E731
    module.eval()
    gate, values = _soft_gate(units, gen)
    scale = values.repeat_interleave(per_unit)
    expected_scale = scale[None, :, None] if kind == "conv" else scale
    handle = reader.register_forward_pre_hook(lambda _, args: (args[0] * expected_scale,))
    expected = call()
    handle.remove()
    module.gate = gate
    assert torch.allclose(call(), expected, atol=1e-6)
    module.gate = None
    assert not torch.allclose(call(), expected, atol=1e-3)  # the gate changes the output
