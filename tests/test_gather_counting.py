"""What one all_gather_nvfp4 costs: collectives, host reads, copies and aten ops counted per gather (spawned gloo
ranks; on CUDA, NCCL: no host sync). The kernels of a gather on one GPU and its CUDA-graph capture:
tests/test_gather_kernels.py.

The torch.distributed collectives and the Tensor methods that read a value on the host are wrapped with
counters around each gather; the shards are quantized outside the counted region.
"""

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from multiproc import nccl_world, rank_device, run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4, quantize_for_gather

COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "barrier",
               "reduce_scatter_single", "reduce_scatter_tensor", "all_to_all_single", "gather", "scatter")
HOST_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
COPIES = ("copy_", "clone", "cat", "_to_copy")
MODES = {"rowwise": dict(columnwise=False), "columnwise": dict(rowwise=False),
         "both_sr_rht": dict(rht=True, stochastic_rounding=True, seed=3)}


class Count(TorchDispatchMode):
    """Counts collectives, host reads and aten copies while active; ``sent`` records the gathered inputs, ``ops``
    the names of the aten ops that are neither views nor allocations, ``allocations`` the allocations."""

    def __enter__(self):
        self.collectives, self.host_reads, self.copies, self.sent, self._saved = 0, 0, 0, [], []
        self.ops, self.allocations = [], 0
        for name in COLLECTIVES:
            if hasattr(dist, name):
                self._wrap(dist, name, "collectives")
        for name in HOST_READS:
            self._wrap(torch.Tensor, name, "host_reads")
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)
        return super().__exit__(*exc)

    def _wrap(self, owner, name, counter):
        fn = getattr(owner, name)
        self._saved.append((owner, name, fn))

        def counted(*args, **kwargs):
            setattr(self, counter, getattr(self, counter) + 1)
            if name in ("all_gather_single", "all_gather_into_tensor"):
                self.sent.append(args[1])
            return fn(*args, **kwargs)

        setattr(owner, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in COPIES:
            self.copies += 1
        if name.startswith("empty"):
            self.allocations += 1
        elif not func.is_view and name != "detach":
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def count_gathers(rank, world, mode, how, validate, async_op, device="cpu"):
    device = rank_device(rank, device)
    q = NVFP4Quantizer(**MODES[mode], amax_group=dist.group.WORLD)
    shards = []
    for step in range(3):  # fresh values (and amaxes) per gather, one signature
        x = torch.randn(32, 64, device=device) * (step + 1)
        shards.append(quantize_for_gather(q, x, rng_offset=step) if how == "buffer" else
                      q.quantize(x, rng_offset=step, row_offset=rank * 32))
    calls = []
    for i, t in enumerate(shards):
        steady = i > 0 and validate == "first" and device.type == "cuda"
        with Count() as c:
            if steady:  # any host sync in a steady-state gather raises
                torch.cuda.set_sync_debug_mode("error")
            try:
                out = all_gather_nvfp4(t, validate=validate, async_op=async_op)
                if async_op:
                    out = out.wait()
            finally:
                if steady:
                    torch.cuda.set_sync_debug_mode("default")
        sent_own_buffer = how == "buffer" and c.sent[-1] is t.gather_buffer.data
        calls.append((c.collectives, c.host_reads, c.copies, sent_own_buffer, sorted(c.ops), c.allocations))
    return calls


# The steady state of a shard that lies in its buffer, on the reference backend: the collective, over world > 1 the
# device check (compare with rank 0's trailer, any, keep the record, count) and, with the columnwise layout over world > 1, the
# reorder (one copy each of data and scales into one new buffer); everything else is a view.
CHECK_OPS = ["add_", "any", "ne", "where"]
REORDER_OPS = ["copy_", "copy_"]


def expected_steady_ops(mode: str, world: int) -> tuple[list[str], int]:
    """(sorted aten ops, allocations) of a steady-state gather of a ``quantize_for_gather`` shard."""
    reorder = mode != "rowwise" and world > 1
    check = CHECK_OPS if world > 1 else []
    return sorted(["_allgather_base_", *check, *(REORDER_OPS if reorder else [])]), 1 + reorder


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("how", ["buffer", "quantize"])
def test_steady_state_gather_is_one_collective_and_no_host_read(mode, how):
    calls = run_ranks(count_gathers, 2, mode, how, "first", False, timeout=90)
    for rank, per_call in enumerate(calls):
        (first_coll, first_reads, *_), *later = per_call
        assert first_coll == 2 and first_reads >= 1, (rank, per_call)  # header exchange + data
        for collectives, host_reads, copies, sent_own_buffer, ops, allocations in later:
            assert (collectives, host_reads) == (1, 0), (rank, per_call)
            # rowwise: views of the gathered bytes; columnwise: one reorder each of data and scales; a shard
            # not quantized into a buffer is first copied into one (data, scales, amax per layout)
            swaps = 0 if mode == "rowwise" else 2
            components = {"rowwise": 3, "columnwise": 3, "both_sr_rht": 6}[mode]
            assert copies == swaps + (0 if how == "buffer" else components), (mode, how, per_call)
            assert sent_own_buffer == (how == "buffer"), "the shard's own buffer is sent without a pack copy"
            if how == "buffer":
                assert (ops, allocations) == expected_steady_ops(mode, 2), (mode, ops, allocations)


def count_every_mode(rank, world):
    return {(mode, async_op): count_gathers(rank, world, mode, "buffer", "first", async_op)
            for mode in MODES for async_op in (False, True)}


@pytest.mark.parametrize("world", [1, 2])
def test_steady_state_aten_ops_per_gather(world):
    """Every mode, sync and async: the exact aten ops and allocations of a steady-state gather."""
    for per_rank in run_ranks(count_every_mode, world, timeout=120):
        for (mode, async_op), per_call in per_rank.items():
            for collectives, host_reads, _, sent_own_buffer, ops, allocations in per_call[1:]:
                assert (collectives, host_reads, sent_own_buffer) == (1, 0, True), (mode, async_op, per_call)
                assert (ops, allocations) == expected_steady_ops(mode, world), (mode, async_op, world, ops)


def test_async_gather_counts_the_same():
    calls = run_ranks(count_gathers, 2, "both_sr_rht", "buffer", "first", True, timeout=90)
    assert all([c[:2] for c in per_call[1:]] == [(1, 0), (1, 0)] for per_call in calls), calls


def test_validate_always_checks_every_call():
    calls = run_ranks(count_gathers, 2, "rowwise", "buffer", "always", False, timeout=90)
    for per_call in calls:
        assert all(c[0] == 2 and c[1] >= 2 for c in per_call), per_call


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL, one GPU per rank)")
@pytest.mark.parametrize("how", ["buffer", "quantize"])
def test_steady_state_gather_has_no_host_sync_on_nccl(how, cuda_kernels):
    world = nccl_world() if torch.cuda.device_count() >= 2 else 1
    calls = run_ranks(count_gathers, world, "both_sr_rht", how, "first", False, "cuda:rank", timeout=300,
                      backend="nccl")
    for per_call in calls:
        assert all(c[:2] == (1, 0) for c in per_call[1:]), per_call
