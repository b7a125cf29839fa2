"""The CUDA backend as ``torch.ops.fp4dist.*`` custom ops: what torch.compile traces and CUDA graphs capture.

Each op wraps one launcher of :mod:`fp4dist.backends.cuda` (one kernel launch, no host sync) and has a fake
(meta) implementation giving its outputs' shapes and dtypes, so dynamo traces through an NVFP4 linear
without graph breaks. The module-level functions below are the :class:`fp4dist.backends.Backend` interface.

| op                           | inputs                                   | outputs                              |
| fp4dist::amax                | x [m, n] bf16/fp16/fp32                  | fp32 [2]                             |
| fp4dist::amax_pair           | a, b as x of amax                        | fp32 [4]: amax(a), amax(b)           |
| fp4dist::cast                | x, amax fp32 [2], rng_offset int64 [1]   | writes the four layout tensors       |
| fp4dist::cast_operands       | as cast, the operands' dtype, the GEMM   | writes the codes kept, returns the   |
|                              | partners' amaxes, which codes to keep    | decoded rowwise [m, n] / columnwise  |
|                              |                                          | [n, m] and the two alphas fp32 [2]   |
| fp4dist::dequantize          | codes uint8 [r, k/2], scales [r, k/16]   | [r, k] in out_dtype                  |
| fp4dist::decode_operands     | two (codes, scales), two amaxes          | A, B (out_dtype), alpha, shift fp32  |
| fp4dist::decode_operand_b    | B's (codes, scales), two amaxes          | B * shift (out_dtype), alpha, shift  |
| fp4dist::gemm                | A [M, K], B [N, K] (or [K, N]), alpha    | [M, N] in out_dtype                  |
| fp4dist::swap_first_dims     | t [a, b, ...]                            | [b, a, ...]                          |
| fp4dist::swap_first_dims_parts | bytes, parts [a, b_k, R_k] (strided)   | uint8: the parts as [b_k, a, R_k]    |
| fp4dist::check_trailers      | gathered bytes, count, record int64      | updates count and record             |
"""

from __future__ import annotations

import torch

from fp4dist.backends import cuda

_U64 = 1 << 64


def _signed64(v: int) -> int:
    """A uint64 (seed) as the int64 a custom op's ``int`` argument can carry."""
    v &= _U64 - 1
    return v - _U64 if v >= 1 << 63 else v


def _decoded_rows(data: torch.Tensor) -> int:
    return data.shape[0] * data.shape[1] if data.dim() == 3 else data.shape[0]


@torch.library.custom_op("fp4dist::amax", mutates_args=(), device_types="cuda")
def _amax(x2d: torch.Tensor, rht: bool) -> torch.Tensor:
    return cuda.compute_amax(x2d, rht=rht)


@_amax.register_fake
def _(x2d, rht):
    return x2d.new_empty(2, dtype=torch.float32)


@torch.library.custom_op("fp4dist::amax_pair", mutates_args=(), device_types="cuda")
def _amax_pair(a2d: torch.Tensor, b2d: torch.Tensor, rht_a: bool, rht_b: bool) -> torch.Tensor:
    return cuda.compute_amax_pair(a2d, b2d, rht_a=rht_a, rht_b=rht_b)


@_amax_pair.register_fake
def _(a2d, b2d, rht_a, rht_b):
    return a2d.new_empty(4, dtype=torch.float32)


@torch.library.custom_op("fp4dist::cast",
                         mutates_args=("rowwise_data", "rowwise_scale", "columnwise_data", "columnwise_scale"),
                         device_types="cuda")
def _cast(x2d: torch.Tensor, amax: torch.Tensor, rng_offset: torch.Tensor | None, rowwise_data: torch.Tensor,
          rowwise_scale: torch.Tensor, columnwise_data: torch.Tensor, columnwise_scale: torch.Tensor,
          rowwise: bool, columnwise: bool, block_2d: bool, rht: bool, stochastic_rounding: bool, seed: int,
          rng_offset_int: int, row_offset: int) -> None:
    cuda.cast(x2d, amax, rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
              stochastic_rounding=stochastic_rounding, seed=seed % _U64,
              rng_offset=rng_offset if rng_offset is not None else rng_offset_int, row_offset=row_offset,
              out=(rowwise_data if rowwise else None, rowwise_scale if rowwise else None,
                   columnwise_data if columnwise else None, columnwise_scale if columnwise else None))


@_cast.register_fake
def _(x2d, amax, rng_offset, rowwise_data, rowwise_scale, columnwise_data, columnwise_scale, rowwise, columnwise,
      block_2d, rht, stochastic_rounding, seed, rng_offset_int, row_offset):
    return None


@torch.library.custom_op("fp4dist::cast_operands",
                         mutates_args=("rowwise_data", "rowwise_scale", "columnwise_data", "columnwise_scale"),
                         device_types="cuda")
def _cast_operands(x2d: torch.Tensor, amax: torch.Tensor, rng_offset: torch.Tensor | None,
                   rowwise_data: torch.Tensor, rowwise_scale: torch.Tensor, columnwise_data: torch.Tensor,
                   columnwise_scale: torch.Tensor, rowwise: bool, columnwise: bool, block_2d: bool, rht: bool,
                   stochastic_rounding: bool, seed: int, rng_offset_int: int, row_offset: int,
                   operand_dtype: torch.dtype, rowwise_operand: bool, columnwise_operand: bool,
                   partner_row: torch.Tensor | None, partner_col: torch.Tensor | None, row_codes: bool,
                   col_codes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the code tensors not to write arrive empty (cast_with_operands below)
    *_, rop, cop, alpha = cuda.cast_with_operands(
        x2d, amax, rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
        stochastic_rounding=stochastic_rounding, seed=seed % _U64,
        rng_offset=rng_offset if rng_offset is not None else rng_offset_int, row_offset=row_offset,
        operand_dtype=operand_dtype, rowwise_operand=rowwise_operand, columnwise_operand=columnwise_operand,
        partner_amax=(partner_row, partner_col), keep_codes=(row_codes, col_codes),
        out=tuple(t if t.numel() else None for t in (rowwise_data, rowwise_scale, columnwise_data, columnwise_scale)))
    none = x2d.new_empty(0, dtype=operand_dtype)
    return (rop if rop is not None else none), (cop if cop is not None else none.clone()), alpha


@_cast_operands.register_fake
def _(x2d, amax, rng_offset, rowwise_data, rowwise_scale, columnwise_data, columnwise_scale, rowwise, columnwise,
      block_2d, rht, stochastic_rounding, seed, rng_offset_int, row_offset, operand_dtype, rowwise_operand,
      columnwise_operand, partner_row, partner_col, row_codes, col_codes):
    m, n = x2d.shape
    return (x2d.new_empty((m, n) if rowwise and rowwise_operand else (0,), dtype=operand_dtype),
            x2d.new_empty((n, m) if columnwise and columnwise_operand else (0,), dtype=operand_dtype),
            x2d.new_empty(2, dtype=torch.float32))


@torch.library.custom_op("fp4dist::dequantize", mutates_args=(), device_types="cuda")
def _dequantize(data: torch.Tensor, scale_inv: torch.Tensor, amax: torch.Tensor | None,
                out_dtype: torch.dtype) -> torch.Tensor:
    return cuda.dequantize(data, scale_inv, None, out_dtype, amax=amax)


@_dequantize.register_fake
def _(data, scale_inv, amax, out_dtype):
    return data.new_empty((_decoded_rows(data), 2 * data.shape[-1]), dtype=out_dtype)


@torch.library.custom_op("fp4dist::decode_operands", mutates_args=(), device_types="cuda")
def _decode_operands(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor, b_scale: torch.Tensor,
                     amax_a: torch.Tensor, amax_b: torch.Tensor, out_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return cuda.decode_operands(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype)


@_decode_operands.register_fake
def _(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype):
    a = a_data.new_empty((_decoded_rows(a_data), 2 * a_data.shape[-1]), dtype=out_dtype)
    b = b_data.new_empty((_decoded_rows(b_data), 2 * b_data.shape[-1]), dtype=out_dtype)
    return a, b, a_data.new_empty((), dtype=torch.float32), a_data.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fp4dist::decode_operand_b", mutates_args=(), device_types="cuda")
def _decode_operand_b(b_data: torch.Tensor, b_scale: torch.Tensor, amax_a: torch.Tensor, amax_b: torch.Tensor,
                      out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cuda.decode_operand_b(b_data, b_scale, amax_a, amax_b, out_dtype)


@_decode_operand_b.register_fake
def _(b_data, b_scale, amax_a, amax_b, out_dtype):
    b = b_data.new_empty((_decoded_rows(b_data), 2 * b_data.shape[-1]), dtype=out_dtype)
    return b, b_data.new_empty((), dtype=torch.float32), b_data.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fp4dist::gemm", mutates_args=(), device_types="cuda")
def _gemm(a_op: torch.Tensor, b_op: torch.Tensor, alpha: torch.Tensor, out_dtype: torch.dtype,
          b_kn: bool = False) -> torch.Tensor:
    return cuda.gemm_alpha(a_op, b_op, alpha, out_dtype, b_kn)


@_gemm.register_fake
def _(a_op, b_op, alpha, out_dtype, b_kn=False):
    return a_op.new_empty((a_op.shape[0], b_op.shape[1] if b_kn else b_op.shape[0]), dtype=out_dtype)


@torch.library.custom_op("fp4dist::swap_first_dims", mutates_args=(), device_types="cuda")
def _swap_first_dims(t: torch.Tensor) -> torch.Tensor:
    return cuda.swap_first_dims(t)


@_swap_first_dims.register_fake
def _(t):
    return t.new_empty((t.shape[1], t.shape[0], *t.shape[2:]))


@torch.library.custom_op("fp4dist::swap_first_dims_parts", mutates_args=(), device_types="cuda")
def _swap_first_dims_parts(src: torch.Tensor, a: int, in_offsets: list[int], in_stride: list[int], rows: list[int],
                           row_bytes: list[int], out_offsets: list[int], out_nbytes: int) -> torch.Tensor:
    return cuda.swap_first_dims_parts(src, a, in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes)


@_swap_first_dims_parts.register_fake
def _(src, a, in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes):
    return src.new_empty(out_nbytes, dtype=torch.uint8)


@torch.library.custom_op("fp4dist::check_trailers", mutates_args=("bad_count", "record"), device_types="cuda")
def _check_trailers(gathered: torch.Tensor, offset: int, stride: int, rows: int, bad_count: torch.Tensor,
                    record: torch.Tensor) -> None:
    cuda.check_trailers(gathered, offset, stride, rows, bad_count, record)


@_check_trailers.register_fake
def _(gathered, offset, stride, rows, bad_count, record):
    return None


# ------------------------------------------------------------------ the Backend interface
# Outside torch.compile the launchers are called directly: the custom-op dispatch costs more host time than
# the small kernels it launches, and an eager step (or one being captured in a CUDA graph) needs no tracing.

def compute_amax(x2d: torch.Tensor, *, rht: bool) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        return cuda.compute_amax(x2d, rht=rht)
    return torch.ops.fp4dist.amax(x2d, rht)


def compute_amax_pair(a2d: torch.Tensor, b2d: torch.Tensor, *, rht_a: bool, rht_b: bool) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        return cuda.compute_amax_pair(a2d, b2d, rht_a=rht_a, rht_b=rht_b)
    return torch.ops.fp4dist.amax_pair(a2d, b2d, rht_a, rht_b)


def cast(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool, rht: bool,
         stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor, row_offset: int, out=None):
    """As :meth:`Backend.cast`; ``out`` may hold preallocated (rowwise_data, rowwise_scale_inv,
    columnwise_data, columnwise_scale_inv), None where not requested (e.g. views of one gather buffer)."""
    if not torch.compiler.is_compiling():
        return cuda.cast(x2d, amax, rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
                         stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset,
                         row_offset=row_offset, out=out)
    m, n = x2d.shape
    rd, rs, cd, cs = tuple(out) if out is not None else (None,) * 4
    new = lambda shape, dtype: torch.empty(shape, dtype=dtype, device=x2d.device)
    empty = new((0,), torch.uint8)
    if rowwise:
        rd = rd if rd is not None else new((m, n // 2), torch.uint8)
        rs = rs if rs is not None else new((m, n // 16), torch.float8_e4m3fn)
    if columnwise:
        cd = cd if cd is not None else new((n, m // 2), torch.uint8)
        cs = cs if cs is not None else new((n, m // 16), torch.float8_e4m3fn)
    offset_t = rng_offset if isinstance(rng_offset, torch.Tensor) else None
    offset_i = 0 if offset_t is not None else int(rng_offset)
    torch.ops.fp4dist.cast(x2d, amax, offset_t, rd if rowwise else empty, rs if rowwise else empty,
                           cd if columnwise else empty, cs if columnwise else empty, rowwise, columnwise, block_2d,
                           rht, stochastic_rounding, _signed64(seed), _signed64(offset_i), row_offset)
    return (rd if rowwise else None, rs if rowwise else None, cd if columnwise else None,
            cs if columnwise else None)


def cast_with_operands(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
                       rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor,
                       row_offset: int, operand_dtype: torch.dtype, rowwise_operand: bool = True,
                       columnwise_operand: bool = True, partner_amax=(None, None), keep_codes=(True, True)):
    """As :meth:`Backend.cast_with_operands`."""
    if not torch.compiler.is_compiling():
        return cuda.cast_with_operands(x2d, amax, rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
                                       stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset,
                                       row_offset=row_offset, operand_dtype=operand_dtype,
                                       rowwise_operand=rowwise_operand, columnwise_operand=columnwise_operand,
                                       partner_amax=partner_amax, keep_codes=keep_codes)
    m, n = x2d.shape
    want_row, want_col = rowwise and rowwise_operand, columnwise and columnwise_operand
    row_codes, col_codes = rowwise and (keep_codes[0] or not want_row), columnwise and (keep_codes[1] or not want_col)
    new = lambda shape, dtype: torch.empty(shape, dtype=dtype, device=x2d.device)
    empty = new((0,), torch.uint8)
    rd = new((m, n // 2), torch.uint8) if row_codes else empty
    rs = new((m, n // 16), torch.float8_e4m3fn) if row_codes else empty
    cd = new((n, m // 2), torch.uint8) if col_codes else empty
    cs = new((n, m // 16), torch.float8_e4m3fn) if col_codes else empty
    offset_t = rng_offset if isinstance(rng_offset, torch.Tensor) else None
    offset_i = 0 if offset_t is not None else int(rng_offset)
    rop, cop, alpha = torch.ops.fp4dist.cast_operands(
        x2d, amax, offset_t, rd, rs, cd, cs, rowwise, columnwise, block_2d, rht, stochastic_rounding, _signed64(seed),
        _signed64(offset_i), row_offset, operand_dtype, rowwise_operand, columnwise_operand,
        partner_amax[0] if want_row else None, partner_amax[1] if want_col else None, row_codes, col_codes)
    if not row_codes:
        rd = rs = None
    if not col_codes:
        cd = cs = None
    return rd, rs, cd, cs, rop if want_row else None, cop if want_col else None, alpha


def dequantize(data, scale_inv, decode_scale, out_dtype, *, amax=None):
    if decode_scale is not None:  # an explicit decode scale: the plain launcher (not traced as an op)
        return cuda.dequantize(data, scale_inv, decode_scale, out_dtype)
    if not torch.compiler.is_compiling():
        return cuda.dequantize(data, scale_inv, None, out_dtype, amax=amax)
    return torch.ops.fp4dist.dequantize(data, scale_inv, amax, out_dtype)


def decode_operands(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype):
    if not torch.compiler.is_compiling():
        return cuda.decode_operands(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype)
    return torch.ops.fp4dist.decode_operands(a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype)


def decode_operand_b(b_data, b_scale, amax_a, amax_b, out_dtype):
    if not torch.compiler.is_compiling():
        return cuda.decode_operand_b(b_data, b_scale, amax_a, amax_b, out_dtype)
    return torch.ops.fp4dist.decode_operand_b(b_data, b_scale, amax_a, amax_b, out_dtype)


def gemm(a_op, b_op, alpha, out_dtype, *, b_kn: bool = False):
    if not torch.compiler.is_compiling():
        return cuda.gemm_alpha(a_op, b_op, alpha, out_dtype, b_kn)
    return torch.ops.fp4dist.gemm(a_op, b_op, alpha, out_dtype, b_kn)


def swap_first_dims(t):
    if not torch.compiler.is_compiling():
        return cuda.swap_first_dims(t)
    return torch.ops.fp4dist.swap_first_dims(t)


def swap_first_dims_parts(src, a, in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes):
    if not torch.compiler.is_compiling():
        return cuda.swap_first_dims_parts(src, a, in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes)
    return torch.ops.fp4dist.swap_first_dims_parts(src, a, in_offsets, in_stride, rows, row_bytes, out_offsets,
                                                   out_nbytes)


def check_trailers(gathered, offset, stride, rows, bad_count, record):
    if not torch.compiler.is_compiling():
        return cuda.check_trailers(gathered, offset, stride, rows, bad_count, record)
    return torch.ops.fp4dist.check_trailers(gathered, offset, stride, rows, bad_count, record)


def gather_finisher(where, bad_count, record):
    """Eager only (a C++ object that torch.compile does not trace): see cuda.gather_finisher."""
    return cuda.gather_finisher(where, bad_count, record)
