"""Gradient bookkeeping that tensor and sequence parallelism need before an optimizer step."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from fp4dist.parallel import comm


def allreduce_sequence_parallel_grads(module: nn.Module, tp_group=None) -> None:
    """Sum over the TP group the grads of replicated parameters that only saw their rank's sequence
    shard (marked ``param.sequence_parallel = True``: RowParallelLinear's bias and the model's norms
    under sequence parallelism), as Megatron-core does before the optimizer step."""
    grads = [p.grad for p in module.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if grads and comm.group_size(tp_group) > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=tp_group)
        for g, new in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(new.view_as(g))


def clip_grad_norm_(parameters, max_norm: float, tp_group=None) -> float:
    """Clip the global grad norm of a tensor-parallel model; returns the norm before clipping.

    ||g||^2 = sum over ranks of the TP-sharded params' squares (``param.tensor_parallel``) plus the
    replicated params' squares counted once.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    device = params[0].grad.device
    sharded = sum((p.grad.float().pow(2).sum() for p in params if getattr(p, "tensor_parallel", False)),
                  torch.zeros((), device=device))
    replicated = sum((p.grad.float().pow(2).sum() for p in params if not getattr(p, "tensor_parallel", False)),
                     torch.zeros((), device=device))
    if comm.group_size(tp_group) > 1:
        dist.all_reduce(sharded, group=tp_group)
    norm = math.sqrt((sharded + replicated).item())
    if math.isfinite(norm) and norm > max_norm:
        for p in params:
            p.grad.mul_(max_norm / (norm + 1e-6))
    return norm
