"""nvfp4_gemm: C = alpha * (A_codes*scales) @ (B_codes*scales)^T with alpha = S_dec(A) * S_dec(B).

Each operand is one layout of an NVFP4Tensor decoded *without* its global scale, i.e.
``e2m1(code) * e4m3(scale)``: a value with at most 6 significant bits in [2^-10, 2688], exactly
representable in bf16. The product is accumulated in fp32 and the two fp32 global decode scales
are applied as alpha to the fp32 result, which is then rounded once to ``out_dtype``:

* CPU: fp32 matmul of the decoded operands.
* CUDA (sm_90, and the default on every GPU): bf16 GEMM of the exactly-decoded operands (cuBLAS,
  fp32 accumulation) with alpha passed to cuBLAS as a device pointer (csrc/gemm_alpha.cpp), which
  scales the fp32 accumulator before the one rounding to the output dtype, with no host sync.
  Without that extension: ``torch.addmm`` with alpha read on the host (one sync per GEMM) for
  bf16/fp16 outputs, and an fp32 product times alpha for fp32 outputs.
* sm_100+: ``torch._scaled_mm`` on float4_e2m1fn_x2 data with swizzled E4M3 scales, only when
  ``FP4DIST_FP4_SCALED_MM=1``. THIS PATH HAS NEVER RUN (no Blackwell GPU was available); it is
  off by default for that reason.
"""

from __future__ import annotations

import os

import torch

from fp4dist.format import global_decode_scale
from fp4dist.tensor import NVFP4Tensor


def _operand(t: NVFP4Tensor, columnwise: bool, dtype: torch.dtype) -> torch.Tensor:
    return t.decode_layout(columnwise=columnwise, dtype=dtype, global_scale=False)


def _fp32_out_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b[N, K]^T accumulated and returned in fp32 (bf16 inputs on CUDA)."""
    try:
        return torch.mm(a, b.t(), out_dtype=torch.float32)
    except (TypeError, RuntimeError):  # torch without the out_dtype overload
        return torch.mm(a.float(), b.float().t())


def _use_fp4_scaled_mm(device: torch.device) -> bool:
    return (os.environ.get("FP4DIST_FP4_SCALED_MM") == "1" and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] >= 10 and hasattr(torch, "float4_e2m1fn_x2"))


def _swizzle_scales(scale: torch.Tensor) -> torch.Tensor:
    """[rows, K/16] e4m3 -> the 128x4-tile blocked layout cuBLAS expects for block-scaled FP4 (untested)."""
    rows, cols = scale.shape
    padded = torch.zeros(((rows + 127) // 128 * 128, (cols + 3) // 4 * 4), dtype=scale.dtype, device=scale.device)
    padded[:rows, :cols] = scale
    r, c = padded.shape[0] // 128, padded.shape[1] // 4
    blocks = padded.view(r, 128, c, 4).permute(0, 2, 1, 3).reshape(-1, 4, 32, 4).transpose(1, 2)
    return blocks.reshape(-1, 32, 16).flatten()


def _fp4_scaled_mm(a: NVFP4Tensor, a_cw: bool, b: NVFP4Tensor, b_cw: bool, alpha, out_dtype):  # pragma: no cover
    """sm_100+ FP4 tensor-core GEMM. NEVER RUN: written from the documented layout, untested."""
    a_data = (a.columnwise_data if a_cw else a.rowwise_data).view(torch.float4_e2m1fn_x2)
    b_data = (b.columnwise_data if b_cw else b.rowwise_data).view(torch.float4_e2m1fn_x2)
    a_scale = _swizzle_scales(a.columnwise_scale_inv if a_cw else a.rowwise_scale_inv)
    b_scale = _swizzle_scales(b.columnwise_scale_inv if b_cw else b.rowwise_scale_inv)
    out = torch._scaled_mm(a_data, b_data.t(), a_scale, b_scale, out_dtype=torch.float32)
    return (out * alpha).to(out_dtype)


def nvfp4_gemm(a: NVFP4Tensor, b: NVFP4Tensor, *, a_columnwise: bool = False, b_columnwise: bool = False,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """C [M, N] = A @ B^T for A the chosen layout of ``a`` ([M, K]) and B that of ``b`` ([N, K]).

    Both layouts are blocked along K (the contraction dim). ``out_dtype`` defaults to ``a.dtype``.
    """
    a_amax = a.amax_columnwise if a_columnwise else a.amax_rowwise
    b_amax = b.amax_columnwise if b_columnwise else b.amax_rowwise
    if a_amax is None or b_amax is None:
        raise ValueError("nvfp4_gemm: an operand lacks the requested layout "
                         f"(a {'columnwise' if a_columnwise else 'rowwise'}, b {'columnwise' if b_columnwise else 'rowwise'})")
    out_dtype = out_dtype or a.dtype
    alpha = global_decode_scale(a_amax) * global_decode_scale(b_amax)
    device = a.device
    if _use_fp4_scaled_mm(device):  # pragma: no cover - never ran
        return _fp4_scaled_mm(a, a_columnwise, b, b_columnwise, alpha, out_dtype)
    # e2m1 * e4m3 values lie in [2^-10, 2688] with <= 6 significant bits: exact in bf16 and in fp16
    half = out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    op_dtype = half if device.type == "cuda" else torch.float32
    a_op, b_op = _operand(a, a_columnwise, op_dtype), _operand(b, b_columnwise, op_dtype)
    if a_op.shape[1] != b_op.shape[1]:
        raise ValueError(f"nvfp4_gemm: contraction dims differ, A is {list(a_op.shape)} and B is {list(b_op.shape)}")
    if device.type == "cuda":
        from fp4dist.backends import cuda as cuda_backend
        if cuda_backend.gemm_alpha_available():
            return cuda_backend.gemm_alpha(a_op, b_op, alpha, out_dtype)
    if device.type == "cuda" and out_dtype != torch.float32:
        zero = torch.zeros((), dtype=out_dtype, device=device).expand(a_op.shape[0], b_op.shape[0])
        return torch.addmm(zero, a_op, b_op.t(), beta=0, alpha=alpha.item())
    acc = _fp32_out_mm(a_op, b_op) if device.type == "cuda" else a_op @ b_op.t()
    return (acc * alpha).to(out_dtype)
