"""The reference backend: vectorized PyTorch that implements the spec exactly, on any device.

Layouts (m rows, n columns of the 2-D view X):
  rowwise:    data uint8 [m, n/2], scale_inv float8_e4m3fn [m, n/16], blocks along rows of X
  columnwise: data uint8 [n, m/2], scale_inv float8_e4m3fn [n, m/16], blocks along rows of
              V = X^T, or of V = RHT(X^T) (each 16 consecutive elements of a row of X^T) with rht
With 2D tiles the block max is taken over 16x16 tiles and each tile's scale is repeated for its 16 rows.
"""

from __future__ import annotations

import torch

from fp4dist import format as fmt
from fp4dist import rng
from fp4dist import rht as rht_mod


def _columnwise_source(x2d: torch.Tensor, rht: bool) -> torch.Tensor:
    """V = X^T [n, m]: in x's dtype, or with ``rht`` its RHT along the rows as fp32 (rht.columnwise_source:
    the transform rounded to x's dtype where that is finite)."""
    v = x2d.t()
    return rht_mod.columnwise_source(v) if rht else v


def compute_amax(x2d: torch.Tensor, *, rht: bool) -> torch.Tensor:
    row_amax = x2d.abs().amax().float()
    col_amax = rht_mod.columnwise_amax(_columnwise_source(x2d, True), x2d.t()) if rht else row_amax
    return torch.stack((row_amax, col_amax))


def compute_amax_pair(a2d: torch.Tensor, b2d: torch.Tensor, *, rht_a: bool, rht_b: bool) -> torch.Tensor:
    return torch.cat((compute_amax(a2d, rht=rht_a), compute_amax(b2d, rht=rht_b)))


def _block_amax(v: torch.Tensor, block_2d: bool) -> torch.Tensor:
    """fp32 [R, C] -> per-block max|v| [R, C/16] (2D: per 16x16 tile, repeated for its 16 rows)."""
    rows, cols = v.shape
    if block_2d:
        tiles = v.abs().reshape(rows // 16, 16, cols // 16, 16).amax(dim=(1, 3))
        return tiles.repeat_interleave(16, dim=0)
    return v.abs().reshape(rows, cols // 16, 16).amax(dim=-1)


def _quantize_rows(v: torch.Tensor, amax: torch.Tensor, block_2d: bool, random_bits: torch.Tensor | None):
    """Quantize fp32 v [R, C] along its rows (steps 2-6 of the spec) -> (packed [R, C/2], scales [R, C/16])."""
    rows, cols = v.shape
    s_enc = fmt.global_encode_scale(amax)
    s_dec = 1.0 / s_enc
    scale = fmt.block_scale(_block_amax(v, block_2d), s_enc)
    enc = fmt.block_encode_scale(scale, s_dec)
    scaled = (v.reshape(rows, cols // 16, 16) * enc.unsqueeze(-1)).clamp(-fmt.E2M1_MAX, fmt.E2M1_MAX)
    scaled = scaled.reshape(rows, cols)
    if random_bits is None:
        codes = fmt.round_to_e2m1(scaled)
    else:
        codes = fmt.round_to_e2m1_stochastic(scaled, random_bits)
    return fmt.pack_fp4(codes), scale


def _key(seed: int, rng_offset: int | torch.Tensor, stream: int):
    if isinstance(rng_offset, torch.Tensor):
        return rng.stream_key_tensor(seed, rng_offset, stream)
    return rng.stream_key(seed, rng_offset, stream)


def _into(out: torch.Tensor | None, value: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """``value`` itself, or copied into the preallocated ``out`` (same shape and dtype)."""
    if out is None or value is None:
        return value
    if out.shape != value.shape or out.dtype != value.dtype or out.device != value.device:
        raise ValueError(f"out {name} must be a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out.copy_(value)


def cast(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
         rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor, row_offset: int, out=None):
    """``out``: None, or preallocated (rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv),
    None where not requested or not preallocated; the results are written into them and returned."""
    m, n = x2d.shape
    dev = x2d.device
    row_ids = torch.arange(m, device=dev, dtype=torch.int64) + row_offset
    col_ids = torch.arange(n, device=dev, dtype=torch.int64)
    row_stream, col_stream = rng.layout_streams(block_2d)
    row_out = col_out = (None, None)
    if rowwise:
        bits = None
        if stochastic_rounding:
            bits = rng.random_bits(_key(seed, rng_offset, row_stream), row_ids[:, None], col_ids[None, :])
        row_out = _quantize_rows(x2d.float(), amax[0], block_2d, bits)
    if columnwise:
        bits = None
        if stochastic_rounding:
            bits = rng.random_bits(_key(seed, rng_offset, col_stream), row_ids[None, :], col_ids[:, None])
        col_out = _quantize_rows(_columnwise_source(x2d, rht).float(), amax[1], block_2d, bits)
    if out is None:
        return (*row_out, *col_out)
    names = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv")
    return tuple(_into(o, v, k) for o, v, k in zip(out, (*row_out, *col_out), names))


def cast_with_operands(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
                       rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor,
                       row_offset: int, operand_dtype: torch.dtype, rowwise_operand: bool = True,
                       columnwise_operand: bool = True, partner_amax=(None, None), keep_codes=(True, True)):
    """cast's four results, the layouts decoded as GEMM operands in ``operand_dtype`` (rowwise [m, n], columnwise
    [n, m]) and the GEMMs' alphas: (rd, rs, cd, cs, rowwise_operand, columnwise_operand, alpha fp32 [2]). An operand
    is e2m1(code) * float(scale) * shift and alpha[i] the alpha of format.gemm_alpha(amax[i], partner_amax[i]) where
    that partner is given (else shift = 1, alpha[i] = 1). None where not cast or not asked for, and for the codes of
    a layout whose ``keep_codes`` entry is False and whose operand is made."""
    rd, rs, cd, cs = cast(x2d, amax, rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
                          stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset,
                          row_offset=row_offset)
    amax2 = amax.reshape(2).float()
    ops, alphas = [None, None], []
    for i, (data, scale, want) in enumerate(((rd, rs, rowwise and rowwise_operand),
                                             (cd, cs, columnwise and columnwise_operand))):
        partner = partner_amax[i] if want else None
        if partner is None:
            alphas.append(torch.ones((), dtype=torch.float32, device=x2d.device))
            if want:
                ops[i] = dequantize(data, scale, None, operand_dtype)
            continue
        alpha, shift = fmt.gemm_alpha(amax2[i], partner.reshape(()).float())
        alphas.append(alpha)
        ops[i] = (dequantize(data, scale, None, torch.float32) * shift).to(operand_dtype)
    if ops[0] is not None and not keep_codes[0]:
        rd = rs = None
    if ops[1] is not None and not keep_codes[1]:
        cd = cs = None
    return rd, rs, cd, cs, ops[0], ops[1], torch.stack(alphas)


def dequantize(data: torch.Tensor, scale_inv: torch.Tensor, decode_scale: torch.Tensor | None,
               out_dtype: torch.dtype, *, amax: torch.Tensor | None = None) -> torch.Tensor:
    if data.dim() == 3:  # [G, R, row_bytes] slices of a gathered buffer
        data = data.reshape(-1, data.shape[-1])
    rows, half = data.shape
    values = fmt.e2m1_to_float(fmt.unpack_fp4(data)).reshape(rows, half * 2 // 16, 16)
    out = values * scale_inv.float().reshape(rows, half * 2 // 16).unsqueeze(-1)
    if amax is not None:
        decode_scale = fmt.global_decode_scale(amax)
    if decode_scale is not None:
        out = out * decode_scale.float()
    return out.reshape(rows, half * 2).to(out_dtype)


def decode_operands(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype):
    a_op = dequantize(a_data, a_scale, None, torch.float32)
    b_op = dequantize(b_data, b_scale, None, out_dtype)
    alpha, shift = fmt.gemm_alpha(amax_a, amax_b)
    return (a_op * shift).to(out_dtype), b_op, alpha, shift


def decode_operand_b(b_data, b_scale, amax_a, amax_b, out_dtype):
    b_op = dequantize(b_data, b_scale, None, torch.float32)
    alpha, shift = fmt.gemm_alpha(amax_a, amax_b)
    return (b_op * shift).to(out_dtype), alpha, shift


def gemm(a_op: torch.Tensor, b_op: torch.Tensor, alpha: torch.Tensor, out_dtype: torch.dtype, *,
         b_kn: bool = False) -> torch.Tensor:
    """alpha * (a_op @ b_op^T) (``b_kn``: a_op @ b_op) accumulated in fp32, one rounding to out_dtype."""
    b = b_op.float() if b_kn else b_op.float().t()
    return ((a_op.float() @ b) * alpha).to(out_dtype)


def swap_first_dims(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).contiguous()
