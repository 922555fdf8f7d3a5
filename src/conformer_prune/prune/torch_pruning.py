"""The `torch-pruning` baseline: Torch-Pruning's MetaPruner (Fang et al., "DepGraph", CVPR 2023),
run the way its users run it, then fine-tuned like the other one-shot baselines.

Torch-Pruning traces the model into a dependency graph, groups every coupled set of channels,
scores each group by its L2 norm (`GroupMagnitudeImportance`, the library's default criterion)
and removes the lowest-scoring channels and whole attention heads by one global ranking over all
layers (`global_pruning=True`, `prune_num_heads=True`). The residual stream (d_model) is kept, as
in every other method here: the layers that write it (feed-forward `linear2`, convolution
`pointwise_conv2`, the subsampling projection) and the decoder are `ignored_layers`. One pruning
ratio, shared by channels and heads, is found by bisection so that the pruned model meets the
parameter (or MAC) target.

What a user must add around the library for this model, and does here:
- the per-head position biases `pos_bias_u/v` (heads x head_dim) are hidden from the tracer (as
  plain tensors) and sliced to the kept heads afterwards: as unwrapped parameters the tracer
  cannot map head-major channel indices onto their two dimensions and refuses the attention
  group;
- the modules' `heads` attribute is updated after pruning;
- the channel-major flatten between the last subsampling convolution and `pre_encode.out` is
  mapped with the library's own function (`update_reshape_index_mapping`, channel c to its `freq`
  columns), called on that one node: Torch-Pruning 1.6.1 finds a flatten's sizes in
  `_saved_self_sizes`, which PyTorch 2 names `_saved_self_sym_sizes`, and its fallback is
  disabled in any model whose Linear layers read 3-D inputs, so the library on its own removed 3
  columns where 3 x 20 belong (until 2026-12-03 that convolution was an ignored layer instead);
- the front end calls its convolutions as modules while the library traces
  (`ConvSubsampling.module_calls`): its CPU fast path calls them as functions, which the tracer's
  module hooks never see (it then leaves every front-end channel in place);
- the GLU of the convolution module is written as `chunk` + `sigmoid` in the model, so the
  tracer pairs channel c with C + c (with `F.glu` it prunes only the first half).

Usage:
    student = torch_pruning_prune(teacher, target=0.5 * teacher_params, metric="params")
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from conformer_prune.model.conformer import ConformerCTC, RelPositionMultiHeadAttention, build_model
from conformer_prune.prune.budget import UnreachableTargetError
from conformer_prune.prune.cost import Metric, as_float, conformer_cost
from conformer_prune.prune.latency import LatencyModel

__all__ = ["torch_pruning_prune"]


def _attentions(model: ConformerCTC) -> dict[str, RelPositionMultiHeadAttention]:
    return {n: m for n, m in model.named_modules() if isinstance(m, RelPositionMultiHeadAttention)}


def _kept_heads(pruned_q: Tensor, teacher_q: Tensor, head_dim: int) -> Tensor:
    """Indices of the teacher's heads whose linear_q rows the pruned layer kept, in order."""
    teacher_heads = teacher_q.view(-1, head_dim, teacher_q.shape[1])
    kept = []
    for rows in pruned_q.view(-1, head_dim, pruned_q.shape[1]):
        matches = [i for i, w in enumerate(teacher_heads) if torch.equal(w, rows)]
        if len(matches) != 1:
            raise RuntimeError("Torch-Pruning changed a head's weights instead of removing whole heads")
        kept.append(matches[0])
    return torch.tensor(kept)


def _map_flatten(graph: Any, linear: nn.Linear) -> None:
    """Maps channel c of the (B, T, C, F) tensor flattened into `linear` onto its F input columns
    (see the module docstring), with the library's own mapping function."""
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping

    todo, seen = [graph.module2node[linear]], set()
    while todo:
        for node in todo.pop().inputs:
            size = getattr(node.grad_fn, "_saved_self_sym_sizes", None)  # what the flatten read
            flattens = size is not None and len(size) == 4 and size[2] * size[3] == linear.in_features
            if node.type == ops.OPTYPE.RESHAPE and flattens:
                graph._2d_4d = True  # the fallback's switch, for this node alone
                try:
                    index_mapping.update_reshape_index_mapping(graph, node)
                finally:
                    graph._2d_4d = False
                return
            if node not in seen:
                seen.add(node)
                todo.append(node)
    raise RuntimeError(f"Torch-Pruning's graph has no (B, T, C, F) flatten in front of {linear}")


def _prune_once(teacher: ConformerCTC, ratio: float, frames: int) -> ConformerCTC:
    """Torch-Pruning at one global ratio; returns a plain model built from its own config.

    `teacher` (a CPU fp32 copy in eval mode) is not modified."""
    import torch_pruning as tp

    model = copy.deepcopy(teacher)
    model.encoder.pre_encode.module_calls = True  # the tracer hooks modules (the copy is discarded)
    attns = _attentions(model)
    for attn in attns.values():  # hidden from the tracer (see the module docstring)
        u, v = attn.pos_bias_u.detach().clone(), attn.pos_bias_v.detach().clone()
        del attn.pos_bias_u, attn.pos_bias_v
        attn.pos_bias_u, attn.pos_bias_v = u, v  # type: ignore[assignment]

    # d_model is kept: the decoder and every writer of the residual stream are left alone (the
    # attention's linear_out too, whose input channels follow the heads)
    ignored: list[nn.Module] = [model.decoder]
    ignored += [layer for _, module in model.named_prunable() for layer in module.residual_writers()]
    num_heads: dict[nn.Module, int] = {
        lin: attn.heads
        for attn in attns.values()
        for lin in (attn.linear_q, attn.linear_k, attn.linear_v, attn.linear_pos)
    }
    example = (torch.randn(1, frames, model.config.n_mels), torch.tensor([frames]))
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
        _map_flatten(pruner.DG, model.encoder.pre_encode.out)
        pruner.step()

    teacher_attns = _attentions(teacher)
    for name, attn in attns.items():
        kept = _kept_heads(attn.linear_q.weight, teacher_attns[name].linear_q.weight, attn.head_dim)
        u, v = attn.pos_bias_u, attn.pos_bias_v
        del attn.pos_bias_u, attn.pos_bias_v
        attn.pos_bias_u = nn.Parameter(u[kept].clone())
        attn.pos_bias_v = nn.Parameter(v[kept].clone())
        attn.heads = len(kept)
    out = build_model(model.current_config())  # the widths the library left
    out.load_state_dict(model.state_dict(), strict=True)  # fails loudly if d_model was touched
    return out


def _cost(model: ConformerCTC, metric: Metric, latency: LatencyModel | None = None) -> float:
    return as_float(conformer_cost(model.config, latency=latency).value(metric))


def torch_pruning_prune(
    teacher: ConformerCTC,
    target: float,
    metric: Metric,
    tolerance: float = 0.005,
    frames: int = 200,
    latency: LatencyModel | None = None,
) -> ConformerCTC:
    """Torch-Pruning at the global ratio whose pruned model is largest within `target`.

    Args:
        teacher: the model to prune (not modified).
        target: absolute parameter count or MACs per second of audio to stay at or under.
        metric: what `target` counts.
        tolerance: stop the bisection once the cost is within this fraction under the target.
        frames: length of the example input the dependency graph is traced with.
        latency: the latency model of a "latency" metric.

    Raises:
        UnreachableTargetError: no ratio the bisection tries reaches the target. The size falls with the ratio
            only up to a point: at high ratios Torch-Pruning leaves whole every group its global
            ranking would empty (measured on the reference teacher of 6.67 M: 1.76 M parameters at
            0.8, 1.68 M at 0.85, 1.70 M at 0.875, 1.93 M at 0.9, 2.10 M at 0.95), so small targets
            are out of reach.
    """
    teacher = copy.deepcopy(teacher).cpu().float().eval()
    lo, hi = 0.0, 1.0
    best: ConformerCTC | None = None
    smallest = (float("inf"), 0.0)  # (cost, ratio): for the error message
    for _ in range(12):  # whole heads and channels: 2^-12 resolves the finest step
        mid = (lo + hi) / 2
        pruned = _prune_once(teacher, mid, frames)
        cost = _cost(pruned, metric, latency)
        smallest = min(smallest, (cost, mid))
        if cost <= target:
            hi, best = mid, pruned
            if cost >= (1 - tolerance) * target:
                break
        else:
            lo = mid
    if best is None:
        raise UnreachableTargetError(
            f"Torch-Pruning found no global ratio (12 tried by bisection) that brings the model to "
            f"{target:,.0f} {metric}: the smallest it gave was {smallest[0]:,.0f} (ratio "
            f"{smallest[1]:.3f}) with d_model and the second subsampling convolution kept; at high "
            "ratios it leaves whole every group its global ranking would empty, so the model grows "
            "again; pick a larger target"
        )
    return best
