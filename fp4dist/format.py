"""The NVFP4 format: E2M1 codes, nibble packing, E4M3 block scales and the fp32 global scale.

Everything here follows docs/numerics.md bit for bit and is pure PyTorch, so it is
the executable form of the spec that every backend is tested against.

* E2M1 code ``c`` (uint8 in [0, 16)): magnitude ``E2M1_VALUES[c & 7]``, negative when ``c & 8``.
* Packing: two codes per byte, element ``2i`` in the low nibble, ``2i + 1`` in the high nibble
  (the layout of ``torch.float4_e2m1fn_x2``).
* Block scales are ``torch.float8_e4m3fn``; the per-tensor scale is fp32.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 16
#: the high-precision dtypes fp4dist quantizes from and decodes to (the order is their code in gather headers)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
FLT_MAX = torch.finfo(torch.float32).max
INV_SIX = (torch.tensor(1.0, dtype=torch.float32) / 6).item()  #: fp32(1/6), exactly, as a Python float

#: Magnitudes of E2M1 codes 0..7 (codes 8..15 are the same values negated; code 8 is -0).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = torch.tensor(E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES), dtype=torch.float32)

# Round-to-nearest-even thresholds on |v|: a code is the number of thresholds that |v| passes.
# ">" thresholds send a tie down to the even code, ">=" thresholds send it up to the even code.
_RN_STRICT = (0.25, 1.25, 2.5, 5.0)
_RN_INCLUSIVE = (0.75, 1.75, 3.5)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., k] (k even, values < 16) -> packed uint8 [..., k/2], element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dim, got {tuple(codes.shape)}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 [..., k/2] -> uint8 codes [..., k]."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> their fp32 values (code 8 gives -0.0)."""
    return E2M1_VALUES.to(codes.device)[codes.long()]


def _sign_bit(v: torch.Tensor) -> torch.Tensor:
    return (v < 0).to(torch.uint8) << 3


def round_to_e2m1(v: torch.Tensor) -> torch.Tensor:
    """fp32 v, already clamped to [-6, 6] -> E2M1 codes, round to nearest, ties to the even code.

    The sign bit is set when v < 0, so -0.1 gives code 8 and -0.0 gives code 0. A NaN gives code 0.
    """
    mag = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for t in _RN_STRICT:
        code += (mag > t).to(torch.uint8)
    for t in _RN_INCLUSIVE:
        code += (mag >= t).to(torch.uint8)
    return code | _sign_bit(v)


def round_to_e2m1_stochastic(v: torch.Tensor, random_bits: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding of fp32 v in [-6, 6] to E2M1 codes.

    ``random_bits`` holds uniform 32-bit integers (int64 tensor of v's shape); its top 24 bits give
    r = k * 2^-24 in [0, 1). With a <= |v| < b the neighbouring E2M1 magnitudes, the result is b when
    r < (|v| - a) / (b - a), else a. Both the difference and the quotient are exact in fp32 (b - a is
    a power of two and |v| lies in [a, 2a] or a = 0), so every backend gets the same bits.
    """
    mag = v.abs()
    magnitudes = E2M1_VALUES[:8].to(v.device)
    lower = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for t in E2M1_MAGNITUDES[1:]:
        lower += (mag >= t).to(torch.uint8)
    upper = (lower + 1).clamp_(max=7)
    low_val, up_val = magnitudes[lower.long()], magnitudes[upper.long()]
    step = torch.where(lower == 7, torch.ones_like(mag), up_val - low_val)
    frac = (mag - low_val) * (1.0 / step)  # 1/step is a power of two: exact
    r = (random_bits >> 8).to(torch.float32) * (2.0**-24)
    code = torch.where(r < frac, upper, lower)
    return code | _sign_bit(v)


def global_encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """S_enc = 2688 / amax (fp32), FLT_MAX where that overflows (amax == 0), 1 where it is 0 (amax == inf)."""
    # full_like, not torch.tensor(..., device=...): a host-to-device copy would stall the host on a GPU;
    # and a true division, not 2688 * (1/amax), which rounds twice
    amax = amax.float()
    s_enc = torch.full_like(amax, E4M3_MAX * E2M1_MAX) / amax
    s_enc = torch.where(s_enc > FLT_MAX, torch.full_like(s_enc, FLT_MAX), s_enc)
    return torch.where(s_enc == 0, torch.ones_like(s_enc), s_enc)


def global_decode_scale(amax: torch.Tensor) -> torch.Tensor:
    """S_dec = 1 / S_enc (fp32)."""
    return 1.0 / global_encode_scale(amax)


def block_scale(block_amax: torch.Tensor, s_enc: torch.Tensor) -> torch.Tensor:
    """Stored E4M3 block scale: e4m3(clamp(min(bmax * fp32(S_enc * fp32(1/6)), FLT_MAX), -448, 448)), RNE."""
    scaled = block_amax * (s_enc * INV_SIX)
    # where() rather than minimum(): it keeps a NaN's bits (a positive NaN -> E4M3 0x7F), whereas the
    # vectorized minimum turns NaN into all-ones (0xFF) on some sizes
    scaled = torch.where(scaled > FLT_MAX, FLT_MAX, scaled)
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def block_encode_scale(scale: torch.Tensor, s_dec: torch.Tensor) -> torch.Tensor:
    """e = min(1 / fp32(float(s) * S_dec), FLT_MAX), fp32, shaped like ``scale``."""
    e = 1.0 / (scale.float() * s_dec)
    return torch.where(e > FLT_MAX, FLT_MAX, e)


GEMM_SHIFT_EXP = 110  #: operand A is scaled by 2^110 (alpha by 2^-110) when fp32 alpha would overflow


def gemm_alpha(amax_a: torch.Tensor, amax_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, shift), fp32 0-dim: the GEMM's scale of the fp32 accumulator and the power of two by which
    operand A's decoded values are multiplied.

    alpha = S_dec(amax_a) * S_dec(amax_b) and shift = 1, unless that product overflows to inf (both amaxes
    near the fp32 range's top): then alpha = (S_dec(amax_a) * 2^-110) * S_dec(amax_b) and shift = 2^110.
    alpha * shift is the same real number either way; the split keeps alpha finite, so a zero row of A gives
    0 rather than 0 * inf = NaN. Both factors are exact (powers of two; S_dec(amax_a) >= 2^11 when the
    product overflows, and e2m1 * e4m3 * 2^110 < 2^122 fits bf16).
    """
    s_a, s_b = global_decode_scale(amax_a), global_decode_scale(amax_b)
    alpha = s_a * s_b
    overflow = torch.isinf(alpha)
    alpha = torch.where(overflow, (s_a * 2.0**-GEMM_SHIFT_EXP) * s_b, alpha)
    shift = torch.where(overflow, torch.full_like(alpha, 2.0**GEMM_SHIFT_EXP), torch.ones_like(alpha))
    return alpha, shift
