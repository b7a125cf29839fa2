"""Autograd-aware tensor-parallel collectives (Megatron-core's mappings), in the input dtype.

Sequence parallelism shards activations along dim 0 (the sequence dim, layout [s, b, h]); tensor
parallelism shards the hidden dim (the last dim).

| function                   | forward                       | backward                      |
| copy_to_tp                 | identity                      | all-reduce                    |
| reduce_from_tp             | all-reduce                    | identity                      |
| gather_last_dim_from_tp    | all-gather along the last dim | keep this rank's slice        |
| scatter_last_dim_to_tp     | keep this rank's slice        | all-gather along the last dim |
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

from fp4dist.collectives import all_gather_single, reduce_scatter_single
from fp4dist.parallel import agree


def group_size(group) -> int:
    """The group's size; 1 for ``None`` (no tensor parallelism) or when torch.distributed is not initialized."""
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


_AGREEMENTS: dict[tuple, agree.AgreementCache] = {}
_SHAPE_FIELDS = ("tensor shape", "dtype")


def agree_on_shape(what: str, x: torch.Tensor, group, check=lambda: None) -> None:
    """Every rank passes the same shape and dtype (and ``check`` passes on every rank), agreed once per signature
    (agree.py): a shard of another length would make the collective abort the process. Under torch.compile only
    ``check`` runs (at trace time)."""
    if torch.compiler.is_compiling():
        check()
        return
    key = (what, group)  # a group object per group, as the gather's checks key them
    cache = _AGREEMENTS.setdefault(key, agree.AgreementCache())
    agree.agree(cache, what, _SHAPE_FIELDS, agree.tensor_signature(x), check, group)


def all_gather_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    agree_on_shape("all-gather along dim 0 (every rank's shard must have the same shape)", x, group)
    out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    all_gather_single(out, x.contiguous(), group=group)
    return out


def reduce_scatter_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    def check():
        if x.shape[0] % world:
            raise ValueError(f"reduce-scatter along dim 0 needs its size ({x.shape[0]}) divisible by the group size "
                             f"{world}")

    agree_on_shape("reduce-scatter along dim 0 (every rank's input must have the same shape)", x, group, check)
    out = torch.empty((x.shape[0] // world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    reduce_scatter_single(out, x.contiguous(), group=group)
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


def local_slice_dim0(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    if x.shape[0] % world:
        raise ValueError(f"sequence length {x.shape[0]} (dim 0) is not divisible by the group size {world}")
    return x.chunk(world, dim=0)[dist.get_rank(group)].contiguous()


def _identity(x: torch.Tensor, group) -> torch.Tensor:
    return x


class _Mapping(torch.autograd.Function):
    """y = forward_fn(x, group); dx = backward_fn(dy, group)."""

    @staticmethod
    def forward(ctx, x, group, forward_fn, backward_fn):
        ctx.group, ctx.backward_fn = group, backward_fn
        return forward_fn(x, group)

    @staticmethod
    def backward(ctx, g):
        return ctx.backward_fn(g, ctx.group), None, None, None


def copy_to_tp(x, group):
    return _Mapping.apply(x, group, _identity, all_reduce)


def reduce_from_tp(x, group):
    return _Mapping.apply(x, group, all_reduce, _identity)


def gather_last_dim_from_tp(x, group):
    return _Mapping.apply(x, group, all_gather_last_dim, local_slice_last_dim)


def scatter_last_dim_to_tp(x, group):
    return _Mapping.apply(x, group, local_slice_last_dim, all_gather_last_dim)


def gather_seq_from_sp(x, group):
    return _Mapping.apply(x, group, all_gather_dim0, reduce_scatter_dim0)


def reduce_scatter_seq_to_sp(x, group):
    return _Mapping.apply(x, group, reduce_scatter_dim0, all_gather_dim0)


def scatter_seq_to_sp(x, group):
    return _Mapping.apply(x, group, local_slice_dim0, all_gather_dim0)


def gather_seq_replicated(x, group):
    return _Mapping.apply(x, group, all_gather_dim0, local_slice_dim0)
