"""The autograd function of an NVFP4 linear: Y = X W^T with every GEMM on NVFP4 operands.

forward:  Xq = quantize(X) [rowwise 1x16 + columnwise 1x16 RHT], gathered in NVFP4 along the
          sequence dim first when ``sp_group`` is set (shards quantized with the group amax straight
          into the gather buffer; one collective, started before W's quantization and awaited after);
          Wq = quantize(W) [16x16 tiles, both layouts]; Y = gemm(Xq.rowwise, Wq.rowwise).
backward: dYq = quantize(dY) [rowwise SR + columnwise SR RHT], SR offset read from ``rng_offset``
          (an int64 [1] tensor on the device, so compiled and captured steps follow it);
          dX = gemm(dYq.rowwise, Wq.columnwise), reduce-scattered along the sequence with ``sp_group``;
          dW = gemm(dYq.columnwise, Xq.columnwise) (both RHT'd: T is orthogonal so dW is unchanged).

X may come already quantized and gathered (:class:`GatheredInput`, made by
:func:`fp4dist.parallel.sequence.gather_sequence`, shared by the projections of one input): X is then
the full-shape carrier tensor, Xq is taken from the record, and dX is returned unreduced (the gather's
own backward reduce-scatters the sum over its consumers).

Any shape: X is viewed as [m, K] (m the product of its leading dims). K, and the weight's rows, are
zero-padded to multiples of 16 when they are not; m is padded (per gathered shard) only when the
transposed layout is made (wgrad). Zeros change no amax and add nothing to a product, so the result
is that of the unpadded shapes, and aligned shapes take no extra step (their bits are unchanged).

Only the columnwise layouts are kept for backward, through ``save_for_backward`` (activation
checkpointing frees and recomputes them; a second backward without ``retain_graph`` raises PyTorch's
own error). Layouts no GEMM will read are not produced: without grad, X and W are quantized rowwise
only (so any number of rows works in eval), and dY skips the layout of a gradient nobody asked for.
On a GPU a linear costs 12 launches: forward amax + cast of X and of W (the amax launches include their
output's 8-byte memset), one decode, one GEMM; backward amax + cast of dY and twice (decode, GEMM). The
activation side of each GEMM (X's rowwise layout of a local X, both layouts of dY) is decoded by its cast
kernel in the same pass (``quantize_with_operands``), so each decode launch decodes only the other operand
(W's layouts, X's columnwise one; a gathered X's rowwise layout). In eager mode a call that qualifies makes
those launches from one extension call per pass (:mod:`fp4dist.parallel.eager_linear`). Autocast is off inside:
NVFP4 GEMMs keep their own precision (the semantics of ``torch.amp.custom_fwd`` / ``custom_bwd`` with the input
cast to the autocast dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fp4dist.distributed import all_gather_nvfp4
from fp4dist.gather_buffer import quantize_for_gather
from fp4dist.gemm import nvfp4_gemm, operand_dtype
from fp4dist.parallel import eager_linear
from fp4dist.parallel.comm import group_size, reduce_scatter_dim0
from fp4dist.quantizer import NVFP4Quantizer, RowBlocks, pad_last_dim, pad_matrix
from fp4dist.tensor import NVFP4Tensor


@dataclass(frozen=True)
class NVFP4LinearConfig:
    input_quantizer: NVFP4Quantizer
    weight_quantizer: NVFP4Quantizer
    grad_quantizer: NVFP4Quantizer
    sp_group: dist.ProcessGroup | None = None  # gather X (NVFP4) / reduce-scatter dX over this group


@dataclass
class GatheredInput:
    """X quantized and gathered along its sequence dim once, for every linear that consumes it.

    ``xq``: its NVFP4 form with the sequence first, rows laid out as ``rows`` says (each shard zero-padded
    when it was); ``in_features``: K before padding; ``group``: the gather's group; ``seq_dim``: the
    sequence dim of the carrier tensor that consumers receive (moved to dim 0 before this function)."""

    xq: NVFP4Tensor
    rows: RowBlocks
    in_features: int
    group: object
    seq_dim: int = 0


def quantize_input(quantizer: NVFP4Quantizer, x: torch.Tensor, group, columnwise: bool,
                   operand_dtype: torch.dtype | None = None):
    """(Xq, rows, X_op): X [..., K] quantized (rowwise, and columnwise when asked), gathered in NVFP4 along
    dim 0 over ``group`` when given. Starts the gather and returns a handle in place of Xq then
    (``.wait()`` gives it). X_op: without a group and with ``operand_dtype``, the rowwise layout decoded by the
    cast as the forward GEMM's operand A; else None (a gathered X is decoded at the GEMM)."""
    k = x.shape[-1]
    x2d = pad_last_dim(x.reshape(-1, k))
    rows = RowBlocks.of(group_size(group), x2d.shape[0], pad=columnwise)
    x2d = rows.pad_shard(x2d)
    if group is None and operand_dtype is not None:
        xq, x_op, _ = quantizer.quantize_with_operands(x2d, operand_dtype=operand_dtype, columnwise=columnwise,
                                                       operands=(True, False))
        return xq, rows, x_op
    if group is None:
        return quantizer.quantize(x2d, columnwise=columnwise), rows, None
    local = quantize_for_gather(quantizer, x2d, group, columnwise=columnwise)
    return all_gather_nvfp4(local, group, async_op=True), rows, None


def _quantize_weight(cfg: NVFP4LinearConfig, weight: torch.Tensor, columnwise: bool) -> NVFP4Tensor:
    w = pad_matrix(weight, rows=cfg.weight_quantizer.block_2d or columnwise)
    return cfg.weight_quantizer.quantize(w, columnwise=columnwise)


def _forward(x, weight, cfg, gathered, need_dx, need_dw):
    """(Y [..., N], Xq, Wq, rows): the forward GEMM and its operands (module docstring)."""
    x_op = None  # X's rowwise layout decoded by its cast (a local X only)
    if gathered is None:
        xq, rows, x_op = quantize_input(cfg.input_quantizer, x, cfg.sp_group, columnwise=need_dw,
                                        operand_dtype=operand_dtype(x.dtype, x.device))
        lead = x.shape[:-1] if cfg.sp_group is None else (rows.groups * x.shape[0], *x.shape[1:-1])
    else:
        xq, rows, lead = gathered.xq, gathered.rows, x.shape[:-1]
        if need_dw and not xq.has_columnwise:
            raise ValueError("NVFP4 linear: the gathered input was quantized without its columnwise layout (no "
                             "grad was expected when it was gathered) but this linear's weight needs one")
    wq = _quantize_weight(cfg, weight, columnwise=need_dx)
    if not isinstance(xq, NVFP4Tensor):
        xq = xq.wait()  # the gather ran while W was quantized
    y = nvfp4_gemm(xq, wq, out_dtype=x.dtype, a_operand=x_op)[:, :weight.shape[0]]
    return rows.unpad(y).reshape(*lead, weight.shape[0]), xq, wq, rows


def _columnwise_only(t: NVFP4Tensor, data, scale, amax) -> NVFP4Tensor:
    """``t``'s metadata with the given columnwise components and no rowwise layout (built directly: this runs
    four times per linear, and ``dataclasses.replace`` costs several times a constructor call)."""
    return NVFP4Tensor(None, None, data, scale, None, amax, t.shape, t.dtype, block_2d=t.block_2d, rht=t.rht,
                       backend=t.backend, stochastic_rounding=t.stochastic_rounding, seed=t.seed,
                       row_offset=t.row_offset)


class NVFP4LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, rng_offset: torch.Tensor, cfg: NVFP4LinearConfig,
                gathered: GatheredInput | None):
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        kernels = eager_linear.kernels_for(x, weight, rng_offset, cfg, gathered)
        if kernels is not None:
            return eager_linear.forward(kernels, ctx, x, weight, rng_offset, cfg)
        ctx.eager_kernels = None
        with torch.autocast(x.device.type, enabled=False):
            y, xq, wq, rows = _forward(x, weight, cfg, gathered, need_dx, need_dw)
        ctx.save_for_backward(xq.columnwise_data, xq.columnwise_scale_inv, xq.amax_columnwise,
                              wq.columnwise_data, wq.columnwise_scale_inv, wq.amax_columnwise, rng_offset)
        ctx.cfg, ctx.rows, ctx.reduce_dx = cfg, rows, gathered is None and cfg.sp_group is not None
        ctx.w_shape = tuple(weight.shape)
        ctx.xq_meta, ctx.wq_meta = _columnwise_only(xq, None, None, None), _columnwise_only(wq, None, None, None)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        if ctx.eager_kernels is not None:
            return (*eager_linear.backward(ctx, dy), None, None, None)
        x_data, x_scale, x_amax, w_data, w_scale, w_amax, rng_offset = ctx.saved_tensors
        cfg, rows = ctx.cfg, ctx.rows
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xq = _columnwise_only(ctx.xq_meta, x_data, x_scale, x_amax)
        wq = _columnwise_only(ctx.wq_meta, w_data, w_scale, w_amax)
        (n, k), lead = ctx.w_shape, dy.shape[:-1]
        dx = dw = None
        with torch.autocast(dy.device.type, enabled=False):
            dy2d = rows.pad(pad_last_dim(dy.reshape(-1, n)))  # N and (for wgrad) the rows padded as X's
            # dY's layouts decoded by its cast, for the GEMMs whose operand A they are (one dtype for both)
            dgrad_dtype, wgrad_dtype = operand_dtype(dy.dtype, dy.device), operand_dtype(wq.dtype, dy.device)
            op_dtype = dgrad_dtype if need_dx else wgrad_dtype
            dyq, dy_row_op, dy_col_op = cfg.grad_quantizer.quantize_with_operands(
                dy2d, operand_dtype=op_dtype, rng_offset=rng_offset, rowwise=need_dx, columnwise=need_dw,
                operands=(True, wgrad_dtype == op_dtype))
            if need_dx:
                dx = nvfp4_gemm(dyq, wq, b_columnwise=True, out_dtype=dy.dtype, a_operand=dy_row_op)[:, :k]
                dx = rows.unpad(dx).reshape(*lead, k)
                if ctx.reduce_dx:
                    dx = reduce_scatter_dim0(dx, cfg.sp_group)
            if need_dw:
                dw = nvfp4_gemm(dyq, xq, a_columnwise=True, b_columnwise=True, out_dtype=wq.dtype,
                                a_operand=dy_col_op)[:n, :k]
        return dx, dw, None, None, None


def nvfp4_linear(x: torch.Tensor, weight: torch.Tensor, rng_offset: torch.Tensor, cfg: NVFP4LinearConfig,
                 gathered: GatheredInput | None = None) -> torch.Tensor:
    """Y [..., out] = X [..., in] W [out, in]^T with the NVFP4 recipe of ``cfg`` (no bias).

    With ``cfg.sp_group`` X is this rank's shard along dim 0 and Y covers the gathered sequence
    ([world * s, ..., out]). With ``gathered`` X is the carrier of an input gathered once
    (:class:`GatheredInput`) and Y has X's leading shape. Under autocast X is first cast to the autocast
    dtype, as torch's linear would be; the NVFP4 GEMMs then run with autocast off. ``rng_offset``: int64 [1]
    on X's device, the SR offset of dY's quantization.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        x = x.to(torch.get_autocast_dtype(device_type))
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return NVFP4LinearFunction.apply(x, weight, rng_offset, cfg, gathered)
    with torch.autocast(device_type, enabled=False):  # no backward: the rowwise layouts alone
        return _forward(x, weight, cfg, gathered, need_dx=False, need_dw=False)[0]
