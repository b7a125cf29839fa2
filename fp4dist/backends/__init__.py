"""Backends: the kernels of NVFP4 quantization behind one interface, :class:`Backend`.

``reference`` is vectorized PyTorch on any device (the executable form of docs/numerics.md); ``cuda`` is
fp4dist's CUDA kernels, exposed as ``torch.ops.fp4dist.*`` custom ops so that torch.compile traces them.
Both give the same bits. :func:`select` picks one for a device.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Protocol

import torch

from fp4dist.backends import reference

log = logging.getLogger("fp4dist")
BACKENDS = ("auto", "reference", "cuda")
_cuda_kernels: list = []  # the CUDA backend once it has loaded


class Backend(Protocol):
    """What a backend provides. ``x2d`` is the input viewed as X [m, n], contiguous; layouts and dtypes are
    those of :class:`fp4dist.NVFP4Tensor` (codes uint8 [rows, k/2], scales float8_e4m3fn [rows, k/16])."""

    def compute_amax(self, x2d: torch.Tensor, *, rht: bool) -> torch.Tensor:
        """fp32 [2]: (max|X|, max|columnwise source|), the second taken after the RHT when ``rht``."""

    def compute_amax_pair(self, a2d: torch.Tensor, b2d: torch.Tensor, *, rht_a: bool, rht_b: bool) -> torch.Tensor:
        """fp32 [4]: compute_amax of a2d, then of b2d (on a GPU two passes and one memset of their output)."""

    def cast(self, x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
             rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor, row_offset: int,
             out=None):
        """(rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv), None where not asked for.
        ``amax`` is compute_amax's fp32 [2] (possibly MAX-reduced over a group in between); ``rng_offset`` an
        int or an int64 tensor of one element on x's device (read there: no host sync). ``out=`` optionally
        holds preallocated contiguous tensors for the four results (None where not given), which are returned."""

    def cast_with_operands(self, x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool,
                           block_2d: bool, rht: bool, stochastic_rounding: bool, seed: int,
                           rng_offset: int | torch.Tensor, row_offset: int, operand_dtype: torch.dtype,
                           rowwise_operand: bool = True, columnwise_operand: bool = True,
                           partner_amax=(None, None), keep_codes=(True, True)):
        """cast's four results, the cast layouts decoded as GEMM operands and the GEMMs' alphas: (rd, rs, cd, cs,
        rowwise_operand [m, n], columnwise_operand [n, m], alpha fp32 [2]), operands in ``operand_dtype``. Operand
        i is e2m1(code) * float(scale) * shift_i with (alpha[i], shift_i) = format.gemm_alpha(amax[i],
        partner_amax[i]) where that partner (an fp32 one-element amax of the GEMM's other operand) is given, else
        shift_i = alpha[i] = 1 (what dequantize gives with d = 1). None where not cast or not asked for, and for
        the codes of a layout whose ``keep_codes`` entry is False and whose operand is made. The CUDA kernels
        write the operands and alpha in the cast's own pass where they can (bf16/fp16 X of the operands' dtype,
        16-byte aligned rows, 1x16 blocks), else decode them after it."""

    def dequantize(self, data: torch.Tensor, scale_inv: torch.Tensor, decode_scale: torch.Tensor | None,
                   out_dtype: torch.dtype, *, amax: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, 2 * row_bytes]: e2m1(code) * float(scale) * d, d = decode_scale, or S_dec(amax) computed where
        the data lives (decode_scale None), or 1 (both None). data [rows, row_bytes] or [G, R, row_bytes]."""

    def decode_operands(self, a_data, a_scale, b_data, b_scale, amax_a, amax_b, out_dtype):
        """(A, B, alpha, shift): both GEMM operands decoded without their global scale (exact in bf16), A
        times ``shift``, and fp32 ``alpha`` (see :func:`fp4dist.format.gemm_alpha`)."""

    def decode_operand_b(self, b_data, b_scale, amax_a, amax_b, out_dtype):
        """(B, alpha, shift) for a GEMM whose operand A came decoded from its cast (cast_with_operands, without a
        shift): B decoded times ``shift``; alpha * A @ B^T equals the product of decode_operands' results bit for
        bit (a power-of-two shift scales the same exact products wherever it is applied)."""

    def gemm(self, a_op: torch.Tensor, b_op: torch.Tensor, alpha: torch.Tensor, out_dtype: torch.dtype, *,
             b_kn: bool = False) -> torch.Tensor:
        """alpha * A [M, K] @ B [N, K]^T (``b_kn``: A @ B for B [K, N]), fp32 accumulation, one rounding to
        out_dtype."""

    def swap_first_dims(self, t: torch.Tensor) -> torch.Tensor:
        """[a, b, ...] -> [b, a, ...], contiguous."""


def cuda_backend() -> ModuleType | None:
    """The CUDA kernel backend (its custom ops), or None (with one log line saying why) when it cannot be used."""
    from fp4dist.backends import cuda

    if not cuda.available():
        return None
    from fp4dist.backends import cuda_ops

    return cuda_ops


def select(name: str, device: torch.device) -> Backend:
    """Resolve a backend name for tensors on ``device``: "auto" takes CUDA kernels when they load."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return _select(name, device.type)


def _select(name: str, device_type: str) -> Backend:
    if name == "reference" or (name == "auto" and device_type != "cuda"):
        return reference
    if device_type != "cuda":
        raise ValueError(f"backend='cuda' needs a CUDA tensor, got one on {device_type}")
    if not _cuda_kernels:  # resolved once: every quantize asks
        kernels = cuda_backend()
        if kernels is None:
            if name == "cuda":
                raise RuntimeError("backend='cuda' was asked for but the fp4dist CUDA kernels are unavailable "
                                   "(see the fp4dist log line for why)")
            return reference
        _cuda_kernels.append(kernels)
    return _cuda_kernels[0]
