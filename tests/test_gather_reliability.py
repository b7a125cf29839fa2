"""all_gather_nvfp4 refuses shards that do not belong together and bad arguments on one rank, on every rank,
without leaving a peer blocked (spawned gloo ranks with deadlines)."""

import pytest
import torch
import torch.distributed as dist

from multiproc import run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4, check_gathers, quantize_for_gather

ROWS, COLS = 32, 48


def _sr_shard(rank, case, seed):
    """A shard of one full tensor whose stochastic rounding differs across ranks as ``case`` says."""
    torch.manual_seed(seed)
    x = torch.randn(ROWS * dist.get_world_size(), COLS)[rank * ROWS:(rank + 1) * ROWS]
    sr = not (case == "sr_one_rank" and rank == 1)
    q = NVFP4Quantizer(rht=True, stochastic_rounding=sr, seed=7 + (rank if case == "sr_seed" else 0),
                       amax_group=dist.group.WORLD)
    if case == "sr_row_offset":
        return quantize_for_gather(q, x, rng_offset=5, row_offset=0)  # every rank draws rows 0..m-1
    return quantize_for_gather(q, x, rng_offset=5 + (rank if case == "sr_rng_offset" else 0))


def sr_mismatch(rank, world, case, seed):
    try:
        all_gather_nvfp4(_sr_shard(rank, case, seed))
        check_gathers()  # offsets are checked on the device: read the result
    except ValueError as e:
        return str(e)
    raise AssertionError(f"rank {rank}: no error for {case}")


@pytest.mark.parametrize("case,pattern", [
    ("sr_one_rank", "rank 1 was quantized with stochastic_rounding=False but rank 0 with True"),
    ("sr_seed", "rank 1 was quantized with SR seed"),
    ("sr_rng_offset", "rank 1 was quantized with rng_offset 6 but rank 0 with 5"),
    ("sr_row_offset", "rank 1 was quantized with row_offset - rank * m = -32 but rank 0 with 0")],
    ids=["sr_one_rank", "sr_seed", "sr_rng_offset", "sr_row_offset"])
def test_stochastic_rounding_mismatch_is_refused_on_every_rank(case, pattern, gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    messages = run_ranks(sr_mismatch, 2, case, seed, timeout=90)
    assert all(pattern in m for m in messages), messages
    assert len(set(messages)) == 1, messages


def _bad_argument(case, good):
    if case == "none":
        return None, {}
    if case == "plain_tensor":
        return torch.zeros(ROWS, COLS), {}
    if case == "nine_dims":
        return NVFP4Quantizer().quantize(torch.randn(2, 2, 2, 2, 2, 2, 2, 2, 16)), {}
    if case == "unknown_validate":
        return good, {"validate": "sometimes"}
    if case == "unknown_option":
        return good, {"strategy": "per_component"}
    raise ValueError(case)


def bad_argument_on_one_rank(rank, world, case, warm):
    """Rank ``world - 1`` passes a bad argument; the others a good shard. With ``warm`` the group has gathered
    (validated) that good shard before, so the peers make the one data collective and raise at check_gathers."""
    good = quantize_for_gather(NVFP4Quantizer(amax_group=dist.group.WORLD), torch.ones(ROWS, COLS))
    if warm:
        all_gather_nvfp4(good)
    bad_rank = world - 1
    t, kwargs = _bad_argument(case, good) if rank == bad_rank else (good, {})
    try:
        all_gather_nvfp4(t, **kwargs)
        if warm:
            check_gathers()
    except (TypeError, ValueError) as e:
        return type(e).__name__, str(e)
    raise AssertionError(f"rank {rank}: no error for a bad argument on rank {bad_rank}")


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case,pattern", [
    ("none", "passed something that is not an NVFP4Tensor"),
    ("plain_tensor", "passed something that is not an NVFP4Tensor"),
    ("nine_dims", "passed an NVFP4Tensor of more than 8 dims"),
    ("unknown_validate", "passed an unknown validate option"),
    ("unknown_option", "passed unknown options")],
    ids=["none", "plain_tensor", "nine_dims", "unknown_validate", "unknown_option"])
@pytest.mark.parametrize("warm", [False, True])
def test_bad_argument_on_one_rank_raises_on_every_rank(world, case, pattern, warm):
    if world == 4 and case not in ("none", "unknown_option"):
        pytest.skip("world 4 runs two of the cases (4 ranks on 2 cores are slow)")
    results = run_ranks(bad_argument_on_one_rank, world, case, warm, timeout=120)
    for rank, (kind, message) in enumerate(results):
        assert f"rank {world - 1} {pattern}" in message, (rank, message)
    kind, message = results[-1]
    if case in ("none", "plain_tensor"):
        assert kind == "TypeError" and "takes an NVFP4Tensor, got" in message, message
