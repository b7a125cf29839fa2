"""The NVFP4 linear as torch sees it: autograd, torch.compile, SR streams, eval layouts, autocast, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import random_tensor
from fp4dist import NVFP4Quantizer, NVFP4Recipe, nvfp4_gemm
from fp4dist import format as fmt
from fp4dist.backends import reference
from fp4dist.model import GPT, GPTConfig
from fp4dist.parallel import ColumnParallelLinear, set_rng_step

RECIPE = NVFP4Recipe(backend="reference")
CFG = GPTConfig(vocab_size=64, seq_len=32, d_model=32, n_layers=1, n_heads=2, ffn_mult=2, seed=5)


def gpt_step(model, tokens):
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), tokens[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_gpt_fullgraph_equals_eager_bitwise(gen):
    """torch.compile(fullgraph=True) traces the whole NVFP4 GPT (reference backend, SR on) without a graph
    break; aot_eager runs the traced aten ops, so loss and every gradient keep eager's bits, step after step
    (the SR offset is a device buffer: a new step needs no retrace)."""
    torch._dynamo.reset()
    eager = GPT(CFG, RECIPE)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len + 1), generator=gen)
    for step in (3, 4):
        set_rng_step(eager, step), set_rng_step(compiled_model, step)
        for m in (eager, compiled_model):
            m.zero_grad(set_to_none=True)
        assert torch.equal(gpt_step(eager, tokens), gpt_step(compiled, tokens))
        g_eager, g_compiled = grads(eager), grads(compiled_model)
        for name in g_eager:
            assert torch.equal(g_eager[name], g_compiled[name]), f"step {step}: grad of {name} differs"


def test_sr_draws_follow_the_layer_name_not_construction_order(gen):
    """Two identical models draw identical SR numbers whatever was built before; microbatches and steps
    draw distinct ones."""
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len + 1), generator=gen)
    a = GPT(CFG, RECIPE)
    ColumnParallelLinear(32, 64, recipe=RECIPE)  # a layer built in between must change nothing
    b = GPT(CFG, RECIPE)
    results = {}
    for model, key in ((a, "a"), (b, "b")):
        for step, micro in ((7, 0), (7, 1), (8, 0)):
            model.zero_grad(set_to_none=True)
            set_rng_step(model, step, micro)
            gpt_step(model, tokens)
            results[key, step, micro] = model.blocks[0].mlp.up.weight.grad.clone()
    for k in ((7, 0), (7, 1), (8, 0)):
        assert torch.equal(results[("a", *k)], results[("b", *k)]), k
    assert not torch.equal(results["a", 7, 0], results["a", 7, 1])
    assert not torch.equal(results["a", 7, 0], results["a", 8, 0])
    with pytest.raises(ValueError, match="microbatch must be in"):
        set_rng_step(a, 1, microbatch=1 << 16)


def test_backward_twice_with_retain_graph_and_without(gen):
    layer = ColumnParallelLinear(32, 64, recipe=RECIPE)
    set_rng_step(layer, 1)
    x = random_tensor((32, 32), gen).requires_grad_()
    y = layer(x)
    dy = torch.randn(32, 64, generator=gen)
    y.backward(dy, retain_graph=True)
    first = layer.weight.grad.clone()
    y.backward(dy)
    assert torch.equal(layer.weight.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward(dy)


def test_eval_quantizes_rowwise_only_so_any_row_count_works(gen):
    layer = ColumnParallelLinear(32, 64, recipe=RECIPE).eval()
    x = random_tensor((3, 5, 32), gen)  # 15 rows: no 16-row block for a transposed layout
    with torch.no_grad():
        y = layer(x)
    xq = NVFP4Quantizer(columnwise=False, backend="reference").quantize(x)
    wq = NVFP4Quantizer(columnwise=False, block_2d=True, backend="reference").quantize(layer.weight)
    assert torch.equal(y, nvfp4_gemm(xq, wq).reshape(3, 5, 64) + layer.bias)


def test_autocast_keeps_the_nvfp4_gemm_precision(gen):
    """Under CPU bf16 autocast the input is cast to bf16 (as torch's linear would), and the NVFP4 GEMM still
    accumulates the decoded operands in fp32: the result equals the same call on the bf16 input without
    autocast, bit for bit."""
    layer = ColumnParallelLinear(32, 64, bias=False, recipe=RECIPE)
    x = random_tensor((32, 32), gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, layer(x.to(torch.bfloat16)))


def test_quantizer_outputs_carry_no_autograd_graph(gen):
    x = random_tensor((32, 32), gen).requires_grad_()
    t = NVFP4Quantizer(backend="reference").quantize(x * 2)
    for name, c in t.component_tensors().items():
        assert c.grad_fn is None and not c.requires_grad, name


def test_gemm_rejects_plain_tensors_and_mixed_rht(gen):
    x = random_tensor((32, 32), gen)
    q_rht = NVFP4Quantizer(rht=True, backend="reference").quantize(x)
    q_plain = NVFP4Quantizer(backend="reference").quantize(x)
    with pytest.raises(TypeError, match="argument b must be an NVFP4Tensor"):
        nvfp4_gemm(q_plain, x)
    with pytest.raises(ValueError, match="RHT-transformed and the other's is not"):
        nvfp4_gemm(q_rht, q_plain, a_columnwise=True, b_columnwise=True)
    nvfp4_gemm(q_rht, q_rht, a_columnwise=True, b_columnwise=True)  # both transformed: fine


def test_gemm_alpha_overflow_keeps_zero_rows_zero(gen):
    """Two fp32 operands with amax near 1e38: S_dec(a) S_dec(b) overflows fp32. Zero rows of A still give 0
    (not 0 * inf = NaN); every other product is truly beyond fp32 (NVFP4 keeps ~6 decades below amax, so
    each nonzero term is >= 1e60) and comes out as inf where the fp64 product is beyond fp32."""
    a = random_tensor((32, 64), gen)
    a = a / a.abs().max() * 1e38
    a[:16] = 0.0
    b = torch.randn(16, 64, generator=gen) * 1e37
    b[0, 0] = 3e38
    qa = NVFP4Quantizer(columnwise=False, backend="reference").quantize(a)
    qb = NVFP4Quantizer(columnwise=False, backend="reference").quantize(b)
    assert torch.isinf(fmt.global_decode_scale(qa.amax_rowwise) * fmt.global_decode_scale(qb.amax_rowwise))
    c = nvfp4_gemm(qa, qb, out_dtype=torch.float32)
    assert not torch.isnan(c).any()
    assert torch.equal(c[:16], torch.zeros(16, 16))
    # the product of the two NVFP4 tensors: the e2m1 * e4m3 decodes (<= 6 significant bits) multiply and sum
    # exactly in fp64, then S_dec(a) S_dec(b) (dequantize(fp32) would round code * scale * S_dec, and turn exact
    # cancellations into large noise)
    def decoded(q):
        return reference.dequantize(q.rowwise_data, q.rowwise_scale_inv, None, torch.float32).double()
    scale = fmt.global_decode_scale(qa.amax_rowwise).double() * fmt.global_decode_scale(qb.amax_rowwise).double()
    expected = (decoded(qa) @ decoded(qb).t()) * scale
    big, small = expected.abs() > 3.5e38, expected.abs() < 1e36  # (partial sums may overflow in between)
    assert torch.isinf(c[big]).all()  # (its sign is that of the first partial sum to overflow)
    assert torch.allclose(c[small].double(), expected[small], rtol=1e-5, atol=0)


def test_gemm_alpha_is_the_plain_product_when_it_fits(gen):
    amax = torch.rand(2, generator=gen) * 100 + 1e-3
    alpha, shift = fmt.gemm_alpha(amax[0], amax[1])
    assert shift.item() == 1.0
    assert torch.equal(alpha, fmt.global_decode_scale(amax[0]) * fmt.global_decode_scale(amax[1]))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaNs included)."""
    ints = {2: torch.int16, 4: torch.int32}
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(ints[a.element_size()]),
                                                                      b.view(ints[b.element_size()]))


def check_gemm_with_cast_operands(device, gen):
    # X and dY quantized with their layouts decoded by the cast; every GEMM of a linear with that operand A gives
    # the bits of the GEMM that decodes both operands itself, for bf16 and fp32 outputs, and with amaxes whose
    # S_dec product overflows fp32 (gemm_alpha's shift lands on B instead of A)
    from fp4dist.gemm import operand_dtype

    for big in (False, True):
        x = torch.randn(96, 160, generator=gen) * 5
        w = torch.randn(48, 160, generator=gen)
        dy = torch.randn(96, 48, generator=gen)
        if big:
            x, w, dy = x / x.abs().max() * 1e38, w / w.abs().max() * 1e38, dy / dy.abs().max() * 1e38
        x, dy, w = x.to(torch.bfloat16).to(device), dy.to(torch.bfloat16).to(device), w.to(device)
        wq = NVFP4Quantizer(block_2d=True).quantize(w)
        for out_dtype in (torch.bfloat16, torch.float32):
            op = operand_dtype(out_dtype, x.device)
            xq, x_row, x_col = NVFP4Quantizer(rht=True).quantize_with_operands(x, operand_dtype=op)
            dyq, dy_row, dy_col = NVFP4Quantizer(rht=True, stochastic_rounding=True, seed=3).quantize_with_operands(
                dy, operand_dtype=op, rng_offset=7)
            for got, layout in ((x_row, xq.rowwise_data), (x_col, xq.columnwise_data), (dy_row, dyq.rowwise_data),
                                (dy_col, dyq.columnwise_data)):
                assert got.dtype == op and got.shape == (layout.shape[0], 2 * layout.shape[1])
            if big:
                assert torch.isinf(fmt.global_decode_scale(xq.amax_rowwise) * fmt.global_decode_scale(wq.amax_rowwise))
            pairs = ((xq, wq, {}, x_row), (dyq, wq, dict(b_columnwise=True), dy_row),
                     (dyq, xq, dict(a_columnwise=True, b_columnwise=True), dy_col))
            for a, b, kw, a_op in pairs:
                want = nvfp4_gemm(a, b, out_dtype=out_dtype, **kw)
                got = nvfp4_gemm(a, b, out_dtype=out_dtype, a_operand=a_op, **kw)
                assert same_bits(got, want), (device, big, out_dtype, kw)
        with pytest.raises(ValueError, match="a_operand must be A's layout decoded"):
            nvfp4_gemm(xq, wq, out_dtype=torch.float32, a_operand=x_row[:, :32])


def test_gemm_with_cast_operands_gives_the_same_bits_cpu(gen):
    check_gemm_with_cast_operands("cpu", gen)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gemm_with_cast_operands_gives_the_same_bits_cuda(gen, cuda_kernels):
    check_gemm_with_cast_operands("cuda", gen)


@pytest.mark.parametrize("columnwise_b", [False, True])
def test_amax_pair_is_each_quantizers_amax(gen, columnwise_b):
    # the amaxes of W and X in one buffer are what each quantizer's compute_amax gives, the RHT'd columnwise amax of X
    # included
    from fp4dist.quantizer import compute_amax_pair

    w = torch.randn(48, 160, generator=gen) * 1e3
    x = (torch.randn(96, 160, generator=gen) * torch.rand(96, 1, generator=gen)).to(torch.bfloat16)
    wquant, xquant = NVFP4Quantizer(block_2d=True), NVFP4Quantizer(rht=True)
    want = (wquant.compute_amax(w, columnwise=True), xquant.compute_amax(x, columnwise=columnwise_b))
    if columnwise_b:
        assert want[1][0] != want[1][1]  # the RHT'd amax differs from max|X|, so a swap would show
    got = compute_amax_pair(wquant, w, xquant, x, columnwise_a=True, columnwise_b=columnwise_b)
    for g, wnt in zip(got, want):
        assert g.shape == (2,) and torch.equal(g, wnt)


@pytest.mark.parametrize("big", [False, True], ids=["plain", "alpha_overflow"])
def test_operands_scaled_for_their_pairs_give_nvfp4_gemms_bits(gen, big):
    # quantize_for_gemm: each operand A carries its pair's gemm_alpha shift and the GEMM's alpha comes with it, so
    # alpha * A @ B^T with B decoded with d = 1 (W shared by the forward and the dgrad, as [N, K]) is nvfp4_gemm's
    # result bit for bit; codes not kept are not in the tensor
    from fp4dist.gemm import operand_gemm

    x = torch.randn(96, 160, generator=gen) * 5
    w, dy = torch.randn(48, 160, generator=gen), torch.randn(96, 48, generator=gen)
    if big:
        x, w, dy = x / x.abs().max() * 1e38, w / w.abs().max() * 1e38, dy / dy.abs().max() * 1e38
    x, dy = x.to(torch.bfloat16), dy.to(torch.bfloat16)
    wq = NVFP4Quantizer(block_2d=True).quantize(w)
    xquant, gquant = NVFP4Quantizer(rht=True), NVFP4Quantizer(rht=True, stochastic_rounding=True, seed=3)
    xq = xquant.quantize(x)
    dyq = gquant.quantize(dy, rng_offset=7)
    wa = wq.amax_rowwise.reshape(1)
    got_x, x_row, _, ax = xquant.quantize_for_gemm(x, operand_dtype=torch.float32, partner_amax=(wa, None),
                                                   keep_codes=(False, True))
    assert got_x.rowwise_data is None and got_x.amax_rowwise is None
    assert torch.equal(got_x.columnwise_data, xq.columnwise_data)
    got_dy, dy_row, dy_col, ad = gquant.quantize_for_gemm(
        dy, operand_dtype=torch.float32, rng_offset=7, partner_amax=(wa, xq.amax_columnwise.reshape(1)),
        keep_codes=(False, False))
    assert got_dy.rowwise_data is None and got_dy.columnwise_data is None
    if big:
        assert fmt.gemm_alpha(xq.amax_rowwise, wq.amax_rowwise)[1].item() == 2.0**110
    w_op = reference.dequantize(wq.rowwise_data, wq.rowwise_scale_inv, None, torch.float32)
    x_col = reference.dequantize(xq.columnwise_data, xq.columnwise_scale_inv, None, torch.float32)
    for out_dtype in (torch.bfloat16, torch.float32):
        pairs = ((operand_gemm(x_row, w_op, ax[0], out_dtype), nvfp4_gemm(xq, wq, out_dtype=out_dtype)),
                 (operand_gemm(dy_row, w_op, ad[0], out_dtype, b_kn=True),
                  nvfp4_gemm(dyq, wq, b_columnwise=True, out_dtype=out_dtype)),
                 (operand_gemm(dy_col, x_col, ad[1], out_dtype),
                  nvfp4_gemm(dyq, xq, a_columnwise=True, b_columnwise=True, out_dtype=out_dtype)))
        for i, (got, want) in enumerate(pairs):
            assert same_bits(got, want), (big, out_dtype, i)
