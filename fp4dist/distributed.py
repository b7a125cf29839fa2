"""all_gather_nvfp4: gather an NVFP4Tensor along its first logical dim across a process group, in one collective.

Sequence parallelism shards activations along dim 0 (the sequence/token dim). Each rank holds a
shard of logical shape [s, ...] viewed as X_r [m, n]; the gathered tensor is [world * s, ...].

A gather is one ``all_gather_single`` of every rank's shard buffer (layout, offsets and the gathered
views: :mod:`fp4dist.gather_buffer`): the rowwise data and scales of the result are rank-major views of
the gathered bytes, [world, m, n/2] and [world, m, n/16]; the columnwise data [n, m/2] and scales
[n, m/16] arrive as [world, n, ...] and ``swap_first_dims`` reorders each to [n, world * ...] (the
spec's distributed section); the amaxes travel in the buffer. A shard made by ``quantize_for_gather``
already lies in such a buffer and is sent as it is; any other NVFP4Tensor is copied into one first.

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
host checks are skipped and the device check stays.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fp4dist.collectives import all_gather_single
from fp4dist.gather_buffer import ShardLayout, assemble, error_buffer, quantize_for_gather, resolve_group, \
    shard_buffer
from fp4dist.gather_check import ERRORS, HEADER_LEN, check_gathers, check_trailers_now, compiled_device_check, \
    exchange_headers, group_state, local_problem, signature
from fp4dist.tensor import NVFP4Tensor

__all__ = ["all_gather_nvfp4", "quantize_for_gather", "check_gathers", "NVFP4GatherHandle"]


class NVFP4GatherHandle:
    """Returned by ``all_gather_nvfp4(..., async_op=True)``: ``wait()`` finishes and returns the tensor."""

    def __init__(self, work, finish):
        self._work, self._finish, self._result = work, finish, None

    def wait(self) -> NVFP4Tensor:
        if self._result is None:
            if self._work is not None:
                self._work.wait()
            self._result = self._finish()
        return self._result


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
    layout, device = state.last
    all_gather_single(torch.empty(world * layout.nbytes, dtype=torch.uint8, device=device),
                      error_buffer(layout, code, device), group=group)
    raise error(f"all_gather_nvfp4: rank {rank} {ERRORS[code]} ({problem}); it sent its error in place of a shard "
                f"of the last gathered size, its peers raise at their next check")


def all_gather_nvfp4(t: NVFP4Tensor, group: dist.ProcessGroup | None = None, async_op: bool = False, *,
                     validate: str = "first", **options):
    """Gather ``t`` along dim 0 of its logical shape over ``group``; returns an NVFP4Tensor
    (or, with ``async_op=True``, an :class:`NVFP4GatherHandle`) with the same layouts present.

    ``validate``: "first" or "always" (module docstring). Other keyword options are refused (on every rank).
    """
    code, problem = local_problem(t, validate, options)
    if code and not (dist.is_available() and dist.is_initialized()):
        raise _error(code)(problem)
    group = resolve_group(group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    compiling = torch.compiler.is_compiling()
    if compiling:
        if code:
            raise _error(code)(problem)
        check = compiled_device_check(group, t.device)
        if check is None:
            raise RuntimeError("all_gather_nvfp4 under torch.compile skips the host checks: gather a shard of this "
                               "signature over this group eagerly once first")
    else:
        state = group_state(group)
        if code:
            _refuse(code, problem, group, world, rank, validate, state)
        sig = signature(t, validate)
        check = state.device_check(world, t.device)
        if validate == "always" or sig not in state.signatures:
            exchange_headers([0, *sig], group, world, state)
            state.signatures.add(sig)
    layout = ShardLayout.of(t)
    if not compiling:
        state.last = (layout, t.device)  # what a rank without a shard sends next (_refuse)
    send = shard_buffer(t, layout, group, rank)
    gathered = torch.empty(world * layout.nbytes, dtype=torch.uint8, device=t.device)
    work = all_gather_single(gathered, send, group=group, async_op=async_op)

    def finish() -> NVFP4Tensor:
        parts = layout.views(gathered.view(world, layout.nbytes))
        if validate == "always" and not compiling:
            check_trailers_now(parts["trailer"])
        else:
            check.update(parts["trailer"])
        return assemble(t, parts, layout, world, rank)

    handle = NVFP4GatherHandle(work if async_op else None, finish)
    return handle if async_op else handle.wait()
