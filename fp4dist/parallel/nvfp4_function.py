"""The autograd function of an NVFP4 linear: Y = X W^T with every GEMM on NVFP4 operands.

forward:  Xq = quantize(X) [rowwise 1x16 + columnwise 1x16 RHT], gathered in NVFP4 along the
          sequence dim first when ``sp_group`` is set (shards quantized with the group amax);
          Wq = quantize(W) [16x16 tiles, both layouts]; Y = gemm(Xq.rowwise, Wq.rowwise).
backward: dYq = quantize(dY) [rowwise SR + columnwise SR RHT];
          dX = gemm(dYq.rowwise, Wq.columnwise), reduce-scattered along the sequence with ``sp_group``;
          dW = gemm(dYq.columnwise, Xq.columnwise) (both RHT'd: T is orthogonal so dW is unchanged).
Only the columnwise layouts are kept for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fp4dist.distributed import all_gather_nvfp4
from fp4dist.gemm import nvfp4_gemm
from fp4dist.parallel.comm import reduce_scatter_dim0
from fp4dist.quantizer import NVFP4Quantizer


@dataclass
class NVFP4LinearConfig:
    input_quantizer: NVFP4Quantizer
    weight_quantizer: NVFP4Quantizer
    grad_quantizer: NVFP4Quantizer
    rng_step: int = 0
    sp_group: dist.ProcessGroup | None = None  # gather X (NVFP4) / reduce-scatter dX over this group


def _keep_columnwise(t):
    return t.with_components(t.shape, rowwise_data=None, rowwise_scale_inv=None, amax_rowwise=None)


class NVFP4LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, cfg: NVFP4LinearConfig):
        if cfg.sp_group is not None:
            rows_per_rank = x.numel() // x.shape[-1]
            local = cfg.input_quantizer.quantize(x, row_offset=dist.get_rank(cfg.sp_group) * rows_per_rank)
            xq = all_gather_nvfp4(local, cfg.sp_group)
        else:
            xq = cfg.input_quantizer.quantize(x)
        wq = cfg.weight_quantizer.quantize(weight)
        y = nvfp4_gemm(xq, wq, out_dtype=x.dtype)
        ctx.cfg, ctx.xq, ctx.wq = cfg, _keep_columnwise(xq), _keep_columnwise(wq)
        ctx.weight_dtype = weight.dtype
        return y.reshape(*xq.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cfg, xq, wq = ctx.cfg, ctx.xq, ctx.wq
        dyq = cfg.grad_quantizer.quantize(dy.contiguous(), rng_offset=cfg.rng_step)
        dx = nvfp4_gemm(dyq, wq, b_columnwise=True, out_dtype=dy.dtype).reshape(xq.shape)
        dw = nvfp4_gemm(dyq, xq, a_columnwise=True, b_columnwise=True, out_dtype=ctx.weight_dtype)
        if cfg.sp_group is not None:
            dx = reduce_scatter_dim0(dx, cfg.sp_group)
        ctx.xq = ctx.wq = None
        return dx, dw, None
