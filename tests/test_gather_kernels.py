"""The gather's CUDA kernels against their torch forms, bit for bit, and a steady-state gather on one GPU (NCCL,
world 1): its kernels, and its capture in a CUDA graph.

* ``swap_first_dims_parts`` (one launch, strided slices read in place) vs ``gather_buffer.swap_first_dims_parts_torch``;
* ``check_trailers`` (one launch) vs the torch ops of ``gather_check._DeviceCheck.update``;
* the C++ end of a steady-state gather (``GatherFinish``: check, reorder, views in one call) vs the Python path;
* the gather at world 1: NCCL's own work is all that runs (one rank has nothing to check, no reorder); captured in a CUDA graph, a replay
  gathers whatever the shard's buffer holds then, with the bits of the eager gather.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from conftest import assert_same_bits
from multiproc import run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4, check_gathers, quantize_for_gather
from fp4dist.gather_buffer import GatheredLayout, ShardLayout, swap_first_dims_parts_torch
from fp4dist.gather_check import _DeviceCheck

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

POISONS = (0xAB, 0x5C)


def _parts_region(out: torch.Tensor, a, rows, row_bytes, out_offsets) -> torch.Tensor:
    """The bytes of out that the parts cover (the rest is not written by either form)."""
    return torch.cat([out[o:o + a * b * r] for b, r, o in zip(rows, row_bytes, out_offsets)])


# (a, [(rows, row_bytes)], in_stride padding, extra leading bytes): 16- / 8- / 4- / 1-byte words, one and two parts,
# a = 1, empty parts, strides well beyond a slice
SWAP_CASES = [
    (2, [(64, 16), (64, 2)], 0, 0),
    (4, [(48, 32), (48, 4)], 16, 16),
    (3, [(5, 8)], 8, 8),
    (2, [(7, 12), (7, 4)], 4, 4),
    (5, [(3, 33), (9, 1)], 3, 1),
    (1, [(40, 24), (40, 3)], 0, 16),
    (4, [(0, 16), (16, 16)], 0, 0),
    (8, [(256, 128), (256, 16)], 48, 32),
]


@pytest.mark.parametrize("a,parts,pad,lead", SWAP_CASES)
def test_swap_first_dims_parts_matches_torch(cuda_kernels, gen, a, parts, pad, lead):
    rows, row_bytes = [b for b, _ in parts], [r for _, r in parts]
    in_offsets, offset = [], lead
    for b, r in parts:  # the parts of one rank lie one after the other, every rank's block is `stride` bytes
        in_offsets.append(offset)
        offset += b * r
    stride = offset - lead + pad
    in_stride = [stride] * len(parts)
    src = torch.randint(0, 256, (lead + a * stride,), generator=gen, dtype=torch.uint8)
    out_offsets, o = [], 0
    for b, r in parts:
        out_offsets.append(o)
        o = (o + a * b * r + 15) // 16 * 16
    args = (a, in_offsets, in_stride, rows, row_bytes, out_offsets, o)
    want = _parts_region(swap_first_dims_parts_torch(src, *args), a, rows, row_bytes, out_offsets)
    dev = src.cuda()
    for poison in POISONS:
        torch.cuda.empty_cache()
        torch.full((o + 64,), poison, dtype=torch.uint8, device="cuda")  # freed: the next allocation reuses it
        got = cuda_kernels.swap_first_dims_parts(dev, *args)
        assert torch.equal(_parts_region(got, a, rows, row_bytes, out_offsets).cpu(), want), (a, parts, poison)


def test_swap_first_dims_reads_strided_slices_in_place(cuda_kernels, gen):
    """swap_first_dims of [a, b, r] slices of a wider buffer (stride(0) > b * r) launches no copy first."""
    base = torch.randint(0, 256, (4, 80), generator=gen, dtype=torch.uint8).cuda()
    view = base[:, 16:64].view(4, 6, 8)  # stride(0) = 80
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        got = cuda_kernels.swap_first_dims(view)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "swap" in kernels[0], kernels
    assert torch.equal(got.cpu(), view.cpu().transpose(0, 1).contiguous())


@pytest.mark.parametrize("world", [1, 2, 3, 40])
def test_check_trailers_matches_torch(cuda_kernels, gen, world):
    """Agreeing trailers leave count and record alone; any differing word (of any rank, any field) counts the
    gather and records every row, as the torch ops do. 40 ranks: more words than the kernel's threads."""
    layout = ShardLayout(16, 32, True, True)
    where = GatheredLayout(layout, world)
    row = torch.randint(-2**62, 2**62, (4,), generator=gen, dtype=torch.int64)
    cases = [None] + [(r, w) for r in range(1, world) for w in range(4)][:9]
    ref, dev = _DeviceCheck(world, torch.device("cpu")), _DeviceCheck(world, torch.device("cuda"))
    for case in cases:
        gathered = torch.randint(0, 256, (where.nbytes,), generator=gen, dtype=torch.uint8)
        trailers = where.trailers(gathered)
        trailers.copy_(row.expand(world, 4))
        if case is not None:
            trailers[case] += 1 + int(torch.randint(2**40, (1,), generator=gen))
        ref.update(gathered, where)
        dev.update(gathered.cuda(), where, cuda_kernels)
        assert int(dev.count) == int(ref.count), case
        assert torch.equal(dev.record.cpu(), ref.record), case
    assert int(ref.count) == len(cases) - 1


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("rowwise,columnwise", [(True, False), (False, True), (True, True)])
def test_gather_finisher_matches_the_python_path(cuda_kernels, gen, world, rowwise, columnwise):
    """The C++ end of a steady-state gather gives the tensors (bytes, shapes, strides, dtypes) and the device check
    of GatheredLayout.components after _DeviceCheck.update."""
    from fp4dist.backends import cuda_ops

    where = GatheredLayout(ShardLayout(48, 64, rowwise, columnwise), world)
    names = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv", "amax_rowwise",
             "amax_columnwise")
    ref, dev = _DeviceCheck(world, torch.device("cuda")), _DeviceCheck(world, torch.device("cuda"))
    finish = cuda_ops.gather_finisher(where, dev.count, dev.record)
    for differ in (False, True):
        gathered = torch.randint(0, 256, (where.nbytes,), generator=gen, dtype=torch.uint8).cuda()
        trailers = where.trailers(gathered)
        trailers.copy_(trailers[0].clone().expand(world, 4))
        if differ and world > 1:
            trailers[world - 1, 2] += 1
        ref.update(gathered, where, cuda_ops)
        want = where.components(gathered, cuda_ops.swap_first_dims_parts)
        got = dict(zip(names, finish(gathered)))
        assert {k for k, v in got.items() if v is not None} == set(want)
        for k, v in want.items():
            g = got[k]
            assert (g.shape, g.stride(), g.dtype) == (v.shape, v.stride(), v.dtype), k
            assert torch.equal(g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g,
                               v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v), k
            if "amax" in k or "rowwise" in k or world == 1:  # views of the gathered bytes themselves
                assert g.untyped_storage().data_ptr() == gathered.untyped_storage().data_ptr(), k
        assert int(dev.count) == int(ref.count) and torch.equal(dev.record, ref.record)


def _graph_gather(rank, world, mode):
    """World 1 over NCCL: kernels of a steady-state gather; a CUDA graph of it replays with the eager bits."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda", 0)
    q = NVFP4Quantizer(**mode, amax_group=dist.group.WORLD, backend="cuda")
    xs = [torch.randn(64, 128, device=dev) * s for s in (1.0, 3.0)]
    t = quantize_for_gather(q, xs[0], rng_offset=torch.tensor([4], device=dev))
    other = quantize_for_gather(q, xs[1], rng_offset=torch.tensor([4], device=dev))
    eager = [all_gather_nvfp4(s).contiguous() for s in (t, other)]  # the first validates the signature
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        all_gather_nvfp4(t)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ours = [n for n in names if "nccl" not in n.lower() and "memcpy" not in n.lower() and "memset" not in n.lower()]
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        all_gather_nvfp4(t)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        captured = all_gather_nvfp4(t)
    graph.replay()
    torch.cuda.synchronize()
    assert_same_bits(captured.contiguous(), eager[0])
    t.gather_buffer.data.copy_(other.gather_buffer.data)  # the same buffer, another shard's bytes
    graph.replay()
    torch.cuda.synchronize()
    assert_same_bits(captured.contiguous(), eager[1])
    check_gathers()
    return ours


@pytest.mark.parametrize("mode", [dict(columnwise=False), dict(rht=True, stochastic_rounding=True, seed=5)],
                         ids=["rowwise", "both_sr_rht"])
def test_gather_on_one_gpu_is_the_collective_alone_and_captures_in_a_cuda_graph(cuda_kernels, mode):
    (ours,) = run_ranks(_graph_gather, 1, mode, timeout=300, backend="nccl")
    assert ours == [], ours  # world 1: no reorder, and one rank's trailer has nothing to be checked against
