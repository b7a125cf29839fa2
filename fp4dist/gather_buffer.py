"""The byte buffer that ``all_gather_nvfp4`` moves in one collective, and the gathered tensor's views of it.

A shard of logical shape [s, ...], viewed as X [m, n], lives in one uint8 buffer of ``S`` bytes. Each
part present starts at a 16-byte aligned offset, in this order (a layout not quantized takes no bytes):

=======================  =====================  ==========================================================
part                     bytes                  view
=======================  =====================  ==========================================================
rowwise_data             m * n/2                uint8 [m, n/2]
rowwise_scale_inv        m * n/16               float8_e4m3fn [m, n/16]
columnwise_data          n * m/2                uint8 [n, m/2]
columnwise_scale_inv     n * m/16               float8_e4m3fn [n, m/16]
trailer                  32                     int64 [4], see below
=======================  =====================  ==========================================================

``S`` is the trailer's end rounded up to a multiple of ``SIZE_ALIGN`` (4096; the bytes after the trailer are
not read). Trailer words: 0 holds the fp32 bits of amax_rowwise
(low half) and amax_columnwise (high half), 0 for a layout not present; 1 the SR ``rng_offset`` and
2 the shard's ``row_offset - rank * m`` (both 0 without stochastic rounding); 3 a status, 0 or the
code of a bad argument (``gather_check.ERRORS``) sent by a rank that has no shard to send.

``all_gather_single`` of the ranks' buffers gives uint8 [world * S] = [world, S], rank-major. The
gathered tensor (logical [world * s, ...], X [world * m, n]) takes from it (:class:`GatheredLayout`, computed
once per layout and world):

* rowwise data / scales: ``as_strided`` views [world, m, n/2] / [world, m, n/16] (stride(0) = S), no copy;
  with world == 1 the 2-D views [m, n/2] / [m, n/16];
* columnwise data / scales: with world == 1 the 2-D views [n, m/2] / [n, m/16] (the reorder is the identity);
  else one ``swap_first_dims_parts`` launch reads the strided [world, n, m/2] and [world, n, m/16] slices in
  place and writes [n, world, m/2] = [n, world * m/2] and [n, world * m/16] into one new buffer (the scales at
  the first 16-byte aligned offset after the data), whose views they are;
* amaxes: fp32 0-dim views of rank 0's trailer word 0 (every rank's must agree; ``gather_check``).

``quantize_for_gather`` has the quantizer write a shard's components straight into such a buffer, so the
gather sends it as it is; any other NVFP4Tensor is copied into a new buffer first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fp4dist.tensor import NVFP4Tensor

ALIGN = 16
SIZE_ALIGN = 4096  # S, the buffer's size: a device copy of a byte count off this granularity runs far slower
AMAX, RNG_OFFSET, ROW_BASE, STATUS = range(4)
_E4M3 = torch.float8_e4m3fn


def resolve_group(group):
    """``group``, or the default group for None (one object per group, so it can key a cache)."""
    return dist.group.WORLD if group is None else group


def _as_int64(v: int) -> int:
    """v mod 2^64 as a signed 64-bit value (what an int64 word holds)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


class ShardLayout:
    """Byte offsets of one shard's parts in its gather buffer (module docstring)."""

    def __init__(self, m: int, n: int, rowwise: bool, columnwise: bool):
        self.m, self.n, self.rowwise, self.columnwise = m, n, rowwise, columnwise
        self.dims = (m, n, rowwise, columnwise)
        spec = []
        if rowwise:
            spec += [("rowwise_data", torch.uint8, (m, n // 2)), ("rowwise_scale_inv", _E4M3, (m, n // 16))]
        if columnwise:
            spec += [("columnwise_data", torch.uint8, (n, m // 2)), ("columnwise_scale_inv", _E4M3, (n, m // 16))]
        spec.append(("trailer", torch.int64, (4,)))
        self.parts, offset = [], 0
        for name, dtype, shape in spec:
            size = shape[0] * shape[1] if len(shape) == 2 else 8 * shape[0]
            self.parts.append((name, offset, size, dtype, shape))
            offset = (offset + size + ALIGN - 1) // ALIGN * ALIGN
        self.nbytes = (offset + SIZE_ALIGN - 1) // SIZE_ALIGN * SIZE_ALIGN

    @classmethod
    def of(cls, t: NVFP4Tensor) -> "ShardLayout":
        m, n = t.matrix_shape
        return cls(m, n, t.has_rowwise, t.has_columnwise)

    def views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each part of uint8 ``buf`` [..., S] viewed as [..., *shape] in its dtype."""
        lead = buf.shape[:-1]
        return {name: buf[..., off:off + size].view(dtype).view(*lead, *shape)
                for name, off, size, dtype, shape in self.parts}


def amaxes(trailer: torch.Tensor) -> torch.Tensor:
    """fp32 [..., 2] (amax_rowwise, amax_columnwise): a view of the trailers' word 0."""
    return trailer[..., AMAX:AMAX + 1].view(torch.float32)


def write_trailer(trailer: torch.Tensor, t: NVFP4Tensor, rank: int) -> None:
    """Words 1-3 of ``t``'s trailer (int64 [4]) for ``rank``, and word 0's half of an absent layout."""
    amax = amaxes(trailer)
    for i, present in enumerate((t.has_rowwise, t.has_columnwise)):
        if not present:
            amax[i].zero_()
    if t.stochastic_rounding:
        if isinstance(t.rng_offset, torch.Tensor):  # int64 [1] on the device: copied there, no host read
            trailer[RNG_OFFSET].copy_(t.rng_offset.reshape(()))
        else:
            trailer[RNG_OFFSET].fill_(_as_int64(t.rng_offset))
        trailer[ROW_BASE].fill_(_as_int64(t.row_offset - rank * t.matrix_shape[0]))
        trailer[STATUS].zero_()
    else:
        trailer[RNG_OFFSET:].zero_()


_COMPONENTS = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv", "amax_rowwise",
               "amax_columnwise")


@dataclass
class ShardBuffer:
    """``data`` (uint8 [layout.nbytes]) holds the shard whose components are ``components`` (the six
    ``NVFP4Tensor`` component fields in their order, None where absent), with the trailer written for ``group``."""

    data: torch.Tensor
    layout: ShardLayout
    group: object
    components: tuple

    def holds(self, t: NVFP4Tensor, group) -> bool:
        """True while ``t`` still has exactly these components and is gathered over the same group."""
        c = self.components
        return (group is self.group and t.rowwise_data is c[0] and t.rowwise_scale_inv is c[1]
                and t.columnwise_data is c[2] and t.columnwise_scale_inv is c[3] and t.amax_rowwise is c[4]
                and t.amax_columnwise is c[5])


def quantize_for_gather(quantizer, x: torch.Tensor, group=None, *, amax: torch.Tensor | None = None,
                        rng_offset: int | torch.Tensor = 0, row_offset: int | None = None,
                        rowwise: bool | None = None, columnwise: bool | None = None) -> NVFP4Tensor:
    """Quantize this rank's shard ``x`` straight into a gather buffer for ``all_gather_nvfp4(t, group)``.

    The same as ``quantizer.quantize(x, amax=amax, rng_offset=rng_offset, row_offset=row_offset,
    rowwise=rowwise, columnwise=columnwise)`` (bit for bit), with ``row_offset`` defaulting to ``rank * m`` (this shard's first row in the
    gathered tensor); the components are views of one buffer (module docstring) that the gather sends
    without a copy. The quantizer should have ``amax_group=group`` (the gather checks the amaxes agree).
    """
    group = resolve_group(group)
    rowwise = quantizer.rowwise if rowwise is None else rowwise
    columnwise = quantizer.columnwise if columnwise is None else columnwise
    quantizer.check_input(x, rowwise, columnwise)
    rank = dist.get_rank(group)
    m, n = x.numel() // x.shape[-1], x.shape[-1]
    layout = ShardLayout(m, n, rowwise, columnwise)
    buf = torch.empty(layout.nbytes, dtype=torch.uint8, device=x.device)
    views = layout.views(buf)
    trailer = views.pop("trailer")
    amax_views = amaxes(trailer)
    out = dict(views)
    if rowwise:
        out["amax_rowwise"] = amax_views[0]
    if columnwise:
        out["amax_columnwise"] = amax_views[1]
    t = quantizer.quantize(x, amax=amax, rng_offset=rng_offset, row_offset=rank * m if row_offset is None else row_offset,
                           rowwise=rowwise, columnwise=columnwise, out=out)
    write_trailer(trailer, t, rank)
    t.gather_buffer = ShardBuffer(buf, layout, group, tuple(getattr(t, k) for k in _COMPONENTS))
    return t


def shard_buffer(t: NVFP4Tensor, layout: ShardLayout, group, rank: int) -> torch.Tensor:
    """uint8 [layout.nbytes]: ``t``'s own buffer when it holds one for ``group``, else a copy into a new one."""
    held = t.gather_buffer
    if isinstance(held, ShardBuffer) and held.layout.dims == layout.dims and held.holds(t, group):
        return held.data
    buf = torch.empty(layout.nbytes, dtype=torch.uint8, device=t.device)
    views = layout.views(buf)
    for k, v in t.component_tensors().items():
        if k.startswith("amax"):
            amaxes(views["trailer"])[0 if k == "amax_rowwise" else 1].copy_(v.reshape(()))
        else:
            views[k].copy_(v.reshape(views[k].shape))
    write_trailer(views["trailer"], t, rank)
    return buf


def error_buffer(layout: ShardLayout, status: int, device: torch.device) -> torch.Tensor:
    """A buffer of ``layout``'s size that carries only ``status`` (a rank with a bad argument sends it)."""
    buf = torch.zeros(layout.nbytes, dtype=torch.uint8, device=device)
    layout.views(buf)["trailer"][STATUS].fill_(status)
    return buf


def _align(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def swap_first_dims_parts_torch(src: torch.Tensor, a: int, in_offsets, in_stride, rows, row_bytes, out_offsets,
                                out_nbytes: int) -> torch.Tensor:
    """The torch form of the CUDA ``swap_first_dims_parts`` (same bytes): part k of uint8 ``src`` (a tensor of its own
    storage, offset 0), [a, rows[k], row_bytes[k]] at in_offsets[k] with slice i at + i * in_stride[k], as
    [rows[k], a, row_bytes[k]] at out_offsets[k] of a new uint8 [out_nbytes] (one copy per part)."""
    out = torch.empty(out_nbytes, dtype=torch.uint8, device=src.device)
    for off, stride, b, r, o in zip(in_offsets, in_stride, rows, row_bytes, out_offsets):
        part = src.as_strided((a, b, r), (stride, r, 1), off)
        out[o:o + a * b * r].view(b, a, r).copy_(part.transpose(0, 1))
    return out


class GatheredLayout:
    """Where the gathered tensor's components lie in the gathered bytes uint8 [world * S] of ``layout``'s
    shards (module docstring), as ``as_strided`` arguments: computed once, applied at every gather."""

    def __init__(self, layout: ShardLayout, world: int):
        m, n, S = layout.m, layout.n, layout.nbytes
        self.layout, self.world, self.nbytes = layout, world, world * S
        offset = {name: off for name, off, _, _, _ in layout.parts}
        #: (name, size, stride, storage offset, dtype) of views of the gathered bytes
        self.views = []
        if layout.rowwise:
            for name, dtype, cols in (("rowwise_data", torch.uint8, n // 2), ("rowwise_scale_inv", _E4M3, n // 16)):
                size, stride = ((m, cols), (cols, 1)) if world == 1 else ((world, m, cols), (S, cols, 1))
                self.views.append((name, size, stride, offset[name], dtype))
        #: swap_first_dims_parts arguments of the columnwise reorder (world > 1), and views of its output
        self.swap, self.swapped_views = None, []
        if layout.columnwise:
            parts = (("columnwise_data", torch.uint8, m // 2), ("columnwise_scale_inv", _E4M3, m // 16))
            if world == 1:
                self.views += [(name, (n, r), (r, 1), offset[name], dtype) for name, dtype, r in parts]
            else:
                scale_at = _align(n * world * (m // 2))
                self.swap = (world, [offset[name] for name, _, _ in parts], [S, S], [n, n],
                             [r for _, _, r in parts], [0, scale_at], scale_at + n * world * (m // 16))
                self.swapped_views = [(name, (n, world * r), (world * r, 1), at, dtype)
                                      for (name, dtype, r), at in zip(parts, (0, scale_at))]
        self.trailer_offset, self.trailer_stride = offset["trailer"], S
        self.amax_index = offset["trailer"] // 4 + 2 * AMAX  # fp32 index of amax_rowwise; amax_columnwise follows

    def trailers(self, gathered: torch.Tensor) -> torch.Tensor:
        """int64 [world, 4]: the ranks' trailers, a view of ``gathered``."""
        return gathered.view(torch.int64).as_strided((self.world, 4), (self.trailer_stride // 8, 1),
                                                     self.trailer_offset // 8)

    def components(self, gathered: torch.Tensor, swap=swap_first_dims_parts_torch) -> dict[str, torch.Tensor]:
        """The gathered tensor's components (``NVFP4Tensor`` field names) from ``gathered`` (a tensor of its own
        storage); ``swap`` does the columnwise reorder (the CUDA backend's one launch, or the torch form)."""
        comps = {}
        for name, size, stride, off, dtype in self.views:
            v = gathered.as_strided(size, stride, off)
            comps[name] = v if dtype is torch.uint8 else v.view(dtype)
        if self.swap is not None:
            out = swap(gathered, *self.swap)
            for name, size, stride, off, dtype in self.swapped_views:
                v = out.as_strided(size, stride, off)
                comps[name] = v if dtype is torch.uint8 else v.view(dtype)
        amax = gathered.view(torch.float32)
        if self.layout.rowwise:
            comps["amax_rowwise"] = amax[self.amax_index]
        if self.layout.columnwise:
            comps["amax_columnwise"] = amax[self.amax_index + 1]
        return comps
