"""Column/RowParallelLinear across spawned gloo ranks against single-process references."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from multiproc import nccl_world, rank_device, run_ranks
from fp4dist import HighPrecisionRecipe, NVFP4Quantizer, NVFP4Recipe, nvfp4_gemm
from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear, allreduce_sequence_parallel_grads
from fp4dist.parallel.linear import full_weight_init

S, B, HIDDEN, FFN = 32, 2, 32, 64
EPS32 = 2.0**-24


def close(actual, expected, atol=1e-5, rtol=1e-4, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.allclose(actual, expected.to(actual.dtype), atol=atol, rtol=rtol), \
        f"{what}: max diff {(actual - expected).abs().max().item()}"


def rows_of(t, rank, world):
    return t.chunk(world, dim=0)[rank]


def cols_of(t, rank, world):
    return t.chunk(world, dim=-1)[rank]


# ---------------------------------------------------------------- plain recipe vs nn.Linear

def mlp_matches_nn_linear(rank, world, seed, sp):
    torch.manual_seed(seed)
    x = torch.randn(S, B, HIDDEN)
    g = torch.randn(S, B, HIDDEN)
    # single-process reference with the same full weights
    w1, w2 = full_weight_init(FFN, HIDDEN, 1, 0.1), full_weight_init(HIDDEN, FFN, 2, 0.1)
    b1, b2 = torch.randn(FFN), torch.randn(HIDDEN)
    ref1, ref2 = torch.nn.Linear(HIDDEN, FFN), torch.nn.Linear(FFN, HIDDEN)
    with torch.no_grad():
        ref1.weight.copy_(w1), ref1.bias.copy_(b1), ref2.weight.copy_(w2), ref2.bias.copy_(b2)
    x_ref = x.clone().requires_grad_()
    y_ref = ref2(F.gelu(ref1(x_ref)))
    (y_ref * g).sum().backward()

    col = ColumnParallelLinear(HIDDEN, FFN, sequence_parallel=sp, recipe=HighPrecisionRecipe(),
                               tp_group=dist.group.WORLD, init_seed=1, init_std=0.1)
    row = RowParallelLinear(FFN, HIDDEN, sequence_parallel=sp, recipe=HighPrecisionRecipe(),
                            tp_group=dist.group.WORLD, init_seed=2, init_std=0.1)
    with torch.no_grad():
        col.bias.copy_(cols_of(b1, rank, world)), row.bias.copy_(b2)
    x_in = (rows_of(x, rank, world) if sp else x).clone().requires_grad_()
    y = row(F.gelu(col(x_in)))
    g_local = rows_of(g, rank, world) if sp else g
    (y * g_local).sum().backward()
    allreduce_sequence_parallel_grads(row, dist.group.WORLD)

    close(y, rows_of(y_ref, rank, world) if sp else y_ref, what="output")
    close(x_in.grad, rows_of(x_ref.grad, rank, world) if sp else x_ref.grad, what="dX")
    close(col.weight.grad, rows_of(ref1.weight.grad, rank, world), what="dW1")
    close(col.bias.grad, cols_of(ref1.bias.grad, rank, world), what="db1")
    close(row.weight.grad, cols_of(ref2.weight.grad, rank, world), what="dW2")
    close(row.bias.grad, ref2.bias.grad, what="db2")
    # initialization is the same full weight whatever the TP size
    assert torch.equal(col.weight.detach(), rows_of(w1, rank, world))
    assert torch.equal(row.weight.detach(), cols_of(w2, rank, world))
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp_sp"])
def test_plain_recipe_matches_nn_linear(world, sp, gen):
    run_ranks(mlp_matches_nn_linear, world, int(torch.randint(2**31, (1,), generator=gen)), sp, timeout=180)


# ---------------------------------------------------------------- NVFP4 recipe vs an fp64 oracle

RECIPE = NVFP4Recipe(rht=True, stochastic_rounding=False, block_2d_weights=True, backend="reference")
CUDA_RECIPE = NVFP4Recipe(rht=True, stochastic_rounding=False, block_2d_weights=True, backend="cuda")
Q_IN = NVFP4Quantizer(rowwise=True, columnwise=True, rht=True, backend="reference")
Q_W = NVFP4Quantizer(rowwise=True, columnwise=True, block_2d=True, backend="reference")
Q_GRAD = Q_IN  # SR off: dY is quantized like X (RN, rowwise + columnwise RHT)


def deq(t, columnwise=False):
    """One layout, decoded as stored ([rows, K]), in fp64."""
    return t.decode_layout(columnwise=columnwise, dtype=torch.float32).double()


def oracle_mm(pairs):
    """sum over (A, B) of A @ B^T in fp64, and the fp32 accumulation bound for that sum:
    (K + terms + 4) * 2^-24 * sum |A| @ |B|^T (K products and terms partial sums, rounded in fp32)."""
    value = sum(a @ b.t() for a, b in pairs)
    mag = sum(a.abs() @ b.abs().t() for a, b in pairs)
    k = pairs[0][0].shape[1]
    return value, (k + len(pairs) + 4) * EPS32 * mag


def within(actual, oracle, what):
    value, bound = oracle
    err = (actual.double().reshape(value.shape) - value).abs()
    assert (err <= bound + 1e-30).all(), f"{what}: worst excess {(err - bound).max().item()}"
    assert bound.max() < 1e-2 * value.abs().max()  # the bound is tight, not vacuous


def place(rank, device):
    """(torch device, recipe) of a rank: the CPU and the reference backend, or with device "cuda:rank" GPU
    `rank` (one GPU per rank, NCCL) and the CUDA kernels. The oracles stay on the CPU: the kernels give the
    reference's bits."""
    dev = rank_device(rank, device)
    return dev, (CUDA_RECIPE if dev.type == "cuda" else RECIPE)


def column_matches_oracle(rank, world, seed, sp, device="cpu"):
    dev, recipe = place(rank, device)
    torch.manual_seed(seed)
    x = torch.randn(S, B, HIDDEN) * 3
    dy = torch.randn(S, B, FFN)
    layer = ColumnParallelLinear(HIDDEN, FFN, bias=False, sequence_parallel=sp, recipe=recipe,
                                 tp_group=dist.group.WORLD, init_seed=7).to(dev)
    x_in = (rows_of(x, rank, world) if sp else x).to(dev).clone().requires_grad_()
    y = layer(x_in)
    y.backward(cols_of(dy, rank, world).to(dev))
    y, x_grad, w_grad = y.cpu(), x_in.grad.cpu(), layer.weight.grad.cpu()

    m = S * B
    xq = Q_IN.quantize(x)  # the gathered NVFP4 shards have exactly these bits
    w_full = full_weight_init(FFN, HIDDEN, 7, 0.02)
    wq = [Q_W.quantize(cols_of(w_full.t(), r, world).t().contiguous()) for r in range(world)]
    within(y, oracle_mm([(deq(xq), deq(wq[rank]))]), "Y")
    dyq = [Q_GRAD.quantize(cols_of(dy, r, world).reshape(m, -1).contiguous()) for r in range(world)]
    dx = oracle_mm([(deq(dyq[r]), deq(wq[r], True)) for r in range(world)])  # summed over TP ranks
    if sp:
        dx = tuple(rows_of(t.reshape(S, B, HIDDEN), rank, world).reshape(-1, HIDDEN) for t in dx)
    within(x_grad, dx, "dX")
    within(w_grad, oracle_mm([(deq(dyq[rank], True), deq(xq, True))]), "dW")
    return True


def row_matches_oracle(rank, world, seed, sp, device="cpu"):
    dev, recipe = place(rank, device)
    torch.manual_seed(seed)
    x = torch.randn(S, B, FFN) * 3
    dy = torch.randn(S, B, HIDDEN)
    layer = RowParallelLinear(FFN, HIDDEN, bias=False, sequence_parallel=sp, recipe=recipe,
                              tp_group=dist.group.WORLD, init_seed=9).to(dev)
    x_in = cols_of(x, rank, world).to(dev).clone().requires_grad_()
    y = layer(x_in)
    y.backward((rows_of(dy, rank, world) if sp else dy).to(dev))
    y, x_grad, w_grad = y.cpu(), x_in.grad.cpu(), layer.weight.grad.cpu()

    m = S * B
    w_full = full_weight_init(HIDDEN, FFN, 9, 0.02)
    xq = [Q_IN.quantize(cols_of(x, r, world).reshape(m, -1).contiguous()) for r in range(world)]
    wq = [Q_W.quantize(cols_of(w_full, r, world).contiguous()) for r in range(world)]
    out = oracle_mm([(deq(xq[r]), deq(wq[r])) for r in range(world)])  # all-reduce / reduce-scatter sum
    if sp:
        out = tuple(rows_of(t.reshape(S, B, HIDDEN), rank, world).reshape(-1, HIDDEN) for t in out)
    within(y, out, "Y")
    dyq = Q_GRAD.quantize(dy.reshape(m, HIDDEN))  # SP all-gathers dY in bf16/fp32: the same full dY
    within(x_grad, oracle_mm([(deq(dyq), deq(wq[rank], True))]), "dX")
    within(w_grad, oracle_mm([(deq(dyq, True), deq(xq[rank], True))]), "dW")
    return True


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp_sp"])
@pytest.mark.parametrize("check", [column_matches_oracle, row_matches_oracle], ids=["column", "row"])
def test_nvfp4_layers_match_oracle(check, world, sp, gen):
    run_ranks(check, world, int(torch.randint(2**31, (1,), generator=gen)), sp, timeout=180)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, one GPU per rank)")
@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp_sp"])
@pytest.mark.parametrize("check", [column_matches_oracle, row_matches_oracle], ids=["column", "row"])
def test_nvfp4_layers_nccl_one_gpu_per_rank(check, sp, gen, cuda_kernels):
    run_ranks(check, nccl_world(), int(torch.randint(2**31, (1,), generator=gen)), sp, "cuda:rank", timeout=300,
              backend="nccl")


def none_group_means_no_tp(rank, world, seed):
    """tp_group=None in an initialised world of 2: the whole layer on every rank, the input not gathered,
    the same bits as a layer over a group of this rank alone (and the high-precision linear of it)."""
    torch.manual_seed(seed)
    x = torch.randn(S, B, HIDDEN)
    alone = [dist.new_group([r]) for r in range(world)][rank]  # every rank creates every group
    outs = []
    for group in (None, alone):
        layer = ColumnParallelLinear(HIDDEN, FFN, sequence_parallel=True, recipe=RECIPE, tp_group=group, init_seed=4)
        assert layer.tp_size == 1 and layer.weight.shape == (FFN, HIDDEN)
        outs.append(layer(x))
    assert outs[0].shape == (S, B, FFN)
    assert torch.equal(outs[0], outs[1])
    return True


@pytest.mark.slow
def test_tp_group_none_means_no_tensor_parallelism(gen):
    run_ranks(none_group_means_no_tp, 2, int(torch.randint(2**31, (1,), generator=gen)), timeout=120)


# ---------------------------------------------------------------- nvfp4_gemm

def check_gemm(device, gen, out_dtype=torch.float32):
    a = (torch.randn(96, 160, generator=gen) * 5).to(torch.bfloat16).to(device)
    b = torch.randn(48, 160, generator=gen).to(device)
    qa = NVFP4Quantizer(rht=True).quantize(a)
    qb = NVFP4Quantizer(block_2d=True).quantize(b)
    value, bound = oracle_mm([(deq(qa).cpu(), deq(qb).cpu())])
    c = nvfp4_gemm(qa, qb, out_dtype=out_dtype)
    within(c.cpu(), (value, bound), "C")
    # a bf16 output adds one rounding of the fp32 result: half a bf16 ulp, 2^-9 relative (2^-8 with slack)
    c16 = nvfp4_gemm(qa, qb, out_dtype=torch.bfloat16)
    assert c16.dtype == torch.bfloat16
    within(c16.cpu(), (value, bound + 2**-8 * value.abs()), "C bf16")
    # transposed layouts: C' = A_cw @ B_cw^T contracts over the 96/48 rows
    qa2 = NVFP4Quantizer(rht=True).quantize(torch.randn(64, 96, generator=gen).to(device))
    qb2 = NVFP4Quantizer(rht=True).quantize(torch.randn(64, 48, generator=gen).to(device))
    c2 = nvfp4_gemm(qa2, qb2, a_columnwise=True, b_columnwise=True, out_dtype=out_dtype)
    within(c2.cpu(), oracle_mm([(deq(qa2, True).cpu(), deq(qb2, True).cpu())]), "C columnwise")


def test_nvfp4_gemm_cpu(gen):
    check_gemm("cpu", gen)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvfp4_gemm_cuda(gen, cuda_kernels):
    check_gemm("cuda", gen)  # one decode launch for both operands, cuBLAS with alpha on the device


# ---------------------------------------------------------------- errors

def test_layer_errors():
    with pytest.raises(ValueError, match="input last dim is 48, expected 32"):
        ColumnParallelLinear(32, 64)(torch.randn(16, 48))
    with pytest.raises(ValueError, match="sequence_parallel=True needs input_is_parallel=True"):
        RowParallelLinear(32, 64, input_is_parallel=False, sequence_parallel=True)
    with pytest.raises(TypeError, match="recipe must be"):
        ColumnParallelLinear(32, 64, recipe="nvfp4")


def divisibility_errors(rank, world):
    for make, pattern in ((lambda: ColumnParallelLinear(32, 50, tp_group=dist.group.WORLD), "out_features = 50"),
                          (lambda: RowParallelLinear(50, 32, tp_group=dist.group.WORLD), "in_features = 50"),
                          (lambda: RowParallelLinear(64, 32, sequence_parallel=True, tp_group=dist.group.WORLD)(
                              torch.randn(30, 16)), "sequence length 30")):
        with pytest.raises(ValueError, match=pattern):
            make()
    return True


def test_tp_divisibility_errors():
    run_ranks(divisibility_errors, 4, timeout=60)
