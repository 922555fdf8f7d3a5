"""Conformer-CTC (Gulati et al. 2020) with per-layer sizes, read top-down.

The structure and the parameter names follow NeMo's `ConformerEncoder` (and ESPnet's, which it
mirrors), so pretrained weights map one to one: Conv2d subsampling by 4, 8 or 16 (plain striding,
or FastConformer's depthwise-separable dw_striding, Rekesh et al. 2023), relative
positional multi-head self-attention (Transformer-XL style, Dai et al. 2019, with separate q/k/v/out
projections, a position projection and per-head biases u and v), macaron feed-forward halves, a
convolution module (pointwise conv to 2x channels, GLU, depthwise conv, BatchNorm, SiLU, pointwise
conv) and a final LayerNorm per block, then a linear CTC head.

Every layer has its own number of heads, feed-forward widths and convolution channels, and a width
of 0 means the module is absent, so a physically pruned model is just another `ConformerConfig`.

Contract everywhere: ``forward(x, lengths) -> (y, lengths)``; padded frames never change the
outputs of real frames.

Pruning lives beside the model (DPHuBERT's `components.py`, nanoGPT's `crop_block_size`): every
prunable module subclasses `Prunable` and says, in one place, what its units are (`unit_groups`),
what it costs in closed form given the kept units (`size`), how it slices itself (`prune`), how its
units score by magnitude (`unit_scores`) and which of its layers write and read the residual stream
(`residual_writers`, `residual_readers`: what hidden-dimension pruning slices). Its gate slots
(``None`` in a dense model) hold modules whose call returns a mask (see `conformer_prune.prune`):
heads scale the per-head attention context, neurons the feed-forward hidden units, channels the
convolution module's activations before pointwise_conv2 (so BatchNorm sees the channel as removed),
front-end channels the outputs of each subsampling convolution (each applied as the same scale on
the weights that read or write those units, which costs far less than scaling the activations), and
module and layer gates scale a residual branch; the hidden gate of the encoder (`HIDDEN`) masks the
model dimension everywhere (see `ConformerEncoder`). A mask of ones leaves the output unchanged; a
zero is exactly what slicing the unit away computes. `ConformerCTC.named_prunable`,
`ConformerCTC.size` and `ConformerCTC.prune` loop over these modules.

Frame arithmetic (the feature frame rate and the subsampled length) is defined here once.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conformer_prune.config import from_dict

__all__ = [
    "FEATURE_FRAMES_PER_SECOND",
    "HIDDEN",
    "ConformerCTC",
    "ConformerConfig",
    "HiddenMask",
    "Num",
    "Prunable",
    "Size",
    "SubsamplingKind",
    "build_model",
    "feature_frames",
    "subsampled_length",
]

Gate = nn.Module  # a module whose call returns a mask; see conformer_prune.prune.HardConcrete
Num = Tensor | float  # a unit count: exact (0/1 mask sums), expected (gate probabilities) or dense

PER_LAYER = ("heads", "ffn1", "ffn2", "conv_channels")
# the structure, gate and mask name of hidden-dimension (d_model) pruning; in a size's `kept`
# mapping, the kept (or expected) number of d_model dimensions
HIDDEN = "hidden"

FEATURE_FRAMES_PER_SECOND = 100.0  # the default rate of log-mel frames per second: a 10 ms hop
SUBSAMPLING = 4  # the default: encoder frame = 4 feature frames, two stride-2 convolutions
SUBSAMPLING_FACTORS = (4, 8, 16)
MAX_STAGES = 4  # stride-2 stages of the largest factor

# the front end's layout (NeMo's `subsampling`): plain striding Conv2d, or FastConformer's
# depthwise-separable striding convolutions
SubsamplingKind = Literal["striding", "dw_striding"]

_Length = TypeVar("_Length", int, Tensor)


def _halved(n: _Length) -> _Length:
    """Output length of a stride-2 convolution with kernel 3 and padding 1 (ints or tensors)."""
    return (n - 1) // 2 + 1


def subsampled_length(frames: int, factor: int = SUBSAMPLING) -> int:
    """Encoder frames after the front end's stride-2 stages (log2 `factor` of them); each is
    NeMo's `calc_length` with kernel 3, padding 1 on both sides and stride 2."""
    for _ in range(factor.bit_length() - 1):
        frames = _halved(frames)
    return frames


def feature_frames(seconds: float, per_second: float = FEATURE_FRAMES_PER_SECOND) -> int:
    """Log-mel frames of `seconds` of audio at `per_second` frames per second (centred frames: one
    more than seconds x rate); a model's rate is `ConformerConfig.feature_rate`."""
    return int(seconds * per_second) + 1


class Size(NamedTuple):
    """Parameters and multiply-accumulates (of one utterance) of a model or one of its parts."""

    params: Num
    macs: Num


@dataclass
class ConformerConfig:
    """Architecture of a Conformer-CTC model.

    Per-layer fields (`heads`, `ffn1`, `ffn2`, `conv_channels`) are lists of length `n_layers`;
    a plain integer in a dict or YAML file is broadcast to every layer (see `prepare_dict`).

    Args:
        n_mels: input feature bins.
        feature_rate: input feature frames per second of audio (the front end's sample rate over
            its hop: 100 for a 10 ms hop). Training, loading and NeMo import set it from the
            front end; MACs per second of audio and the inputs of latency measurements and exports
            are counted at this rate.
        vocab_size: tokenizer pieces; the CTC blank is the extra last output.
        d_model: model dimension, shared by all layers.
        n_layers: number of Conformer blocks.
        head_dim: dimension of one attention head (kept when heads are pruned).
        heads: attention heads per layer; 0 means no self-attention module.
        ffn1: hidden width of the first (macaron) feed-forward per layer; 0 means none.
        ffn2: hidden width of the second feed-forward per layer; 0 means none.
        conv_channels: channels of the convolution module per layer; 0 means none.
        conv_kernel: depthwise kernel size (odd).
        subsampling: the front end's layout, "striding" (Conv2d per factor of 2) or
            "dw_striding" (FastConformer: a Conv2d, then depthwise and pointwise Conv2d per further
            factor of 2); NeMo's `subsampling`.
        subsampling_factor: time reduction of the front end: 4, 8 or 16.
        subsampling_channels: output channels of each stride-2 stage (log2 of the factor
            entries; NeMo's `subsampling_conv_channels` in every stage).
        xscaling: scale the subsampled input by sqrt(d_model) (NeMo's `xscaling`).
        dropout: dropout in the blocks.
        dropout_att: dropout on attention weights.
        dropout_emb: dropout on the relative position embeddings.
        d_model_unpruned: 0, or, after hidden-dimension pruning, the d_model the model was
            trained with: it sets the sinusoidal position embeddings' frequencies and xscaling's
            sqrt(d_model), which pruning keeps.
        hidden_dims: empty, or, after hidden-dimension pruning, which of the d_model_unpruned
            dimensions the model kept (sorted, d_model of them); the position embeddings are
            those dimensions of the unpruned sinusoid.
    """

    n_mels: int = 80
    feature_rate: float = FEATURE_FRAMES_PER_SECOND
    vocab_size: int = 128
    d_model: int = 144
    n_layers: int = 12
    head_dim: int = 36
    heads: list[int] = field(default_factory=lambda: [4] * 12)
    ffn1: list[int] = field(default_factory=lambda: [576] * 12)
    ffn2: list[int] = field(default_factory=lambda: [576] * 12)
    conv_channels: list[int] = field(default_factory=lambda: [144] * 12)
    conv_kernel: int = 15
    subsampling: SubsamplingKind = "striding"
    subsampling_factor: int = SUBSAMPLING
    subsampling_channels: list[int] = field(default_factory=lambda: [144, 144])
    xscaling: bool = True
    dropout: float = 0.1
    dropout_att: float = 0.1
    dropout_emb: float = 0.0
    d_model_unpruned: int = 0
    hidden_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in PER_LAYER:
            values = getattr(self, name)
            if len(values) != self.n_layers:
                raise ValueError(f"{name} has {len(values)} entries; expected n_layers = {self.n_layers}")
            if any(v < 0 for v in values):
                raise ValueError(f"{name} must be non-negative, found {values}")
        if self.position_width % 2:
            raise ValueError(
                f"d_model must be even (sinusoidal position embeddings), found {self.position_width}"
            )
        if bool(self.d_model_unpruned) != bool(self.hidden_dims):
            raise ValueError(
                "d_model_unpruned and hidden_dims are set together (after hidden-dimension pruning) "
                f"or not at all, found {self.d_model_unpruned} and {len(self.hidden_dims)} dims"
            )
        dims = self.hidden_dims
        if dims and (
            len(dims) != self.d_model
            or any(a >= b for a, b in itertools.pairwise(dims))
            or not 0 <= dims[0] <= dims[-1] < self.d_model_unpruned
        ):
            raise ValueError(
                f"hidden_dims must be d_model = {self.d_model} sorted distinct dims of "
                f"d_model_unpruned = {self.d_model_unpruned}, found {dims}"
            )
        if not self.feature_rate > 0:
            raise ValueError(f"feature_rate must be positive (frames per second), found {self.feature_rate}")
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, found {self.conv_kernel}")
        if self.subsampling not in get_args(SubsamplingKind):
            raise ValueError(
                f"subsampling must be one of {get_args(SubsamplingKind)}, found {self.subsampling!r}"
            )
        if self.subsampling_factor not in SUBSAMPLING_FACTORS:
            raise ValueError(
                f"subsampling_factor must be one of {SUBSAMPLING_FACTORS}, found {self.subsampling_factor}"
            )
        stages = self.subsampling_factor.bit_length() - 1
        if len(self.subsampling_channels) != stages or min(self.subsampling_channels) < 1:
            raise ValueError(
                f"subsampling_channels must be {stages} positive ints (one per stride-2 stage of "
                f"subsampling_factor {self.subsampling_factor}), found {self.subsampling_channels}"
            )

    @classmethod
    def create(cls, **fields: Any) -> ConformerConfig:
        """Typed construction with integer per-layer fields broadcast, e.g.
        ``ConformerConfig.create(n_layers=2, d_model=32, heads=2, head_dim=16)``."""
        return from_dict(cls, fields)

    @staticmethod
    def prepare_dict(data: dict[str, Any]) -> dict[str, Any]:
        """Expand integer per-layer fields of a plain dict to lists of length `n_layers`."""
        out = dict(data)
        n_layers = out.get("n_layers", ConformerConfig.n_layers)
        for name in PER_LAYER:
            if isinstance(out.get(name), int) and not isinstance(out.get(name), bool):
                out[name] = [out[name]] * n_layers
            elif name not in out and n_layers != ConformerConfig.n_layers:
                default = getattr(ConformerConfig(), name)[0]
                out[name] = [default] * n_layers
        return out

    @property
    def position_width(self) -> int:
        """Width of the sinusoidal position embeddings (and xscaling's d_model): d_model, or the
        unpruned d_model after hidden-dimension pruning."""
        return self.d_model_unpruned or self.d_model

    @property
    def frames_per_second(self) -> float:
        """Encoder output frames per second of audio."""
        return self.feature_rate / self.subsampling_factor

    def encoder_frames(self, frames: int) -> int:
        """Encoder frames of an utterance of `frames` feature frames."""
        return subsampled_length(frames, self.subsampling_factor)


def _lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, T) True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _kept(param: Tensor, index: Tensor, dim: int = 0) -> nn.Parameter:
    """The entries `index` of `param` along `dim`, as a new parameter."""
    return nn.Parameter(param.detach().index_select(dim, index.to(param.device)).clone())


def _kept_bias(bias: Tensor | None, index: Tensor) -> nn.Parameter | None:
    """`_kept` for a bias, which a layer built with ``bias=False`` does not have."""
    return None if bias is None else _kept(bias, index)


def _d_model(cfg: ConformerConfig, kept: Mapping[str, Num]) -> Num:
    """The kept d_model dimensions in a size's `kept` mapping (as in `cfg` when absent)."""
    return kept.get(HIDDEN, cfg.d_model)


def _keep_rows(layer: nn.Linear | nn.Conv1d, index: Tensor) -> None:
    """Keep the output features (rows, with the bias) `index` of a Linear or Conv1d."""
    layer.weight = _kept(layer.weight, index)
    layer.bias = _kept_bias(layer.bias, index)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(index)
    else:
        layer.out_channels = len(index)


def _keep_columns(layer: nn.Linear | nn.Conv1d, index: Tensor) -> None:
    """Keep the input features (columns) `index` of a Linear or Conv1d (without groups)."""
    layer.weight = _kept(layer.weight, index, 1)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(index)
    else:
        layer.in_channels = len(index)


class HiddenMask(NamedTuple):
    """One draw of the hidden gate: the mask (D,) and its non-zero dimensions (D',), found once
    per forward pass (finding them waits for the device)."""

    mask: Tensor
    kept: Tensor

    @classmethod
    def of(cls, mask: Tensor) -> HiddenMask:
        return cls(mask, torch.nonzero(mask.detach()).flatten())


def _kept_layer_norm(norm: nn.LayerNorm, x: Tensor, hidden: HiddenMask) -> Tensor:
    """`norm` over the dimensions that the hidden mask keeps (its non-zeros) only, scaled by the
    mask, and 0 elsewhere: on the kept dimensions, what the LayerNorm sliced to them computes
    (CoFiPruning's `CoFiLayerNorm`, Xia et al. 2022). Shapes: (..., D) -> (..., D)."""
    index = hidden.kept
    if len(index) == 0:  # a sampled mask may close every dimension
        return torch.zeros_like(x)
    weight, bias = norm.weight[index], norm.bias[index]
    kept = F.layer_norm(x.index_select(-1, index), (len(index),), weight, bias, norm.eps)  # (..., D')
    out = torch.zeros(x.shape, dtype=kept.dtype, device=kept.device)
    return out.index_copy(-1, index, kept * hidden.mask[index])


class Prunable(nn.Module, metaclass=abc.ABCMeta):
    """A module with prunable units: the one class to write for a new prunable structure.

    Class attributes:
        STRUCTURE: the structure name that turns its unit gates on (``structures`` in the prune
            config), e.g. "heads".
        GATES: unit group -> attribute holding that group's gate (``None`` until one is attached).
    """

    STRUCTURE: ClassVar[str]
    GATES: ClassVar[dict[str, str]]

    @abc.abstractmethod
    def unit_groups(self) -> dict[str, int]:
        """Number of units in each group, e.g. ``{"units": heads}``."""

    @staticmethod
    @abc.abstractmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int, present: Num = 1.0) -> Size:
        """Closed-form parameters and MACs for one utterance of `frames` feature frames, given the
        kept units of each group (exact counts or expected values), the kept model dimensions
        under `HIDDEN` (as in `cfg` when absent) and the probability `present` that the module is
        kept at all; equal to ``numel()`` and the flop counter once sliced. A weight that two
        gates mask counts the product of their expected counts (the gates are independent)."""

    @abc.abstractmethod
    def prune(self, keep: Mapping[str, Tensor]) -> None:
        """Keep only the units at the (sorted) indices `keep[group]`, slicing every tensor in place."""

    @abc.abstractmethod
    def fold_units(self, group: str, scale: Tensor) -> None:
        """Multiply, in place, the weights that read the outputs of `group`'s units by `scale`
        (one factor per unit), so that the module with scaled weights and a gate of ones computes
        what it computed with `scale` as the gate."""

    @abc.abstractmethod
    def unit_scores(self) -> dict[str, Tensor]:
        """L1 norm of all the weights that belong to each unit, per group."""

    @abc.abstractmethod
    def residual_writers(self) -> list[nn.Linear | nn.Conv1d]:
        """The layers whose outputs are the residual stream (d_model)."""

    @abc.abstractmethod
    def residual_readers(self) -> list[nn.Linear | nn.Conv1d]:
        """The layers whose inputs are d_model wide (the normalised residual stream, or the
        position embeddings): their columns go with hidden-dimension pruning."""


def _conv2d(conv: nn.Conv2d, x: Tensor, scale: Tensor | None, channels_last: bool) -> Tensor:
    """`conv(x)` with output channel c scaled by `scale[c]` (None: 1), the scale folded into the
    filters and biases; with `channels_last`, input and weight laid out channels-last (the output
    follows). The weight is converted on the fly, not in place: a single-channel input cannot tell
    the convolution which layout to use, and a converted parameter would lose its layout whenever it
    is sliced or replaced."""
    weight, bias = conv.weight, conv.bias
    if scale is not None:
        weight = weight * scale[:, None, None, None]
        bias = None if bias is None else bias * scale
    if channels_last:
        # `to`, not `contiguous`: a tensor with a single input channel is contiguous in both
        # layouts, and only `to` gives it the strides from which the convolution reads the layout
        weight = weight.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ReLUPastLengthsZeroed(torch.autograd.Function):
    """`relu(x)` with the frames past each length zeroed, (B, C, T, F), (B,) -> (B, C, T, F): what
    `relu(x) * mask` computes, without an activation-sized product. The zeros are written into the
    padding alone, and the gradient is the ReLU's own, read from the output (0 wherever it is 0).
    It works in place: `x` is a convolution's output, which nothing else reads (measured on the
    front end's map, 16 x 144 x 251 x 40 in bf16: 22 ms in place, 30 ms into a new tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lengths: Tensor) -> Tensor:
        out = torch.relu_(x)
        for b, n in enumerate(lengths.tolist()):
            out[b, :, n:].zero_()
        ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


def _read_scaled(layer: nn.Linear | nn.Conv1d, x: Tensor, scale: Tensor | None) -> Tensor:
    """`layer(x * scale)` for a Linear (scale over x's last axis) or a kernel-1 Conv1d (over its
    channels), with the scale folded into the layer's input columns: a unit gate then costs a
    product of the weight's size, not of the activations' (which, under bf16 autocast, also made
    an fp32 copy of them)."""
    if scale is None:
        return layer(x)
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight * scale[None, :], layer.bias)
    return F.conv1d(x, layer.weight * scale[None, :, None], layer.bias)


class ConvSubsampling(Prunable):
    """Stride-2 Conv2d stages over (time, frequency), then a Linear to d_model, laid out as NeMo's
    `ConvSubsampling` (the same `conv.{i}` indices, so weights map one to one):

    - "striding": (Conv2d 3x3, ReLU) per factor of 2;
    - "dw_striding" (FastConformer, Rekesh et al. 2023): a Conv2d 3x3 and ReLU, then (depthwise
      Conv2d 3x3, pointwise Conv2d 1x1, ReLU) per further factor of 2.

    Every stride-2 convolution has kernel 3 and padding 1; frames past each length are zeroed in
    front of each stage after the first (as NeMo's masked convolutions do), so padding does not
    reach real frames.

    Units: the output channels of each stage (groups "0", "1", ...). Channel c of stage i is its
    filter c (its pointwise filter c in "dw_striding") and what reads it: the next stage's input
    column c (for "dw_striding" the depthwise filter c, kept exactly when its input channel is,
    and the pointwise input column c), or the `freq` columns of `out` it feeds.

    Shapes: (B, T, n_mels), (B,) -> (B, T', d_model), (B,) with T' = T halved (rounded up) once per
    stage.
    """

    STRUCTURE = "frontend"
    GATES: ClassVar[dict[str, str]] = {str(i): f"gate{i + 1}" for i in range(MAX_STAGES)}

    def __init__(
        self,
        n_mels: int,
        channels: list[int],
        d_model: int,
        kind: SubsamplingKind = "striding",
    ) -> None:
        super().__init__()
        self.kind: SubsamplingKind = kind
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, stride=2, padding=1), nn.ReLU()]
        for c_in, c_out in itertools.pairwise(channels):
            if kind == "striding":
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            else:
                depthwise = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in)
                layers += [depthwise, nn.Conv2d(c_in, c_out, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.stages = len(channels)
        self.freq = subsampled_length(n_mels, 2**self.stages)
        self.out = nn.Linear(channels[-1] * self.freq, d_model)
        # (C_i,) output channels of stage i
        self.gate1: Gate | None = None
        self.gate2: Gate | None = None
        self.gate3: Gate | None = None
        self.gate4: Gate | None = None
        # every layer called as a module, without the CPU fast paths of `_convolve`: for a tracer
        # that hooks modules (Torch-Pruning's dependency graph never saw a functional convolution)
        self.module_calls = False

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """Lengths after one stride-2 stage."""
        return _halved(lengths)

    def _stage_layers(self) -> list[list[nn.Module]]:
        """The layers of each stage, in order (the first stage is a Conv2d and its ReLU)."""
        width = 2 if self.kind == "striding" else 3
        layers = list(self.conv)
        return [layers[:2]] + [layers[i : i + width] for i in range(2, len(layers), width)]

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.unsqueeze(1)  # (B, 1, T, F)
        on_cpu = x.device.type == "cpu"
        # On CPUs, oneDNN's convolutions are fastest channels-last, and its bf16 depthwise ones
        # have no fast path: a training step of the front ends alone (8 x 10 s, 2 cores) took
        # 498 -> 292 ms for dw_striding (channels-last, fp32) and 347 -> 243 ms for striding
        # (channels-last, bf16 autocast kept)
        fp32 = on_cpu and self.kind == "dw_striding"
        with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():
            x, lengths = self._convolve(x.float() if fp32 else x, lengths, channels_last=on_cpu)
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', D)
        return x, lengths

    def _convolve(self, x: Tensor, lengths: Tensor, channels_last: bool) -> tuple[Tensor, Tensor]:
        """The stages: (B, 1, T, F) -> (B, C, T', F'), and the lengths after them, each
        convolution channels-last when asked."""
        # A stage's channel gate scales its output channels after the ReLU; as a gate is never
        # negative, it scales the filters and biases of the convolution before the ReLU instead
        # (the same function), so no activation-sized tensor is multiplied: the products, their
        # gradients and the fp32 copies they made held a pruning step of the reference recipe (bf16,
        # 16 x 5 s, 1 thread) at 3.7-4.3 s, against 2.0 s without. In "dw_striding" a removed
        # channel's depthwise filter goes with it, bias included: the previous stage's gate scales
        # the depthwise filters too.
        # The frames past each length are zeroed at the end of each stage that another reads. In
        # eager mode the ReLU writes the zeros into the padding alone (`_ReLUPastLengthsZeroed`):
        # a product by the frame mask was the largest operator of a pruning step (the student's,
        # its gradient and the teacher's, 7% of the step). A traced graph (ONNX export,
        # torch.compile) keeps the product, which needs no lengths on the host.
        producers, depthwise = self._producers(), self._depthwise()
        stages = self._stage_layers()
        traced = torch.compiler.is_compiling() or self.module_calls
        previous: Tensor | None = None  # the previous stage's channel gate, (C_{i-1},)
        for i, stage in enumerate(stages):
            if i > 0 and traced:
                x = x * _lengths_to_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            gate = getattr(self, self.GATES[str(i)])
            mask = None if gate is None else gate()
            out_lengths = self.output_lengths(lengths)
            for layer in stage:
                if isinstance(layer, nn.Conv2d):
                    scale = mask if layer is producers[i] else previous if layer in depthwise else None
                    if self.module_calls and scale is None:
                        x = layer(x)
                    else:
                        x = _conv2d(layer, x, scale, channels_last)
                elif i < len(stages) - 1 and not traced:  # the ReLU of a stage another reads
                    x = _ReLUPastLengthsZeroed.apply(x, out_lengths)
                else:
                    x = layer(x)  # (B, C_i, T / 2^(i+1), F / 2^(i+1))
            previous = mask
            lengths = out_lengths
        return x, lengths

    def _convs(self) -> list[nn.Conv2d]:
        """Every Conv2d in order: the first, then per stage the one (striding) or the depthwise
        and the pointwise (dw_striding)."""
        return [m for m in self.conv if isinstance(m, nn.Conv2d)]

    def _producers(self) -> list[nn.Conv2d]:
        """The convolution whose output channels are each stage's units."""
        convs = self._convs()
        return [convs[0]] + (convs[1:] if self.kind == "striding" else convs[2::2])

    def _depthwise(self) -> list[nn.Conv2d]:
        """The depthwise convolution of each stage after the first (dw_striding only)."""
        return self._convs()[1::2] if self.kind == "dw_striding" else []

    def last_conv(self) -> nn.Conv2d:
        """The convolution whose channels are flattened into `out`."""
        return self._producers()[-1]

    def unit_groups(self) -> dict[str, int]:
        return {str(i): conv.out_channels for i, conv in enumerate(self._producers())}

    @staticmethod
    def config_groups(cfg: ConformerConfig) -> dict[str, int]:
        """The unit groups of the front end that `cfg` builds."""
        return {str(i): c for i, c in enumerate(cfg.subsampling_channels)}

    @staticmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int, present: Num = 1.0) -> Size:
        d = _d_model(cfg, kept)
        c = [kept[str(i)] for i in range(len(cfg.subsampling_channels))]
        t, f = _halved(frames), _halved(cfg.n_mels)  # after the first convolution
        params: Num = 10 * c[0]  # 9 weights and a bias per channel
        macs: Num = 9 * c[0] * t * f
        for c_in, c_out in itertools.pairwise(c):
            t, f = _halved(t), _halved(f)
            if cfg.subsampling == "striding":
                params = params + c_out * (9 * c_in + 1)
                macs = macs + 9 * c_in * c_out * t * f
            else:  # depthwise (9 weights and a bias per channel), then pointwise
                params = params + 10 * c_in + c_out * (c_in + 1)
                macs = macs + 9 * c_in * t * f + c_in * c_out * t * f
        params = params + c[-1] * f * d + d  # out
        macs = macs + c[-1] * f * d * t
        return Size(present * params, present * macs)

    def prune(self, keep: Mapping[str, Tensor]) -> None:
        producers, depthwise = self._producers(), self._depthwise()
        kept = [keep[str(i)] for i in range(len(producers))]
        for i, (conv, index) in enumerate(zip(producers, kept, strict=True)):
            conv.weight = _kept(conv.weight, index)
            conv.bias = _kept_bias(conv.bias, index)
            if i > 0:  # the input columns: the previous stage's kept channels
                conv.weight = _kept(conv.weight, kept[i - 1], 1)
                conv.in_channels = len(kept[i - 1])
            conv.out_channels = len(index)
        for dw, index in zip(depthwise, kept, strict=False):  # filter c reads channel c
            dw.weight, dw.bias = _kept(dw.weight, index), _kept_bias(dw.bias, index)
            dw.in_channels = dw.out_channels = dw.groups = len(index)
        out_w = self.out.weight.detach().view(-1, self.out.in_features // self.freq, self.freq)  # (D, C, F)
        self.out.weight = nn.Parameter(out_w[:, kept[-1]].reshape(out_w.shape[0], -1).clone())
        self.out.in_features = len(kept[-1]) * self.freq

    @torch.no_grad()
    def fold_units(self, group: str, scale: Tensor) -> None:
        i, producers, depthwise = int(group), self._producers(), self._depthwise()
        if i == len(producers) - 1:  # the last stage's channel c is read by its `freq` columns of `out`
            out_w = self.out.weight.view(self.out.out_features, -1, self.freq)  # (D, C, F)
            out_w.mul_(scale.to(out_w)[None, :, None])
        elif depthwise:  # read by depthwise filter c, whose output (bias included) the gate scales
            dw = depthwise[i]  # again in `forward`: scale^2 on its weights, scale on its bias
            dw.weight.mul_((scale**2).to(dw.weight)[:, None, None, None])
            if dw.bias is not None:
                dw.bias.mul_(scale.to(dw.bias))
        else:  # read by input column c of the next stage's convolution
            reader = producers[i + 1]
            reader.weight.mul_(scale.to(reader.weight)[None, :, None, None])

    def unit_scores(self) -> dict[str, Tensor]:
        producers, depthwise = self._producers(), self._depthwise()
        c = producers[-1].out_channels
        out_columns = self.out.weight.abs().view(-1, c, self.out.in_features // c).sum((0, 2))
        scores = {}
        for i, conv in enumerate(producers):
            score = conv.weight.abs().sum((1, 2, 3))
            if i + 1 < len(producers):  # what reads the channel in the next stage
                score = score + producers[i + 1].weight.abs().sum((0, 2, 3))
                if depthwise:
                    score = score + depthwise[i].weight.abs().sum((1, 2, 3))
            else:
                score = score + out_columns
            scores[str(i)] = score
        return scores

    def residual_writers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.out]

    def residual_readers(self) -> list[nn.Linear | nn.Conv1d]:
        return []


class RelPositionalEncoding(nn.Module):
    """Sinusoidal embeddings of relative positions T-1 ... -(T-1) (NeMo's `RelPositionalEncoding`).

    Returns the (optionally sqrt(d)-scaled) input and pos_emb of shape (1, 2T-1, D).

    Args:
        d_model: width of the sinusoid, and the d of xscaling's sqrt(d).
        xscaling: scale the input by sqrt(d_model).
        dropout: dropout on the scaled input.
        dropout_emb: dropout on the embeddings.
        dims: after hidden-dimension pruning, the dimensions of the sinusoid the model kept (then
            D = len(dims)); empty: all.
    """

    def __init__(
        self, d_model: int, xscaling: bool, dropout: float, dropout_emb: float, dims: list[int] | None = None
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model) if xscaling else 1.0
        self.dropout = nn.Dropout(dropout)
        self.dropout_emb = nn.Dropout(dropout_emb)
        self.dims: Tensor | None
        # not persistent: the config holds the dims, and checkpoints keep the keys they had
        self.register_buffer("dims", torch.tensor(dims) if dims else None, persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = x.shape[1]
        positions = torch.arange(t - 1, -t, -1, device=x.device, dtype=torch.float32)[:, None]
        div = torch.exp(
            torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
            * -(math.log(10000.0) / self.d_model)
        )
        angles = positions * div  # (2T-1, D/2)
        pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * t - 1, self.d_model)
        if self.dims is not None:
            pe = pe.index_select(1, self.dims)  # (2T-1, D)
        x = x * self.xscale
        return self.dropout(x), self.dropout_emb(pe[None].to(x.dtype))


class RelPositionMultiHeadAttention(Prunable):
    """Multi-head self-attention with relative positions (Dai et al. 2019, Sec. 3.3).

    score(i, j) = (q_i + u) k_j / sqrt(d) + (q_i + v) W_pos p_{i-j} / sqrt(d), per head.
    Heads are stored as contiguous blocks of `head_dim` rows in q/k/v/pos and columns in out,
    so pruning a head slices one block everywhere (and its rows of the biases u and v).

    Shapes: x (B, T, D), pos_emb (1, 2T-1, D), key_mask (B, T) -> (B, T, D).
    """

    STRUCTURE = "heads"
    GATES: ClassVar[dict[str, str]] = {"units": "gate"}

    def __init__(self, d_model: int, heads: int, head_dim: int, dropout_att: float) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.linear_q = nn.Linear(d_model, inner)
        self.linear_k = nn.Linear(d_model, inner)
        self.linear_v = nn.Linear(d_model, inner)
        self.linear_out = nn.Linear(inner, d_model)
        self.linear_pos = nn.Linear(d_model, inner, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout_att)
        self.gate: Gate | None = None  # (H,) heads

    @staticmethod
    def rel_shift(x: Tensor) -> Tensor:
        """Turn scores against positions T-1..-(T-1) (B, H, T, 2T-1) into scores against key index
        j, (B, H, T, T): query i's score for key j is its score at position i - j, column T-1-i+j.

        Exactly the numbers (and gradients) of Transformer-XL's pad-reshape-slice shift, without
        its copies. In eager mode a strided view of the scores: the scores-to-softmax forward and
        backward of 16 x 126 frames, 4 heads, took 5.1 ms instead of 7.4 ms in bf16 and 4.9 ms
        instead of 11.8 ms in fp32 (1 thread, with the added key mask below). A traced graph (ONNX
        export, torch.compile) gathers the columns instead, which ONNX Runtime runs in less time
        than the pad and slices (an attention module's scores to softmax in 0.51 ms instead of
        0.97 ms, T = 250, 2 threads) and than the strided view's export.
        """
        b, h, t, _ = x.shape
        if torch.compiler.is_compiling():
            i = torch.arange(t, device=x.device)
            return x.gather(-1, ((t - 1 - i)[:, None] + i).expand(b, h, t, t))
        s0, s1, s2, s3 = x.stride()
        return x.as_strided((b, h, t, t), (s0, s1, s2 - s3, s3), x.storage_offset() + (t - 1) * s3)

    def context(self, x: Tensor, pos_emb: Tensor, key_mask: Tensor) -> Tensor:
        """Per-head attention output before the output projection, (B, H, T, head_dim)."""
        b, t, _ = x.shape
        h, d = self.heads, self.head_dim
        q = self.linear_q(x).view(b, t, h, d)  # (B, T, H, d)
        k = self.linear_k(x).view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        v = self.linear_v(x).view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        p = self.linear_pos(pos_emb).view(1, -1, h, d).transpose(1, 2)  # (1, H, 2T-1, d)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, d)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, H, T, T)
        bd = self.rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))  # (B, H, T, T)
        scores = (ac + bd) / math.sqrt(d)
        # A padded key's probability is exp(about -10000 - max) = 0 exactly (every row has a real
        # key), so, unlike NeMo, no second mask zeroes it after the softmax: that pass over
        # (B, H, T, T) (and its gradient) changed no number. The mask is added (-0.0 to a real key's
        # score, which leaves it as it is) rather than filled in: the same probabilities and
        # gradients, and ONNX Runtime adds a broadcast row faster than it selects one (Where)
        scores = scores + (~key_mask).to(scores.dtype)[:, None, None, :] * -10000.0
        attn = torch.softmax(scores, dim=-1)
        return torch.matmul(self.dropout(attn), v)  # (B, H, T, d)

    def forward(self, x: Tensor, pos_emb: Tensor, key_mask: Tensor) -> Tensor:
        ctx = self.context(x, pos_emb, key_mask)  # (B, H, T, d)
        b, h, t, d = ctx.shape
        scale = None if self.gate is None else self.gate().repeat_interleave(d)  # head h's columns
        return _read_scaled(self.linear_out, ctx.transpose(1, 2).reshape(b, t, h * d), scale)

    def unit_groups(self) -> dict[str, int]:
        return {"units": self.heads}

    @staticmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int, present: Num = 1.0) -> Size:
        # LayerNorm (2d), q/k/v (d e + e each), out (e d + d), pos (d e), biases u and v (2 e) with
        # e = heads * head_dim; products q.k, q.p and attn.v per head
        d, t = _d_model(cfg, kept), cfg.encoder_frames(frames)
        tp = 2 * t - 1  # relative positions
        e = kept["units"] * cfg.head_dim
        params = present * (3 * d + e * (5 * d + 5))
        macs = present * (4 * d * e * t + d * e * tp + e * t * t + e * t * tp + e * t * t)
        return Size(params, macs)

    def prune(self, keep: Mapping[str, Tensor]) -> None:
        index = keep["units"]
        h, dh = self.heads, self.head_dim
        for lin in (self.linear_q, self.linear_k, self.linear_v, self.linear_pos):
            w = lin.weight.detach().view(h, dh, -1)[index]  # (H', dh, D)
            lin.weight = nn.Parameter(w.reshape(len(index) * dh, -1).clone())
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach().view(h, dh)[index].flatten().clone())
            lin.out_features = len(index) * dh
        w = self.linear_out.weight.detach().view(-1, h, dh)[:, index]  # (D, H', dh)
        self.linear_out.weight = nn.Parameter(w.reshape(w.shape[0], -1).clone())
        self.linear_out.in_features = len(index) * dh
        self.pos_bias_u, self.pos_bias_v = _kept(self.pos_bias_u, index), _kept(self.pos_bias_v, index)
        self.heads = len(index)

    @torch.no_grad()
    def fold_units(self, group: str, scale: Tensor) -> None:
        w = self.linear_out.weight
        w.view(w.shape[0], self.heads, self.head_dim).mul_(scale.to(w)[None, :, None])  # (D, H, dh)

    def unit_scores(self) -> dict[str, Tensor]:
        h, d = self.heads, self.head_dim
        rows = sum(
            lin.weight.abs().view(h, d, -1).sum((1, 2))
            for lin in (self.linear_q, self.linear_k, self.linear_v, self.linear_pos)
        )
        biases = sum(
            lin.bias.abs().view(h, d).sum(1)
            for lin in (self.linear_q, self.linear_k, self.linear_v)
            if lin.bias is not None
        )
        out = self.linear_out.weight.abs().view(-1, h, d).sum((0, 2))
        pos = self.pos_bias_u.abs().sum(1) + self.pos_bias_v.abs().sum(1)
        return {"units": rows + biases + out + pos}

    def residual_writers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.linear_out]

    def residual_readers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.linear_q, self.linear_k, self.linear_v, self.linear_pos]


class FeedForward(Prunable):
    """Linear -> SiLU -> dropout -> Linear. Units: hidden neurons (a row of linear1, a column of
    linear2). Shapes: (B, T, D) -> (B, T, D)."""

    STRUCTURE = "ffn"
    GATES: ClassVar[dict[str, str]] = {"units": "gate"}

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, hidden)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, d_model)
        self.gate: Gate | None = None  # (hidden,) neurons

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.linear1(x))  # (B, T, hidden)
        # dropout scales each element, so it commutes with the gate's scale per neuron
        return _read_scaled(self.linear2, self.dropout(h), None if self.gate is None else self.gate())

    def unit_groups(self) -> dict[str, int]:
        return {"units": self.linear1.out_features}

    @staticmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int, present: Num = 1.0) -> Size:
        # LayerNorm (2d), linear1 (d f + f), linear2 (f d + d)
        d, f, t = _d_model(cfg, kept), kept["units"], cfg.encoder_frames(frames)
        return Size(present * (3 * d + f * (2 * d + 1)), present * 2 * d * f * t)

    def prune(self, keep: Mapping[str, Tensor]) -> None:
        index = keep["units"]
        self.linear1.weight = _kept(self.linear1.weight, index)
        self.linear1.bias = _kept_bias(self.linear1.bias, index)  # type: ignore[assignment]
        self.linear2.weight = _kept(self.linear2.weight, index, 1)
        self.linear1.out_features = self.linear2.in_features = len(index)

    @torch.no_grad()
    def fold_units(self, group: str, scale: Tensor) -> None:
        self.linear2.weight.mul_(scale.to(self.linear2.weight)[None, :])

    def unit_scores(self) -> dict[str, Tensor]:
        lin1, lin2 = self.linear1, self.linear2
        bias = 0.0 if lin1.bias is None else lin1.bias.abs()
        return {"units": lin1.weight.abs().sum(1) + bias + lin2.weight.abs().sum(0)}

    def residual_writers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.linear2]

    def residual_readers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.linear1]


class ConvolutionModule(Prunable):
    """Pointwise conv to 2C, GLU, depthwise conv, BatchNorm, SiLU, pointwise conv back to D.

    Channel c is the GLU pair (rows c and C + c of pointwise_conv1), depthwise filter c, BatchNorm
    entry c and input column c of pointwise_conv2. Padded frames are zeroed before the depthwise
    convolution so they do not leak into real frames.

    Shapes: x (B, T, D), frame_mask (B, T) -> (B, T, D).
    """

    STRUCTURE = "conv"
    GATES: ClassVar[dict[str, str]] = {"units": "gate"}

    def __init__(self, d_model: int, channels: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * channels, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size=kernel, padding=(kernel - 1) // 2, groups=channels
        )
        self.batch_norm = nn.BatchNorm1d(channels)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(channels, d_model, kernel_size=1)
        self.gate: Gate | None = None  # (C,) channels

    def glu(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """GLU output with padded frames zeroed, (B, C, T).

        Written as chunk + sigmoid (what `F.glu` computes) so that dependency-graph pruners such
        as Torch-Pruning see that channel c pairs rows c and C + c of pointwise_conv1.
        """
        a, b = self.pointwise_conv1(x.transpose(1, 2)).chunk(2, dim=1)  # (B, C, T) each
        return a * torch.sigmoid(b) * frame_mask[:, None, :].to(a.dtype)

    def forward(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        return self.tail(self.glu(x, frame_mask))

    def tail(self, x: Tensor) -> Tensor:
        x = self.activation(self.batch_norm(self.depthwise_conv(x)))  # (B, C, T)
        scale = None if self.gate is None else self.gate()
        return _read_scaled(self.pointwise_conv2, x, scale).transpose(1, 2)  # (B, T, D)

    def unit_groups(self) -> dict[str, int]:
        return {"units": self.depthwise_conv.out_channels}

    @staticmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int, present: Num = 1.0) -> Size:
        # LayerNorm (2d), pointwise_conv1 (2c d + 2c), depthwise (c k + c), BatchNorm (2c),
        # pointwise_conv2 (c d + d)
        d, k, c, t = _d_model(cfg, kept), cfg.conv_kernel, kept["units"], cfg.encoder_frames(frames)
        return Size(present * (3 * d + c * (3 * d + k + 5)), present * c * (3 * d + k) * t)

    def prune(self, keep: Mapping[str, Tensor]) -> None:
        index = keep["units"]
        pw1, dw, bn, pw2 = self.pointwise_conv1, self.depthwise_conv, self.batch_norm, self.pointwise_conv2
        glu_rows = torch.cat([index, index + dw.out_channels])  # a channel is the GLU pair (c, C + c)
        pw1.weight, pw1.bias = _kept(pw1.weight, glu_rows), _kept_bias(pw1.bias, glu_rows)
        pw1.out_channels = 2 * len(index)
        dw.weight, dw.bias = _kept(dw.weight, index), _kept_bias(dw.bias, index)
        dw.in_channels = dw.out_channels = dw.groups = len(index)
        bn.weight, bn.bias = _kept(bn.weight, index), _kept(bn.bias, index)
        for name in ("running_mean", "running_var"):
            setattr(bn, name, getattr(bn, name).index_select(0, index.to(bn.weight.device)).clone())
        bn.num_features = len(index)
        pw2.weight = _kept(pw2.weight, index, 1)
        pw2.in_channels = len(index)

    @torch.no_grad()
    def fold_units(self, group: str, scale: Tensor) -> None:
        self.pointwise_conv2.weight.mul_(scale.to(self.pointwise_conv2.weight)[None, :, None])  # (D, C, 1)

    def unit_scores(self) -> dict[str, Tensor]:
        c = self.pointwise_conv2.in_channels
        pw1 = self.pointwise_conv1.weight.abs().sum((1, 2))
        if self.pointwise_conv1.bias is not None:
            pw1 = pw1 + self.pointwise_conv1.bias.abs()
        glu = pw1[:c] + pw1[c:]  # a channel is a GLU pair of pointwise_conv1 outputs
        depthwise = self.depthwise_conv.weight.abs().sum((1, 2))
        return {"units": glu + depthwise + self.pointwise_conv2.weight.abs().sum((0, 2))}

    def residual_writers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.pointwise_conv2]

    def residual_readers(self) -> list[nn.Linear | nn.Conv1d]:
        return [self.pointwise_conv1]


@dataclass(frozen=True)
class Branch:
    """One residual branch of a block: its module class and attribute, its LayerNorm, and the
    per-layer config field that holds its width (0: absent)."""

    module: type[Prunable]
    attr: str
    norm: str
    field: str


class ConformerBlock(nn.Module):
    """x + FF1/2, x + MHSA, x + Conv, x + FF2/2, LayerNorm. Absent modules (width 0) are skipped.

    With a hidden mask (D,) (hidden-dimension pruning), every LayerNorm normalises over the kept
    dimensions only and its output is scaled by the mask, as is every module's output, so the
    residual stream is 0 on removed dimensions and the block computes on the kept ones what the
    block sliced to them computes.

    Shapes: x (B, T, D), pos_emb (1, 2T-1, D), frame_mask (B, T) -> (B, T, D).
    """

    BRANCHES: ClassVar[dict[str, Branch]] = {
        "ffn1": Branch(FeedForward, "feed_forward1", "norm_feed_forward1", "ffn1"),
        "attn": Branch(RelPositionMultiHeadAttention, "self_attn", "norm_self_att", "heads"),
        "conv": Branch(ConvolutionModule, "conv", "norm_conv", "conv_channels"),
        "ffn2": Branch(FeedForward, "feed_forward2", "norm_feed_forward2", "ffn2"),
    }

    def __init__(self, cfg: ConformerConfig, index: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm_feed_forward1 = nn.LayerNorm(d) if cfg.ffn1[index] else None
        self.feed_forward1 = FeedForward(d, cfg.ffn1[index], cfg.dropout) if cfg.ffn1[index] else None
        self.norm_self_att = nn.LayerNorm(d) if cfg.heads[index] else None
        self.self_attn = (
            RelPositionMultiHeadAttention(d, cfg.heads[index], cfg.head_dim, cfg.dropout_att)
            if cfg.heads[index]
            else None
        )
        self.norm_conv = nn.LayerNorm(d) if cfg.conv_channels[index] else None
        self.conv = (
            ConvolutionModule(d, cfg.conv_channels[index], cfg.conv_kernel)
            if cfg.conv_channels[index]
            else None
        )
        self.norm_feed_forward2 = nn.LayerNorm(d) if cfg.ffn2[index] else None
        self.feed_forward2 = FeedForward(d, cfg.ffn2[index], cfg.dropout) if cfg.ffn2[index] else None
        self.norm_out = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        # (1,) gates that keep or drop a whole residual branch, and the whole block
        self.gate_ffn1: Gate | None = None
        self.gate_attn: Gate | None = None
        self.gate_conv: Gate | None = None
        self.gate_ffn2: Gate | None = None
        self.gate_layer: Gate | None = None

    @staticmethod
    def _scaled(y: Tensor, gate: Gate | None) -> Tensor:
        return y if gate is None else y * gate()

    @staticmethod
    def _norm(norm: nn.LayerNorm, x: Tensor, hidden: HiddenMask | None) -> Tensor:
        return norm(x) if hidden is None else _kept_layer_norm(norm, x, hidden)

    @staticmethod
    def _written(y: Tensor, hidden: HiddenMask | None) -> Tensor:
        """A module's output as it enters the residual stream (B, T, D)."""
        return y if hidden is None else y * hidden.mask

    def forward(
        self, x: Tensor, pos_emb: Tensor, frame_mask: Tensor, hidden: HiddenMask | None = None
    ) -> Tensor:
        residual = x
        if self.feed_forward1 is not None and self.norm_feed_forward1 is not None:
            y = self.feed_forward1(self._norm(self.norm_feed_forward1, x, hidden))
            x = x + 0.5 * self.dropout(self._scaled(self._written(y, hidden), self.gate_ffn1))
        if self.self_attn is not None and self.norm_self_att is not None:
            y = self.self_attn(self._norm(self.norm_self_att, x, hidden), pos_emb, frame_mask)
            x = x + self.dropout(self._scaled(self._written(y, hidden), self.gate_attn))
        if self.conv is not None and self.norm_conv is not None:
            y = self.conv(self._norm(self.norm_conv, x, hidden), frame_mask)
            x = x + self.dropout(self._scaled(self._written(y, hidden), self.gate_conv))
        if self.feed_forward2 is not None and self.norm_feed_forward2 is not None:
            y = self.feed_forward2(self._norm(self.norm_feed_forward2, x, hidden))
            x = x + 0.5 * self.dropout(self._scaled(self._written(y, hidden), self.gate_ffn2))
        x = self._norm(self.norm_out, x, hidden)
        if self.gate_layer is not None:  # z = 0 makes the block the identity, so it can be removed
            x = residual + self.gate_layer() * (x - residual)
        return x

    def branches(self) -> Iterator[tuple[str, Prunable | None]]:
        """(branch name, its module or None when absent), in the order of `forward`."""
        for name, branch in self.BRANCHES.items():
            yield name, getattr(self, branch.attr)

    def norms(self) -> list[nn.LayerNorm]:
        """The LayerNorms present: one per branch, then the final one."""
        names = [branch.norm for branch in self.BRANCHES.values()] + ["norm_out"]
        return [norm for name in names if (norm := getattr(self, name)) is not None]

    def remove(self, branch: str) -> None:
        """Drop a residual branch with its LayerNorm (the block then skips it)."""
        setattr(self, self.BRANCHES[branch].attr, None)
        setattr(self, self.BRANCHES[branch].norm, None)

    @staticmethod
    def size(cfg: ConformerConfig, index: int, kept: Mapping[str, Num], frames: int) -> Size:
        """Closed-form size of block `index` given kept units by gate name (absent names: as in
        `cfg`); each branch is weighted by its presence, the whole by the layer's."""
        sizes: dict[str, Size] = {}
        d = _d_model(cfg, kept)
        for name, branch in ConformerBlock.BRANCHES.items():
            width = getattr(cfg, branch.field)[index]
            gate = f"layers.{index}.{name}"
            units = {"units": kept.get(f"{gate}.units", float(width)), HIDDEN: d}
            sizes[name] = branch.module.size(cfg, units, frames, kept.get(gate, float(width > 0)))
        layer = kept.get(f"layers.{index}", 1.0)
        ffn1, attn, conv, ffn2 = sizes["ffn1"], sizes["attn"], sizes["conv"], sizes["ffn2"]
        # 2d: norm_out. The terms are summed in this order so that the float32 expected cost, and
        # with it the budget, stays bit-identical with earlier runs.
        params = layer * (2 * d + (ffn1.params + ffn2.params) + attn.params + conv.params)
        macs = layer * ((ffn1.macs + ffn2.macs) + attn.macs + conv.macs)
        return Size(params, macs)


class ConformerEncoder(nn.Module):
    """Subsampling, positional encoding and Conformer blocks.

    Its gate slot `gate_hidden` (``None`` in a dense model) holds the hidden mask (D,) of
    hidden-dimension pruning (CoFiPruning's ``hidden_z``, Xia et al. 2022, Sec. 3.1): drawn once
    per forward pass and shared by every writer to the residual stream (the front end, each
    module's output, each block's final LayerNorm) and every reader (each LayerNorm, normalising
    over the kept dimensions, and the position projections, through the position embeddings).

    Shapes: feats (B, T, n_mels), lengths (B,) -> (B, T', D), (B,).
    """

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.pre_encode = ConvSubsampling(cfg.n_mels, cfg.subsampling_channels, cfg.d_model, cfg.subsampling)
        self.pos_enc = RelPositionalEncoding(
            cfg.position_width, cfg.xscaling, cfg.dropout, cfg.dropout_emb, cfg.hidden_dims
        )
        self.layers = nn.ModuleList(ConformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.gate_hidden: Gate | None = None  # (D,) model dimensions

    def forward(
        self, feats: Tensor, lengths: Tensor, layer_outputs: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode; when `layer_outputs` is a list, every block's output is appended to it."""
        x, lengths = self.pre_encode(feats, lengths)
        # (D,): one draw for all its uses
        hidden = None if self.gate_hidden is None else HiddenMask.of(self.gate_hidden())
        if hidden is not None:
            x = x * hidden.mask
        x, pos_emb = self.pos_enc(x)
        if hidden is not None:  # what the position projections read
            pos_emb = pos_emb * hidden.mask
        frame_mask = _lengths_to_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, pos_emb, frame_mask, hidden)
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x, lengths


class ConformerCTC(nn.Module):
    """Conformer encoder and a linear CTC head; the blank is the last output (as in NeMo).

    Shapes: feats (B, T, n_mels), lengths (B,) -> log_probs (B, T', vocab_size + 1), (B,).
    """

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = ConformerEncoder(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size + 1)

    @property
    def blank(self) -> int:
        return self.config.vocab_size

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if feats.dim() != 3 or feats.shape[-1] != self.config.n_mels:
            raise ValueError(
                f"expected features of shape (batch, time, {self.config.n_mels}), found {tuple(feats.shape)}"
            )
        x, lengths = self.encoder(feats, lengths)
        return self.log_probs(x), lengths

    def log_probs(self, x: Tensor) -> Tensor:
        """The CTC head on encoder frames: (B, T', D) -> float32 log-probabilities (B, T', V)."""
        return torch.log_softmax(self.decoder(x).float(), dim=-1)

    def ctc_loss(self, log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """CTC of this model's output averaged over utterances, each normalised by its target
        length. Shapes: (B, T', V), (B,), (B, U), (B,) -> ()."""
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (T', B, V)
            targets,
            lengths,
            target_lengths,
            blank=self.blank,
            reduction="mean",
            zero_infinity=True,
        )

    # -- pruning: the loops over the prunable modules ----------------------------------------------

    def blocks(self) -> list[ConformerBlock]:
        return [b for b in self.encoder.layers if isinstance(b, ConformerBlock)]

    def named_prunable(self) -> Iterator[tuple[str, Prunable]]:
        """Every prunable module by name, front end first: ``frontend``, ``layers.{i}.{branch}``.
        A unit group's gate and mask are named ``{name}.{group}`` (``frontend.0``,
        ``layers.3.attn.units``); a branch's presence gate ``layers.{i}.{branch}``, a block's
        ``layers.{i}``."""
        yield "frontend", self.encoder.pre_encode
        for i, block in enumerate(self.blocks()):
            for branch, module in block.branches():
                if module is not None:
                    yield f"layers.{i}.{branch}", module

    @staticmethod
    def size(cfg: ConformerConfig, kept: Mapping[str, Num], frames: int) -> Size:
        """Closed-form parameters and MACs (one utterance of `frames` feature frames) of `cfg` with
        `kept` units, presence probabilities or mask sums by gate name; absent names as in `cfg`.
        As the flop counter does, only matrix products and convolutions count as MACs."""
        groups = ConvSubsampling.config_groups(cfg)
        d = _d_model(cfg, kept)
        front: dict[str, Num] = {g: kept.get(f"frontend.{g}", float(n)) for g, n in groups.items()}
        params, macs = ConvSubsampling.size(cfg, {**front, HIDDEN: d}, frames)
        for i in range(cfg.n_layers):
            layer = ConformerBlock.size(cfg, i, kept, frames)
            params, macs = params + layer.params, macs + layer.macs
        v, t = cfg.vocab_size + 1, cfg.encoder_frames(frames)
        return Size(params + d * v + v, macs + d * v * t)  # CTC head

    def prune(self, masks: Mapping[str, Tensor]) -> None:
        """Slice away, in place, every unit, branch, block and model dimension (`HIDDEN`) whose
        0/1 mask (by gate name, see `named_prunable`) is 0; absent names keep everything. A branch
        left without units is removed. Gates are left alone: prune a model without them."""

        def kept(name: str, n: int) -> Tensor:
            mask = masks.get(name)
            return torch.arange(n) if mask is None else torch.nonzero(mask.cpu() > 0.5).flatten()

        def open_(name: str) -> bool:
            return name not in masks or bool(masks[name].sum() > 0)

        pre = self.encoder.pre_encode
        pre.prune({g: kept(f"frontend.{g}", n) for g, n in pre.unit_groups().items()})
        blocks = []
        for i, block in enumerate(self.blocks()):
            if not open_(f"layers.{i}"):
                continue  # the whole block is the identity
            for branch, module in block.branches():
                if module is None:
                    continue
                keep = {g: kept(f"layers.{i}.{branch}.{g}", n) for g, n in module.unit_groups().items()}
                if not open_(f"layers.{i}.{branch}") or any(len(k) == 0 for k in keep.values()):
                    block.remove(branch)
                else:
                    module.prune(keep)
            blocks.append(block)
        self.encoder.layers = nn.ModuleList(blocks)
        if HIDDEN in masks:
            self._prune_hidden(kept(HIDDEN, self.config.d_model))
        self.config = self.current_config()

    def _prune_hidden(self, index: Tensor) -> None:
        """Keep the model dimensions `index` (sorted) everywhere: the rows of every writer to the
        residual stream, every LayerNorm, the columns of every reader and of the CTC head; the
        position embeddings keep those dimensions of the sinusoid, and xscaling its scale."""
        pre = self.encoder.pre_encode
        _keep_rows(pre.out, index)
        for block in self.blocks():
            for norm in block.norms():
                norm.weight, norm.bias = _kept(norm.weight, index), _kept(norm.bias, index)
                norm.normalized_shape = (len(index),)
            for _, module in block.branches():
                if module is None:
                    continue
                for writer in module.residual_writers():
                    _keep_rows(writer, index)
                for reader in module.residual_readers():
                    _keep_columns(reader, index)
        _keep_columns(self.decoder, index)
        cfg = self.config
        dims = torch.tensor(cfg.hidden_dims)[index] if cfg.hidden_dims else index  # of the unpruned
        pos_enc = self.encoder.pos_enc
        pos_enc.dims = dims.to(pre.out.weight.device)
        self.config = dataclasses.replace(
            cfg, d_model=len(index), d_model_unpruned=cfg.position_width, hidden_dims=dims.tolist()
        )

    def hidden_scores(self) -> Tensor:
        """L1 norm of all the weights that belong to each model dimension, (D,): its row of every
        writer to the residual stream (bias included), its entries of every LayerNorm, its column
        of every reader and of the CTC head."""

        def rows(layer: nn.Linear | nn.Conv1d) -> Tensor:
            w = layer.weight.abs().flatten(1).sum(1)
            return w if layer.bias is None else w + layer.bias.abs()

        def columns(layer: nn.Linear | nn.Conv1d) -> Tensor:
            return layer.weight.abs().transpose(0, 1).flatten(1).sum(1)

        score = rows(self.encoder.pre_encode.out) + columns(self.decoder)
        for block in self.blocks():
            for norm in block.norms():
                score = score + norm.weight.abs() + norm.bias.abs()
            for _, module in block.branches():
                if module is not None:
                    score = score + sum(rows(w) for w in module.residual_writers())
                    score = score + sum(columns(r) for r in module.residual_readers())
        return score

    @torch.no_grad()
    def fold_hidden(self, scale: Tensor) -> None:
        """Multiply, in place, the weights that follow the hidden mask by `scale` (D,), so that the
        model with a mask of ones computes what it computed with `scale` as the mask: the rows of
        every writer to the residual stream, every LayerNorm's weight and bias, and the columns of
        every position projection (which read the masked position embeddings)."""
        writers: list[nn.Linear | nn.Conv1d] = [self.encoder.pre_encode.out]
        for block in self.blocks():
            for norm in block.norms():
                norm.weight.mul_(scale.to(norm.weight))
                norm.bias.mul_(scale.to(norm.bias))
            for _, module in block.branches():
                if module is not None:
                    writers += module.residual_writers()
                if isinstance(module, RelPositionMultiHeadAttention):
                    module.linear_pos.weight.mul_(scale.to(module.linear_pos.weight)[None, :])
        for writer in writers:
            for p in writer.parameters():
                p.mul_(scale.to(p).view(-1, *[1] * (p.dim() - 1)))

    def current_config(self) -> ConformerConfig:
        """The config of the model as its modules now are (after pruning, in place or by a
        library)."""
        blocks = self.blocks()
        widths: dict[str, Any] = {
            branch.field: [
                next(iter(m.unit_groups().values())) if (m := getattr(b, branch.attr)) is not None else 0
                for b in blocks
            ]
            for branch in ConformerBlock.BRANCHES.values()
        }
        channels = list(self.encoder.pre_encode.unit_groups().values())
        return dataclasses.replace(self.config, n_layers=len(blocks), subsampling_channels=channels, **widths)


def build_model(cfg: ConformerConfig) -> ConformerCTC:
    """The only constructor of a model: from its typed config."""
    return ConformerCTC(cfg)
