"""NVFP4 DTensor TP styles (parallelize_module) against the Megatron-style layers, bit for bit; the shared
q/k/v gather; torch's SequenceParallel norms; TP x FSDP2 on a 2 x 2 mesh."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

from multiproc import rank_device, run_ranks
from fp4dist import NVFP4Linear, NVFP4Recipe
from fp4dist.parallel import (ColumnParallelLinear, NVFP4ColwiseParallel, NVFP4PrepareModuleInput,
                              NVFP4RowwiseParallel, RowParallelLinear, set_rng_step)
from fp4dist.parallel.linear import full_weight_init

RECIPE = NVFP4Recipe(backend="reference")  # SR on: both sides draw with the same names and step
S, B, H, FFN = 32, 2, 32, 64


def local(t):
    return t.to_local() if isinstance(t, DTensor) else t


class MLP(nn.Module):
    def __init__(self, h, ffn, linear=nn.Linear):
        super().__init__()
        self.up, self.down = linear(h, ffn), linear(ffn, h)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def styles_match_megatron(rank, world, seed, seq_dim, device="cpu"):
    """The NVFP4 styles on an nn.Linear MLP give the Megatron-style layers' forward, dX, dW and db bits for the
    same shards: SP along ``seq_dim`` (0: [s, b, h], 1: [b, s, h], compared on the transposed activations),
    or none. ``device="cuda:rank"``: one GPU per rank (NCCL), the CUDA kernels, bf16 activations."""
    dev = rank_device(rank, device)
    recipe = NVFP4Recipe(backend="cuda") if dev.type == "cuda" else RECIPE
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(seed)
    sp = seq_dim is not None
    x_sbh, dy_sbh = torch.randn(S, B, H) * 3, torch.randn(S, B, H)
    b_up, b_down = torch.randn(FFN), torch.randn(H)
    group = dist.group.WORLD

    col = ColumnParallelLinear(H, FFN, sequence_parallel=sp, recipe=recipe, tp_group=group, init_seed=1)
    row = RowParallelLinear(FFN, H, sequence_parallel=sp, recipe=recipe, tp_group=group, init_seed=2)
    with torch.no_grad():
        col.bias.copy_(b_up.chunk(world)[rank]), row.bias.copy_(b_down)
    mega = MLP(H, FFN, linear=lambda i, o: None)
    mega.up, mega.down = col, row
    mega.to(dev)
    for name, m in (("up", col), ("down", row)):
        m.set_rng_name(name)

    model = MLP(H, FFN)
    with torch.no_grad():
        model.up.weight.copy_(full_weight_init(FFN, H, 1, 0.02)), model.up.bias.copy_(b_up)
        model.down.weight.copy_(full_weight_init(H, FFN, 2, 0.02)), model.down.bias.copy_(b_down)
    layout = Shard(seq_dim) if sp else Replicate()
    model.to(dev)
    mesh = init_device_mesh(dev.type, (world,))
    parallelize_module(model, mesh, {"up": NVFP4ColwiseParallel(input_layouts=layout, recipe=recipe),
                                     "down": NVFP4RowwiseParallel(output_layouts=layout, recipe=recipe)})
    assert isinstance(model.up, NVFP4Linear) and model.up.weight.placements == (Shard(0),)
    assert model.down.weight.placements == (Shard(1),) and model.down.bias.placements == (Replicate(),)
    for name in ("up", "down"):
        getattr(model, name).set_rng_name(name)
    set_rng_step(mega, 3), set_rng_step(model, 3)

    def shard(t):  # [s, b, h] -> this rank's input/grad in the Megatron layout
        return (t.chunk(world, dim=0)[rank] if sp else t).to(dev, dtype)

    x_m = shard(x_sbh).clone().requires_grad_()
    y_m = mega(x_m)
    y_m.backward(shard(dy_sbh))
    t = (lambda a: a.transpose(0, 1)) if seq_dim == 1 else (lambda a: a)
    x_s = t(shard(x_sbh)).clone().requires_grad_()
    y_s = model(x_s)
    y_s.backward(t(shard(dy_sbh)))

    assert not isinstance(y_s, DTensor) and y_s.shape == t(y_m).shape
    assert torch.equal(y_s, t(y_m)), ("forward", (y_s - t(y_m)).abs().max().item(), y_m.abs().max().item())
    assert torch.equal(x_s.grad, t(x_m.grad)), "dX"
    assert torch.equal(local(model.up.weight.grad), col.weight.grad), "dW up"
    assert torch.equal(local(model.down.weight.grad), row.weight.grad), "dW down"
    # db sums dY over the rows, in another order for batch-first: fp32 on the CPU, bf16 on a GPU
    tol = dict(rtol=1e-6, atol=1e-6) if dev.type == "cpu" else dict(rtol=1e-2, atol=1e-2)
    assert torch.allclose(local(model.up.bias.grad), col.bias.grad, **tol), "db up"
    if sp:  # each rank's bias grad covers its sequence shard: the sum over ranks is the gradient
        dist.all_reduce(row.bias.grad)
    db_down = model.down.bias.grad
    db_down = db_down.full_tensor() if isinstance(db_down, DTensor) else db_down
    assert torch.allclose(db_down, row.bias.grad, **tol), "db down"
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("seq_dim", [None, 0, 1], ids=["tp", "sp_dim0", "sp_dim1"])
def test_styles_match_megatron_layers_bitwise(world, seq_dim, gen):
    run_ranks(styles_match_megatron, world, int(torch.randint(2**31, (1,), generator=gen)), seq_dim, timeout=240)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seq_dim", [None, 1], ids=["tp", "sp_dim1"])
def test_styles_match_megatron_layers_cuda(seq_dim, gen, cuda_kernels):
    """World 1 on one GPU, or one GPU per rank where there are two or more (NCCL)."""
    world = min(torch.cuda.device_count(), 2)
    run_ranks(styles_match_megatron, world, int(torch.randint(2**31, (1,), generator=gen)), seq_dim, "cuda:rank",
              timeout=300, backend="nccl")


# ---------------------------------------------------------------- q/k/v share one gather

class Attention(nn.Module):
    """Batch-first causal attention that reads its input's shape, as HF's does (or, with
    ``shape_from_input=False``, its projections' output shape)."""

    def __init__(self, h, heads, shape_from_input=True):
        super().__init__()
        self.hd, self.shape_from_input = h // heads, shape_from_input
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x):
        qkv = [p(x) for p in (self.q, self.k, self.v)]
        b, s = (x if self.shape_from_input else qkv[0]).shape[:2]
        q, k, v = (t.view(b, s, -1, self.hd).transpose(1, 2) for t in qkv)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(a.transpose(1, 2).reshape(b, s, -1))


class Counter:
    """Counts the c10d collectives fp4dist and DTensor call (the NVFP4 gather is one all_gather_single)."""

    NAMES = ("all_gather_single", "reduce_scatter_single", "all_reduce")

    def __init__(self):
        self.counts = dict.fromkeys(self.NAMES, 0)

    def __enter__(self):
        self.saved = {n: getattr(dist, n) for n in self.NAMES}
        for n in self.NAMES:
            def counted(*a, _n=n, **k):
                self.counts[_n] += 1
                return self.saved[_n](*a, **k)
            setattr(dist, n, counted)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(dist, n, f)


def shared_gather(rank, world, seed, seq_len):
    torch.manual_seed(seed)
    mesh = init_device_mesh("cpu", (world,))
    ref, shared = Attention(H, 4, shape_from_input=False), Attention(H, 4)  # ref: 3 gathers of the shard
    shared.load_state_dict(ref.state_dict())
    sep_plan = {p: NVFP4ColwiseParallel(input_layouts=Shard(1), recipe=RECIPE) for p in ("q", "k", "v")}
    shared_plan = {"": NVFP4PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                               recipe=RECIPE),
                   **{p: NVFP4ColwiseParallel(recipe=RECIPE) for p in ("q", "k", "v")}}
    for model, plan in ((ref, sep_plan), (shared, shared_plan)):
        parallelize_module(model, mesh, {**plan, "o": NVFP4RowwiseParallel(output_layouts=Shard(1), recipe=RECIPE)})
        set_rng_step(model, 5)
    x = torch.randn(B, seq_len, H).chunk(world, dim=1)[rank]
    dy = torch.randn(B, seq_len, H).chunk(world, dim=1)[rank]
    results = []
    for model in (ref, shared):
        xi = x.clone().requires_grad_()
        model(xi).backward(dy)  # the first gather of a signature also checks its header
        model.zero_grad(), xi.grad.zero_()
        with Counter() as fwd:
            y = model(xi)
        with Counter() as bwd:
            y.backward(dy)
        results.append((y, xi.grad, {n: local(p.grad) for n, p in model.named_parameters()}, fwd.counts, bwd.counts))
    (y_r, dx_r, g_r, fwd_r, bwd_r), (y_s, dx_s, g_s, fwd_s, bwd_s) = results
    assert fwd_r["all_gather_single"] == 3 and fwd_s["all_gather_single"] == 1, (fwd_r, fwd_s)
    assert bwd_r["reduce_scatter_single"] == 3 and bwd_s["reduce_scatter_single"] == 1, (bwd_r, bwd_s)
    assert fwd_s["reduce_scatter_single"] == 1 and bwd_s["all_gather_single"] == 1  # o: RS forward, AG backward
    assert torch.equal(y_s, y_r)  # the same NVFP4 operands: the same bits
    for name in ("q.weight", "k.weight", "v.weight", "o.weight"):
        assert torch.equal(g_s[name], g_r[name]), name
    # dX: the three projections' dX summed before one reduce-scatter instead of after three (fp32 rounding)
    assert torch.allclose(dx_s, dx_r, rtol=1e-5, atol=1e-6 * dx_r.abs().max().item())
    return True


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [32, 14], ids=["aligned", "odd_rows"])
def test_qkv_share_one_nvfp4_gather(seq_len, gen):
    run_ranks(shared_gather, 2, int(torch.randint(2**31, (1,), generator=gen)), seq_len, timeout=180)


# ---------------------------------------------------------------- torch's SequenceParallel norms, eval

class Block(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.attn, self.mlp = Attention(h, heads), MLP(h, 2 * h)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def block_plan(recipe):
    sp = Shard(1)
    return {"norm1": SequenceParallel(), "norm2": SequenceParallel(),
            "attn": NVFP4PrepareModuleInput(input_layouts=(sp,), desired_input_layouts=(Replicate(),), recipe=recipe),
            "attn.q": NVFP4ColwiseParallel(recipe=recipe), "attn.k": NVFP4ColwiseParallel(recipe=recipe),
            "attn.v": NVFP4ColwiseParallel(recipe=recipe),
            "attn.o": NVFP4RowwiseParallel(output_layouts=sp, recipe=recipe),
            "mlp": NVFP4PrepareModuleInput(input_layouts=(sp,), desired_input_layouts=(Replicate(),), recipe=recipe),
            "mlp.up": NVFP4ColwiseParallel(recipe=recipe),
            "mlp.down": NVFP4RowwiseParallel(output_layouts=sp, recipe=recipe)}


def sequence_parallel_block(rank, world, seed):
    """torch's SequenceParallel LayerNorms around NVFP4 projections; the block's loss and grads at TP=2 are
    those of the unsharded block with the same recipe to within NVFP4's error; eval runs on rowwise layouts."""
    torch.manual_seed(seed)
    mesh = init_device_mesh("cpu", (world,))
    recipe = NVFP4Recipe(backend="reference", stochastic_rounding=False)
    ref, tp = Block(H, 4), Block(H, 4)
    tp.load_state_dict(ref.state_dict())
    from fp4dist import convert_to_nvfp4
    convert_to_nvfp4(ref, recipe)
    parallelize_module(tp, mesh, block_plan(recipe))
    x = torch.randn(B, S, H)
    y_ref = ref(x)
    y_tp = tp(x.chunk(world, dim=1)[rank])  # this rank's sequence shard, a plain tensor
    assert not isinstance(y_tp, DTensor) and y_tp.shape == (B, S // world, H)
    y_full = DTensor.from_local(y_tp, mesh, [Shard(1)]).full_tensor()
    # NVFP4 on shards of a different shape quantizes differently: compare at NVFP4's precision
    assert (y_full - y_ref).abs().max() < 0.25 * y_ref.abs().max()
    y_full.square().mean().backward()
    ref(x).square().mean().backward()
    g_tp = tp.norm1.weight.grad.full_tensor()
    assert torch.isfinite(g_tp).all() and g_tp.shape == ref.norm1.weight.grad.shape
    tp.eval()
    with torch.no_grad():
        y_eval = DTensor.from_local(tp(x[:, :10].chunk(world, dim=1)[rank]), mesh, [Shard(1)]).full_tensor()
    assert y_eval.shape == (B, 10, H) and torch.isfinite(y_eval).all()
    return True


@pytest.mark.slow
def test_sequence_parallel_norms_and_eval(gen):
    run_ranks(sequence_parallel_block, 2, int(torch.randint(2**31, (1,), generator=gen)), timeout=180)


def _uneven_rowwise_sequence(rank, world, lengths):
    """A rowwise SP layer fed sequence shards of lengths[rank] rows: what each rank raises (None if nothing)."""
    mesh = init_device_mesh("cpu", (world,))
    layer = parallelize_module(nn.Linear(FFN, H), mesh, NVFP4RowwiseParallel(output_layouts=Shard(0),
                                                                            recipe=RECIPE))
    x = torch.randn(lengths[rank], B, FFN // world)
    try:
        layer(x)
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("lengths", [(4, 5), (5, 5)], ids=["one-rank-odd", "all-odd"])
def test_rowwise_sequence_not_divisible_raises_on_every_rank(lengths):
    """The reduce-scatter's length is agreed before any rank computes: a rank alone with a bad length gets the
    same clear error as its peers (no rank is left waiting in the collective)."""
    errors = run_ranks(_uneven_rowwise_sequence, 2, lengths, timeout=90)
    assert all(e is not None and "NVFP4RowwiseParallel" in e and "raised on every rank" in e for e in errors), errors
    assert all("rank 1" in e for e in errors), errors  # the rank whose input is at fault is named
