"""The 16-point Random Hadamard Transform applied before columnwise (wgrad) quantization.

``T = diag(d) @ H16 * 0.25`` with ``H16`` the Sylvester Hadamard matrix and ``d`` the fixed sign
vector of the spec. A chunk ``c`` (16 consecutive values) becomes ``c @ T = ((c * d) @ H16) * 0.25``.

Arithmetic order (the spec leaves it open; every backend uses this one so their bits agree):
the chunk is converted to fp32 and multiplied by ``d`` (exact), ``@ H16`` is a fast Walsh-Hadamard
butterfly in fp32 with strides 1, 2, 4, 8 (each stage maps the pair (a, b) at distance h, first
element's index having bit h clear, to (a + b, a - b)), the result is multiplied by 0.25 and rounded
once to the input dtype. ``T`` is orthogonal, so ``T^T = T^-1`` undoes it.

Overflow (docs/numerics.md, section 6): a chunk whose largest magnitude is at least ``2^124`` could
overflow the fp32 butterfly, so it is multiplied by ``2^-4`` before the butterfly and by 4 instead of
0.25 after it. :func:`columnwise_source` then keeps a transformed value in fp32 where rounding it to
the input dtype would overflow, saturates at +-FLT_MAX, and turns a chunk holding an infinity or a
NaN into 16 NaNs; :func:`columnwise_amax` leaves the chunks with an infinity out of the amax.
"""

from __future__ import annotations

import torch

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
RHT_SIZE = 16
PRESCALE_THRESHOLD = 2.0**124  #: chunks with max|c| >= this are transformed as c * 2^-4 (then * 4)
_FLT_MAX = torch.finfo(torch.float32).max


def hadamard_matrix(size: int = RHT_SIZE) -> torch.Tensor:
    """Sylvester Hadamard matrix (fp32, entries +-1): H1 = [1], H2k = [[Hk, Hk], [Hk, -Hk]]."""
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def rht_matrix() -> torch.Tensor:
    """T = diag(d) @ H16 * 0.25, fp32 [16, 16]."""
    return torch.diag(torch.tensor(RHT_SIGNS, dtype=torch.float32)) @ hadamard_matrix() * 0.25


def _butterfly(v: torch.Tensor) -> torch.Tensor:
    """fp32 [..., 16] -> v @ H16, stages h = 1, 2, 4, 8."""
    lead = v.shape[:-1]
    h = 1
    while h < RHT_SIZE:
        pairs = v.reshape(*lead, RHT_SIZE // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        v = torch.stack((a + b, a - b), dim=-2).reshape(*lead, RHT_SIZE)
        h *= 2
    return v


def _chunks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % RHT_SIZE:
        raise ValueError(f"RHT needs a last dim that is a multiple of 16, got {x.shape[-1]}")
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // RHT_SIZE, RHT_SIZE)


def _transform_chunks(chunks: torch.Tensor, inverse: bool) -> torch.Tensor:
    """fp32 [..., 16] -> c @ T (or c @ T^T), fp32, with the 2^-4 prescale of chunks whose max|c| >= 2^124.

    Below the threshold no stage can overflow (|stage s| <= 2^s max|c| < FLT_MAX), and there the result is
    the spec's. Above it the butterfly runs on fp32(c * 2^-4), whose stages stay below FLT_MAX; the final
    fp32(u * 4) may still be +-inf (a true value beyond FLT_MAX). A NaN max (a NaN input) takes the plain path.
    """
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32, device=chunks.device)
    big = chunks.abs().amax(dim=-1, keepdim=True) >= PRESCALE_THRESHOLD
    pre = torch.where(big, 2.0**-4, 1.0)  # exact powers of two, so pre == 1 leaves the spec's bits
    post = torch.where(big, 4.0, 0.25)
    if inverse:
        return _butterfly(chunks * pre) * post * signs
    return _butterfly(chunks * signs * pre) * post


def rht(x: torch.Tensor, inverse: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Transform every 16-element chunk along the last dim of x: c -> c @ T (or c @ T^T if inverse).

    x: [..., k] with k % 16 == 0, any float dtype. Returns the same shape in ``out_dtype``
    (default x.dtype), rounded once from fp32 (a value beyond ``out_dtype``'s range becomes +-inf here;
    :func:`columnwise_source` is the quantizer's overflow-free form).
    """
    out = _transform_chunks(_chunks(x), inverse)
    return out.reshape(x.shape).to(out_dtype or x.dtype)


def columnwise_source(v: torch.Tensor) -> torch.Tensor:
    """The matrix the RHT'd columnwise layout quantizes: fp32, the shape of v ([n, m], chunks along rows).

    Each value is the transform rounded once to v's dtype, as the spec says, except where that is not
    finite: a value whose rounding to v's dtype overflows keeps its fp32 value, one beyond FLT_MAX
    becomes +-FLT_MAX, and every value of a chunk holding an infinity or a NaN is NaN (its block gets
    the NaN scale 0x7F and codes 0; the amax ignores the infinite ones, see :func:`columnwise_amax`).
    """
    chunks = _chunks(v)
    y = _transform_chunks(chunks, inverse=False)
    rounded = y.to(v.dtype).float()
    kept = torch.where(torch.isfinite(rounded), rounded, y).clamp(-_FLT_MAX, _FLT_MAX)
    finite_chunk = torch.isfinite(chunks).all(dim=-1, keepdim=True)
    return torch.where(finite_chunk, kept, float("nan")).reshape(v.shape)


def columnwise_amax(source: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """amax of the RHT'd columnwise layout, fp32 []: max|source| over the chunks without an infinity; NaN if
    ``v`` (the untransformed [n, m] matrix) holds a NaN. ``source`` = columnwise_source(v)."""
    finite_max = torch.nan_to_num(source.abs(), nan=0.0).amax().float()
    return torch.where(torch.isnan(v).any(), float("nan"), finite_max)
