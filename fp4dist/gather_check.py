"""The checks that shards of one ``all_gather_nvfp4`` belong together, with no host sync in the steady state.

Host check, once per distinct signature per group (every call with ``validate="always"``): each rank
all-gathers a header, int64 [HEADER_LEN] on the CPU (gloo) or the current GPU (NCCL):

    0 status (0, or an ``ERRORS`` code for a bad argument on this rank)   1 ndim   2-9 shape (-1 padded)
    10 dtype index   11 flags (1 rowwise, 2 columnwise, 4 block_2d, 8 rht, 16 stochastic_rounding)
    12 SR seed (0 without SR)   13 validate option index

and reads them on the host (together with the device check's pending result below): a bad argument on
any rank or headers that differ from rank 0's raise the same message on every rank (a TypeError on a
rank that passed something other than an NVFP4Tensor, else ValueError). The signature (words 1-13) is
then cached for the group.

Device check, every gather: the gathered trailers (``gather_buffer``: amax bits, SR rng_offset and row
base, status), int64 [world, 4], must all equal rank 0's. Each rank compares them on its device and keeps,
per group and device, a count of the gathers that disagreed and the last disagreeing trailers; every rank
sees the same gathered bytes, so every rank counts the same. The group's next host check and
``check_gathers`` read the count on the host and raise, naming the rank and the field that differ.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist

from fp4dist.collectives import all_gather_single
from fp4dist.format import SUPPORTED_DTYPES
from fp4dist.gather_buffer import AMAX, ROW_BASE, RNG_OFFSET, STATUS, resolve_group
from fp4dist.tensor import NVFP4Tensor

MAX_DIMS = 8
DTYPES = SUPPORTED_DTYPES
VALIDATE = ("first", "always")
HEADER_LEN = 2 + MAX_DIMS + 4
_SHAPE, _DTYPE, _FLAGS, _SEED, _VALIDATE = 2, 2 + MAX_DIMS, 3 + MAX_DIMS, 4 + MAX_DIMS, 5 + MAX_DIMS
_FLAG_NAMES = ("rowwise", "columnwise", "block_2d", "rht", "stochastic_rounding")

#: status codes of a rank's bad argument: what its peers are told
ERRORS = {
    1: "passed something that is not an NVFP4Tensor",
    2: f"passed an NVFP4Tensor of more than {MAX_DIMS} dims",
    3: f"passed an unknown validate option (one of {VALIDATE} is needed)",
    4: "passed unknown options to all_gather_nvfp4",
    5: f"passed an NVFP4Tensor whose dtype is not one of {DTYPES}",
    6: "passed an NVFP4Tensor whose components do not match its shape and layouts",
}


def local_problem(t, validate, options: dict) -> tuple[int, str | None]:
    """(code, message) for an argument this rank cannot gather, or (0, None)."""
    if not isinstance(t, NVFP4Tensor):
        return 1, f"all_gather_nvfp4 takes an NVFP4Tensor, got {type(t).__name__}"
    if options:
        return 4, f"all_gather_nvfp4 got unknown options {sorted(options)}"
    if validate not in VALIDATE:
        return 3, f"validate must be one of {VALIDATE}, got {validate!r}"
    if len(t.shape) > MAX_DIMS or len(t.shape) < 2:
        return (2 if len(t.shape) > MAX_DIMS else 6), (f"all_gather_nvfp4 supports 2 to {MAX_DIMS} dims, "
                                                       f"got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        return 5, f"all_gather_nvfp4 supports dtypes {DTYPES}, got {t.dtype}"
    if not (t.has_rowwise or t.has_columnwise):
        return 6, "all_gather_nvfp4: the NVFP4Tensor has no layout"
    m, n = t.matrix_shape
    expected = {"data": m * n // 2, "scale_inv": m * n // 16}
    for layout in ("rowwise", "columnwise"):
        names = {f"{layout}_data": expected["data"], f"{layout}_scale_inv": expected["scale_inv"],
                 f"amax_{layout}": 1}
        present = [getattr(t, k) is not None for k in names]
        if any(present) and not all(present):
            return 6, f"all_gather_nvfp4: the NVFP4Tensor's {layout} layout lacks some of {sorted(names)}"
        for k, numel in names.items():
            if getattr(t, k) is not None and getattr(t, k).numel() != numel:
                return 6, (f"all_gather_nvfp4: {k} has shape {tuple(getattr(t, k).shape)}, which does not fit "
                           f"the logical shape {tuple(t.shape)}")
    return 0, None


def signature(t: NVFP4Tensor, validate: str) -> tuple[int, ...]:
    """Header words 1..HEADER_LEN-1 of a valid shard: what every rank's shard must share."""
    flags = sum(bit << i for i, bit in enumerate((t.has_rowwise, t.has_columnwise, t.block_2d, t.rht,
                                                  t.stochastic_rounding)))
    seed = t.seed & ((1 << 64) - 1) if t.stochastic_rounding else 0
    seed = seed - (1 << 64) if seed >> 63 else seed
    shape = list(t.shape) + [-1] * (MAX_DIMS - len(t.shape))
    return (len(t.shape), *shape, DTYPES.index(t.dtype), flags, seed, VALIDATE.index(validate))


class _DeviceCheck:
    """A group's device-check state on one device: int64 [] count, int64 [world, 4] last bad trailers."""

    def __init__(self, world: int, device: torch.device):
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.record = torch.zeros((world, 4), dtype=torch.int64, device=device)

    def update(self, gathered: torch.Tensor, where, kernels=None) -> None:
        """Count the gather when its trailers (``where``: the :class:`~fp4dist.gather_buffer.GatheredLayout` of the
        gathered bytes ``gathered``) are not all rank 0's, and record them; no host sync. ``kernels``: the CUDA
        backend (one launch), or None for torch ops."""
        if kernels is not None:
            kernels.check_trailers(gathered, where.trailer_offset, where.trailer_stride, where.world, self.count,
                                   self.record)
            return
        trailers = where.trailers(gathered)
        bad = (trailers != trailers[0]).any()
        torch.where(bad, trailers, self.record, out=self.record)
        self.count.add_(bad)


class GroupState:
    """What one process group has validated: signatures, the gather plans built for them (by
    ``distributed.plan_key``), the last plan gathered with, device checks."""

    def __init__(self):
        self.signatures: set[tuple[int, ...]] = set()
        self.plans: dict[tuple, object] = {}
        self.last = None  # the plan of the last gather (its layout and device), for a rank that has no shard
        self.devices: dict[torch.device, _DeviceCheck] = {}

    def device_check(self, world: int, device: torch.device) -> _DeviceCheck:
        if device not in self.devices:
            self.devices[device] = _DeviceCheck(world, device)
        return self.devices[device]


_STATES: dict[object, GroupState] = {}


def group_state(group) -> GroupState:
    if group not in _STATES:
        _STATES[group] = GroupState()
    return _STATES[group]


def compiled_device_check(group, device: torch.device) -> _DeviceCheck | None:
    """The device check that an eager gather over ``group`` on ``device`` set up (None if none did)."""
    state = _STATES.get(group)
    return None if state is None else state.devices.get(device)


def header_device(group) -> torch.device:
    """Where the header goes: the CPU unless the group speaks NCCL only (then the current GPU)."""
    backend = str(dist.get_backend(group))
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend and "gloo" not in backend \
        else torch.device("cpu")


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def describe_trailers(rows: list[list[int]]) -> str | None:
    """A message for gathered trailers (int64 [world, 4] as lists) that are not all rank 0's, else None."""
    ref = rows[0]
    for rank, row in enumerate(rows):
        if row[STATUS]:
            return (f"rank {rank} {ERRORS.get(row[STATUS], 'had a bad argument')} while the others gathered "
                    f"(it sent no shard: that gather's result is garbage)")
    for rank, row in enumerate(rows[1:], start=1):
        if row[AMAX] != ref[AMAX]:
            amax = lambda w: (_f32(w), _f32(w >> 32))
            return (f"rank {rank} was quantized with amax (rowwise, columnwise) = {amax(row[AMAX])} but rank 0 "
                    f"with {amax(ref[AMAX])}: shards must share one global scale, quantize them with "
                    f"NVFP4Quantizer(amax_group=group)")
        if row[RNG_OFFSET] != ref[RNG_OFFSET]:
            return (f"rank {rank} was quantized with rng_offset {row[RNG_OFFSET]} but rank 0 with {ref[RNG_OFFSET]}: "
                    f"the shards of one stochastically rounded tensor draw from one stream")
        if row[ROW_BASE] != ref[ROW_BASE]:
            return (f"rank {rank} was quantized with row_offset - rank * m = {row[ROW_BASE]} but rank 0 with "
                    f"{ref[ROW_BASE]}: with stochastic rounding each shard's row_offset must be its first row in "
                    f"the gathered tensor (quantize_for_gather sets it)")
    return None


def describe_headers(headers: list[list[int]]) -> str | None:
    """A message naming the first rank with a bad argument or a header unlike rank 0's, or None."""
    for rank, h in enumerate(headers):
        if h[0]:
            return f"rank {rank} {ERRORS.get(h[0], 'had a bad argument')}"
    ref = headers[0]
    shape = lambda h: tuple(h[_SHAPE:_SHAPE + h[1]])
    for rank, h in enumerate(headers[1:], start=1):
        if h == ref:
            continue
        if shape(h) != shape(ref):
            if shape(h)[1:] == shape(ref)[1:]:
                return (f"rank {rank} has a shard of shape {shape(h)} but rank 0 has {shape(ref)}: uneven shards "
                        f"are not supported, every rank must hold the same number of rows along dim 0")
            return f"rank {rank} has shape {shape(h)} but rank 0 has {shape(ref)}"
        if h[_DTYPE] != ref[_DTYPE]:
            return f"rank {rank} has dtype {DTYPES[h[_DTYPE]]} but rank 0 has {DTYPES[ref[_DTYPE]]}"
        flags = lambda h: {k: bool(h[_FLAGS] >> i & 1) for i, k in enumerate(_FLAG_NAMES)}
        if flags(h) != flags(ref):
            if flags(h)["stochastic_rounding"] != flags(ref)["stochastic_rounding"]:
                return (f"rank {rank} was quantized with stochastic_rounding={flags(h)['stochastic_rounding']} but "
                        f"rank 0 with {flags(ref)['stochastic_rounding']}: every shard must be rounded the same way")
            return f"rank {rank} has layout {flags(h)} but rank 0 has {flags(ref)}"
        if h[_SEED] != ref[_SEED]:
            return (f"rank {rank} was quantized with SR seed {h[_SEED]} but rank 0 with {ref[_SEED]}: the shards of "
                    f"one stochastically rounded tensor draw from one stream")
        return f"rank {rank} gathers with validate={VALIDATE[h[_VALIDATE]]!r} but rank 0 with " \
               f"{VALIDATE[ref[_VALIDATE]]!r}"
    return None


def _pending(state: GroupState) -> list[list[int]]:
    """The device checks read on the host, one flat list [count, *record] per device."""
    return [torch.cat((d.count.reshape(1), d.record.reshape(-1))).tolist() for d in state.devices.values()]


def _raise_pending(state: GroupState, flat: list[list[int]], world: int) -> None:
    for d, vals in zip(list(state.devices.values()), flat):
        if vals[0]:
            d.count.zero_()
            rows = [vals[1 + 4 * r:5 + 4 * r] for r in range(world)]
            raise ValueError(f"all_gather_nvfp4: {vals[0]} gather(s) over this group since the last check had "
                             f"shards that do not belong together; the last: {describe_trailers(rows)}")


def exchange_headers(header: list[int], group, world: int, state: GroupState, detail: str | None = None) -> None:
    """All-gather ``header`` (HEADER_LEN ints) and read the headers and pending device checks on the host;
    raises the same ValueError on every rank (``detail``, this rank's own message, appended) on a problem."""
    dev = header_device(group)
    mine = torch.tensor(header, dtype=torch.int64).to(dev)
    gathered = torch.empty(world * HEADER_LEN, dtype=torch.int64, device=dev)
    all_gather_single(gathered, mine, group=group)
    headers = gathered.view(world, HEADER_LEN).tolist()  # the host sync of a validation
    pending = _pending(state)
    problem = describe_headers(headers)
    if problem:
        raise ValueError(f"all_gather_nvfp4: {problem}" + (f" ({detail})" if detail else ""))
    _raise_pending(state, pending, world)


def check_trailers_now(trailers: torch.Tensor) -> None:
    """``validate="always"``: read the gathered trailers (int64 [world, 4]) on the host and raise on a mismatch."""
    problem = describe_trailers(trailers.tolist())
    if problem:
        raise ValueError(f"all_gather_nvfp4: {problem}")


def check_gathers(group=None) -> None:
    """Raise, on every rank of ``group``, if a gather over it since the last check had shards that do not
    belong together (amaxes, SR offsets, a rank without a shard). Reads the device check on the host: call it
    where the program syncs anyway (e.g. when logging the loss)."""
    group = resolve_group(group)
    state = _STATES.get(group)
    if state is not None:
        _raise_pending(state, _pending(state), dist.get_world_size(group))
