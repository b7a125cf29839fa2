"""The 16-point Random Hadamard Transform applied before columnwise (wgrad) quantization.

``T = diag(d) @ H16 * 0.25`` with ``H16`` the Sylvester Hadamard matrix and ``d`` the fixed sign
vector of the spec. A chunk ``c`` (16 consecutive values) becomes ``c @ T = ((c * d) @ H16) * 0.25``.

Arithmetic order (the spec leaves it open; every backend uses this one so their bits agree):
the chunk is converted to fp32 and multiplied by ``d`` (exact), ``@ H16`` is a fast Walsh-Hadamard
butterfly in fp32 with strides 1, 2, 4, 8 (each stage maps the pair (a, b) at distance h, first
element's index having bit h clear, to (a + b, a - b)), the result is multiplied by 0.25 and rounded
once to the input dtype. ``T`` is orthogonal, so ``T^T = T^-1`` undoes it.
"""

from __future__ import annotations

import torch

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
RHT_SIZE = 16


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


def rht(x: torch.Tensor, inverse: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Transform every 16-element chunk along the last dim of x: c -> c @ T (or c @ T^T if inverse).

    x: [..., k] with k % 16 == 0, any float dtype. Returns the same shape in ``out_dtype``
    (default x.dtype), rounded once from fp32.
    """
    if x.shape[-1] % RHT_SIZE:
        raise ValueError(f"RHT needs a last dim that is a multiple of 16, got {x.shape[-1]}")
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32, device=x.device)
    chunks = x.float().reshape(*x.shape[:-1], x.shape[-1] // RHT_SIZE, RHT_SIZE)
    if inverse:
        out = _butterfly(chunks) * 0.25 * signs
    else:
        out = _butterfly(chunks * signs) * 0.25
    return out.reshape(x.shape).to(out_dtype or x.dtype)
