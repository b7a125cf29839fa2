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

Kept for backward (``save_for_backward``; activation checkpointing frees and recomputes them; a second backward
without ``retain_graph`` raises PyTorch's own error): X's columnwise layout, and W's decoded operand (16x16 tiles
with round to nearest and no RHT: the columnwise layout is the rowwise one transposed, so the dgrad multiplies by
the forward's [N, K] operand, cuBLAS reading it untransposed) or else W's columnwise layout. Layouts no GEMM will
read are not produced: without grad, X and W are quantized rowwise only (so any number of rows works in eval), dY
skips the layout of a gradient nobody asked for, and codes that only a decode would read are not written: X's
rowwise codes (a local X) and both of dY's.

Each GEMM multiplies operand A, decoded by its cast and scaled for the pair (gemm_alpha's power-of-two shift), by
operand B decoded with d = 1, with the alpha the cast wrote (``NVFP4Quantizer.quantize_for_gemm``). On a GPU a
local linear costs 11 launches plus 2 amax memsets: forward the amaxes of W and X (into one buffer, one memset),
the cast of X (operand A and alpha), the cast of W, one decode of W, one GEMM; backward amax + cast of dY (both
operands A and both alphas), the dgrad GEMM, one decode of X's columnwise layout, the wgrad GEMM. A gathered X is
decoded at the GEMM with its shift and alpha. In eager mode a call that qualifies makes those launches from one
extension call per pass (:mod:`fp4dist.parallel.eager_linear`). Autocast is off inside: NVFP4 GEMMs keep their own
precision (the semantics of ``torch.amp.custom_fwd`` / ``custom_bwd`` with the input cast to the autocast dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fp4dist import backends
from fp4dist.distributed import all_gather_nvfp4
from fp4dist.gather_buffer import quantize_for_gather
from fp4dist.gemm import operand_dtype
from fp4dist.parallel import eager_linear
from fp4dist.parallel.comm import group_size, reduce_scatter_dim0
from fp4dist.quantizer import NVFP4Quantizer, RowBlocks, compute_amax_pair, pad_last_dim, pad_matrix
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


def quantize_input(quantizer: NVFP4Quantizer, x: torch.Tensor, group, columnwise: bool):
    """(Xq, rows): X [..., K] quantized (rowwise, and columnwise when asked), gathered in NVFP4 along dim 0 over
    ``group``: the gather is started and a handle returned in place of Xq (``.wait()`` gives it)."""
    x2d = pad_last_dim(x.reshape(-1, x.shape[-1]))
    rows = RowBlocks.of(group_size(group), x2d.shape[0], pad=columnwise)
    x2d = rows.pad_shard(x2d)
    if group is None:
        return quantizer.quantize(x2d, columnwise=columnwise), rows
    local = quantize_for_gather(quantizer, x2d, group, columnwise=columnwise)
    return all_gather_nvfp4(local, group, async_op=True), rows


def weight_operand_shared(cfg: NVFP4LinearConfig) -> bool:
    """Whether W's decoded rowwise operand also serves the dgrad GEMM: with 16x16 tiles, round to nearest and no
    RHT the columnwise layout is the rowwise one transposed (the same tiles, scales and codes)."""
    wq = cfg.weight_quantizer
    return wq.block_2d and not wq.rht and not wq.stochastic_rounding


@dataclass
class _WeightForGrad:
    """What the dgrad multiplies by: W's decoded operand [N, K] (``shared``) or W's columnwise codes and scales
    ([K, N / 2], [K, N / 16]), and the amax of that layout."""

    shared: bool
    a: torch.Tensor
    b: torch.Tensor | None
    amax: torch.Tensor


def _forward(x, weight, cfg, gathered, need_dx, need_dw):
    """(Y [..., N], Xq with X's columnwise layout or None, W for the dgrad or None, rows): the forward GEMM
    (module docstring)."""
    xquant, wquant = cfg.input_quantizer, cfg.weight_quantizer
    op_dtype = operand_dtype(x.dtype, x.device)
    share_w = need_dx and weight_operand_shared(cfg)
    w_cols = need_dx and not share_w
    w = pad_matrix(weight, rows=wquant.block_2d or need_dx)
    local = gathered is None and cfg.sp_group is None
    pending = None  # X's gather, running while W is quantized
    if gathered is not None:
        xq, rows, lead = gathered.xq, gathered.rows, x.shape[:-1]
        if need_dw and not xq.has_columnwise:
            raise ValueError("NVFP4 linear: the gathered input was quantized without its columnwise layout (no "
                             "grad was expected when it was gathered) but this linear's weight needs one")
    elif not local:
        pending, rows = quantize_input(xquant, x, cfg.sp_group, columnwise=need_dw)
        lead = (rows.groups * x.shape[0], *x.shape[1:-1])
    if local:  # X's cast writes operand A scaled for the pair (X, W), and the GEMM's alpha; no rowwise codes
        x2d = pad_last_dim(x.reshape(-1, x.shape[-1]))
        rows = RowBlocks.of(1, x2d.shape[0], pad=need_dw)
        x2d = rows.pad_shard(x2d)
        amax_w, amax_x = compute_amax_pair(wquant, w, xquant, x2d, columnwise_a=w_cols, columnwise_b=need_dw)
        xq, x_op, _, alpha = xquant.quantize_for_gemm(x2d, operand_dtype=op_dtype, amax=amax_x,
                                                      partner_amax=(amax_w[0:1], None), columnwise=need_dw,
                                                      keep_codes=(False, True))
        alpha = alpha[0]
        lead = x.shape[:-1]
    else:
        amax_w = wquant.compute_amax(w, columnwise=w_cols)
    wq = wquant.quantize(w, amax=amax_w, columnwise=w_cols)
    w_backend = backends.select(wquant.backend, w.device)
    w_op = w_backend.dequantize(wq.rowwise_data, wq.rowwise_scale_inv, None, op_dtype)
    if pending is not None:
        xq = pending.wait()
    x_backend = backends.select(xquant.backend, x.device)
    if not local:  # X's rowwise layout decoded for the pair (X, W)
        x_op, alpha, _ = x_backend.decode_operand_b(xq.rowwise_data, xq.rowwise_scale_inv, amax_w[0], xq.amax_rowwise,
                                                    op_dtype)
    y = x_backend.gemm(x_op, w_op, alpha, x.dtype)[:, :weight.shape[0]]
    w_grad = None
    if share_w:
        w_grad = _WeightForGrad(True, w_op, None, amax_w[1:2])
    elif need_dx:
        w_grad = _WeightForGrad(False, wq.columnwise_data, wq.columnwise_scale_inv, wq.amax_columnwise.reshape(1))
    return rows.unpad(y).reshape(*lead, weight.shape[0]), (xq if need_dw else None), w_grad, rows


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
            y, xq, w_grad, rows = _forward(x, weight, cfg, gathered, need_dx, need_dw)
        x_saved = ((xq.columnwise_data, xq.columnwise_scale_inv, xq.amax_columnwise.reshape(1)) if need_dw
                   else (None,) * 3)
        w_saved = (w_grad.a, w_grad.b, w_grad.amax) if need_dx else (None,) * 3
        ctx.save_for_backward(*x_saved, *w_saved, rng_offset)
        ctx.cfg, ctx.rows, ctx.reduce_dx = cfg, rows, gathered is None and cfg.sp_group is not None
        ctx.w_shape, ctx.w_dtype = tuple(weight.shape), weight.dtype
        ctx.w_shared = need_dx and w_grad.shared
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        if ctx.eager_kernels is not None:
            return (*eager_linear.backward(ctx, dy), None, None, None)
        x_data, x_scale, x_amax, w_a, w_b, w_amax, rng_offset = ctx.saved_tensors
        cfg, rows = ctx.cfg, ctx.rows
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        (n, k), lead = ctx.w_shape, dy.shape[:-1]
        dx = dw = None
        with torch.autocast(dy.device.type, enabled=False):
            dy2d = rows.pad(pad_last_dim(dy.reshape(-1, n)))  # N and (for wgrad) the rows padded as X's
            op_dtype = operand_dtype(dy.dtype, dy.device)
            # dY's layouts decoded by its cast as operand A of the dgrad and the wgrad, each scaled for its pair,
            # with both alphas; their codes are not written (no GEMM reads them)
            _, dy_row_op, dy_col_op, alpha = cfg.grad_quantizer.quantize_for_gemm(
                dy2d, operand_dtype=op_dtype, rng_offset=rng_offset, rowwise=need_dx, columnwise=need_dw,
                partner_amax=(w_amax if need_dx else None, x_amax if need_dw else None), keep_codes=(False, False))
            backend = backends.select(cfg.grad_quantizer.backend, dy.device)
            if need_dx:
                if ctx.w_shared:  # dX = dY W with W's decoded [N, K] operand
                    dx = backend.gemm(dy_row_op, w_a.to(op_dtype), alpha[0], dy.dtype, b_kn=True)
                else:  # with W's columnwise layout [K, N]
                    w_op = backends.select(cfg.weight_quantizer.backend, dy.device).dequantize(w_a, w_b, None, op_dtype)
                    dx = backend.gemm(dy_row_op, w_op, alpha[0], dy.dtype)
                dx = rows.unpad(dx[:, :k]).reshape(*lead, k)
                if ctx.reduce_dx:
                    dx = reduce_scatter_dim0(dx, cfg.sp_group)
            if need_dw:  # dW = dY^T X, both RHT'd along the tokens
                x_op = backends.select(cfg.input_quantizer.backend, dy.device).dequantize(x_data, x_scale, None,
                                                                                          op_dtype)
                dw = backend.gemm(dy_col_op, x_op, alpha[1], ctx.w_dtype)[:n, :k]
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
