"""A check that fails on one rank only raises the same clear error on every rank (fp4dist/parallel/agree.py):
the Megatron-style layers (wrong input width, flags and recipes that differ, NVFP4 sequence shards of different
lengths) and the high-precision sequence-parallel collectives (uneven shards). Every rank catches the error
and returns its message; a hang fails run_ranks' deadline."""

import pytest
import torch
import torch.distributed as dist

from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear, agree, comm
from fp4dist.recipe import HighPrecisionRecipe, NVFP4Recipe
from tests.multiproc import run_ranks

pytestmark = pytest.mark.slow


def _error_of(fn):
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


def _wrong_width(rank, world):
    layer = RowParallelLinear(64, 32, recipe=NVFP4Recipe(), input_is_parallel=True, tp_group=dist.group.WORLD)
    width = 64 // world + (16 if rank == world - 1 else 0)
    return _error_of(lambda: layer(torch.randn(32, width)))


@pytest.mark.parametrize("world", [2, 4])
def test_wrong_input_width_on_one_rank_raises_on_every_rank(world):
    last = world - 1
    for rank, msg in enumerate(run_ranks(_wrong_width, world, timeout=90)):
        assert msg is not None, rank
        assert f"this is rank {rank}" in msg
        assert f"rank {last}: ValueError: RowParallelLinear: input last dim is {64 // world + 16}" in msg
        assert f"input shape differs between ranks" in msg


def _sp_flag_differs(rank, world):
    layer = ColumnParallelLinear(32, 64, sequence_parallel=rank == 0, recipe=HighPrecisionRecipe(),
                                 tp_group=dist.group.WORLD)
    return _error_of(lambda: layer(torch.randn(8, 2, 32)))


def test_sequence_parallel_flag_that_differs_raises_on_every_rank():
    for msg in run_ranks(_sp_flag_differs, 2, timeout=90):
        assert msg is not None and "sequence_parallel differs between ranks: rank 0: True, rank 1: False" in msg


def _recipe_differs(rank, world):
    recipe = NVFP4Recipe() if rank == 0 else NVFP4Recipe(stochastic_rounding=False)
    layer = ColumnParallelLinear(32, 64, sequence_parallel=True, recipe=recipe, tp_group=dist.group.WORLD)
    return _error_of(lambda: layer(torch.randn(16, 1, 32)))


def test_recipe_that_differs_raises_on_every_rank():
    for msg in run_ranks(_recipe_differs, 2, timeout=90):
        assert msg is not None and "recipe differs between ranks: rank 0: NVFP4Recipe(" in msg


def _uneven_nvfp4_shards(rank, world):
    layer = ColumnParallelLinear(32, 64, sequence_parallel=True, recipe=NVFP4Recipe(), tp_group=dist.group.WORLD)
    seq = 8 if rank == 1 else 16  # rank 1's shard differs: the NVFP4 gather needs one shard shape
    return _error_of(lambda: layer(torch.randn(seq, 1, 32)))


@pytest.mark.parametrize("world", [2, 4])
def test_uneven_nvfp4_sequence_shards_raise_on_every_rank(world):
    for msg in run_ranks(_uneven_nvfp4_shards, world, timeout=90):
        assert msg is not None and "input shape differs between ranks" in msg
        assert "rank 1: (8, 1, 32)" in msg


def _uneven_hp_shards(rank, world):
    world_group = dist.group.WORLD
    layer = ColumnParallelLinear(32, 64, sequence_parallel=True, recipe=HighPrecisionRecipe(), tp_group=world_group)
    seq = 5 if rank == world - 1 else 4
    layer_msg = _error_of(lambda: layer(torch.randn(seq, 2, 32)))
    gather_msg = _error_of(lambda: comm.gather_seq_from_sp(torch.randn(seq, 3), world_group))
    scatter_msg = _error_of(lambda: comm.reduce_scatter_seq_to_sp(torch.randn(2 * world + (rank == 0), 3), world_group))
    return layer_msg, gather_msg, scatter_msg


@pytest.mark.parametrize("world", [2, 4])
def test_uneven_high_precision_sp_shards_raise_on_every_rank(world):
    last = world - 1
    for layer_msg, gather_msg, scatter_msg in run_ranks(_uneven_hp_shards, world, timeout=90):
        # the layer: its signature (shard shape) differs; the collective alone: its tensor shape
        assert layer_msg is not None and "input shape differs between ranks" in layer_msg
        assert f"rank {last}: (5, 2, 32)" in layer_msg
        assert gather_msg is not None and "all-gather along dim 0" in gather_msg
        assert f"tensor shape differs between ranks: rank 0: (4, 3)" in gather_msg and f"rank {last}: (5, 3)" in gather_msg
        assert scatter_msg is not None and "reduce-scatter along dim 0" in scatter_msg
        assert f"rank 0: ValueError: reduce-scatter along dim 0 needs its size ({2 * world + 1})" in scatter_msg


def _steady_state(rank, world):
    calls = []
    real = agree.dist.all_gather_object

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    agree.dist.all_gather_object = counting
    layer = ColumnParallelLinear(32, 64, sequence_parallel=True, recipe=HighPrecisionRecipe(),
                                 tp_group=dist.group.WORLD)
    x = torch.randn(4, 2, 32, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    first = len(calls)  # layer forward, gather forward, reduce-scatter backward: once each
    for _ in range(5):
        layer(x).sum().backward()
    layer(torch.randn(6, 2, 32, requires_grad=True)).sum().backward()  # a new signature agrees again
    return first, len(calls)


def test_agreement_costs_no_collective_in_the_steady_state():
    for first, total in run_ranks(_steady_state, 2, timeout=90):
        assert first == 3 and total == 6
