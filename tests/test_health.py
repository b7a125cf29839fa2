"""NVFP4 health stats: known answers, the same numbers computed by hand from the format, the hooks."""

import math

import pytest
import torch

from conftest import random_tensor
from fp4dist import NVFP4Quantizer, NVFP4Recipe
from fp4dist import format as fmt
from fp4dist.health import HealthMonitor, operand_counts, operand_stats, quantize_rowwise, stats_from_counts
from fp4dist.model import GPT, GPTConfig
from fp4dist.parallel import set_rng_step
from multiproc import run_ranks


def test_known_answers_with_unit_global_scale():
    # amax = 448 * 6 makes S_enc = 1: a block's scale is e4m3(bmax / 6) and the codes are x / scale
    x = torch.zeros(2, 64)
    x[0, 0] = 2688.0                                              # block 0: scale 448, saturated
    x[0, 16:22] = torch.tensor([6.0, 3.0, 0.1, 0.2, 1.5, -4.0])   # block 1: scale 1; 0.1 and 0.2 round to 0
    x[0, 32:48] = 1e-3                                            # block 2: scale 1.7e-4 -> e4m3 0: underflow
    x[1, 16] = 3.0                                                # block 5: scale 0.5; 0.05 / 0.5 rounds to 0
    x[1, 17:32] = 0.05                                            # blocks 3, 4, 6, 7: zero
    s = operand_stats(x, NVFP4Quantizer(rowwise=True, columnwise=False))
    x64 = x.double()
    lost = torch.cat([x64[0, 18:20], x64[0, 32:48], x64[1, 17:32]])  # the inputs that decode to 0
    assert s["amax"] == 2688.0
    assert s["saturated"] == 1 / 8 and s["underflow"] == 1 / 8
    assert s["zeroed"] == (2 + 16 + 15) / (1 + 6 + 16 + 16)
    assert s["rel_err"] == pytest.approx(math.sqrt(lost.pow(2).sum() / x64.pow(2).sum()), rel=1e-12)


def by_hand(x: torch.Tensor, t, block_2d: bool) -> dict:
    """The stats from the NVFP4Tensor's fields, decoded with fp4dist.format alone."""
    x2d = x.reshape(-1, x.shape[-1]).float()
    m, n = x2d.shape
    s_enc = fmt.global_encode_scale(x2d.abs().amax())
    blocks = x2d.abs().reshape(m, n // 16, 16).amax(-1)
    if block_2d:
        blocks = x2d.abs().reshape(m // 16, 16, n // 16, 16).amax(dim=(1, 3)).repeat_interleave(16, 0)
    scale = t.rowwise_scale_inv.float()
    assert torch.equal(scale, fmt.block_scale(blocks, s_enc).float())  # the recipe's scales, by the spec's formula
    values = fmt.e2m1_to_float(fmt.unpack_fp4(t.rowwise_data)).reshape(m, n // 16, 16)
    x_hat = (values * scale[..., None] * (1.0 / s_enc)).reshape(m, n)
    nonzero = x2d != 0
    return {"amax": x2d.abs().amax().item(), "saturated": (scale == 448).double().mean().item(),
            "underflow": ((scale == 0) & (blocks > 0)).double().mean().item(),
            "zeroed": ((x_hat == 0) & nonzero).sum().item() / nonzero.sum().item(),
            "rel_err": ((x2d - x_hat).double().norm() / x2d.double().norm()).item()}


@pytest.mark.parametrize("operand", ["X", "W", "dY"])
def test_stats_equal_a_hand_computation_from_the_format(gen, operand):
    recipe = NVFP4Recipe(seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    q = {"X": recipe.input_quantizer(), "W": recipe.weight_quantizer(), "dY": recipe.grad_quantizer(3)}[operand]
    x = random_tensor((4, 48, 96), gen)
    x[0, :16, :] *= 1e-9  # rows far below the amax: zero block scales
    t = quantize_rowwise(x, q)
    got = stats_from_counts(operand_counts(x, t).tolist())
    want = by_hand(x, t, block_2d=operand == "W")
    assert got["amax"] == want["amax"] and got["saturated"] == want["saturated"]
    assert got["underflow"] == want["underflow"] and got["zeroed"] == want["zeroed"]
    assert got["rel_err"] == pytest.approx(want["rel_err"], rel=1e-9)
    assert want["underflow"] > 0 and want["saturated"] > 0  # the case exercises both ends of E4M3


def tiny_gpt(recipe):
    cfg = GPTConfig(vocab_size=256, seq_len=32, d_model=32, n_layers=2, n_heads=2)
    return GPT(cfg, recipe, high_precision_blocks=(1,))


def test_monitor_records_each_nvfp4_layer_only_while_capturing(gen):
    recipe = NVFP4Recipe(seed=5)
    model = tiny_gpt(recipe)
    tokens = torch.randint(0, 256, (2, 32), generator=gen)
    monitor = HealthMonitor(model)
    assert list(monitor.layers) == ["blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.0.mlp.up", "blocks.0.mlp.down"]

    seen = {}  # the operands, captured independently of the monitor's hooks
    layer = model.blocks[0].mlp.up

    def capture_operands(module, args, out):
        seen["x"] = args[0].detach()
        out.register_hook(lambda g: seen.update(dy=g))

    handle = layer.register_forward_hook(capture_operands)
    set_rng_step(model, 7)
    with monitor.capture():
        model(tokens).logsumexp(-1).mean().backward()
    handle.remove()
    grads = [p.grad.clone() for p in model.parameters()]
    stats = monitor.collect()

    assert set(stats) == set(monitor.layers) and all(set(s) == {"X", "W", "dY"} for s in stats.values())
    up = stats["blocks.0.mlp.up"]
    assert up["X"] == operand_stats(seen["x"], recipe.input_quantizer())
    assert up["W"] == operand_stats(layer.weight.detach(), recipe.weight_quantizer())
    assert up["dY"] == operand_stats(seen["dy"], recipe.grad_quantizer(0))
    assert all(not m._forward_pre_hooks and not m._backward_hooks for m in monitor.layers.values())

    model.zero_grad()
    set_rng_step(model, 7)  # the SR draws of the same step
    model(tokens).logsumexp(-1).mean().backward()  # the same step without the monitor: the same gradients
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))


def _tp2_body(rank, world, seed):
    from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear

    torch.manual_seed(seed)
    recipe = NVFP4Recipe(stochastic_rounding=False)  # RN everywhere: the shards' bits are the full tensor's
    world_group = torch.distributed.group.WORLD  # tp_group=None would mean no tensor parallelism
    col = ColumnParallelLinear(64, 128, sequence_parallel=True, recipe=recipe, tp_group=world_group, init_seed=seed)
    row = RowParallelLinear(128, 64, sequence_parallel=True, recipe=recipe, tp_group=world_group, init_seed=seed + 1)
    model = torch.nn.Sequential(col, row)
    g = torch.Generator().manual_seed(seed)
    x_full = random_tensor((32, 2, 64), g)
    dy_full = random_tensor((32, 2, 64), g)
    x = x_full.chunk(world)[rank].clone().requires_grad_()
    monitor = HealthMonitor(model, tp_group=torch.distributed.group.WORLD)
    with monitor.capture():
        model(x).backward(dy_full.chunk(world)[rank])
    stats = monitor.collect()
    q = NVFP4Quantizer(rowwise=True, columnwise=False)
    return stats["0"]["X"], operand_stats(x_full, q), stats["1"]["dY"], operand_stats(dy_full, q)


@pytest.mark.slow
def test_tensor_parallel_stats_describe_the_whole_operand(gen):
    seed = int(torch.randint(0, 2**20, (1,), generator=gen))
    results = run_ranks(_tp2_body, 2, seed, timeout=120)
    for got_x, want_x, got_dy, want_dy in results:
        assert got_x == results[0][0]  # every rank reports the same numbers
        assert got_x == pytest.approx(want_x, rel=1e-12) and got_dy == pytest.approx(want_dy, rel=1e-12)


def test_monitor_measures_a_converted_model_of_any_shape(gen):
    """convert_to_nvfp4's NVFP4Linears are measured like the Megatron-style layers, unaligned dims included (zero
    padded as the layer pads them: the amax, zeroed fraction and rel_err are those of the unpadded operand)."""
    from fp4dist import convert_to_nvfp4

    recipe = NVFP4Recipe(seed=3)
    model = convert_to_nvfp4(torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.Linear(40, 16)),
                             recipe)
    monitor = HealthMonitor(model)
    assert list(monitor.layers) == ["0", "2"]
    x = random_tensor((3, 7, 48), gen).requires_grad_()
    seen = {}
    handle = model[2].register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach()))
    set_rng_step(model, 1)
    with monitor.capture():
        model(x).square().sum().backward()
    handle.remove()
    stats = monitor.collect()
    assert all(set(s) == {"X", "W", "dY"} and all(math.isfinite(v) for o in s.values() for v in o.values())
               for s in stats.values()), stats

    def unpadded_stats(t, q):
        """amax, zeroed and rel_err of t [m, n] quantized zero-padded to [m, 48], decoded, cut back to n columns."""
        t = t.reshape(-1, t.shape[-1]).float()
        n = t.shape[-1]
        padded = torch.nn.functional.pad(t, (0, 48 - n))
        q.columnwise = False
        decoded = q.quantize(padded).decode_layout(columnwise=False, dtype=torch.float32)[:, :n]
        nonzero = t.ne(0)
        return {"amax": t.abs().max().item(),
                "zeroed": (nonzero & decoded.eq(0)).sum().item() / nonzero.sum().item(),
                "rel_err": ((t - decoded).double().norm() / t.double().norm()).item()}

    got = stats["2"]["X"]  # K = 40: padded to 48
    want = unpadded_stats(seen["x"], recipe.input_quantizer())
    assert got["amax"] == want["amax"] and got["zeroed"] == pytest.approx(want["zeroed"], abs=1e-12)
    assert got["rel_err"] == pytest.approx(want["rel_err"], rel=1e-9)


def test_monitor_refuses_layers_of_the_dtensor_styles():
    from fp4dist import NVFP4Linear

    layer = NVFP4Linear(32, 32)
    layer.tp_forward = lambda module, x: x  # what NVFP4ColwiseParallel / RowwiseParallel attach
    with pytest.raises(NotImplementedError, match="TP styles"):
        HealthMonitor(torch.nn.Sequential(layer))
