"""all_gather_nvfp4 across spawned gloo ranks: bits equal to quantizing the full tensor."""

import pytest
import torch
import torch.distributed as dist

from conftest import assert_same_bits
from multiproc import nccl_world, rank_device, run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4, check_gathers, quantize_for_gather

MODES = {
    "rowwise": dict(rowwise=True, columnwise=False),
    "columnwise": dict(rowwise=False, columnwise=True),
    "both": dict(rowwise=True, columnwise=True),
    "both_rht": dict(rowwise=True, columnwise=True, rht=True),
    "block_2d": dict(rowwise=True, columnwise=True, block_2d=True),
    "sr_rht": dict(rowwise=True, columnwise=True, rht=True, stochastic_rounding=True, seed=99),
}


def shard_of(q, shard, rank, how):
    """This rank's shard quantized into a gather buffer (SR offset as a device tensor), or by plain quantize
    (int SR offset; the gather copies it into a buffer)."""
    if how == "buffer":
        return quantize_for_gather(q, shard, rng_offset=torch.tensor([3], device=shard.device))
    return q.quantize(shard, rng_offset=3, row_offset=rank * (shard.numel() // shard.shape[-1]))


def gather_matches_full(rank, world, seed, dtype, device, backend, how):
    device = rank_device(rank, device)
    torch.manual_seed(seed)  # same full tensor on every rank
    local_rows = 32
    full = (torch.randn(local_rows * world, 2, 48) * torch.exp(torch.randn(local_rows * world, 2, 1))).to(dtype)
    full = full.to(device)
    shard = full[rank * local_rows:(rank + 1) * local_rows]
    for name, mode in MODES.items():
        q_group = NVFP4Quantizer(**mode, amax_group=dist.group.WORLD, backend=backend)
        expected = NVFP4Quantizer(**mode, backend=backend).quantize(full, rng_offset=3)
        local = shard_of(q_group, shard, rank, how)
        for gathered in (all_gather_nvfp4(local), all_gather_nvfp4(local, async_op=True).wait()):
            assert_same_bits(gathered.contiguous(), expected)
            assert torch.equal(gathered.dequantize(), expected.dequantize()), name
            if gathered.has_rowwise:
                # rank-major views of the one gathered buffer: [world, m, n/2], no copy
                assert gathered.rowwise_data.shape == (world, 64, 24), gathered.rowwise_data.shape
                assert gathered.rowwise_data.untyped_storage().data_ptr() == \
                    gathered.amax_rowwise.untyped_storage().data_ptr()
                assert torch.equal(gathered.decode_layout(), expected.decode_layout())
    check_gathers()
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("how", ["buffer", "quantize"])
def test_gather_is_bit_identical_to_full_quantization(world, how, gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    run_ranks(gather_matches_full, world, seed, torch.bfloat16, "cpu", "reference", how, timeout=180)


def test_gather_fp32_and_fp16_inputs(gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    for dtype, how in ((torch.float32, "buffer"), (torch.float16, "quantize")):
        run_ranks(gather_matches_full, 2, seed, dtype, "cpu", "reference", how, timeout=180)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("world", [2, 4])
def test_gather_cuda_backend_gloo_over_cuda_tensors(world, gen, cuda_kernels):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    for how in ("buffer", "quantize"):
        run_ranks(gather_matches_full, world, seed, torch.bfloat16, "cuda", "cuda", how, timeout=300)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, one GPU per rank)")
@pytest.mark.parametrize("how", ["buffer", "quantize"])
def test_gather_nccl_one_gpu_per_rank(how, gen, cuda_kernels):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    run_ranks(gather_matches_full, nccl_world(), seed, torch.bfloat16, "cuda:rank", "cuda", how, timeout=300,
              backend="nccl")


def expect_error(rank, world, case):
    q = NVFP4Quantizer(amax_group=None)
    rows = 32
    validate = "first"
    if case == "shape":
        x = torch.randn(rows, 48 if rank == 0 else 64)
    elif case == "uneven":
        x = torch.randn(rows if rank == 0 else 48, 48)
    elif case.startswith("amax"):
        x = torch.randn(rows, 48) * (1 + rank)  # local amax, no group: scales disagree
        validate = "always" if case == "amax_always" else "first"
    elif case == "dtype":
        x = torch.randn(rows, 48).to(torch.bfloat16 if rank == 0 else torch.float32)
    elif case == "layout":
        q = NVFP4Quantizer(columnwise=(rank == 0))
        x = torch.randn(rows, 48)
    elif case == "validate":
        x, validate = torch.randn(rows, 48), ("first" if rank == 0 else "always")
    try:
        all_gather_nvfp4(q.quantize(x), validate=validate)
        if case == "amax_check":
            check_gathers()  # the device check's count, read on the host
        elif case == "amax_next_signature":
            all_gather_nvfp4(NVFP4Quantizer().quantize(torch.zeros(rows, 32)))  # a new signature: header exchange
    except ValueError as e:
        return str(e)
    raise AssertionError(f"rank {rank}: no error for mismatched {case}")


@pytest.mark.parametrize("case,pattern", [
    ("shape", "rank 1 has shape"), ("uneven", "uneven shards"), ("amax_check", "share one global scale"),
    ("amax_always", "share one global scale"), ("amax_next_signature", "share one global scale"),
    ("dtype", "rank 1 has dtype"), ("layout", "rank 1 has layout"), ("validate", "rank 1 gathers with validate")])
def test_mismatched_shards_raise_on_every_rank(case, pattern):
    messages = run_ranks(expect_error, 2, case, timeout=60)
    assert all(pattern in m for m in messages), messages
    assert messages[0] == messages[1]


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="takes an NVFP4Tensor"):
        all_gather_nvfp4(torch.zeros(4))


def test_shard_buffer_size_is_a_whole_number_of_pages(gen):
    """A shard buffer's size S is a multiple of SIZE_ALIGN (a device copy of a byte count off that granularity runs
    ~1.5x slower on an H200: docs/benchmarks.md) and its parts, 16-byte aligned, end with the trailer inside S."""
    from fp4dist.gather_buffer import SIZE_ALIGN, ShardLayout

    for _ in range(20):
        m = 16 * int(torch.randint(1, 300, (1,), generator=gen))
        n = 16 * int(torch.randint(1, 300, (1,), generator=gen))
        rowwise, columnwise = [bool(b) for b in torch.randint(0, 2, (2,), generator=gen)]
        layout = ShardLayout(m, n, rowwise, columnwise)
        end = 0
        for name, offset, size, _, _ in layout.parts:
            assert offset % 16 == 0 and offset >= end, (name, offset, end)
            end = offset + size
        assert layout.parts[-1][0] == "trailer"
        assert layout.nbytes % SIZE_ALIGN == 0 and end <= layout.nbytes < end + SIZE_ALIGN, (layout.nbytes, end)
