"""Gradient bookkeeping that tensor and sequence parallelism need before an optimizer step."""

from __future__ import annotations

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


def clip_grad_norm_(parameters, max_norm: float, tp_group=None) -> torch.Tensor:
    """Clip the global grad norm of a tensor-parallel model; returns the norm before clipping (fp32 0-dim
    tensor on the grads' device, no host sync).

    ||g||^2 = sum over ranks of the TP-sharded params' squares (``param.tensor_parallel``) plus the
    replicated params' squares counted once. Grads are scaled by max_norm / (||g|| + 1e-6) when that is
    below 1 and the norm is finite; a non-finite norm leaves them as they are.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    grads = [p.grad for p in params]
    device = grads[0].device

    def sum_squares(gs):
        if not gs:
            return torch.zeros((), device=device)
        return torch.stack(torch._foreach_norm([g.float() for g in gs])).square().sum()

    sharded = sum_squares([g for p, g in zip(params, grads) if getattr(p, "tensor_parallel", False)])
    replicated = sum_squares([g for p, g in zip(params, grads) if not getattr(p, "tensor_parallel", False)])
    if comm.group_size(tp_group) > 1:
        dist.all_reduce(sharded, group=tp_group)
    norm = (sharded + replicated).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    coef = torch.where(torch.isfinite(norm), coef, torch.ones_like(coef))
    torch._foreach_mul_(grads, coef)
    return norm
