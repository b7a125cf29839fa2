"""The RHT'd columnwise layout on inputs whose transform overflows the input dtype or fp32 (docs/numerics.md,
section 6): the reference against an independent fp64 model of the intended math, and the inf / NaN rules."""

import pytest
import torch

from fp4dist import NVFP4Quantizer, nvfp4_gemm
from fp4dist import format as fmt
from fp4dist import rht as rht_mod
from tests.conftest import as_bits

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SIGNIFICAND = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24}
COLUMNWISE = dict(rowwise=False, columnwise=True, rht=True, backend="reference")


def round_significand(x: torch.Tensor, bits: int) -> torch.Tensor:
    """fp64 x rounded to ``bits`` significant bits, ties to even, with no exponent limit."""
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(torch.ldexp(m, torch.tensor(bits))), e - bits)


def intended_source(v: torch.Tensor) -> torch.Tensor:
    """fp64 model of rht.columnwise_source for finite v [n, m]: the spec's butterfly with fp32 precision at every
    stage and no exponent limit, * 0.25, rounded to v's dtype unless that exceeds the dtype's largest value (then the
    fp32-precision value), saturated at +-FLT_MAX. Exact when every sum is exact in fp64 (inputs of one chunk within
    2^29 of each other, as the tests draw them)."""
    signs = torch.tensor(rht_mod.RHT_SIGNS, dtype=torch.float64)
    u = v.double().reshape(v.shape[0], -1, 16) * signs
    h = 1
    while h < 16:
        pairs = u.reshape(*u.shape[:-1], 16 // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        u = round_significand(torch.stack((a + b, a - b), dim=-2), 24).reshape(*u.shape[:-1], 16)
        h *= 2
    y = u * 0.25
    rounded = round_significand(y, SIGNIFICAND[v.dtype])
    dtype_max = torch.finfo(v.dtype).max
    out = torch.where(rounded.abs() <= dtype_max, rounded, y).clamp(-fmt.FLT_MAX, fmt.FLT_MAX)
    return out.reshape(v.shape)


def overflow_input(rows, cols, dtype, gen):
    """X [rows, cols]: per 16-row chunk of each column a magnitude scale near the dtype's top (most chunks) or
    moderate, values in [2^-8, 1] times it (most near 1), so that fp64 models every chunk exactly; random signs, or
    in half the chunks the signs d of the RHT, whose first output then adds up coherently (and overflows)."""
    top = torch.finfo(dtype).max
    scales = torch.tensor([top, top / 2, top / 5, 2.0**124 if dtype != torch.float16 else 1e4, 1.0])
    pick = torch.randint(0, len(scales), (rows // 16, cols), generator=gen)
    pick[0, 0] = 0  # at least one chunk at the top of the range
    scale = scales[pick].double().repeat_interleave(16, dim=0)
    mag = torch.exp2(-8 * torch.rand(rows, cols, generator=gen, dtype=torch.float64) ** 3)
    sign = torch.where(torch.rand(rows, cols, generator=gen) < 0.5, -1.0, 1.0).double()
    coherent = (torch.rand(rows // 16, cols, generator=gen) < 0.5).repeat_interleave(16, dim=0)
    d = torch.tensor(rht_mod.RHT_SIGNS, dtype=torch.float64).repeat(rows // 16)[:, None].expand(rows, cols)
    sign = torch.where(coherent, d, sign)
    return (sign * mag * scale).clamp(-top, top).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflowing_transform_matches_an_fp64_model(dtype, gen):
    x = overflow_input(64, 48, dtype, gen)
    want = intended_source(x.t())
    assert torch.isfinite(want).all()
    assert (want.abs() > torch.finfo(dtype).max).any() or dtype == torch.float32  # the overflow path is taken
    source = rht_mod.columnwise_source(x.t())
    assert torch.equal(source.view(torch.int32), want.float().view(torch.int32))
    # spec rounding to the dtype where it does not overflow (the bits of rht() there)
    plain = rht_mod.rht(x.t()).float()
    fits = torch.isfinite(plain)
    assert torch.equal(source[fits].view(torch.int32), plain[fits].view(torch.int32))
    # the layout is the spec's quantization of that matrix (amax, scales, codes), finite
    t = NVFP4Quantizer(**COLUMNWISE).quantize(x)
    ref = NVFP4Quantizer(rowwise=True, columnwise=False, backend="reference").quantize(want.float().contiguous())
    assert t.amax_columnwise.item() == want.abs().max().item() == ref.amax_rowwise.item()
    assert torch.equal(t.columnwise_data, ref.rowwise_data)
    assert torch.equal(as_bits(t.columnwise_scale_inv), as_bits(ref.rowwise_scale_inv))
    assert (as_bits(t.columnwise_scale_inv) != 0x7F).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sr", [False, True])
def test_overflowing_transform_gives_correctly_scaled_codes(dtype, sr, gen):
    # decoded layout (before undoing the RHT) vs the fp64 transform: within one E2M1 step of the block scale
    # (RN: half a step) in every block whose scale is a normal E4M3 (>= 2^-6; below, the coarse scale can make w
    # exceed 6 and clamp, as for any input); the saturated values (beyond FLT_MAX) are in the bound too
    x = overflow_input(64, 32, dtype, gen)
    want = intended_source(x.t())
    q = NVFP4Quantizer(stochastic_rounding=sr, seed=3, **COLUMNWISE)
    t = q.quantize(x, rng_offset=5)
    decoded = t.decode_layout(True, torch.float32).double()
    assert torch.isfinite(decoded).all()
    step = (t.columnwise_scale_inv.double() * fmt.global_decode_scale(t.amax_columnwise).double() * 2)
    normal = (t.columnwise_scale_inv.float() >= 2.0**-6).repeat_interleave(16, dim=1)
    assert normal.float().mean() > 0.5
    step = step.repeat_interleave(16, dim=1)
    err = (decoded - want).abs()
    assert (err <= step * (1.0 if sr else 0.5) * (1 + 2.0**-20))[normal].all()


@pytest.mark.parametrize("dtype,big", [(torch.float16, 6e4), (torch.float32, 1e38), (torch.bfloat16, 1e38)])
def test_overflowing_wgrad_operands_round_trip_and_multiply(dtype, big, gen):
    x = ((torch.rand(64, 32, generator=gen) * 2 - 1) * big).to(dtype)
    t = NVFP4Quantizer(rowwise=False, columnwise=True, rht=True, backend="reference").quantize(x)
    back = t.dequantize(torch.float64, columnwise=True)
    assert torch.isfinite(back).all()
    assert (back - x.double()).norm() / x.double().norm() < 0.2
    dy = (torch.randn(64, 16, generator=gen) * 2.0**-10).to(dtype)  # dW stays within fp32
    g = NVFP4Quantizer(rowwise=False, columnwise=True, rht=True, stochastic_rounding=True,
                       backend="reference").quantize(dy)
    dw = nvfp4_gemm(g, t, a_columnwise=True, b_columnwise=True, out_dtype=torch.float32).double()
    exact = dy.double().t() @ x.double()
    assert torch.isfinite(dw).all() and (dw - exact).norm() / exact.norm() < 0.3


def test_prescale_threshold_is_where_the_butterfly_could_overflow():
    # the chunk v * d: its first output is 16 v / 4 = 4 v, the others 0. Below 2^124 the spec's path cannot overflow;
    # from 2^124 on the prescaled one gives the same exact value, until 4 v exceeds FLT_MAX (then +FLT_MAX)
    d = torch.tensor(rht_mod.RHT_SIGNS, dtype=torch.float32)[None]
    for v in (2.0**124 * (1 - 2.0**-24), 2.0**124, 2.0**125, 2.0**126 - 2.0**102):
        out = rht_mod.columnwise_source(v * d)
        assert out[0, 0].item() == 4 * v and (out[0, 1:] == 0).all()
    assert torch.isinf(rht_mod.rht(2.0**127 * d)[0, 0])  # the plain function rounds to fp32: overflow
    sat = rht_mod.columnwise_source(2.0**127 * d)
    assert sat[0, 0].item() == fmt.FLT_MAX and (sat[0, 1:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_infinity_poisons_only_its_block(dtype, gen):
    # the chunk of column 3, rows 16-31 holds +inf and -inf: that block is NaN (scale 0x7F, codes 0, dequantized NaN),
    # the amax ignores it, and every other block is what the tensor without that chunk gives
    x = torch.randn(64, 32, generator=gen).to(dtype)
    clean = x.clone()
    clean[16:32, 3] = 0
    x[20, 3], x[27, 3] = float("inf"), float("-inf")
    q = NVFP4Quantizer(**COLUMNWISE)
    t, c = q.quantize(x), q.quantize(clean)
    assert t.amax_columnwise.item() == c.amax_columnwise.item() and torch.isfinite(t.amax_columnwise)
    scales, clean_scales = as_bits(t.columnwise_scale_inv).clone(), as_bits(c.columnwise_scale_inv).clone()
    assert scales[3, 1].item() == 0x7F
    scales[3, 1] = clean_scales[3, 1] = 0
    assert torch.equal(scales, clean_scales)
    data, clean_data = t.columnwise_data.clone(), c.columnwise_data.clone()
    assert (data[3, 8:16] == 0).all()
    data[3, 8:16] = clean_data[3, 8:16] = 0
    assert torch.equal(data, clean_data)
    back = t.dequantize(torch.float32, columnwise=True)
    assert torch.isnan(back[16:32, 3]).all()
    back[16:32, 3] = float("nan")
    assert torch.isnan(back).sum() == 16


def test_a_single_infinity_also_gives_a_nan_block():
    x = torch.ones(32, 16)
    x[0, 5] = float("inf")
    t = NVFP4Quantizer(**COLUMNWISE).quantize(x)
    assert as_bits(t.columnwise_scale_inv)[5, 0].item() == 0x7F
    ones_amax = rht_mod.rht(torch.ones(1, 16)).abs().max().item()  # the other chunks: 16 ones
    assert t.amax_columnwise.item() == ones_amax
    # the rowwise layout keeps the spec's saturation (amax inf)
    both = NVFP4Quantizer(rht=True, backend="reference").quantize(x)
    assert torch.isinf(both.amax_rowwise) and both.amax_columnwise.item() == ones_amax


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_poisons_the_whole_rht_layout(dtype):
    x = torch.ones(32, 32, dtype=dtype)
    x[3, 4], x[9, 7] = float("nan"), float("inf")
    t = NVFP4Quantizer(**COLUMNWISE).quantize(x)
    assert torch.isnan(t.amax_columnwise)
    assert (as_bits(t.columnwise_scale_inv) == 0x7F).all()
    assert torch.isnan(t.dequantize(columnwise=True)).all()
