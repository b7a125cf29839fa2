"""all_gather_nvfp4: gather an NVFP4Tensor along its first logical dim across a process group.

Sequence parallelism shards activations along dim 0 (the sequence/token dim). Each rank holds a
shard X_r of logical shape [s, ...] viewed as [m, n]; the gathered tensor is [world * s, ...].

* rowwise data [m, n/2] and scales [m, n/16] concatenate along rows: [world * m, ...].
* columnwise data [n, m/2] and scales [n, m/16] arrive as [world, n, m/2] and are reordered by
  ``swap_first_dims`` to [n, world, m/2] = [n, world * m/2] (the spec's distributed section).

Shards must have been quantized with ``amax_group=group`` (one global amax); then the result has the
bits of quantizing the gathered high-precision tensor. A small fixed-size header (shape, dtype,
layouts, amax bits) is all-gathered first, so mismatched shards raise the same clear error on every
rank instead of hanging or corrupting a size-mismatched collective; the amaxes travel in it. The
check reads the gathered headers on the host: one small blocking collective and one host sync per
gather, the price of an error instead of a hang (0.15-0.25 ms per call on 2 H100s over NCCL, measured
when it still took three host syncs: docs/benchmarks.md).
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist

from fp4dist import backends
from fp4dist.tensor import NVFP4Tensor

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (same semantics); older torch has only the former.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

_MAX_DIMS = 8
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_COMPONENTS = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv")
# header: ndim, shape[8], dtype, has_rowwise, has_columnwise, block_2d, rht, amax_row bits, amax_col bits
_HEADER_LEN = 1 + _MAX_DIMS + 7
STRATEGIES = ("packed", "per_component")


def _header(t: NVFP4Tensor) -> torch.Tensor:
    """int64 [_HEADER_LEN] on t's device, built without a host sync: the host-known fields go up in one
    copy (pinned, asynchronous on a GPU) and the amax bits (int32, -1 when absent) are taken on the device."""
    if len(t.shape) > _MAX_DIMS:
        raise ValueError(f"all_gather_nvfp4 supports up to {_MAX_DIMS} dims, got shape {tuple(t.shape)}")
    shape = list(t.shape) + [-1] * (_MAX_DIMS - len(t.shape))
    fields = torch.tensor([len(t.shape), *shape, _DTYPES.index(t.dtype), int(t.has_rowwise), int(t.has_columnwise),
                           int(t.block_2d), int(t.rht), -1, -1], dtype=torch.int64)
    if t.device.type == "cuda":
        fields = fields.pin_memory()
    fields = fields.to(t.device, non_blocking=True)
    for i, amax in ((-2, t.amax_rowwise), (-1, t.amax_columnwise)):
        if amax is not None:
            fields[i] = amax.detach().reshape(()).float().view(torch.int32).to(torch.int64)
    return fields


def _describe_mismatch(headers: list[list[int]]) -> str | None:
    """A message naming the first rank whose header differs from rank 0's, or None if all agree."""
    ref = headers[0]
    for rank, h in enumerate(headers[1:], start=1):
        if h == ref:
            continue
        shape = lambda hh: tuple(hh[1:1 + hh[0]])
        if shape(h) != shape(ref):
            if shape(h)[1:] == shape(ref)[1:]:
                return (f"rank {rank} has a shard of shape {shape(h)} but rank 0 has {shape(ref)}: uneven shards "
                        f"are not supported, every rank must hold the same number of rows along dim 0")
            return f"rank {rank} has shape {shape(h)} but rank 0 has {shape(ref)}"
        i = 1 + _MAX_DIMS
        if h[i] != ref[i]:
            return f"rank {rank} has dtype {_DTYPES[h[i]]} but rank 0 has {_DTYPES[ref[i]]}"
        if h[i + 1:i + 5] != ref[i + 1:i + 5]:
            names = ("rowwise", "columnwise", "block_2d", "rht")
            return (f"rank {rank} has layout {dict(zip(names, map(bool, h[i + 1:i + 5])))} but rank 0 has "
                    f"{dict(zip(names, map(bool, ref[i + 1:i + 5])))}")
        amax = lambda bits: "none" if bits == -1 else struct.unpack("<f", struct.pack("<i", bits))[0]
        return (f"rank {rank} was quantized with amax (rowwise, columnwise) = ({amax(h[-2])}, {amax(h[-1])}) "
                f"but rank 0 with ({amax(ref[-2])}, {amax(ref[-1])}): shards must share one global scale, "
                f"quantize them with NVFP4Quantizer(amax_group=group)")
    return None


def _check_shards(t: NVFP4Tensor, group, world: int) -> None:
    mine = _header(t)
    gathered = torch.empty(world * _HEADER_LEN, dtype=torch.int64, device=t.device)
    _all_gather_single(gathered, mine, group=group)
    problem = _describe_mismatch(gathered.view(world, _HEADER_LEN).tolist())  # the one host sync
    if problem:
        raise ValueError(f"all_gather_nvfp4: {problem}")


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x


class NVFP4GatherHandle:
    """Returned by ``all_gather_nvfp4(..., async_op=True)``: ``wait()`` finishes and returns the tensor."""

    def __init__(self, works, finish):
        self._works, self._finish, self._result = works, finish, None

    def wait(self) -> NVFP4Tensor:
        if self._result is None:
            for w in self._works:
                w.wait()
            self._result = self._finish()
        return self._result


def all_gather_nvfp4(t: NVFP4Tensor, group: dist.ProcessGroup | None = None, async_op: bool = False,
                     strategy: str = "per_component"):
    """Gather ``t`` along dim 0 of its logical shape over ``group``; returns an NVFP4Tensor
    (or, with ``async_op=True``, an :class:`NVFP4GatherHandle`) with the same layouts present.

    ``strategy``: "per_component" issues one ``all_gather_into_tensor`` per component straight into
    its output; "packed" copies all components into one byte buffer and gathers it once.
    See docs/benchmarks.md for how the two compare.
    """
    if not isinstance(t, NVFP4Tensor):
        raise TypeError(f"all_gather_nvfp4 takes an NVFP4Tensor, got {type(t).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    world = dist.get_world_size(group)
    _check_shards(t, group, world)
    m, n = t.matrix_shape
    full_shape = torch.Size((t.shape[0] * world, *t.shape[1:]))
    swap = backends.select(t.backend, t.device).swap_first_dims
    comps = {k: _as_bytes(getattr(t, k)) for k in _COMPONENTS if getattr(t, k) is not None}

    def assemble(rows: dict[str, torch.Tensor]) -> NVFP4Tensor:
        """rows[k]: component k gathered rank-major, [world, *local shape] (bytes)."""
        out = {}
        for k, g in rows.items():
            if k.startswith("rowwise"):
                g = g.reshape(world * g.shape[1], g.shape[2])
            else:
                g = swap(g).reshape(g.shape[1], world * g.shape[2])
            out[k] = g.view(torch.float8_e4m3fn) if k.endswith("scale_inv") else g
        return t.with_components(full_shape, **out)

    if strategy == "per_component":
        # gloo wants the output as [world * rows, ...]; the rank-major [world, rows, ...] is a free view
        outs = {k: torch.empty((world * c.shape[0], *c.shape[1:]), dtype=torch.uint8, device=c.device)
                for k, c in comps.items()}
        works = [_all_gather_single(outs[k], c.contiguous(), group=group, async_op=async_op)
                 for k, c in comps.items()]
        finish = lambda: assemble({k: o.view(world, *comps[k].shape) for k, o in outs.items()})
    else:
        flat = torch.cat([c.reshape(-1) for c in comps.values()])
        gathered = torch.empty(world * flat.numel(), dtype=torch.uint8, device=flat.device)
        works = [_all_gather_single(gathered, flat, group=group, async_op=async_op)]
        gathered = gathered.view(world, flat.numel())

        def finish():
            rows, start = {}, 0
            for k, c in comps.items():
                rows[k] = gathered[:, start:start + c.numel()].reshape(world, *c.shape)
                start += c.numel()
            return assemble(rows)

    handle = NVFP4GatherHandle([w for w in works if w is not None], finish)
    return handle if async_op else handle.wait()
