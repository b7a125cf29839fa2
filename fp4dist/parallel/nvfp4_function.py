"""The autograd function of an NVFP4 linear: Y = X W^T with every GEMM on NVFP4 operands.

forward:  Xq = quantize(X) [rowwise 1x16 + columnwise 1x16 RHT], gathered in NVFP4 along the
          sequence dim first when ``sp_group`` is set (shards quantized with the group amax straight
          into the gather buffer; one collective, started before W's quantization and awaited after);
          Wq = quantize(W) [16x16 tiles, both layouts]; Y = gemm(Xq.rowwise, Wq.rowwise).
backward: dYq = quantize(dY) [rowwise SR + columnwise SR RHT], SR offset read from ``rng_offset``
          (an int64 [1] tensor on the device, so compiled and captured steps follow it);
          dX = gemm(dYq.rowwise, Wq.columnwise), reduce-scattered along the sequence with ``sp_group``;
          dW = gemm(dYq.columnwise, Xq.columnwise) (both RHT'd: T is orthogonal so dW is unchanged).

Only the columnwise layouts are kept for backward, through ``save_for_backward`` (activation
checkpointing frees and recomputes them; a second backward without ``retain_graph`` raises PyTorch's
own error). Layouts no GEMM will read are not produced: without grad, X and W are quantized rowwise
only (so any number of rows works in eval), and dY skips the layout of a gradient nobody asked for.
On a GPU a linear costs 15 launches: forward amax + cast of X and of W (the amax launches include their
output's 8-byte memset), one decode of both operands, one GEMM; backward amax + cast of dY and twice
(decode pair, GEMM). Autocast is off inside: NVFP4 GEMMs keep their own precision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from fp4dist.distributed import all_gather_nvfp4
from fp4dist.gather_buffer import quantize_for_gather
from fp4dist.gemm import nvfp4_gemm
from fp4dist.parallel.comm import reduce_scatter_dim0
from fp4dist.quantizer import NVFP4Quantizer
from fp4dist.tensor import NVFP4Tensor


@dataclass(frozen=True)
class NVFP4LinearConfig:
    input_quantizer: NVFP4Quantizer
    weight_quantizer: NVFP4Quantizer
    grad_quantizer: NVFP4Quantizer
    sp_group: dist.ProcessGroup | None = None  # gather X (NVFP4) / reduce-scatter dX over this group


def _quantize_operands(x: torch.Tensor, weight: torch.Tensor, cfg: NVFP4LinearConfig, need_dx: bool,
                       need_dw: bool) -> tuple[NVFP4Tensor, NVFP4Tensor]:
    """(Xq, Wq). With sequence parallelism X's shard is quantized straight into its gather buffer (group amax,
    rows at their global offsets), the gather starts asynchronously, and W is quantized while it runs."""
    if cfg.sp_group is None:
        return (cfg.input_quantizer.quantize(x, columnwise=need_dw),
                cfg.weight_quantizer.quantize(weight, columnwise=need_dx))
    local = quantize_for_gather(cfg.input_quantizer, x, cfg.sp_group, columnwise=need_dw)
    gather = all_gather_nvfp4(local, cfg.sp_group, async_op=True)
    wq = cfg.weight_quantizer.quantize(weight, columnwise=need_dx)
    return gather.wait(), wq


def _columnwise_only(t: NVFP4Tensor, data, scale, amax) -> NVFP4Tensor:
    return replace(t, rowwise_data=None, rowwise_scale_inv=None, amax_rowwise=None, columnwise_data=data,
                   columnwise_scale_inv=scale, amax_columnwise=amax, rng_offset=0, gather_buffer=None)


class NVFP4LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, rng_offset: torch.Tensor, cfg: NVFP4LinearConfig):
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(x.device.type, enabled=False):
            xq, wq = _quantize_operands(x, weight, cfg, need_dx, need_dw)
            y = nvfp4_gemm(xq, wq, out_dtype=x.dtype)
        ctx.save_for_backward(xq.columnwise_data, xq.columnwise_scale_inv, xq.amax_columnwise,
                              wq.columnwise_data, wq.columnwise_scale_inv, wq.amax_columnwise, rng_offset)
        ctx.cfg, ctx.xq_meta, ctx.wq_meta = cfg, _columnwise_only(xq, None, None, None), \
            _columnwise_only(wq, None, None, None)
        return y.reshape(*xq.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x_data, x_scale, x_amax, w_data, w_scale, w_amax, rng_offset = ctx.saved_tensors
        cfg = ctx.cfg
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xq = _columnwise_only(ctx.xq_meta, x_data, x_scale, x_amax)
        wq = _columnwise_only(ctx.wq_meta, w_data, w_scale, w_amax)
        dx = dw = None
        with torch.autocast(dy.device.type, enabled=False):
            dy2d = dy.reshape(-1, dy.shape[-1])
            dyq = cfg.grad_quantizer.quantize(dy2d, rng_offset=rng_offset, rowwise=need_dx, columnwise=need_dw)
            if need_dx:
                dx = nvfp4_gemm(dyq, wq, b_columnwise=True, out_dtype=dy.dtype).reshape(xq.shape)
                if cfg.sp_group is not None:
                    dx = reduce_scatter_dim0(dx, cfg.sp_group)
            if need_dw:
                dw = nvfp4_gemm(dyq, xq, a_columnwise=True, b_columnwise=True, out_dtype=wq.dtype)
        return dx, dw, None, None


def nvfp4_linear(x: torch.Tensor, weight: torch.Tensor, rng_offset: torch.Tensor,
                 cfg: NVFP4LinearConfig) -> torch.Tensor:
    """Y [..., out] = X [..., in] W [out, in]^T with the NVFP4 recipe of ``cfg`` (no bias).

    Under autocast X is first cast to the autocast dtype, as torch's linear would be; the NVFP4 GEMMs then
    run with autocast off. ``rng_offset``: int64 [1] on X's device, the SR offset of dY's quantization.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        x = x.to(torch.get_autocast_dtype(device_type))
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return NVFP4LinearFunction.apply(x, weight, rng_offset, cfg)
    with torch.autocast(device_type, enabled=False):  # no backward: the rowwise layouts alone
        xq, wq = _quantize_operands(x, weight, cfg, need_dx=False, need_dw=False)
        y = nvfp4_gemm(xq, wq, out_dtype=x.dtype)
    return y.reshape(*xq.shape[:-1], weight.shape[0])
