"""convert_to_nvfp4 and NVFP4Linear: weights kept, filter, any shape, reproducible SR, autocast, checkpointing,
torch.compile, FSDP2 (with and without TP)."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from conftest import random_tensor
from multiproc import run_ranks
from fp4dist import NVFP4Linear, NVFP4Quantizer, NVFP4Recipe, convert_to_nvfp4, nvfp4_gemm
from fp4dist.parallel import set_rng_step

RECIPE = NVFP4Recipe(backend="reference")


class Net(nn.Module):
    def __init__(self, d=32, ffn=64, vocab=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d, bias=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        return self.head(x + self.down(F.gelu(self.up(x))))


def test_convert_keeps_weights_bit_for_bit_and_respects_the_filter(gen):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    model = Net()
    model.up.weight.requires_grad_(False)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    out = convert_to_nvfp4(model, RECIPE, module_filter_fn=lambda m, fqn: fqn != "head")
    assert out is model
    assert type(model.up) is NVFP4Linear and type(model.down) is NVFP4Linear
    assert type(model.head) is nn.Linear  # filtered out
    for n, p in model.named_parameters():
        obj, value = before[n]
        assert p is obj, n  # the same Parameter objects: an optimizer built before still holds them
        assert torch.equal(p, value) and p.dtype == value.dtype and p.device == value.device, n
    assert not model.up.weight.requires_grad and model.down.weight.requires_grad
    assert model.down.bias is None and model.up.rng_name == "up" and model.down.rng_name == "down"
    assert convert_to_nvfp4(model, RECIPE) is model and type(model.head) is NVFP4Linear  # a second pass: the rest
    assert model.up.recipe == RECIPE


def test_nvfp4_linear_is_the_recipe_on_the_linear(gen):
    """Y = gemm(quantize(X), quantize(W)) + b in eval, bit for bit; the parameters are nn.Linear's."""
    layer = NVFP4Linear(32, 48, recipe=RECIPE).eval()
    assert isinstance(layer, nn.Linear) and layer.weight.shape == (48, 32)
    x = random_tensor((2, 16, 32), gen)
    with torch.no_grad():
        y = layer(x)
    xq = NVFP4Quantizer(columnwise=False, backend="reference").quantize(x)
    wq = NVFP4Quantizer(columnwise=False, block_2d=True, backend="reference").quantize(layer.weight)
    assert torch.equal(y, nvfp4_gemm(xq, wq).reshape(2, 16, 48) + layer.bias)


def check_padding(rows, k, n, gen, device="cpu", recipe=RECIPE, dtype=torch.float32):
    """Odd rows, K and N: forward, dX and dW equal those of the zero-padded aligned layer, bit for bit (the
    padding adds zeros only), and the output has the caller's shape."""
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    layer = NVFP4Linear(k, n, recipe=recipe, device=device)
    kp, np_, rp = -(-k // 16) * 16, -(-n // 16) * 16, -(-rows // 16) * 16
    padded = NVFP4Linear(kp, np_, bias=False, recipe=recipe, device=device)
    with torch.no_grad():
        padded.weight.zero_()[:n, :k] = layer.weight
    x, dy = torch.randn(rows, k, device=device, dtype=dtype), torch.randn(rows, n, device=device, dtype=dtype)
    x_pad, dy_pad = F.pad(x, (0, kp - k, 0, rp - rows)), F.pad(dy, (0, np_ - n, 0, rp - rows))
    for m in (layer, padded):
        set_rng_step(m, 2)
    x.requires_grad_(), x_pad.requires_grad_()
    y = layer(x)
    y.backward(dy)
    y_pad = padded(x_pad)
    y_pad.backward(dy_pad)
    assert y.shape == (rows, n) and y.dtype == dtype
    assert torch.equal(y, y_pad[:rows, :n] + layer.bias.to(dtype))
    assert torch.equal(x.grad, x_pad.grad[:rows, :k])
    assert torch.equal(layer.weight.grad, padded.weight.grad[:n, :k])
    with torch.no_grad():
        assert layer(torch.randn(5, k, device=device, dtype=dtype)).shape == (5, n)  # rowwise only, no row padding


@pytest.mark.parametrize("rows, k, n", [(7, 20, 24), (3, 16, 40), (33, 50, 10), (16, 32, 48)])
def test_any_shape_pads_exactly(rows, k, n, gen):
    check_padding(rows, k, n, gen)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("rows, k, n", [(7, 20, 24), (33, 50, 10), (1, 64, 80)])
def test_any_shape_pads_exactly_cuda(rows, k, n, gen, cuda_kernels):
    check_padding(rows, k, n, gen, "cuda", NVFP4Recipe(backend="cuda"), torch.bfloat16)


@pytest.mark.cuda
@CUDA
def test_converted_model_on_cuda_matches_the_reference_and_compiles(gen, cuda_kernels):
    """A converted model on the GPU (CUDA kernels, bf16 autocast) against the same model on the CPU (reference
    backend): the first step's loss agrees to bf16 GEMM rounding; torch.compile(fullgraph) of it (inductor)
    follows eager step for step."""
    torch._dynamo.reset()
    seed = int(torch.randint(2**31, (1,), generator=gen))
    tokens = torch.randint(0, 48, (3, 38), generator=gen)  # 3 x 37 = 111 rows: padded to 112 for wgrad
    cpu = convert_to_nvfp4(two_models(seed), RECIPE)
    gpu = convert_to_nvfp4(two_models(seed).cuda(), NVFP4Recipe(backend="cuda"))
    twin = copy.deepcopy(gpu)
    compiled = torch.compile(twin, fullgraph=True)

    def loss_of(fn, model, device, step):
        set_rng_step(model, step)
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = fn(tokens[:, :-1].to(device))
        loss = F.cross_entropy(logits.float().reshape(-1, 48), tokens[:, 1:].reshape(-1).to(device))
        loss.backward()
        return loss.detach().cpu()

    ref = loss_of(cpu, cpu, "cpu", 0)
    eager = [loss_of(gpu, gpu, "cuda", s) for s in range(3)]
    comp = [loss_of(compiled, twin, "cuda", s) for s in range(3)]
    assert torch.allclose(eager[0], ref, rtol=2e-2), (eager[0], ref)
    assert torch.allclose(torch.stack(comp), torch.stack(eager), rtol=2e-2, atol=0), (comp, eager)
    assert all(torch.isfinite(p.grad).all() for p in twin.parameters())


def two_models(seed):
    torch.manual_seed(seed)
    return Net()


def sr_grads(model, tokens, step, micro):
    model.zero_grad(set_to_none=True)
    set_rng_step(model, step, micro)
    model(tokens).logsumexp(-1).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_identical_models_draw_identical_sr_and_microbatches_distinct(gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    tokens = torch.randint(0, 48, (2, 16), generator=gen)
    a = convert_to_nvfp4(two_models(seed), RECIPE)
    NVFP4Linear(32, 32, recipe=RECIPE)  # built in between: changes nothing
    b = convert_to_nvfp4(two_models(seed), RECIPE)
    ga, gb = sr_grads(a, tokens, 4, 0), sr_grads(b, tokens, 4, 0)
    assert all(torch.equal(ga[n], gb[n]) for n in ga)
    g_micro = sr_grads(a, tokens, 4, 1)
    g_next = sr_grads(a, tokens, 5, 0)
    assert not torch.equal(ga["up.weight"], g_micro["up.weight"])  # another microbatch: other draws
    assert not torch.equal(ga["up.weight"], g_next["up.weight"])
    assert not torch.equal(g_micro["up.weight"], g_next["up.weight"])
    # a layer's name, not its construction order, picks its stream: renamed, it draws differently
    a.up.set_rng_name("other")
    assert not torch.equal(sr_grads(a, tokens, 4, 0)["up.weight"], ga["up.weight"])


def test_unnamed_layers_are_named_by_the_first_set_rng_step(gen):
    seq = nn.Sequential(NVFP4Linear(32, 32, recipe=RECIPE), NVFP4Linear(32, 32, recipe=RECIPE))
    assert seq[0].rng_name is None
    set_rng_step(seq, 0)
    assert (seq[0].rng_name, seq[1].rng_name) == ("0", "1")


def test_autocast_keeps_the_nvfp4_gemm_precision(gen):
    """Under CPU bf16 autocast X is cast to bf16 as F.linear would, and the GEMMs (forward and backward) are
    those of the bf16 input without autocast, bit for bit."""
    layer = NVFP4Linear(32, 48, recipe=RECIPE)
    x = random_tensor((32, 32), gen)
    dy = torch.randn(32, 48, generator=gen).to(torch.bfloat16)
    set_rng_step(layer, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.backward(dy)
    g_autocast = layer.weight.grad.clone()
    layer.weight.grad = None
    y_plain = layer(x.to(torch.bfloat16))
    y_plain.backward(dy)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y_plain) and torch.equal(g_autocast, layer.weight.grad)


class Packed:
    """saved_tensors_hooks that record the uint8 tensors autograd keeps for backward (NVFP4 codes)."""

    def __init__(self):
        self.bytes = 0

    def pack(self, t):
        if t.dtype == torch.uint8:
            self.bytes += t.numel()
        return t


@pytest.mark.parametrize("set_step", [True, False], ids=["set_rng_step", "auto_advance"])
def test_activation_checkpointing_frees_nvfp4_and_draws_the_same(set_step, gen):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    tokens = torch.randint(0, 48, (2, 16), generator=gen)
    mlp_only = lambda m, fqn: fqn in ("up", "down")  # noqa: E731
    plain, ckpt = (convert_to_nvfp4(two_models(seed), RECIPE, mlp_only) for _ in range(2))
    grads = []
    for model, use_ckpt in ((plain, False), (ckpt, True)):
        if set_step:
            set_rng_step(model, 3)
        packed = Packed()
        with torch.autograd.graph.saved_tensors_hooks(packed.pack, lambda t: t):
            x = model.emb(tokens)
            mlp = lambda h: model.down(F.gelu(model.up(h)))  # noqa: E731
            h = checkpoint(mlp, x, use_reentrant=False) if use_ckpt else mlp(x)
            loss = model.head(x + h).logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        if use_ckpt:
            assert packed.bytes == 0  # the MLP's NVFP4 operands are recomputed, not kept
        else:
            assert packed.bytes > 0
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])  # recomputation draws the same SR


@pytest.mark.slow
def test_compile_fullgraph_equals_eager(gen):
    torch._dynamo.reset()
    seed = int(torch.randint(2**31, (1,), generator=gen))
    tokens = torch.randint(0, 48, (2, 16), generator=gen)
    eager = convert_to_nvfp4(two_models(seed), RECIPE)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    for step in (1, 2):
        set_rng_step(eager, step), set_rng_step(compiled_model, step)
        for m, f in ((eager, eager), (compiled_model, compiled)):
            m.zero_grad(set_to_none=True)
            f(tokens).logsumexp(-1).mean().backward()
        for (n, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
            assert torch.equal(p.grad, q.grad), (step, n)


# ---------------------------------------------------------------- FSDP2

def fsdp_steps(rank, world, seed, tp):
    """fully_shard at TP=1 (world-way data parallel) or on a (dp, tp) = (2, 2) mesh with the NVFP4 TP styles:
    3 optimizer steps run, the loss is finite and falls, parameters stay DTensors, and the dp replicas agree."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    from fp4dist.parallel import NVFP4ColwiseParallel, NVFP4RowwiseParallel

    torch.manual_seed(seed)
    model = convert_to_nvfp4(Net(), RECIPE, module_filter_fn=lambda m, fqn: fqn != "head")
    dp = world // tp
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    if tp > 1:
        parallelize_module(model, mesh["tp"], {"up": NVFP4ColwiseParallel(), "down": NVFP4RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(seed + mesh["dp"].get_local_rank())  # each dp rank its own batch
    tokens = torch.randint(0, 48, (4, 16), generator=g)
    losses = []
    for step in range(3):
        set_rng_step(model, step)
        loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 48), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    full = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(full) for _ in range(world)]
    dist.all_gather(gathered, full)
    assert all(torch.equal(gathered[0], t) for t in gathered)  # one model across the mesh
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world, tp", [(2, 1), (4, 2)], ids=["fsdp", "fsdp_x_tp"])
def test_fsdp2_trains(world, tp, gen):
    run_ranks(fsdp_steps, world, int(torch.randint(2**31, (1,), generator=gen)), tp, timeout=240)
