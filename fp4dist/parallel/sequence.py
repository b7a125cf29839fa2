"""One NVFP4 sequence gather shared by every projection of an input (q, k and v of one attention).

``gather_sequence(x, seq_dim, quantizer, group)``: this rank's shard X_r (sequence dim ``seq_dim``,
[b, s/tp, h] batch-first or [s/tp, b, h]) is quantized with the group amax straight into its gather
buffer (rowwise, and columnwise for wgrad when a backward will run) and gathered in NVFP4 along the
sequence, in one collective. It returns the *carrier*: the gathered tensor [b, s, h] (or [s, b, h]),
contiguous, holding the decoded rowwise values (what the forward GEMM sees), with the NVFP4 record
(:class:`~fp4dist.parallel.nvfp4_function.GatheredInput`) attached as ``carrier.nvfp4_gathered``.

An NVFP4 linear handed the carrier (``NVFP4ColwiseParallel``) multiplies the recorded NVFP4 operand and
returns its dX unreduced; autograd sums the dX of all consumers into the carrier's gradient, and the
gather's backward reduce-scatters that sum along the sequence back to the shard layout: one gather and
one reduce-scatter per shared input. Any other consumer computes on the carrier's values.
"""

from __future__ import annotations

import torch

from fp4dist.parallel.comm import reduce_scatter_dim0
from fp4dist.parallel.nvfp4_function import GatheredInput, quantize_input
from fp4dist.quantizer import NVFP4Quantizer

GATHERED_ATTR = "nvfp4_gathered"


def gathered_record(x) -> GatheredInput | None:
    """The NVFP4 record of a carrier (a tensor or DTensor made by :func:`gather_sequence`), else None."""
    return getattr(x, GATHERED_ATTR, None)


class _GatherSequence(torch.autograd.Function):
    """X_r [s/tp, ..., h] (sequence first) -> the gathered decoded X [s, ..., h]; dX: reduce-scatter along dim 0.
    The NVFP4 record is appended to ``out`` (a list), so that it is had with or without grad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantizer: NVFP4Quantizer, group, columnwise: bool, out: list):
        ctx.group = group
        handle, rows = quantize_input(quantizer, x, group, columnwise)
        xq = handle.wait()
        k = x.shape[-1]
        values = rows.unpad(xq.decode_layout(False, x.dtype).reshape(rows.groups * rows.padded, -1))[:, :k]
        out.append((xq, rows, k))
        return values.reshape(rows.groups * x.shape[0], *x.shape[1:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return reduce_scatter_dim0(grad, ctx.group), None, None, None, None


def gather_sequence(x: torch.Tensor, seq_dim: int, quantizer: NVFP4Quantizer, group, columnwise: bool) -> torch.Tensor:
    """The carrier of this rank's shard ``x`` gathered along ``seq_dim`` over ``group`` (module docstring).

    ``quantizer``: the recipe's input quantizer with ``amax_group=group``; ``columnwise``: also make the
    transposed layout (a backward will need it)."""
    seq_dim %= x.dim()
    if seq_dim == x.dim() - 1:
        raise ValueError(f"gather_sequence: the sequence dim {seq_dim} of a {x.dim()}-d input is its hidden dim")
    made = []
    seq_first = _GatherSequence.apply(x.movedim(seq_dim, 0), quantizer, group, columnwise, made)
    carrier = seq_first if seq_dim == 0 else seq_first.movedim(0, seq_dim).contiguous()
    xq, rows, k = made[0]
    setattr(carrier, GATHERED_ATTR, GatheredInput(xq, rows, k, group, seq_dim))
    return carrier
