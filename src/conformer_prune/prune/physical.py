"""Physical pruning: slice a gated model's weights by its 0/1 masks into a smaller dense model.

Every Linear, Conv1d/Conv2d, BatchNorm (with running statistics), position projection and per-head
bias loses the rows or columns of removed units; modules whose gate is zero are dropped (their
width becomes 0 in the config, and the block skips them); blocks whose layer gate is zero are
removed. The result is a plain `ConformerCTC` built from its own config, with no gates and no
reference to the teacher, loaded with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, build_model

__all__ = ["physically_prune"]


def _kept(mask: Tensor | None, n: int) -> Tensor:
    if mask is None:
        return torch.arange(n)
    return torch.nonzero(mask.cpu() > 0.5).flatten()


def physically_prune(model: ConformerCTC, masks: dict[str, Tensor]) -> ConformerCTC:
    """A new, smaller model computing what `model` computes with `masks` applied in eval mode.

    Args:
        model: the (gated or plain) model; it is not modified.
        masks: 0/1 masks by gate name (see `ConformerGates`), normalised; absent names keep all.
    """
    for name, mask in masks.items():
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"mask {name} is not binary; freeze deterministic masks before pruning")
    cfg = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if ".gate" not in k}
    new_sd: dict[str, Tensor] = {}

    def copy_prefix(src: str, dst: str) -> None:
        for k, v in sd.items():
            if k.startswith(src):
                new_sd[dst + k[len(src) :]] = v.clone()

    # front end: conv.0 output channels, conv.2 input and output channels, out's column groups
    pre = "encoder.pre_encode."
    c1, c2 = cfg.subsampling_channels
    k1, k2 = _kept(masks.get("frontend.0"), c1), _kept(masks.get("frontend.1"), c2)
    f2 = sd[pre + "out.weight"].shape[1] // c2
    new_sd[pre + "conv.0.weight"] = sd[pre + "conv.0.weight"][k1].clone()
    new_sd[pre + "conv.0.bias"] = sd[pre + "conv.0.bias"][k1].clone()
    new_sd[pre + "conv.2.weight"] = sd[pre + "conv.2.weight"][k2][:, k1].clone()
    new_sd[pre + "conv.2.bias"] = sd[pre + "conv.2.bias"][k2].clone()
    out_w = sd[pre + "out.weight"].view(-1, c2, f2)[:, k2]  # (D, C2', F2)
    new_sd[pre + "out.weight"] = out_w.reshape(out_w.shape[0], -1).clone()
    new_sd[pre + "out.bias"] = sd[pre + "out.bias"].clone()

    heads: list[int] = []
    ffn1: list[int] = []
    ffn2: list[int] = []
    conv_ch: list[int] = []
    new_index = 0
    for i in range(cfg.n_layers):
        if f"layers.{i}" in masks and masks[f"layers.{i}"].sum() == 0:
            continue  # the whole block is the identity
        src, dst = f"encoder.layers.{i}.", f"encoder.layers.{new_index}."
        new_index += 1
        copy_prefix(src + "norm_out.", dst + "norm_out.")

        def present(branch: str, width: int, i: int = i) -> bool:
            module_mask = masks.get(f"layers.{i}.{branch}")
            return width > 0 and (module_mask is None or bool(module_mask.sum() > 0))

        for branch, widths, norm, mod in (
            ("ffn1", ffn1, "norm_feed_forward1.", "feed_forward1."),
            ("ffn2", ffn2, "norm_feed_forward2.", "feed_forward2."),
        ):
            width = getattr(cfg, branch)[i]
            if not present(branch, width):
                widths.append(0)
                continue
            keep = _kept(masks.get(f"layers.{i}.{branch}.units"), width)
            widths.append(len(keep))
            copy_prefix(src + norm, dst + norm)
            new_sd[dst + mod + "linear1.weight"] = sd[src + mod + "linear1.weight"][keep].clone()
            new_sd[dst + mod + "linear1.bias"] = sd[src + mod + "linear1.bias"][keep].clone()
            new_sd[dst + mod + "linear2.weight"] = sd[src + mod + "linear2.weight"][:, keep].clone()
            new_sd[dst + mod + "linear2.bias"] = sd[src + mod + "linear2.bias"].clone()

        h = cfg.heads[i]
        if present("attn", h):
            keep = _kept(masks.get(f"layers.{i}.attn.units"), h)
            heads.append(len(keep))
            copy_prefix(src + "norm_self_att.", dst + "norm_self_att.")
            a_src, a_dst = src + "self_attn.", dst + "self_attn."
            dh = cfg.head_dim
            for proj in ("linear_q", "linear_k", "linear_v", "linear_pos"):
                w = sd[a_src + proj + ".weight"].view(h, dh, -1)[keep]  # (H', dh, D)
                new_sd[a_dst + proj + ".weight"] = w.reshape(len(keep) * dh, -1).clone()
                if a_src + proj + ".bias" in sd:
                    new_sd[a_dst + proj + ".bias"] = (
                        sd[a_src + proj + ".bias"].view(h, dh)[keep].flatten().clone()
                    )
            w = sd[a_src + "linear_out.weight"].view(-1, h, dh)[:, keep]  # (D, H', dh)
            new_sd[a_dst + "linear_out.weight"] = w.reshape(w.shape[0], -1).clone()
            new_sd[a_dst + "linear_out.bias"] = sd[a_src + "linear_out.bias"].clone()
            for bias in ("pos_bias_u", "pos_bias_v"):
                new_sd[a_dst + bias] = sd[a_src + bias][keep].clone()  # (H', dh)
        else:
            heads.append(0)

        c = cfg.conv_channels[i]
        if present("conv", c):
            keep = _kept(masks.get(f"layers.{i}.conv.units"), c)
            conv_ch.append(len(keep))
            copy_prefix(src + "norm_conv.", dst + "norm_conv.")
            c_src, c_dst = src + "conv.", dst + "conv."
            glu_rows = torch.cat([keep, keep + c])  # a channel is the GLU pair (c, C + c)
            new_sd[c_dst + "pointwise_conv1.weight"] = sd[c_src + "pointwise_conv1.weight"][glu_rows].clone()
            new_sd[c_dst + "pointwise_conv1.bias"] = sd[c_src + "pointwise_conv1.bias"][glu_rows].clone()
            for key in (
                "depthwise_conv.weight",
                "depthwise_conv.bias",
                "batch_norm.weight",
                "batch_norm.bias",
                "batch_norm.running_mean",
                "batch_norm.running_var",
            ):
                new_sd[c_dst + key] = sd[c_src + key][keep].clone()
            new_sd[c_dst + "batch_norm.num_batches_tracked"] = sd[
                c_src + "batch_norm.num_batches_tracked"
            ].clone()
            new_sd[c_dst + "pointwise_conv2.weight"] = sd[c_src + "pointwise_conv2.weight"][:, keep].clone()
            new_sd[c_dst + "pointwise_conv2.bias"] = sd[c_src + "pointwise_conv2.bias"].clone()
        else:
            conv_ch.append(0)

    copy_prefix("decoder.", "decoder.")
    new_cfg = ConformerConfig(
        **{
            **{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
            "n_layers": new_index,
            "heads": heads,
            "ffn1": ffn1,
            "ffn2": ffn2,
            "conv_channels": conv_ch,
            "subsampling_channels": [len(k1), len(k2)],
        }
    )
    pruned = build_model(new_cfg)
    pruned.load_state_dict(new_sd, strict=True)
    return pruned.eval()
