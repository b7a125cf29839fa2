"""all_gather_nvfp4 under torch.compile(fullgraph=True), world 2 over gloo: quantize + gather trace as one graph
and give the bits of eager mode, and the device-side amax check still runs."""

import pytest
import torch
import torch.distributed as dist

from conftest import as_bits
from multiproc import run_ranks
from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4, check_gathers, quantize_for_gather

# aot_eager: dynamo's graph (fullgraph: no break, the collectives as functional ops) run by AOTAutograd without
# inductor's code generation, which takes minutes per graph on a small CPU
COMPILE = dict(fullgraph=True, backend="aot_eager")


def quantize_and_gather(q, x):
    t = quantize_for_gather(q, x, rng_offset=2)
    return all_gather_nvfp4(t).component_tensors()


def compiled_matches_eager(rank, world, seed):
    torch.manual_seed(seed)
    full = torch.randn(32 * world, 64).to(torch.bfloat16)
    shard = full[rank * 32:(rank + 1) * 32]
    q = NVFP4Quantizer(rht=True, stochastic_rounding=True, seed=11, amax_group=dist.group.WORLD, backend="reference")
    eager = quantize_and_gather(q, shard)  # also validates the signature over the group
    compiled = torch.compile(quantize_and_gather, **COMPILE)(q, shard)
    assert eager.keys() == compiled.keys()
    for k in eager:
        assert torch.equal(as_bits(eager[k]), as_bits(compiled[k])), f"rank {rank}: {k} differs"
    check_gathers()
    # shards quantized with their local amax (no group) inside the compiled graph: the device check counts it
    local = NVFP4Quantizer(rht=True, stochastic_rounding=True, seed=11, backend="reference")
    torch._dynamo.reset()  # dynamo does not guard on the quantizer's amax_group: it would reuse the graph above
    torch.compile(quantize_and_gather, **COMPILE)(local, shard * (rank + 1))
    try:
        check_gathers()
    except ValueError as e:
        return str(e)
    raise AssertionError(f"rank {rank}: the compiled gather of mismatched amaxes was not reported")


@pytest.mark.slow
def test_compiled_quantize_and_gather_is_bit_identical_to_eager(gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    messages = run_ranks(compiled_matches_eager, 2, seed, timeout=400)
    assert all("share one global scale" in m for m in messages), messages
    assert messages[0] == messages[1]


def test_compiling_before_any_eager_gather_is_refused():
    pytest.importorskip("torch._dynamo")
    messages = run_ranks(compile_without_validation, 2, timeout=200)
    assert all("gather a shard of this signature over this group eagerly once first" in m for m in messages)


def compile_without_validation(rank, world):
    q = NVFP4Quantizer(columnwise=False, amax_group=dist.group.WORLD, backend="reference")
    try:
        torch.compile(quantize_and_gather, **COMPILE)(q, torch.randn(32, 64))
    except Exception as e:  # dynamo wraps what the traced code raises
        return str(e)
    raise AssertionError(f"rank {rank}: compiled without a validated signature")


def sp_layers_compiled_match_eager(rank, world, seed):
    from fp4dist import NVFP4Recipe
    from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear, set_rng_step

    torch.manual_seed(seed)
    recipe = NVFP4Recipe(backend="reference")
    group = dist.group.WORLD
    x_full = torch.randn(32 * world, 2, 64)
    x = x_full[rank * 32:(rank + 1) * 32].clone()  # this rank's sequence shard [s, b, h]

    def block():
        up = ColumnParallelLinear(64, 128, sequence_parallel=True, recipe=recipe, tp_group=group, init_seed=1)
        down = RowParallelLinear(128, 64, sequence_parallel=True, recipe=recipe, tp_group=group, init_seed=2)
        return torch.nn.Sequential(up, torch.nn.GELU(), down)

    results = []
    for compiled in (False, True):
        model = block()
        run = torch.compile(model, **COMPILE) if compiled else model
        if compiled:  # the gathers' signatures are validated eagerly once over the group
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        set_rng_step(model, 5)
        xi = x.clone().requires_grad_(True)
        y = run(xi)
        y.square().sum().backward()
        results.append([y.detach(), xi.grad] + [p.grad for p in model.parameters()])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"rank {rank}: tensor {i} of (y, dx, grads) differs compiled vs eager"
    return results[0][0].shape


@pytest.mark.slow
def test_sequence_parallel_layers_compile_fullgraph_and_match_eager(gen):
    """A column-parallel + row-parallel pair with sequence parallelism at TP=2 (gloo, reference backend) under
    torch.compile(fullgraph=True): forward and backward give eager's bits (the NVFP4 gather of X, the
    reduce-scatters, SR drawn at the same step)."""
    seed = int(torch.randint(2**31, (1,), generator=gen))
    shapes = run_ranks(sp_layers_compiled_match_eager, 2, seed, timeout=600)
    assert shapes == [torch.Size([32, 2, 64])] * 2
