"""Counter-based random bits for stochastic rounding.

Each quantized element draws one 32-bit word from a stateless hash of
(seed, rng_offset, stream, row, col), where (row, col) is the element's position in the *full*
2-D view of the logical tensor X (``row`` includes the quantizer call's ``row_offset``, so a
sequence-parallel shard draws the same numbers as the same rows of the full tensor) and ``stream``
tells the rowwise (0) and columnwise (1) layouts apart (2D-tile tensors use stream 0 for both, so
their two layouts stay exact transposes).

    key  = mix32(mix32(mix32(mix32(stream ^ 0x9E3779B9) ^ off_hi) ^ off_lo) ^ seed_hi) ^ seed_lo
    word = mix32(mix32(key ^ row) ^ col)

``mix32`` is the "lowbias32" integer finalizer (x ^= x>>16; x *= 0x7feb352d; x ^= x>>15;
x *= 0x846ca68b; x ^= x>>16, all mod 2^32), a bijection with strong avalanche. The CUDA kernels
compute the same words with native uint32 arithmetic. Rows and cols must be < 2^32.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_STREAM_SALT = 0x9E3779B9
ROWWISE_STREAM, COLUMNWISE_STREAM = 0, 1


def layout_streams(block_2d: bool) -> tuple[int, int]:
    """(rowwise stream, columnwise stream): 0 and 1, or 0 for both with 16x16 tiles (exact transposes)."""
    return ROWWISE_STREAM, ROWWISE_STREAM if block_2d else COLUMNWISE_STREAM


def mix32_int(x: int) -> int:
    """lowbias32 on a Python int in [0, 2^32)."""
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int64 tensor holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def stream_key(seed: int, rng_offset: int, stream: int) -> int:
    """The 32-bit key of one (seed, rng_offset, stream); seed and offset are taken mod 2^64."""
    seed &= (1 << 64) - 1
    rng_offset &= (1 << 64) - 1
    k = mix32_int((stream ^ _STREAM_SALT) & MASK32)
    k = mix32_int(k ^ (rng_offset >> 32))
    k = mix32_int(k ^ (rng_offset & MASK32))
    k = mix32_int(k ^ (seed >> 32))
    return k ^ (seed & MASK32)


def stream_key_tensor(seed: int, rng_offset: torch.Tensor, stream: int) -> torch.Tensor:
    """:func:`stream_key` with the offset an int64 tensor of one element (read where it lives, no host sync).

    Returns an int64 0-dim tensor on the offset's device holding the same 32-bit key.
    """
    seed &= (1 << 64) - 1
    off = rng_offset.reshape(()).long()
    k = mix32_int((stream ^ _STREAM_SALT) & MASK32)
    k = mix32(k ^ ((off >> 32) & MASK32))
    k = mix32(k ^ (off & MASK32))
    k = mix32(k ^ (seed >> 32))
    return k ^ (seed & MASK32)


def random_bits(key: int | torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Uniform 32-bit words (int64) for every (row, col) pair of the broadcast of ``rows`` and ``cols``."""
    return mix32(mix32(rows.long() ^ key) ^ cols.long())
