"""nvfp4_gemm: C = alpha * (A_codes*scales) @ (B_codes*scales)^T with alpha = S_dec(A) * S_dec(B).

Each operand is one layout of an NVFP4Tensor decoded *without* its global scale, i.e.
``e2m1(code) * e4m3(scale)``: a value with at most 6 significant bits in [2^-10, 2688], exactly
representable in bf16. The product is accumulated in fp32 and the two fp32 global decode scales
are applied as alpha to the fp32 result, which is then rounded once to ``out_dtype``
(:func:`fp4dist.format.gemm_alpha` moves a power of two from alpha into one operand where fp32 alpha
would overflow). Two launches on a GPU: one decodes both operands (or, when A comes decoded from its
cast, ``a_operand``, only B) and computes alpha on the device, one cuBLAS bf16 GEMM with fp32
accumulation reads alpha from device memory. No host sync.

* CPU (reference backend): fp32 matmul of the decoded operands.
* CUDA (sm_90 and every GPU today): bf16 operands, cuBLAS.
* sm_100+: ``torch._scaled_mm`` on float4_e2m1fn_x2 data with swizzled E4M3 scales, only when
  ``FP4DIST_FP4_SCALED_MM=1``. THIS PATH HAS NEVER RUN (no Blackwell GPU was available); it is
  off by default for that reason.
"""

from __future__ import annotations

import os

import torch

from fp4dist import backends
from fp4dist.format import gemm_alpha
from fp4dist.tensor import NVFP4Tensor


_FP4_SCALED_MM = os.environ.get("FP4DIST_FP4_SCALED_MM") == "1"  # read once: every GEMM asks


def _use_fp4_scaled_mm(device: torch.device) -> bool:
    return (_FP4_SCALED_MM and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] >= 10 and hasattr(torch, "float4_e2m1fn_x2"))


def _swizzle_scales(scale: torch.Tensor) -> torch.Tensor:
    """[rows, K/16] e4m3 -> the 128x4-tile blocked layout cuBLAS expects for block-scaled FP4 (untested)."""
    rows, cols = scale.shape
    padded = torch.zeros(((rows + 127) // 128 * 128, (cols + 3) // 4 * 4), dtype=scale.dtype, device=scale.device)
    padded[:rows, :cols] = scale
    r, c = padded.shape[0] // 128, padded.shape[1] // 4
    blocks = padded.view(r, 128, c, 4).permute(0, 2, 1, 3).reshape(-1, 4, 32, 4).transpose(1, 2)
    return blocks.reshape(-1, 32, 16).flatten()


def _fp4_scaled_mm(a: NVFP4Tensor, a_cw: bool, b: NVFP4Tensor, b_cw: bool, out_dtype):  # pragma: no cover
    """sm_100+ FP4 tensor-core GEMM. NEVER RUN: written from the documented layout, untested."""
    a_data, a_scale, a_amax = _layout(a, a_cw)
    b_data, b_scale, b_amax = _layout(b, b_cw)
    alpha, shift = gemm_alpha(a_amax, b_amax)
    out = torch._scaled_mm(a_data.view(torch.float4_e2m1fn_x2), b_data.view(torch.float4_e2m1fn_x2).t(),
                           _swizzle_scales(a_scale), _swizzle_scales(b_scale), out_dtype=torch.float32)
    return (out * (alpha * shift)).to(out_dtype)


def _layout(t: NVFP4Tensor, columnwise: bool):
    if columnwise:
        return t.columnwise_data, t.columnwise_scale_inv, t.amax_columnwise
    return t.rowwise_data, t.rowwise_scale_inv, t.amax_rowwise


def _check_operands(a, b, a_columnwise: bool, b_columnwise: bool) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, NVFP4Tensor):
            raise TypeError(f"nvfp4_gemm: argument {name} must be an NVFP4Tensor, got {type(t).__name__} "
                            "(quantize it with NVFP4Quantizer first)")
    for name, t, cw in (("a", a, a_columnwise), ("b", b, b_columnwise)):
        if _layout(t, cw)[0] is None:
            raise ValueError(f"nvfp4_gemm: operand {name} lacks its {'columnwise' if cw else 'rowwise'} layout")
    a_rht, b_rht = a_columnwise and a.rht, b_columnwise and b.rht
    if a_rht != b_rht:
        raise ValueError("nvfp4_gemm: one operand's K dim is RHT-transformed and the other's is not "
                         f"(a: {'RHT columnwise' if a_rht else 'plain'}, b: {'RHT columnwise' if b_rht else 'plain'});"
                         " the product is only meaningful when both or neither are (quantize both with rht=True)")
    if a.device != b.device:
        raise ValueError(f"nvfp4_gemm: operands are on {a.device} and {b.device}")


def operand_dtype(out_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype nvfp4_gemm decodes its operands into for an ``out_dtype`` result on ``device``: out_dtype where it
    is bf16 or fp16, else bf16 on a GPU and fp32 on a CPU (e2m1 * e4m3 values are exact in all three)."""
    if device.type != "cuda":
        return torch.float32
    return out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def nvfp4_gemm(a: NVFP4Tensor, b: NVFP4Tensor, *, a_columnwise: bool = False, b_columnwise: bool = False,
               out_dtype: torch.dtype | None = None, a_operand: torch.Tensor | None = None) -> torch.Tensor:
    """C [M, N] = A @ B^T for A the chosen layout of ``a`` ([M, K]) and B that of ``b`` ([N, K]).

    Both layouts are blocked along K (the contraction dim). ``out_dtype`` defaults to ``a.dtype``.
    ``a_operand``: A's layout already decoded ([M, K] in :func:`operand_dtype`, as
    :meth:`NVFP4Quantizer.quantize_with_operands` returns it); only B is decoded then. Same bits either way.
    """
    _check_operands(a, b, a_columnwise, b_columnwise)
    out_dtype = out_dtype or a.dtype
    a_data, a_scale, a_amax = _layout(a, a_columnwise)
    b_data, b_scale, b_amax = _layout(b, b_columnwise)
    if a_data.shape[-1] != b_data.shape[-1]:
        raise ValueError(f"nvfp4_gemm: contraction dims differ, A has K = {2 * a_data.shape[-1]} and B has "
                         f"K = {2 * b_data.shape[-1]}")
    device = a_data.device
    if _use_fp4_scaled_mm(device):  # pragma: no cover - never ran
        return _fp4_scaled_mm(a, a_columnwise, b, b_columnwise, out_dtype)
    backend = backends.select(a.backend, device)
    # e2m1 * e4m3 values lie in [2^-10, 2688] with <= 6 significant bits: exact in bf16 and in fp16
    op_dtype = operand_dtype(out_dtype, device)
    if a_operand is None:
        a_op, b_op, alpha, _ = backend.decode_operands(a_data, a_scale, b_data, b_scale, a_amax, b_amax, op_dtype)
        return backend.gemm(a_op, b_op, alpha, out_dtype)
    rows = a_data.shape[0] * a_data.shape[1] if a_data.dim() == 3 else a_data.shape[0]
    if (tuple(a_operand.shape) != (rows, 2 * a_data.shape[-1]) or a_operand.dtype != op_dtype
            or a_operand.device != device):
        raise ValueError(f"nvfp4_gemm: a_operand must be A's layout decoded, a {op_dtype} tensor of shape "
                         f"({rows}, {2 * a_data.shape[-1]}) on {device}, got {a_operand.dtype} "
                         f"{tuple(a_operand.shape)} on {a_operand.device}")
    b_op, alpha, _ = backend.decode_operand_b(b_data, b_scale, a_amax, b_amax, op_dtype)
    return backend.gemm(a_operand, b_op, alpha, out_dtype)


def operand_gemm(a_op: torch.Tensor, b_op: torch.Tensor, alpha: torch.Tensor, out_dtype: torch.dtype, *,
                 b_kn: bool = False) -> torch.Tensor:
    """C [M, N] = alpha * A [M, K] @ B^T for B [N, K] (``b_kn``: A @ B for B [K, N]): one GEMM of operands already
    decoded, A scaled for the pair and alpha as :meth:`NVFP4Quantizer.quantize_for_gemm` gives them, B decoded with
    d = 1 (fp32 accumulation, one rounding to ``out_dtype``). On the backend of A's device."""
    return backends.select("auto", a_op.device).gemm(a_op, b_op, alpha, out_dtype, b_kn=b_kn)
