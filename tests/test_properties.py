"""Properties of the reference quantizer that hold for any input: layouts, RHT, error bounds, SR."""

import math

import pytest
import torch

from conftest import random_tensor
from fp4dist import NVFP4Quantizer
from fp4dist import format as fmt
from fp4dist.rht import hadamard_matrix, rht, rht_matrix

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def test_2d_rowwise_codes_are_the_transpose_of_columnwise(gen):
    x = random_tensor((64, 96), gen, torch.bfloat16)
    t = NVFP4Quantizer(block_2d=True, backend="reference").quantize(x)
    assert torch.equal(fmt.unpack_fp4(t.rowwise_data), fmt.unpack_fp4(t.columnwise_data).t())
    row_s, col_s = t.rowwise_scale_inv.float(), t.columnwise_scale_inv.float()
    tiles = row_s[::16]  # [m/16, n/16]: one scale per tile, repeated over its 16 rows
    assert torch.equal(row_s, tiles.repeat_interleave(16, 0))
    assert torch.equal(col_s, tiles.t().repeat_interleave(16, 0))


def test_hadamard_and_rht_are_orthogonal(gen):
    h = hadamard_matrix()
    assert torch.equal(h @ h.t(), 16 * torch.eye(16))
    t = rht_matrix()
    assert torch.equal(t @ t.t(), torch.eye(16))
    x = torch.randn(8, 64, generator=gen, dtype=torch.float64).float()
    back = rht(rht(x), inverse=True)
    assert torch.allclose(back, x, rtol=0, atol=4 * 2**-23 * x.abs().max().item())
    assert torch.allclose(rht(x), (x.reshape(8, 4, 16) @ t).reshape(8, 64), rtol=0, atol=1e-6 * x.abs().max().item())


def test_rht_rounds_once_to_the_input_dtype(gen):
    x = torch.randn(4, 32, generator=gen).to(torch.bfloat16)
    expected = (x.double().reshape(4, 2, 16) @ rht_matrix().double()).reshape(4, 32)
    # 16 bf16 values summed in fp32 are exact here (normal random values), so one rounding remains.
    assert torch.equal(rht(x), expected.float().to(torch.bfloat16))


def error_bound(x2d, t):
    """Per-element bound on |x - dequant(x)| for the rowwise 1x16 layout, derived from the format.

    With u = bmax * S_enc / 6 (ideal scale) and s the stored E4M3 scale, |s - u| <= d, d = max(u/16, 2^-10)
    (half an E4M3 ulp, normal or subnormal). Unclamped elements round to the E2M1 grid: error <=
    1.0 * s * S_dec (the largest half gap, between 4 and 6). Clamped ones (|x e| > 6) lose at most
    bmax - 6 s S_dec <= 6 d S_dec. fp32 rounding of the decode adds a few ulps (1e-6 relative).
    """
    m, n = x2d.shape
    s_dec = fmt.global_decode_scale(t.amax_rowwise).double()
    bmax = x2d.double().abs().reshape(m, n // 16, 16).amax(-1)
    u = bmax / 6 / s_dec
    d = torch.maximum(u / 16, torch.full_like(u, 2.0**-10))
    s = t.rowwise_scale_inv.double()
    bound = torch.maximum(s, 6 * d) * s_dec
    return bound.repeat_interleave(16, dim=1) * (1 + 1e-6) + 1e-6 * x2d.double().abs()


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantization_error_within_format_bound(dtype, gen):
    x = random_tensor((48, 128), gen, dtype)
    t = NVFP4Quantizer(rowwise=True, columnwise=False, backend="reference").quantize(x)
    err = (t.dequantize(torch.float32).double() - x.double()).abs()
    assert (err <= error_bound(x.float(), t)).all()
    # And the bound is not vacuous: for blocks with a normal E4M3 scale (>= 2^-6) the error stays
    # below 1/4 of the block max (half gap 1.0 at |v| in [4, 6] over v <= 6.4 bounds it by 1/4).
    normal = t.rowwise_scale_inv.float() >= 2**-6
    rel = err.reshape(48, 8, 16).amax(-1) / x.double().abs().reshape(48, 8, 16).amax(-1).clamp_min(1e-300)
    assert normal.any() and rel[normal].max() <= 0.25


def test_columnwise_dequantization_error_within_bound(gen):
    x = random_tensor((64, 32), gen, torch.float32)
    t = NVFP4Quantizer(rowwise=False, columnwise=True, backend="reference").quantize(x)
    # The columnwise layout is the rowwise layout of X^T.
    t_t = NVFP4Quantizer(rowwise=True, columnwise=False, backend="reference").quantize(x.t().contiguous())
    assert torch.equal(t.columnwise_data, t_t.rowwise_data)
    err = (t.dequantize(torch.float32) - x).abs().t().double()
    assert (err <= error_bound(x.t().contiguous(), t_t)).all()


def test_rht_columnwise_is_quantized_in_the_transformed_domain(gen):
    x = random_tensor((32, 48), gen, torch.bfloat16)
    t = NVFP4Quantizer(rowwise=False, columnwise=True, rht=True, backend="reference").quantize(x)
    transformed = rht(x.t())
    assert t.amax_columnwise.item() == transformed.abs().amax().float().item()
    plain = NVFP4Quantizer(rowwise=True, columnwise=False, backend="reference").quantize(transformed.contiguous())
    assert torch.equal(plain.rowwise_data, t.columnwise_data)
    # dequantize(columnwise=True) undoes the RHT, landing near x.
    back = t.dequantize(torch.float32, columnwise=True)
    assert ((back - x.float()).norm() / x.float().norm()) < 0.2


def test_sr_is_deterministic_for_a_seed(gen):
    x = random_tensor((32, 64), gen, torch.bfloat16)
    q = NVFP4Quantizer(stochastic_rounding=True, rht=True, seed=1234, backend="reference")
    a, b = q.quantize(x, rng_offset=7), q.quantize(x, rng_offset=7)
    assert torch.equal(a.rowwise_data, b.rowwise_data) and torch.equal(a.columnwise_data, b.columnwise_data)
    c = q.quantize(x, rng_offset=8)
    d = NVFP4Quantizer(stochastic_rounding=True, rht=True, seed=1235, backend="reference").quantize(x, rng_offset=7)
    assert not torch.equal(a.rowwise_data, c.rowwise_data)
    assert not torch.equal(a.rowwise_data, d.rowwise_data)


def test_sr_shard_draws_match_the_full_tensor(gen):
    x = random_tensor((64, 32), gen, torch.float32)
    q = NVFP4Quantizer(stochastic_rounding=True, seed=5, backend="reference")
    amax = q.compute_amax(x)
    full = q.quantize(x, amax=amax)
    lower = q.quantize(x[32:], amax=amax, row_offset=32)
    assert torch.equal(full.rowwise_data[32:], lower.rowwise_data)


@pytest.mark.parametrize("block_2d", [False, True])
def test_sr_is_unbiased(block_2d):
    # Fixed input and seeds: the test is deterministic. For each element, the N draws are independent
    # Bernoulli choices between neighbours a < b of the E2M1 grid, so by Hoeffding
    # P(|mean - E| > t (b - a) s S_dec) <= 2 exp(-2 N t^2). With t below, over all elements, < 1e-6.
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(32, 64, generator=g) * torch.exp(torch.randn(32, 1, generator=g))
    n_seeds = 400
    mean = torch.zeros_like(x, dtype=torch.float64)
    for seed in range(n_seeds):
        q = NVFP4Quantizer(rowwise=True, columnwise=False, block_2d=block_2d, stochastic_rounding=True,
                           seed=seed, backend="reference")
        mean += q.quantize(x).dequantize(torch.float32).double()
    mean /= n_seeds
    # E[x'] is the value SR rounds, clamp(x e, -6, 6) s S_dec, with e and s those of the RN quantizer.
    ref = NVFP4Quantizer(rowwise=True, columnwise=False, block_2d=block_2d, backend="reference").quantize(x)
    s_dec = fmt.global_decode_scale(ref.amax_rowwise).double()
    scale = ref.rowwise_scale_inv.double().repeat_interleave(16, 1)
    enc = fmt.block_encode_scale(ref.rowwise_scale_inv, fmt.global_decode_scale(ref.amax_rowwise))
    v = (x * enc.repeat_interleave(16, 1)).clamp(-6, 6).double()
    expected = v * scale * s_dec
    gap = torch.where(v.abs() < 2, 0.5, torch.where(v.abs() < 4, 1.0, 2.0))
    t = math.sqrt(math.log(2 * x.numel() / 1e-6) / (2 * n_seeds))
    assert ((mean - expected).abs() <= t * gap * scale * s_dec + 1e-12).all()
    # Not trivially satisfied: RN's mean is biased by more than the bound somewhere.
    rn_err = (ref.dequantize(torch.float32).double() - expected).abs()
    assert (rn_err > t * gap * scale * s_dec + 1e-12).any()
