"""all_gather_nvfp4 across spawned gloo ranks: bits equal to quantizing the full tensor."""

import pytest
import torch
import torch.distributed as dist

from conftest import assert_same_bits
from multiproc import nccl_world, rank_device, run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4

MODES = {
    "rowwise": dict(rowwise=True, columnwise=False),
    "columnwise": dict(rowwise=False, columnwise=True),
    "both": dict(rowwise=True, columnwise=True),
    "both_rht": dict(rowwise=True, columnwise=True, rht=True),
    "block_2d": dict(rowwise=True, columnwise=True, block_2d=True),
    "sr_rht": dict(rowwise=True, columnwise=True, rht=True, stochastic_rounding=True, seed=99),
}


def gather_matches_full(rank, world, seed, dtype, device, backend, strategy):
    device = rank_device(rank, device)
    torch.manual_seed(seed)  # same full tensor on every rank
    local_rows = 32
    full = (torch.randn(local_rows * world, 2, 48) * torch.exp(torch.randn(local_rows * world, 2, 1))).to(dtype)
    full = full.to(device)
    shard = full[rank * local_rows:(rank + 1) * local_rows]
    for name, mode in MODES.items():
        q_group = NVFP4Quantizer(**mode, amax_group=dist.group.WORLD, backend=backend)
        q_full = NVFP4Quantizer(**mode, backend=backend)
        m_local = shard.numel() // shard.shape[-1]
        local = q_group.quantize(shard, rng_offset=3, row_offset=rank * m_local)
        expected = q_full.quantize(full, rng_offset=3)
        assert_same_bits(all_gather_nvfp4(local, strategy=strategy), expected)
        assert_same_bits(all_gather_nvfp4(local, async_op=True, strategy=strategy).wait(), expected)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("strategy", ["per_component", "packed"])
def test_gather_is_bit_identical_to_full_quantization(world, strategy, gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    run_ranks(gather_matches_full, world, seed, torch.bfloat16, "cpu", "reference", strategy, timeout=180)


def test_gather_fp32_and_fp16_inputs(gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    for dtype in (torch.float32, torch.float16):
        run_ranks(gather_matches_full, 2, seed, dtype, "cpu", "reference", "per_component", timeout=180)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("world", [2, 4])
def test_gather_cuda_backend_gloo_over_cuda_tensors(world, gen, cuda_kernels):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    run_ranks(gather_matches_full, world, seed, torch.bfloat16, "cuda", "cuda", "per_component", timeout=300)
    run_ranks(gather_matches_full, world, seed, torch.bfloat16, "cuda", "cuda", "packed", timeout=300)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, one GPU per rank)")
@pytest.mark.parametrize("strategy", ["per_component", "packed"])
def test_gather_nccl_one_gpu_per_rank(strategy, gen, cuda_kernels):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    run_ranks(gather_matches_full, nccl_world(), seed, torch.bfloat16, "cuda:rank", "cuda", strategy, timeout=300,
              backend="nccl")


def expect_error(rank, world, case):
    q = NVFP4Quantizer(amax_group=None)
    rows = 32
    if case == "shape":
        x = torch.randn(rows, 48 if rank == 0 else 64)
    elif case == "uneven":
        x = torch.randn(rows if rank == 0 else 48, 48)
    elif case == "amax":
        x = torch.randn(rows, 48) * (1 + rank)  # local amax, no group: scales disagree
    elif case == "dtype":
        x = torch.randn(rows, 48).to(torch.bfloat16 if rank == 0 else torch.float32)
    elif case == "layout":
        q = NVFP4Quantizer(columnwise=(rank == 0))
        x = torch.randn(rows, 48)
    try:
        all_gather_nvfp4(q.quantize(x))
    except ValueError as e:
        return str(e)
    raise AssertionError(f"rank {rank}: no error for mismatched {case}")


@pytest.mark.parametrize("case,pattern", [
    ("shape", "rank 1 has shape"), ("uneven", "uneven shards"), ("amax", "share one global scale"),
    ("dtype", "rank 1 has dtype"), ("layout", "rank 1 has layout")])
def test_mismatched_shards_raise_on_every_rank(case, pattern):
    messages = run_ranks(expect_error, 2, case, timeout=60)
    assert all(pattern in m for m in messages), messages
    assert messages[0] == messages[1]


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="takes an NVFP4Tensor"):
        all_gather_nvfp4(torch.zeros(4))
