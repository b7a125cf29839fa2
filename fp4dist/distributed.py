"""all_gather_nvfp4: gather an NVFP4Tensor along its first logical dim across a process group, in one collective.

Sequence parallelism shards activations along dim 0 (the sequence/token dim). Each rank holds a
shard of logical shape [s, ...] viewed as X_r [m, n]; the gathered tensor is [world * s, ...].

A gather is one ``all_gather_single`` of every rank's shard buffer (layout, offsets and the gathered
views: :mod:`fp4dist.gather_buffer`): the rowwise data and scales of the result are rank-major views of
the gathered bytes, [world, m, n/2] and [world, m, n/16]; the columnwise data [n, m/2] and scales
[n, m/16] arrive as [world, n, ...] and one ``swap_first_dims_parts`` launch reorders both to
[n, world * ...] (the spec's distributed section; with world 1 they are views too); the amaxes travel in
the buffer. A shard made by ``quantize_for_gather`` already lies in such a buffer and is sent as it is;
any other NVFP4Tensor is copied into one first.

Steady state: everything that depends only on the signature (the views' sizes, strides and offsets,
the reorder's arguments, the result's metadata, the backend, the device check) is a :class:`GatherPlan`
built once per signature per group. A gather of a shard that holds its buffer then costs: one dict
look-up, one allocation (the gathered bytes, which the result views), the collective, the device check
(one CUDA launch; torch ops on the CPU; none at world 1, where there is nothing to compare), the views
and, with the columnwise layout and world > 1, the reorder launch. That path makes no host read, so a CUDA graph can capture it once the signature has
been gathered eagerly.

Shards must have been quantized with ``amax_group=group`` (one global amax) and, with stochastic
rounding, with one seed and rng_offset and ``row_offset = rank * m`` (``quantize_for_gather``'s
default); the result then has the bits of quantizing the gathered high-precision tensor.

Checks (:mod:`fp4dist.gather_check`), chosen by ``validate``:

* ``"first"`` (default): the first gather of a signature (shape, dtype, layouts, block_2d, rht, SR and
  seed, validate) over a group exchanges a small header and reads it on the host, raising the same
  clear error on every rank; later gathers of that signature are one collective and no host read. The
  amaxes and SR offsets are compared on the device at every gather; a disagreement raises on every rank
  at the group's next header exchange or ``check_gathers(group)``.
* ``"always"``: the header exchange and a host read of the gathered amaxes at every call, which raises
  at the call (for debugging).

With ``"first"`` every rank must make the same sequence of gathers, as with any collective. A rank
given a bad argument (not an NVFP4Tensor, more than 8 dims, an unknown option) still joins what its
peers do: the header exchange while the group has not gathered yet or with ``"always"`` (all raise
there), else a collective of the last gathered size that carries its error code, so its peers do not
block and raise at their next check. A rank whose shard alone changes signature once the group is in
its steady state cannot be told apart from a legitimate new signature without a collective: debug
such a program with ``validate="always"``.

Under ``torch.compile`` (fullgraph, once the signature has been gathered eagerly over the group) the
host checks are skipped and the device check stays; ``async_op=True`` is traced as the synchronous
collective (dynamo's functional collective, whose wait the compiler places), and the handle's ``wait()``
only finishes the result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fp4dist import backends
from fp4dist.backends import reference
from fp4dist.collectives import all_gather_single
from fp4dist.gather_buffer import GatheredLayout, ShardBuffer, ShardLayout, error_buffer, quantize_for_gather, \
    resolve_group, shard_buffer, swap_first_dims_parts_torch
from fp4dist.gather_check import ERRORS, HEADER_LEN, _STATES, check_gathers, check_trailers_now, \
    compiled_device_check, exchange_headers, group_state, local_problem, signature
from fp4dist.tensor import NVFP4Tensor

__all__ = ["all_gather_nvfp4", "quantize_for_gather", "check_gathers", "NVFP4GatherHandle"]


class NVFP4GatherHandle:
    """Returned by ``all_gather_nvfp4(..., async_op=True)``: ``wait()`` finishes and returns the tensor."""

    def __init__(self, work, finish, *args):
        self._work, self._finish, self._args, self._result = work, finish, args, None

    def wait(self) -> NVFP4Tensor:
        if self._result is None:
            if self._work is not None:  # None: a compiled gather (no c10d work object)
                self._work.wait()
            self._result = self._finish(*self._args)
            self._args = None
        return self._result


def plan_key(t: NVFP4Tensor, validate: str) -> tuple:
    """What a :class:`GatherPlan` depends on (a finer key than the header signature: also device and backend)."""
    return (t.shape, t.dtype, t.rowwise_data is not None, t.columnwise_data is not None, t.block_2d, t.rht,
            t.stochastic_rounding, t.seed, t.backend, t.device, validate)


class GatherPlan:
    """Everything a gather of one signature over one group needs that does not change between calls.

    ``where``: the :class:`GatheredLayout` (views of the gathered bytes, reorder arguments); ``kernels``: the CUDA
    backend when the shard's backend resolves to it (one launch each for the check and the reorder), else None
    (torch ops); ``check``: the group's device check on this device; ``finisher``: on the CUDA backend outside
    torch.compile, the C++ object that launches the check and the reorder and makes the views in one call.
    """

    def __init__(self, t: NVFP4Tensor, validate: str, world: int, rank: int, check):
        self.layout = ShardLayout.of(t)
        self.where = GatheredLayout(self.layout, world)
        self.world, self.rank, self.device, self.check = world, rank, t.device, check
        self.always = validate == "always"
        kernels = backends.select(t.backend, t.device)
        self.kernels = None if kernels is reference else kernels
        self.swap = swap_first_dims_parts_torch if self.kernels is None else self.kernels.swap_first_dims_parts
        # CUDA, eager: the check, the reorder and the views in one C++ call
        self.finisher = None if self.kernels is None or torch.compiler.is_compiling() or self.always else \
            self.kernels.gather_finisher(self.where, check.count, check.record)
        self.shape = torch.Size((t.shape[0] * world, *t.shape[1:]))
        self.row_base = rank * self.layout.m

    def holds(self, t: NVFP4Tensor, group) -> bool:
        """True when ``t``'s components are views of a gather buffer of this layout for ``group`` (sent as is)."""
        held = t.gather_buffer
        return type(held) is ShardBuffer and held.layout.dims == self.layout.dims and held.holds(t, group)

    def start(self, send: torch.Tensor, t: NVFP4Tensor, group, async_op: bool, compiling: bool = False):
        """The collective of ``send`` (uint8 [S]) and the result (or the handle that makes it)."""
        gathered = torch.empty(self.where.nbytes, dtype=torch.uint8, device=self.device)
        # dynamo traces only the synchronous form, as a functional collective whose wait the compiler places
        work = all_gather_single(gathered, send, group=group, async_op=async_op and not compiling)
        if async_op:
            return NVFP4GatherHandle(work, self.finish, gathered, t, compiling)
        return self.finish(gathered, t, compiling)

    def finish(self, gathered: torch.Tensor, t: NVFP4Tensor, compiling: bool = False) -> NVFP4Tensor:
        """The gathered NVFP4Tensor: views of ``gathered`` (and the reorder's output), after the check."""
        if self.finisher is not None and not compiling:
            rd, rs, cd, cs, amax_r, amax_c = self.finisher(gathered)
        else:
            if self.always and not compiling:
                check_trailers_now(self.where.trailers(gathered))
            elif self.world > 1:  # one rank's trailer always equals rank 0's
                self.check.update(gathered, self.where, self.kernels)
            c = self.where.components(gathered, self.swap)
            rd, rs, cd, cs = (c.get(k) for k in ("rowwise_data", "rowwise_scale_inv", "columnwise_data",
                                                 "columnwise_scale_inv"))
            amax_r, amax_c = c.get("amax_rowwise"), c.get("amax_columnwise")
        return NVFP4Tensor(
            rd, rs, cd, cs, amax_r, amax_c, self.shape, t.dtype, block_2d=t.block_2d, rht=t.rht,
            backend=t.backend, stochastic_rounding=t.stochastic_rounding, seed=t.seed, rng_offset=t.rng_offset,
            row_offset=t.row_offset - self.row_base if t.stochastic_rounding else 0)


def _error(code: int):
    """The exception class of a bad argument: TypeError for what is not an NVFP4Tensor."""
    return TypeError if code == 1 else ValueError


def _refuse(code: int, problem: str, group, world: int, rank: int, validate, state) -> None:
    """A rank that cannot gather joins the collective its peers make (module docstring), then raises."""
    error = _error(code)
    if validate == "always" or state.last is None:
        try:
            exchange_headers([code] + [0] * (HEADER_LEN - 1), group, world, state, detail=problem)
        except ValueError as e:
            raise error(str(e)) from None
    last = state.last
    all_gather_single(torch.empty(world * last.layout.nbytes, dtype=torch.uint8, device=last.device),
                      error_buffer(last.layout, code, last.device), group=group)
    raise error(f"all_gather_nvfp4: rank {rank} {ERRORS[code]} ({problem}); it sent its error in place of a shard "
                f"of the last gathered size, its peers raise at their next check")


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def all_gather_nvfp4(t: NVFP4Tensor, group: dist.ProcessGroup | None = None, async_op: bool = False, *,
                     validate: str = "first", **options):
    """Gather ``t`` along dim 0 of its logical shape over ``group``; returns an NVFP4Tensor
    (or, with ``async_op=True``, an :class:`NVFP4GatherHandle`) with the same layouts present.

    ``validate``: "first" or "always" (module docstring). Other keyword options are refused (on every rank).
    """
    group = resolve_group(group) if dist.is_available() and dist.is_initialized() else group
    compiling = torch.compiler.is_compiling()
    if not (options or compiling) and type(t) is NVFP4Tensor:  # the steady state: a known plan, the shard's buffer
        state = _STATES.get(group)
        plan = None if state is None else state.plans.get(plan_key(t, validate))
        if plan is not None and not plan.always and plan.holds(t, group):
            state.last = plan
            return plan.start(t.gather_buffer.data, t, group, async_op)
    return _gather(t, group, async_op, validate, options, compiling)


def _gather(t, group, async_op: bool, validate, options: dict, compiling: bool):
    """all_gather_nvfp4 beyond the steady state: argument checks, the header exchange of a new signature
    (or of every call with validate="always"), a new plan, a shard copied into a buffer."""
    code, problem = local_problem(t, validate, options)
    if code and not (dist.is_available() and dist.is_initialized()):
        raise _error(code)(problem)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if compiling:
        if code:
            raise _error(code)(problem)
        check = compiled_device_check(group, t.device)
        if check is None:
            raise RuntimeError("all_gather_nvfp4 under torch.compile skips the host checks: gather a shard of this "
                               "signature over this group eagerly once first")
        plan = GatherPlan(t, validate, world, rank, check)
        return plan.start(shard_buffer(t, plan.layout, group, rank), t, group, async_op, compiling=True)
    state = group_state(group)
    if code:
        _refuse(code, problem, group, world, rank, validate, state)
    sig = signature(t, validate)
    if validate == "always" or sig not in state.signatures:
        if _capturing(t.device):
            raise RuntimeError("all_gather_nvfp4 in a CUDA graph capture cannot check a new signature (a host "
                               "read): gather a shard of this signature over this group eagerly once first, "
                               "with validate='first'")
        exchange_headers([0, *sig], group, world, state)
        state.signatures.add(sig)
    key = plan_key(t, validate)
    plan = state.plans.get(key)
    if plan is None:
        plan = state.plans[key] = GatherPlan(t, validate, world, rank, state.device_check(world, t.device))
    state.last = plan  # what a rank without a shard sends next (_refuse)
    return plan.start(shard_buffer(t, plan.layout, group, rank), t, group, async_op)
