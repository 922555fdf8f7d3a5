"""Conformer-CTC (Gulati et al. 2020) with per-layer sizes, read top-down.

The structure and the parameter names follow NeMo's `ConformerEncoder` (and ESPnet's, which it
mirrors), so pretrained weights map one to one: striding Conv2d subsampling by 4, relative
positional multi-head self-attention (Transformer-XL style, Dai et al. 2019, with separate q/k/v/out
projections, a position projection and per-head biases u and v), macaron feed-forward halves, a
convolution module (pointwise conv to 2x channels, GLU, depthwise conv, BatchNorm, SiLU, pointwise
conv) and a final LayerNorm per block, then a linear CTC head.

Every layer has its own number of heads, feed-forward widths and convolution channels, and a width
of 0 means the module is absent, so a physically pruned model is just another `ConformerConfig`.

Contract everywhere: ``forward(x, lengths) -> (y, lengths)``; padded frames never change the
outputs of real frames.

Pruning hooks: every prunable module has gate slots, ``None`` in a dense model. A gate is any module
whose call returns a mask (see `conformer_prune.prune`): heads multiply the per-head attention
context, neurons the feed-forward hidden units, channels the convolution module's activations
before pointwise_conv2 (so BatchNorm sees the channel as removed), front-end channels the outputs of
each subsampling convolution, and module and layer gates scale a residual branch. A mask of ones
leaves the output unchanged; a zero is exactly what slicing the unit away computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conformer_prune.config import from_dict

__all__ = ["ConformerCTC", "ConformerConfig", "build_model"]

Gate = nn.Module  # a module whose call returns a mask; see conformer_prune.prune.HardConcrete

PER_LAYER = ("heads", "ffn1", "ffn2", "conv_channels")


@dataclass
class ConformerConfig:
    """Architecture of a Conformer-CTC model.

    Per-layer fields (`heads`, `ffn1`, `ffn2`, `conv_channels`) are lists of length `n_layers`;
    a plain integer in a dict or YAML file is broadcast to every layer (see `prepare_dict`).

    Args:
        n_mels: input feature bins.
        vocab_size: tokenizer pieces; the CTC blank is the extra last output.
        d_model: model dimension, shared by all layers.
        n_layers: number of Conformer blocks.
        head_dim: dimension of one attention head (kept when heads are pruned).
        heads: attention heads per layer; 0 means no self-attention module.
        ffn1: hidden width of the first (macaron) feed-forward per layer; 0 means none.
        ffn2: hidden width of the second feed-forward per layer; 0 means none.
        conv_channels: channels of the convolution module per layer; 0 means none.
        conv_kernel: depthwise kernel size (odd).
        subsampling_channels: output channels of the two subsampling Conv2d layers.
        xscaling: scale the subsampled input by sqrt(d_model) (NeMo's `xscaling`).
        dropout: dropout in the blocks.
        dropout_att: dropout on attention weights.
        dropout_emb: dropout on the relative position embeddings.
    """

    n_mels: int = 80
    vocab_size: int = 128
    d_model: int = 144
    n_layers: int = 12
    head_dim: int = 36
    heads: list[int] = field(default_factory=lambda: [4] * 12)
    ffn1: list[int] = field(default_factory=lambda: [576] * 12)
    ffn2: list[int] = field(default_factory=lambda: [576] * 12)
    conv_channels: list[int] = field(default_factory=lambda: [144] * 12)
    conv_kernel: int = 15
    subsampling_channels: list[int] = field(default_factory=lambda: [144, 144])
    xscaling: bool = True
    dropout: float = 0.1
    dropout_att: float = 0.1
    dropout_emb: float = 0.0

    def __post_init__(self) -> None:
        for name in PER_LAYER:
            values = getattr(self, name)
            if len(values) != self.n_layers:
                raise ValueError(f"{name} has {len(values)} entries; expected n_layers = {self.n_layers}")
            if any(v < 0 for v in values):
                raise ValueError(f"{name} must be non-negative, found {values}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (sinusoidal position embeddings), found {self.d_model}")
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, found {self.conv_kernel}")
        if len(self.subsampling_channels) != 2 or min(self.subsampling_channels) < 1:
            raise ValueError(
                f"subsampling_channels must be two positive ints, found {self.subsampling_channels}"
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
    def frames_per_second(self) -> float:
        """Encoder output frames per second of 16 kHz audio at a 10 ms hop."""
        return 25.0


def _lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, T) True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class ConvSubsampling(nn.Module):
    """Two stride-2 Conv2d + ReLU over (time, frequency), then a Linear to d_model (NeMo
    "striding"). Frames past each length are zeroed between the convolutions, so padding does
    not reach real frames.

    Shapes: (B, T, n_mels), (B,) -> (B, T', d_model), (B,) with T' = ceil(ceil(T / 2) / 2).
    """

    def __init__(self, n_mels: int, channels: list[int], d_model: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        freq = n_mels
        for _ in range(2):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(c2 * freq, d_model)
        self.gate1: Gate | None = None  # (C1,) output channels of the first convolution
        self.gate2: Gate | None = None  # (C2,) output channels of the second convolution

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.unsqueeze(1)  # (B, 1, T, F)
        x = self.conv[1](self.conv[0](x))  # (B, C1, T/2, F/2)
        if self.gate1 is not None:
            x = x * self.gate1()[None, :, None, None]
        lengths = self.output_lengths(lengths)
        x = x * _lengths_to_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        x = self.conv[3](self.conv[2](x))  # (B, C2, T/4, F/4)
        if self.gate2 is not None:
            x = x * self.gate2()[None, :, None, None]
        lengths = self.output_lengths(lengths)
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', D)
        return x, lengths


class RelPositionalEncoding(nn.Module):
    """Sinusoidal embeddings of relative positions T-1 ... -(T-1) (NeMo's `RelPositionalEncoding`).

    Returns the (optionally sqrt(d)-scaled) input and pos_emb of shape (1, 2T-1, D).
    """

    def __init__(self, d_model: int, xscaling: bool, dropout: float, dropout_emb: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model) if xscaling else 1.0
        self.dropout = nn.Dropout(dropout)
        self.dropout_emb = nn.Dropout(dropout_emb)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = x.shape[1]
        positions = torch.arange(t - 1, -t, -1, device=x.device, dtype=torch.float32)[:, None]
        div = torch.exp(
            torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
            * -(math.log(10000.0) / self.d_model)
        )
        angles = positions * div  # (2T-1, D/2)
        pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * t - 1, self.d_model)
        x = x * self.xscale
        return self.dropout(x), self.dropout_emb(pe[None].to(x.dtype))


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with relative positions (Dai et al. 2019, Sec. 3.3).

    score(i, j) = (q_i + u) k_j / sqrt(d) + (q_i + v) W_pos p_{i-j} / sqrt(d), per head.
    Heads are stored as contiguous blocks of `head_dim` rows in q/k/v/pos and columns in out,
    so pruning a head slices one block everywhere.

    Shapes: x (B, T, D), pos_emb (1, 2T-1, D), key_mask (B, T) -> (B, T, D).
    """

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
        """Turn scores against positions T-1..-(T-1) into scores against key index j (i - j)."""
        b, h, t1, t2 = x.shape  # (B, H, T, 2T-1)
        x = F.pad(x, (1, 0))  # (B, H, T, 2T)
        x = x.view(b, h, t2 + 1, t1)
        return x[:, :, 1:].reshape(b, h, t1, t2)

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
        bd = self.rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))[..., :t]  # (B, H, T, T)
        scores = (ac + bd) / math.sqrt(d)
        masked = ~key_mask[:, None, None, :]
        scores = scores.masked_fill(masked, -10000.0)
        attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        return torch.matmul(self.dropout(attn), v)  # (B, H, T, d)

    def forward(self, x: Tensor, pos_emb: Tensor, key_mask: Tensor) -> Tensor:
        ctx = self.context(x, pos_emb, key_mask)  # (B, H, T, d)
        if self.gate is not None:
            ctx = ctx * self.gate()[None, :, None, None]
        b, h, t, d = ctx.shape
        return self.linear_out(ctx.transpose(1, 2).reshape(b, t, h * d))


class FeedForward(nn.Module):
    """Linear -> SiLU -> dropout -> Linear. Shapes: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, hidden)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, d_model)
        self.gate: Gate | None = None  # (hidden,) neurons

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.linear1(x))  # (B, T, hidden)
        if self.gate is not None:
            h = h * self.gate()
        return self.linear2(self.dropout(h))


class ConvolutionModule(nn.Module):
    """Pointwise conv to 2C, GLU, depthwise conv, BatchNorm, SiLU, pointwise conv back to D.

    Channel c is the GLU pair (rows c and C + c of pointwise_conv1), depthwise filter c, BatchNorm
    entry c and input column c of pointwise_conv2. Padded frames are zeroed before the depthwise
    convolution so they do not leak into real frames.

    Shapes: x (B, T, D), frame_mask (B, T) -> (B, T, D).
    """

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
        if self.gate is not None:
            x = x * self.gate()[None, :, None]
        return self.pointwise_conv2(x).transpose(1, 2)  # (B, T, D)


class ConformerBlock(nn.Module):
    """x + FF1/2, x + MHSA, x + Conv, x + FF2/2, LayerNorm. Absent modules (width 0) are skipped.

    Shapes: x (B, T, D), pos_emb (1, 2T-1, D), frame_mask (B, T) -> (B, T, D).
    """

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

    def forward(self, x: Tensor, pos_emb: Tensor, frame_mask: Tensor) -> Tensor:
        residual = x
        if self.feed_forward1 is not None and self.norm_feed_forward1 is not None:
            y = self.feed_forward1(self.norm_feed_forward1(x))
            x = x + 0.5 * self.dropout(self._scaled(y, self.gate_ffn1))
        if self.self_attn is not None and self.norm_self_att is not None:
            y = self.self_attn(self.norm_self_att(x), pos_emb, frame_mask)
            x = x + self.dropout(self._scaled(y, self.gate_attn))
        if self.conv is not None and self.norm_conv is not None:
            y = self.conv(self.norm_conv(x), frame_mask)
            x = x + self.dropout(self._scaled(y, self.gate_conv))
        if self.feed_forward2 is not None and self.norm_feed_forward2 is not None:
            y = self.feed_forward2(self.norm_feed_forward2(x))
            x = x + 0.5 * self.dropout(self._scaled(y, self.gate_ffn2))
        x = self.norm_out(x)
        if self.gate_layer is not None:  # z = 0 makes the block the identity, so it can be removed
            x = residual + self.gate_layer() * (x - residual)
        return x


class ConformerEncoder(nn.Module):
    """Subsampling, positional encoding and Conformer blocks.

    Shapes: feats (B, T, n_mels), lengths (B,) -> (B, T', D), (B,).
    """

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.pre_encode = ConvSubsampling(cfg.n_mels, cfg.subsampling_channels, cfg.d_model)
        self.pos_enc = RelPositionalEncoding(cfg.d_model, cfg.xscaling, cfg.dropout, cfg.dropout_emb)
        self.layers = nn.ModuleList(ConformerBlock(cfg, i) for i in range(cfg.n_layers))

    def forward(
        self, feats: Tensor, lengths: Tensor, layer_outputs: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode; when `layer_outputs` is a list, every block's output is appended to it."""
        x, lengths = self.pre_encode(feats, lengths)
        x, pos_emb = self.pos_enc(x)
        frame_mask = _lengths_to_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, pos_emb, frame_mask)
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
        return torch.log_softmax(self.decoder(x).float(), dim=-1), lengths


def build_model(cfg: ConformerConfig) -> ConformerCTC:
    """The only constructor of a model: from its typed config."""
    return ConformerCTC(cfg)
