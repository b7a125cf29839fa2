"""Autograd-aware tensor-parallel collectives (Megatron-core's mappings), in the input dtype.

Sequence parallelism shards activations along dim 0 (the sequence dim, layout [s, b, h]); tensor
parallelism shards the hidden dim (the last dim).

| function                   | forward                       | backward                      |
| copy_to_tp                 | identity                      | all-reduce                    |
| reduce_from_tp             | all-reduce                    | identity                      |
| gather_last_dim_from_tp    | all-gather along the last dim | keep this rank's slice        |
| gather_seq_from_sp         | all-gather along dim 0        | reduce-scatter along dim 0    |
| reduce_scatter_seq_to_sp   | reduce-scatter along dim 0    | all-gather along dim 0        |
| scatter_seq_to_sp          | keep this rank's dim-0 slice  | all-gather along dim 0        |
| gather_seq_replicated      | all-gather along dim 0        | keep this rank's dim-0 slice  |

The last two enter and leave the sequence-parallel region around replicated computations
(embeddings, a replicated LM head) whose gradients are identical on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size(group) -> int:
    """The group's size; 1 when torch.distributed is not initialized (a single process, no TP)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def all_gather_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, x.contiguous(), group=group)
    return out


def reduce_scatter_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    if x.shape[0] % world:
        raise ValueError(f"reduce-scatter along dim 0 needs its size ({x.shape[0]}) divisible by the group size {world}")
    out = torch.empty((x.shape[0] // world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_single(out, x.contiguous(), group=group)
    return out


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) > 1:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=group)
    return x


def all_gather_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    gathered = all_gather_dim0(x.movedim(-1, 0), group)  # [world * h, ...]
    return gathered.movedim(0, -1)


def local_slice_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    rank = dist.get_rank(group)
    return x.chunk(world, dim=-1)[rank].contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, g):
        return local_slice_last_dim(g, ctx.group), None


class _GatherSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter_dim0(g, ctx.group), None


class _ReduceScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather_dim0(g, ctx.group), None


class _ScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return local_slice_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather_dim0(g, ctx.group), None


class _GatherSeqReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return local_slice_dim0(g, ctx.group), None


def local_slice_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    if x.shape[0] % world:
        raise ValueError(f"sequence length {x.shape[0]} (dim 0) is not divisible by the group size {world}")
    return x.chunk(world, dim=0)[dist.get_rank(group)].contiguous()


def scatter_seq_to_sp(x, group):
    return _ScatterSeq.apply(x, group)


def gather_seq_replicated(x, group):
    return _GatherSeqReplicated.apply(x, group)


def copy_to_tp(x, group):
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x, group):
    return _ReduceFromTP.apply(x, group)


def gather_last_dim_from_tp(x, group):
    return _GatherLastDim.apply(x, group)


def gather_seq_from_sp(x, group):
    return _GatherSeq.apply(x, group)


def reduce_scatter_seq_to_sp(x, group):
    return _ReduceScatterSeq.apply(x, group)
