"""NVFP4Tensor: one logical tensor held in NVFP4, in a rowwise and/or a columnwise layout."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from fp4dist import backends
from fp4dist.rht import rht as apply_rht


@dataclass
class NVFP4Tensor:
    """An NVFP4-quantized tensor: packed E2M1 codes, E4M3 block scales and fp32 amaxes per layout.

    With ``m = prod(shape[:-1])`` and ``n = shape[-1]`` (the logical tensor viewed as X [m, n]):

    ========================  ======================  =============================================
    field                     dtype / shape           meaning
    ========================  ======================  =============================================
    rowwise_data              uint8 [m, n/2]          X quantized along rows, element 2i low nibble
    rowwise_scale_inv         float8_e4m3fn [m, n/16] block scales of rowwise_data
    columnwise_data           uint8 [n, m/2]          X^T (RHT'd along rows when ``rht``) quantized
    columnwise_scale_inv      float8_e4m3fn [n, m/16] block scales of columnwise_data
    amax_rowwise              fp32 []                 max|X| (the group max when quantized with one)
    amax_columnwise           fp32 []                 max of the columnwise source (after the RHT)
    ========================  ======================  =============================================

    A layout that was not requested has ``None`` data, scales and amax. Decoding an element:
    ``e2m1(code) * float(scale_inv) * (1 / S_enc(amax))`` with ``S_enc(a) = 2688 / a``.

    The rowwise components of a tensor gathered by ``all_gather_nvfp4`` over ``world > 1`` ranks are
    rank-major views of the gathered buffer, uint8 [world, m/world, n/2] and float8_e4m3fn
    [world, m/world, n/16] (row ``r`` of X is ``[r // (m/world), r % (m/world)]``); ``decode_layout`` and
    ``dequantize`` take them as they are, ``contiguous()`` gives the 2-D form.

    ``stochastic_rounding``, ``seed``, ``rng_offset`` and ``row_offset`` record how the codes were
    rounded (the quantizer's options and call arguments), so that shards can be checked to belong
    together. ``gather_buffer`` is set when the components are views of one shard buffer laid out for
    ``all_gather_nvfp4`` (see :mod:`fp4dist.gather_buffer`); replacing components drops it.

    It is a plain container rather than a ``torch.Tensor`` subclass: it holds several tensors of
    different shapes and two layouts, and is only ever consumed by fp4dist's own GEMM, gather and
    autograd functions, so a subclass would add dispatch rules without letting any torch op run on
    it correctly. ``dequantize`` gives an ordinary tensor when one is needed.
    """

    rowwise_data: torch.Tensor | None
    rowwise_scale_inv: torch.Tensor | None
    columnwise_data: torch.Tensor | None
    columnwise_scale_inv: torch.Tensor | None
    amax_rowwise: torch.Tensor | None
    amax_columnwise: torch.Tensor | None
    shape: torch.Size
    dtype: torch.dtype
    block_2d: bool = False
    rht: bool = False
    backend: str = "auto"
    stochastic_rounding: bool = False
    seed: int = 0
    rng_offset: int | torch.Tensor = 0  # an int, or int64 [1] on the device (read there)
    row_offset: int = 0
    gather_buffer: object | None = field(default=None, repr=False, compare=False)

    @property
    def has_rowwise(self) -> bool:
        return self.rowwise_data is not None

    @property
    def has_columnwise(self) -> bool:
        return self.columnwise_data is not None

    @property
    def device(self) -> torch.device:
        return (self.rowwise_data if self.has_rowwise else self.columnwise_data).device

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(m, n): the 2-D view that the layouts are stored for."""
        return self.shape.numel() // self.shape[-1], self.shape[-1]

    def component_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors present, by field name (what a gather or a checkpoint moves)."""
        names = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv",
                 "amax_rowwise", "amax_columnwise")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def with_components(self, shape: torch.Size, **components) -> "NVFP4Tensor":
        """A copy with another logical shape and the given components replaced (no longer a gather buffer's)."""
        return replace(self, shape=torch.Size(shape), gather_buffer=None, **components)

    def contiguous(self) -> "NVFP4Tensor":
        """The same tensor with 2-D contiguous components (rank-major gathered views copied)."""
        flat = {k: v.reshape(-1, v.shape[-1]).contiguous() for k, v in self.component_tensors().items()
                if k.endswith(("_data", "_scale_inv"))}
        return self.with_components(self.shape, **flat)

    def _backend(self):
        return backends.select(self.backend, self.device)

    def decode_layout(self, columnwise: bool = False, dtype: torch.dtype | None = None,
                      global_scale: bool = True) -> torch.Tensor:
        """One layout decoded as stored: rowwise [m, n], columnwise [n, m] (in the RHT domain when rht).

        ``global_scale=False`` leaves out the fp32 decode scale, giving ``e2m1 * scale`` exactly
        (representable in bf16), the GEMM operand to which the decode scale is applied as alpha.
        """
        data, scale, amax = ((self.columnwise_data, self.columnwise_scale_inv, self.amax_columnwise)
                             if columnwise else
                             (self.rowwise_data, self.rowwise_scale_inv, self.amax_rowwise))
        if data is None:
            raise ValueError(f"this NVFP4Tensor has no {'columnwise' if columnwise else 'rowwise'} layout")
        return self._backend().dequantize(data, scale, None, dtype or self.dtype, amax=amax if global_scale else None)

    def dequantize(self, dtype: torch.dtype | None = None, *, columnwise: bool | None = None) -> torch.Tensor:
        """The logical tensor (``self.shape``, ``dtype`` default the original dtype) from one layout.

        ``columnwise=None`` takes the rowwise layout when present, else the columnwise one.
        From the columnwise layout the stored [n, m] matrix is transposed back and, when it was
        RHT'd, transformed by T^T (in fp32) to undo the RHT.
        """
        dtype = dtype or self.dtype
        if columnwise is None:
            columnwise = not self.has_rowwise
        if not columnwise:
            return self.decode_layout(False, dtype).reshape(self.shape)
        cols = self.decode_layout(True, torch.float32)
        if self.rht:
            cols = apply_rht(cols, inverse=True)
        return cols.t().to(dtype).reshape(self.shape)

    def __repr__(self) -> str:
        parts = [f"shape={tuple(self.shape)}", f"dtype={self.dtype}", f"block_2d={self.block_2d}", f"rht={self.rht}"]
        for f in fields(self)[:6]:
            t = getattr(self, f.name)
            if t is not None:
                parts.append(f"{f.name}={list(t.shape)}")
        return f"NVFP4Tensor({', '.join(parts)})"
