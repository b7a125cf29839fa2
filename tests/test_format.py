"""Hand-derived, bit-exact cases of the NVFP4 spec (docs/numerics.md)."""

import pytest
import torch

from conftest import assert_same_bits
from fp4dist import NVFP4Quantizer
from fp4dist import format as fmt

RN_ONLY = dict(rowwise=True, columnwise=False, backend="reference")


def codes_of(t):
    return fmt.unpack_fp4(t.rowwise_data)


def with_anchor(row, anchor):
    """Put ``row`` (16 values) in a [2, 16] tensor whose second row sets amax = ``anchor``."""
    return torch.stack((torch.tensor(row, dtype=torch.float32), torch.full((16,), float(anchor))))


def test_e2m1_table_and_packing():
    assert fmt.E2M1_VALUES.tolist()[:8] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert fmt.e2m1_to_float(torch.tensor([8], dtype=torch.uint8)).item() == 0.0
    assert torch.signbit(fmt.e2m1_to_float(torch.tensor([8], dtype=torch.uint8))).item()
    codes = torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)
    packed = fmt.pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0x8F]]  # element 2i in the low nibble
    assert torch.equal(fmt.unpack_fp4(packed), codes)


def test_rounding_ties_go_to_even_code():
    # amax = 2688 -> S_enc = 1; bmax = 6 -> s = e4m3(fp32(6 * fp32(1/6))) = e4m3(1.0) = 1; e = 1: v = x.
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]
    x = with_anchor(ties + [-t for t in ties], 2688)
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    assert t.rowwise_scale_inv[0].float().tolist() == [1.0]
    assert codes_of(t)[0].tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 8, 10, 10, 12, 12, 14, 14, 15]


def test_rounding_just_off_the_ties():
    eps = 1e-3
    above = [0.25 + eps, 0.75 - eps, 1.25 + eps, 1.75 - eps, 2.5 + eps, 3.5 - eps, 5.0 + eps, 6.0]
    below = [0.25 - eps, 0.75 + eps, 1.25 - eps, 1.75 + eps, 2.5 - eps, 3.5 + eps, 5.0 - eps, 0.0]
    t = NVFP4Quantizer(**RN_ONLY).quantize(with_anchor(above + below, 2688))
    assert codes_of(t)[0].tolist() == [1, 1, 3, 3, 5, 5, 7, 7, 0, 2, 2, 4, 4, 6, 6, 0]


def test_signed_zeros():
    # -0.0 gives code 0; a negative value that rounds to zero keeps its sign (code 8).
    row = [-0.0, 0.0, -0.1, 0.1, -0.25, 6.0] + [0.0] * 10
    t = NVFP4Quantizer(**RN_ONLY).quantize(with_anchor(row, 2688))
    assert codes_of(t)[0].tolist()[:6] == [0, 0, 8, 0, 8, 7]


def test_saturation_at_six():
    # bmax = 6.3: s = e4m3(6.3 * fp32(1/6) = 1.05) = 1.0 (1.125 is farther), so v = 6.3 clamps to 6.
    row = [6.3, -6.3, 5.9] + [0.0] * 13
    t = NVFP4Quantizer(**RN_ONLY).quantize(with_anchor(row, 2688))
    assert t.rowwise_scale_inv[0].float().tolist() == [1.0]
    assert codes_of(t)[0].tolist()[:3] == [7, 15, 7]
    assert t.dequantize(torch.float32)[0, :3].tolist() == [6.0, -6.0, 6.0]


def test_e4m3_scale_rounding_order_and_ties():
    # amax = 448 -> S_enc = 6 exactly and fp32(6 * fp32(1/6)) = 1.0, so s = e4m3(bmax) with RNE:
    # 1.0625 is halfway between 1.0 and 1.125 -> 1.0 (even); 1.1875 halfway 1.125/1.25 -> 1.25 (even).
    x = torch.zeros(4, 16)
    x[0, 0], x[1, 0], x[2, 0], x[3, 0] = 1.0625, 1.1875, 448.0, 0.0
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    assert t.rowwise_scale_inv.float().flatten().tolist() == [1.0, 1.25, 448.0, 0.0]
    # amax = 3 -> S_enc = 896, and fp32(896 * fp32(1/6)) = 149.33334350585938 (fp32(1/6) > 1/6).
    # bmax = 2.25: exactly 2.25 * 896 / 6 = 336, the tie between E4M3 320 and 352 (which would give
    # 320), but the spec's order computes 2.25 * 149.33334350585938 = 336.00003 -> 352.
    x = torch.zeros(2, 16)
    x[0, 0], x[1, 0] = 2.25, 3.0
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    assert t.rowwise_scale_inv[0].float().item() == 352.0


def test_scale_clamps_at_448(gen):
    # The block holding the amax always gets the largest E4M3 scale, 448 (0x7E), never NaN.
    for _ in range(20):
        amax = float(torch.exp(torch.randn(1, generator=gen) * 20).item())
        x = torch.rand(16, 32, generator=gen) * amax
        x[3, 5] = amax
        s = NVFP4Quantizer(**RN_ONLY).quantize(x).rowwise_scale_inv
        assert s[3, 0].view(torch.uint8).item() == 0x7E
        assert not torch.isnan(s.float()).any()


def test_all_zero_tensor():
    t = NVFP4Quantizer(backend="reference").quantize(torch.zeros(32, 64, dtype=torch.bfloat16))
    assert t.amax_rowwise.item() == 0.0
    for data, scale in ((t.rowwise_data, t.rowwise_scale_inv), (t.columnwise_data, t.columnwise_scale_inv)):
        assert (data == 0).all() and (scale.view(torch.uint8) == 0).all()
    assert torch.equal(t.dequantize(), torch.zeros(32, 64, dtype=torch.bfloat16))


def test_zero_block_inside_nonzero_tensor(gen):
    x = torch.randn(16, 64, generator=gen)
    x[5, 16:32] = 0.0
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    assert t.rowwise_scale_inv[5, 1].view(torch.uint8).item() == 0
    assert (codes_of(t)[5, 16:32] == 0).all()
    assert (t.dequantize()[5, 16:32] == 0).all()


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_extreme_magnitudes(magnitude, gen):
    # Scaled copies of one tensor give the same codes and scales, and the same values times the factor:
    # S_enc absorbs the magnitude (fp32 products of powers of two are exact).
    base = torch.randn(32, 64, generator=gen)
    power = 2.0 ** round(torch.log2(torch.tensor(magnitude)).item())
    small, big = NVFP4Quantizer(backend="reference").quantize(base), NVFP4Quantizer(backend="reference").quantize(base * power)
    for a, b in ((small.rowwise_data, big.rowwise_data), (small.columnwise_data, big.columnwise_data)):
        assert torch.equal(a, b)
    assert torch.equal(small.rowwise_scale_inv.view(torch.uint8), big.rowwise_scale_inv.view(torch.uint8))
    assert torch.equal(small.dequantize() * power, big.dequantize())


def test_tiny_block_next_to_huge_block():
    # amax 1e30 makes the scale of a 1e-30 block underflow to E4M3 zero: the block decodes to 0.
    x = torch.zeros(1, 32)
    x[0, :16], x[0, 16:] = 1e30, 1e-30
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    assert t.rowwise_scale_inv[0].view(torch.uint8).tolist() == [0x7E, 0]
    assert t.dequantize()[0, 16:].eq(0).all()
    assert torch.allclose(t.dequantize()[0, :16], x[0, :16], rtol=2**-20)


def test_input_dtypes_give_the_same_bits(gen):
    # Values exactly representable in bf16, fp16 and fp32 quantize identically from each dtype.
    x = (torch.randn(32, 48, generator=gen) * 8).to(torch.bfloat16).to(torch.float16).float()
    outs = [NVFP4Quantizer(backend="reference").quantize(x.to(dt)) for dt in (torch.float32, torch.bfloat16, torch.float16)]
    for t in outs[1:]:
        assert_same_bits(t.with_components(t.shape), outs[0].with_components(t.shape, dtype=t.dtype))
    assert outs[1].dequantize().dtype == torch.bfloat16


def test_three_d_input_is_its_two_d_view(gen):
    x = torch.randn(2, 16, 32, generator=gen, dtype=torch.float32).to(torch.bfloat16)
    q = NVFP4Quantizer(rht=True, backend="reference")
    a, b = q.quantize(x), q.quantize(x.reshape(32, 32))
    assert a.shape == (2, 16, 32) and a.rowwise_data.shape == (32, 16) and a.columnwise_data.shape == (32, 16)
    assert_same_bits(a, b.with_components(a.shape))
    assert a.dequantize().shape == (2, 16, 32)


@pytest.mark.parametrize("shape", [(16, 32), (512, 1024)])
def test_nan_input_is_not_silently_zero(shape):
    x = torch.ones(shape)
    x[3, 4] = float("nan")
    t = NVFP4Quantizer(backend="reference").quantize(x)
    assert torch.isnan(t.amax_rowwise) and torch.isnan(t.amax_columnwise)
    assert torch.isnan(t.dequantize()).all() and torch.isnan(t.dequantize(columnwise=True)).all()
    # documented choice: every block scale is the positive E4M3 NaN 0x7F, at every size
    for scale in (t.rowwise_scale_inv, t.columnwise_scale_inv):
        assert (scale.view(torch.uint8) == 0x7F).all()


def test_infinity_saturates():
    x = torch.ones(16, 32)
    x[0, 0] = float("inf")
    t = NVFP4Quantizer(**RN_ONLY).quantize(x)
    # amax = inf -> S_enc = 2688/inf = 0 -> 1 (spec step 2).
    assert fmt.global_encode_scale(t.amax_rowwise).item() == 1.0
    assert codes_of(t)[0, 0].item() == 7


def test_gemm_alpha_is_the_product_of_the_decode_scales(gen):
    # amaxes whose S_dec product is finite (each below ~4.9e22; e^(10 z) stays below that for |z| < 5.2): alpha is
    # S_dec(a) * S_dec(b), bit for bit, from subnormal products up
    a = torch.exp(torch.randn(4096, generator=gen).clamp(-5, 5) * 10).float()
    b = torch.exp(torch.randn(4096, generator=gen).clamp(-5, 5) * 10).float()
    a[:3], b[:3] = torch.tensor([0.0, float("inf"), 1e-45]), torch.tensor([5.0, 0.0, float("inf")])
    alpha, shift = fmt.gemm_alpha(a, b)
    want = fmt.global_decode_scale(a) * fmt.global_decode_scale(b)
    assert torch.isfinite(want).all()
    assert torch.equal(alpha.view(torch.int32), want.view(torch.int32))
    assert torch.equal(shift, torch.ones_like(shift))
    nan_alpha, nan_shift = fmt.gemm_alpha(torch.tensor(float("nan")), torch.tensor(1.0))
    assert torch.isnan(nan_alpha) and nan_shift.item() == 1.0


def test_gemm_alpha_overflow_takes_the_shift(gen):
    # both amaxes near 1e38: S_dec * S_dec overflows fp32; alpha stays finite and alpha * shift is the exact product
    # of the two decode scales within one fp32 rounding (relative 2^-24)
    a = (1e38 * (1 + torch.rand(1024, generator=gen) * 2)).float()
    b = (1e38 * (1 + torch.rand(1024, generator=gen) * 2)).float().clamp(max=fmt.FLT_MAX)
    a[0], b[0] = fmt.FLT_MAX, fmt.FLT_MAX
    alpha, shift = fmt.gemm_alpha(a, b)
    assert alpha.dtype == shift.dtype == torch.float32
    assert torch.isfinite(alpha).all() and (shift == 2.0**110).all()
    exact = fmt.global_decode_scale(a).double() * fmt.global_decode_scale(b).double()
    assert torch.isinf(fmt.global_decode_scale(a) * fmt.global_decode_scale(b)).all()
    rel = ((alpha.double() * shift.double() - exact) / exact).abs()
    assert (rel <= 2.0**-24).all(), rel.max().item()
