"""The eager NVFP4 linear in one extension call per pass: what :class:`NVFP4LinearFunction` runs outside
torch.compile when a call qualifies, for the host time of an eager step.

The Python path of a linear (quantizer -> backend launchers, through several layers of checks) costs about 1 ms
of host time per linear, so an eager NVFP4 step would wait on the host. Here the extension's ``linear_forward`` /
``linear_backward`` make the same launches with the same arguments as :mod:`fp4dist.parallel.nvfp4_function`,
hence the same bits, allocating with ``at::empty``:

    forward:  amax(W), amax(X) (one memset), cast(X -> operand A for (X, W) and alpha, columnwise RHT codes if wgrad),
              cast(W), decode(W), GEMM
    backward: amax(dY), cast(dY -> both operands for (dY, W) and (dY^T, X^T) and their alphas, SR keys on the
              device), GEMM (dX, with W's forward operand), decode(X columnwise), GEMM (dW)

A call qualifies when the linear is local (no sequence parallelism, no pre-gathered input: TP=1, or a TP shard
whose communication happens outside the linear), on the CUDA backend, with bf16 / fp16 X, shapes that need no
padding (m, K and N multiples of 16), contiguous 16-byte aligned X and W, and the recipe's layouts: X and W round
to nearest, X in 1x16 blocks, W without the RHT, dY in 1x16 blocks. Anything else takes the Python path.
"""

from __future__ import annotations

import torch

from fp4dist import backends, rng
from fp4dist.backends import reference

ENABLED = True  #: tests switch it off to compare against the Python path
_DW_DTYPE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}


def _aligned_2d(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def kernels_for(x: torch.Tensor, weight: torch.Tensor, rng_offset, cfg, gathered):
    """The CUDA extension when this linear call qualifies for the one-call path (module docstring), else None."""
    if not ENABLED or gathered is not None or cfg.sp_group is not None or not x.is_cuda:
        return None
    if torch.compiler.is_compiling():
        return None
    xq, wq, gq = cfg.input_quantizer, cfg.weight_quantizer, cfg.grad_quantizer
    if (xq.block_2d or xq.stochastic_rounding or not xq.rowwise or xq.amax_group is not None
            or wq.rht or wq.stochastic_rounding or not wq.rowwise or wq.amax_group is not None
            or gq.block_2d or gq.amax_group is not None):
        return None
    if x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype not in _DW_DTYPE:
        return None
    if weight.dim() != 2 or weight.device != x.device:
        return None
    k, n = x.shape[-1], weight.shape[0]
    m = x.numel() // k if k else 0
    if m == 0 or k % 16 or n % 16 or m % 16 or weight.shape[1] != k or max(m, n, k) > 0x7FFFFDFF:
        return None
    if not (_aligned_2d(x) and _aligned_2d(weight)):
        return None
    if not (isinstance(rng_offset, torch.Tensor) and rng_offset.device == x.device and rng_offset.dtype == torch.int64
            and rng_offset.numel() == 1):
        return None
    if any(backends.select(q.backend, x.device) is reference for q in (xq, wq, gq)):
        return None
    from fp4dist.backends import cuda

    return cuda._kernels()


def forward(kernels, ctx, x: torch.Tensor, weight: torch.Tensor, rng_offset: torch.Tensor, cfg) -> torch.Tensor:
    """Y [..., N] = X W^T; saves X's columnwise layout, W's operand for the dgrad (and the SR offset) for
    :func:`backward`."""
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    y, *saved = kernels.linear_forward(x.reshape(-1, x.shape[-1]), weight, need_dx, need_dw,
                                       cfg.input_quantizer.rht, cfg.weight_quantizer.block_2d)
    ctx.save_for_backward(*saved, rng_offset)
    ctx.eager_kernels, ctx.cfg, ctx.w_dtype = kernels, cfg, weight.dtype
    ctx.w_shared = cfg.weight_quantizer.block_2d  # W's decoded operand saved (linear_forward)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def backward(ctx, dy: torch.Tensor):
    """(dX, dW) from dY [..., N] and what :func:`forward` saved."""
    from fp4dist.backends.cuda import _int64_bits

    *saved, rng_offset = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gq = ctx.cfg.grad_quantizer
    dy2d = dy.reshape(-1, dy.shape[-1])
    if not _aligned_2d(dy2d):
        dy2d = dy2d.clone(memory_format=torch.contiguous_format)
    stream_row, stream_col = rng.layout_streams(gq.block_2d)
    dx, dw = ctx.eager_kernels.linear_backward(dy2d, *saved, rng_offset, need_dx, need_dw, ctx.w_shared, gq.rht,
                                               gq.stochastic_rounding, _int64_bits(gq.seed), stream_row, stream_col,
                                               _DW_DTYPE[ctx.w_dtype])
    return (dx.reshape(*dy.shape[:-1], dx.shape[-1]) if need_dx else None), (dw if need_dw else None)
