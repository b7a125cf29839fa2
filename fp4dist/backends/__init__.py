"""Backends that implement the two passes of NVFP4 quantization, dequantization and swap_first_dims.

A backend is a module with these functions (x2d is the input viewed as [m, n], contiguous):

* ``compute_amax(x2d, *, rht) -> fp32 [2]``: (max|X|, max|columnwise source|), the second taken
  after the RHT when ``rht``.
* ``cast(x2d, amax, *, rowwise, columnwise, block_2d, rht, stochastic_rounding, seed, rng_offset,
  row_offset) -> (rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv)``,
  ``None`` for a layout not asked for; ``amax`` is the fp32 [2] tensor of ``compute_amax``
  (possibly MAX-reduced across a group in between).
* ``dequantize(data, scale_inv, decode_scale, out_dtype) -> [rows, 2 * data.shape[1]]``:
  ``e2m1(code) * float(scale) * decode_scale`` with decode_scale an fp32 0-dim tensor.
* ``swap_first_dims(t) -> t'``: [a, b, ...] -> [b, a, ...], contiguous.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

from fp4dist.backends import reference

log = logging.getLogger("fp4dist")
BACKENDS = ("auto", "reference", "cuda")


def cuda_backend() -> ModuleType | None:
    """The CUDA kernel backend, or None (with one log line saying why) when it cannot be used."""
    from fp4dist.backends import cuda

    return cuda if cuda.available() else None


def select(name: str, device: torch.device) -> ModuleType:
    """Resolve a backend name for tensors on ``device``: "auto" takes CUDA kernels when they load."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "reference" or (name == "auto" and device.type != "cuda"):
        return reference
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' needs a CUDA tensor, got one on {device}")
    kernels = cuda_backend()
    if kernels is None:
        if name == "cuda":
            raise RuntimeError("backend='cuda' was asked for but the fp4dist CUDA kernels are unavailable "
                               "(see the fp4dist log line for why)")
        return reference
    return kernels
