"""The CUDA kernels (fp4dist/backends/cuda.py) against the reference backend, bit for bit.

Every test runs the reference on CPU copies of the same input and compares raw bytes (codes, E4M3
scale bytes, fp32 amax bits). Outputs of the kernels are poisoned with two different byte patterns
before two runs, so an element the kernel fails to write cannot pass by luck.
"""

from __future__ import annotations

import math

import pytest
import torch

from fp4dist import NVFP4Quantizer
from fp4dist import format as fmt
from fp4dist import rht as rht_mod
from fp4dist.backends import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
POISONS = (0xAB, 0x5C)


@pytest.fixture(scope="module")
def kern(cuda_kernels):
    return cuda_kernels


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def make_input(shape, dtype, gen, *, extremes=True):
    """randn scaled by per-row magnitudes over ~8 decades and per-16-block factors, zero blocks (row and
    column), a few huge and tiny elements; fresh for every call. Values stay finite in ``dtype``."""
    x = torch.randn(shape, generator=gen)
    x = x * torch.exp(torch.randn(*shape[:-1], 1, generator=gen) * 3)
    x2 = x.reshape(-1, shape[-1])
    m, n = x2.shape
    if n % 16 == 0:
        blockf = torch.exp(torch.randn(m, n // 16, 1, generator=gen) * 1.5)
        x2.mul_(blockf.expand(m, n // 16, 16).reshape(m, n))
    if n >= 32:
        x2[0, 16:32] = 0.0                      # a zero rowwise block
    if m >= 32:
        x2[16:32, min(3, n - 1)] = 0.0          # a zero columnwise block
    if extremes and x2.numel() >= 64:
        k = max(1, x2.numel() // 1000)
        flat = x2.view(-1)
        idx = torch.randint(0, flat.numel(), (2 * k,), generator=gen)
        flat[idx[:k]] *= 1e4                    # huge (relative)
        flat[idx[k:]] *= 1e-6                   # tiny (subnormal scales, zero codes)
    lim = 60000.0 if dtype == torch.float16 else 1e30
    return x.clamp(-lim, lim).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes of t (flattened, CPU) for exact comparison.

    E4M3 has two NaN bytes, 0x7F and 0xFF; which one a NaN scale gets is not specified (the CPU reference
    itself gives 0x7F or 0xFF depending on the tensor size, through torch.minimum's vectorized path), so for
    float8 tensors 0xFF is mapped to 0x7F. Every other byte is compared as is.
    """
    t = t.detach().contiguous().cpu().reshape(-1)  # 0-dim tensors (amaxes) too
    b = t.view(torch.uint8).reshape(-1) if t.numel() else t.reshape(-1).to(torch.uint8)
    if t.dtype == torch.float8_e4m3fn:
        b = torch.where(b == 0xFF, torch.full_like(b, 0x7F), b)
    return b


def assert_same_bits(got, want, what):
    assert got is not None and want is not None, what
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    g, w = bits(got), bits(want)
    if not torch.equal(g, w):
        bad = (g != w).nonzero().flatten()
        raise AssertionError(f"{what}: {bad.numel()} of {g.numel()} bytes differ, first at byte {bad[0].item()} "
                             f"(got {g[bad[0]].item():#04x}, want {w[bad[0]].item():#04x})")


def assert_same_floats(got, want, what):
    """Bit-equal floats, except that any NaN matches any NaN (payloads are not specified)."""
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.shape == want.shape and got.dtype == want.dtype, what
    both_nan = got.isnan() & want.isnan()
    ib = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[got.element_size()]
    same = (got.view(ib) == want.view(ib)) | both_nan
    if not bool(same.all()):
        bad = (~same).nonzero()[0].tolist()
        raise AssertionError(f"{what}: {(~same).sum().item()} values differ, first at {bad}: "
                             f"got {got[tuple(bad)].item()!r}, want {want[tuple(bad)].item()!r}")


def poisoned_outputs(m, n, rowwise, columnwise, poison, device):
    def filled(shape, dtype):
        t = torch.empty(shape, dtype=dtype, device=device)
        t.view(torch.uint8).fill_(poison)
        return t
    return (filled((m, n // 2), torch.uint8) if rowwise else None,
            filled((m, n // 16), torch.float8_e4m3fn) if rowwise else None,
            filled((n, m // 2), torch.uint8) if columnwise else None,
            filled((n, m // 16), torch.float8_e4m3fn) if columnwise else None)


NAMES = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv")


def check_cast(kern, x, *, rowwise, columnwise, block_2d=False, rht=False, sr=False, seed=0, rng_offset=0,
               row_offset=0, amax=None):
    """Cast x with both backends (poisoned outputs, two poisons) and compare every byte."""
    x2d = x.reshape(-1, x.shape[-1])
    m, n = x2d.shape
    xc = x2d.cpu()
    if amax is None:
        amax = ref.compute_amax(xc, rht=rht and columnwise)
    kw = dict(rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht, stochastic_rounding=sr,
              seed=seed, rng_offset=rng_offset, row_offset=row_offset)
    want = ref.cast(xc, amax.cpu(), **kw)
    xd = x2d.cuda().contiguous()
    for poison in POISONS:
        out = poisoned_outputs(m, n, rowwise, columnwise, poison, xd.device)
        got = kern.cast(xd, amax.cuda(), out=out, **kw)
        for name, g, w, o in zip(NAMES, got, want, out):
            if w is None:
                assert g is None, name
                continue
            assert g.data_ptr() == o.data_ptr(), f"{name}: out= was not used"
            assert_same_bits(g, w, f"{name} ({x.dtype}, {tuple(x.shape)}, {kw}, poison {poison:#x})")
    return want


MODES = {
    "row": dict(rowwise=True, columnwise=False),
    "col": dict(rowwise=False, columnwise=True),
    "both": dict(rowwise=True, columnwise=True),
    "row_2d": dict(rowwise=True, columnwise=False, block_2d=True),
    "col_2d": dict(rowwise=False, columnwise=True, block_2d=True),
    "both_2d": dict(rowwise=True, columnwise=True, block_2d=True),
    "col_rht": dict(rowwise=False, columnwise=True, rht=True),
    "both_rht": dict(rowwise=True, columnwise=True, rht=True),
    "both_sr": dict(rowwise=True, columnwise=True, sr=True, seed=1234, rng_offset=7, row_offset=0),
    "row_sr_off": dict(rowwise=True, columnwise=False, sr=True, seed=2**40 + 5, rng_offset=2**33 + 1,
                       row_offset=4096),
    "both_rht_sr": dict(rowwise=True, columnwise=True, rht=True, sr=True, seed=99, rng_offset=3, row_offset=48),
    "col_rht_sr": dict(rowwise=False, columnwise=True, rht=True, sr=True, seed=2**63 + 9, rng_offset=5, row_offset=16),
    "both_2d_sr": dict(rowwise=True, columnwise=True, block_2d=True, sr=True, seed=5, rng_offset=0,
                       row_offset=123456),
    # not a combination the quantizer asks for; the kernels support it (rowwise tiles of X, columnwise of RHT(X))
    "both_2d_rht": dict(rowwise=True, columnwise=True, block_2d=True, rht=True),
}


# ------------------------------------------------------------------------------------------------
# cast: every mode, every dtype
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", [(48, 80), (4, 48, 160), (1024, 4096)], ids=lambda s: "x".join(map(str, s)))
def test_cast_matches_reference(kern, gen, shape, mode, dtype):
    check_cast(kern, make_input(shape, dtype, gen), **MODES[mode])


@pytest.mark.parametrize("mode,dtype", [("both", torch.bfloat16), ("both_rht_sr", torch.bfloat16),
                                        ("both_rht", torch.bfloat16),
                                        ("both_2d", torch.bfloat16), ("both", torch.float32),
                                        ("row_sr_off", torch.float16)])
def test_cast_large(kern, gen, mode, dtype):
    check_cast(kern, make_input((8192, 5120), dtype, gen), **MODES[mode])


@pytest.mark.parametrize("shape,mode", [
    ((7, 32), "row"),            # m not a multiple of 16 (rowwise only)
    ((33, 48), "row_sr_off"),
    ((32, 5), "col"),            # n odd: unaligned rows, scalar load path
    ((32, 20), "col_rht"),       # n * 2 bytes not a multiple of 16 (bf16): scalar path
    ((16, 16), "both"),
    ((16, 16), "both_2d"),
    ((208, 400), "both_rht_sr"),  # partial tiles in both directions, m % 32 == 16
    ((3, 16, 48), "both_2d"),
    # the wide kernel (512 x 512 units): partial units in both directions, a 16-row last sub-tile, m % 32 != 0
    # (8-byte columnwise stores), m % 256 != 0 (bytewise columnwise scales)
    ((528, 1040), "both"),
    ((528, 1040), "both_rht_sr"),
    ((528, 1040), "both_rht"),
    ((1040, 528), "both_2d"),
    ((1040, 528), "col_rht"),
    ((528, 1040), "row_2d"),
    ((528, 1040), "col_2d"),
    ((1040, 528), "both_2d_sr"),
    ((1040, 528), "both_2d_rht"),
])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_cast_odd_shapes(kern, gen, shape, mode, dtype):
    check_cast(kern, make_input(shape, dtype, gen), **MODES[mode])


@pytest.mark.parametrize("shape,mode", [
    # 16-bit rows of a multiple of 16 bytes: the wide kernel (both-layouts path, 16x16 path, single-layout path)
    ((1040, 528), "both"), ((1040, 528), "both_2d"), ((1040, 528), "both_rht_sr"), ((1040, 536), "col_rht"),
    # columnwise-only casts with n % 8 != 0 (rows not a multiple of 16 bytes): the 128-row kernel's element loads
    ((1040, 532), "col"), ((1040, 532), "col_rht"), ((1040, 532), "col_rht_sr"),
], ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_cast_kernel_dispatch(kern, gen, shape, mode):
    # both cast kernels that 16-bit inputs can be dispatched to (fp32 inputs always take the 128-row kernel)
    for dtype in (torch.bfloat16, torch.float16):
        check_cast(kern, make_input(shape, dtype, gen), **MODES[mode])


@pytest.mark.parametrize("shape,mode", [
    # the wide kernel picks 512-, 256- or 128-row units by how the units fill the SMs (132 on an H100 / H200)
    ((8192, 4096), "both_rht_sr"), ((8192, 4096), "both_2d"),   # 128 units of 512 rows: one wave
    ((1024, 16384), "both_rht_sr"), ((1024, 16384), "both_2d"),  # 256-row units
    ((1024, 1024), "both_rht_sr"), ((1024, 1024), "both_2d_sr"), ((1024, 1024), "col_rht"),  # 128-row units
    ((1168, 1040), "both_rht_sr"),                                # 128-row units, a partial last one of 16 rows
], ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_cast_wide_unit_heights(kern, gen, shape, mode):
    check_cast(kern, make_input(shape, torch.bfloat16, gen), **MODES[mode])


@pytest.mark.parametrize("mode", ["both_2d", "both_2d_sr"])
@pytest.mark.parametrize("shape", [(1040, 528), (1024, 4096)], ids=lambda s: "x".join(map(str, s)))
def test_cast_2d_distinct_layout_amax(kern, gen, shape, mode):
    # 16x16 tiles with a different amax per layout (as a caller may pass): the two layouts' scales differ, so
    # the rowwise codes can not be the columnwise codes transposed
    x = make_input(shape, torch.bfloat16, gen)
    a = ref.compute_amax(x.reshape(-1, x.shape[-1]), rht=False)
    amax = torch.stack([a[0], a[1] * float(1 + torch.rand((), generator=gen))])
    check_cast(kern, x, amax=amax, **MODES[mode])


def test_cast_unaligned_input_view(kern, gen):
    # a contiguous view that starts 2 bytes into its storage: the kernel must not assume alignment
    base = make_input((1, 48 * 64 + 1), torch.bfloat16, gen).reshape(-1).cuda()
    x = base[1:].reshape(48, 64)
    assert x.data_ptr() % 16 != 0
    check_cast(kern, x, **MODES["both"])
    check_cast(kern, x, **MODES["both_rht_sr"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_rounding_ties_every_layout(kern, dtype):
    # amax = 2688 -> S_enc = 1; every row and column block holds a 6 -> scale 1, e = 1: v = x exactly,
    # so each tie value (and its neighbours in dtype) lands exactly on / next to an E2M1 threshold.
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 3.0], dtype=dtype)
    ib = {2: torch.int16, 4: torch.int32}[ties.element_size()]
    up = (ties.view(ib) + 1).view(dtype)      # next value up in dtype (all positive)
    down = (ties.view(ib) - 1).view(dtype)    # next value down
    vals = torch.cat([ties, up, down, -ties, -up, -down, torch.tensor([0.0, -0.0, 1e-3, -1e-3], dtype=dtype)])
    i = torch.arange(64)
    x = vals[(i[:, None] * 7 + i[None, :] * 3) % vals.numel()].clone()
    x[(i[:, None] % 16) == (i[None, :] % 16)] = 6.0
    x[5, 40] = 2688.0
    for mode in ("both", "both_2d", "both_sr"):
        check_cast(kern, x.to(dtype), **MODES[mode])


# ------------------------------------------------------------------------------------------------
# amax, zeros, NaN
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", [(48, 80), (1024, 4096), (4, 48, 160), (32, 5), (8192, 5120), (40016, 34)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rht", [False, True])
def test_amax_matches_reference(kern, gen, shape, dtype, rht):
    x = make_input(shape, dtype, gen).reshape(-1, shape[-1])
    want = ref.compute_amax(x, rht=rht)
    got = kern.compute_amax(x.cuda(), rht=rht)
    assert_same_floats(got, want, f"amax {dtype} {shape} rht={rht}")


@pytest.mark.parametrize("rht_b", [False, True])
@pytest.mark.parametrize("b_shape", [(8192, 1024), (48, 80), (0, 64)], ids=lambda s: "x".join(map(str, s)))
def test_amax_pair_is_two_amax_passes(kern, gen, b_shape, rht_b):
    # one buffer, zeroed once, for an fp32 W and a bf16 X: each half is its own pass, whatever the buffer held
    # before (the launcher zeroes it) and however the two maxima compare (W the larger, so a pass that wrote into the
    # other's half would show)
    w = make_input((1024, 4096), torch.float32, gen) * 1e3
    x = make_input(b_shape, torch.bfloat16, gen) if b_shape[0] else torch.empty(b_shape, dtype=torch.bfloat16)
    out = torch.full((4,), 3e38, dtype=torch.float32, device="cuda")
    kern._kernels().amax_pair(w.cuda(), False, x.cuda(), rht_b, out)
    want_x = ref.compute_amax(x, rht=rht_b) if b_shape[0] else torch.zeros(2)
    assert_same_floats(out[:2], ref.compute_amax(w, rht=False), "amax_pair: W's half")
    assert_same_floats(out[2:], want_x, f"amax_pair: X's half {b_shape} rht={rht_b}")
    got = kern.compute_amax_pair(w.cuda(), x.cuda(), rht_a=False, rht_b=rht_b)
    assert_same_floats(got, out, "compute_amax_pair")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_rht_amax_of_a_view_at_an_odd_element_offset(kern, gen, dtype):
    # X starting one element into its storage: the column pairs are not aligned to two elements, so the pass takes
    # one column per thread; the largest magnitude in the last strip's last column
    m, n = 2064, 96
    flat = make_input((m * n + 1,), dtype, gen)
    flat[-1] = -flat.abs().max()
    x = flat.cuda()[1:].view(m, n)
    assert x.data_ptr() % (2 * x.element_size()) != 0
    want = ref.compute_amax(flat[1:].view(m, n), rht=True)
    out = torch.empty(2, dtype=torch.float32, device="cuda")
    kern._kernels().amax(x, out, True)  # the raw kernel: compute_amax would hand it an aligned copy
    assert_same_floats(out, want, f"amax {dtype} at an odd offset")


@pytest.mark.parametrize("rht", [False, True])
def test_amax_launcher_zeroes_its_output(kern, gen, rht):
    # compute_amax hands the kernels an uninitialized buffer: the launcher itself must start it from 0 (a NaN or a
    # huge value left there would win every atomicMax), also when X is empty
    for shape in ((64, 128), (0, 128)):
        x = make_input(shape, torch.bfloat16, gen) if shape[0] else torch.empty(shape, dtype=torch.bfloat16)
        want = ref.compute_amax(x, rht=rht) if x.numel() else torch.zeros(2)
        for junk in (float("nan"), 3e38):
            out = torch.full((2,), junk, dtype=torch.float32, device="cuda")
            kern._kernels().amax(x.cuda(), out, rht)
            assert_same_floats(out, want, f"amax over {junk} {shape} rht={rht}")
        assert_same_floats(kern.compute_amax(x.cuda(), rht=rht), want, f"compute_amax {shape} rht={rht}")


def test_amax_then_cast_end_to_end(kern, gen):
    x = make_input((256, 512), torch.bfloat16, gen)
    for mode in ("both", "both_rht_sr", "both_2d"):
        kw = MODES[mode]
        rht_amax = kw.get("rht", False)
        a_ref = ref.compute_amax(x, rht=rht_amax)
        a_cuda = kern.compute_amax(x.cuda(), rht=rht_amax)
        assert_same_floats(a_cuda, a_ref, "amax")
        check_cast(kern, x, amax=a_cuda.cpu(), **kw)


@pytest.mark.parametrize("mode", ["both", "both_2d", "both_rht", "row", "col_2d"])
def test_cast_power_of_two_amax(kern, gen, mode):
    # amax = 2^k: the block encode scales have short, repeating significands, so many bf16 products land
    # exactly on E2M1 ties (0.25, 0.75, ...), where only the exact fp32 product decides. Rows 17-32 set to zero
    # add rowwise 1x16 blocks whose scale byte is 0 (all-zero tiles and columns: test_all_zero_input).
    x = make_input((1040, 528), torch.bfloat16, gen)
    x[17:33] = 0
    a = ref.compute_amax(x, rht=MODES[mode].get("rht", False))
    amax = torch.exp2(torch.ceil(torch.log2(a)))  # the next power of two at or above each amax
    check_cast(kern, x, amax=amax, **MODES[mode])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_all_zero_input(kern, dtype):
    x = torch.zeros(64, 128, dtype=dtype)
    for rht in (False, True):
        assert_same_floats(kern.compute_amax(x.cuda(), rht=rht), ref.compute_amax(x, rht=rht), "amax of zeros")
    for mode in ("both", "both_rht", "both_2d", "both_rht_sr"):
        want = check_cast(kern, x, **MODES[mode])
        assert int(bits(want[0]).max()) == 0 and int(bits(want[1]).max()) == 0  # codes 0, scales 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_nan_input(kern, gen, dtype):
    x = make_input((64, 128), dtype, gen)
    x[3, 17] = float("nan")
    for rht in (False, True):
        got, want = kern.compute_amax(x.cuda(), rht=rht), ref.compute_amax(x, rht=rht)
        assert bool(got.isnan().all()) and bool(want.isnan().all())
    for mode in ("both", "both_rht_sr", "both_2d"):
        check_cast(kern, x, **MODES[mode])              # NaN amax: codes 0, scales NaN (0x7F)
    # a finite amax supplied by the caller with a NaN inside X: that block's scale is NaN, codes 0
    finite = ref.compute_amax(torch.nan_to_num(x.float(), nan=0.0).to(dtype), rht=False)
    check_cast(kern, x, amax=finite, **MODES["both"])
    check_cast(kern, x, amax=finite, **MODES["both_2d"])


@pytest.mark.parametrize("mode", ["both_rht", "col_rht"])
def test_cast_rht_special_chunks(kern, gen, mode):
    # bf16 16-row column chunks at the edges of the RHT's fp32 arithmetic and of the fast rounding path: NaN, +-inf,
    # values whose butterfly overflows fp32 (inf - inf), subnormal-only chunks, two equal large values among
    # subnormals (butterfly outputs that cancel to a few 2^-133, which round to +-0 or to a subnormal after the
    # * 0.25), zeros and -0; amax from the data (NaN), a finite amax without the specials, and one below the data.
    x = make_input((256, 512), torch.float32, gen)
    sub = torch.tensor([1.0, -2.0, 3.0, -1.0, 2.0, -3.0, 1.0, 1.0, -1.0, 2.0, 0.0, -0.0, 3.0, -2.0, 1.0, -1.0])
    x[0:16, 0], x[16:32, 1], x[32:48, 2] = float("nan"), float("inf"), -float("inf")
    x[48:64, 3] = 3.0e38 * torch.sign(torch.randn(16, generator=gen))     # the butterfly overflows to inf / NaN
    x[64:80, 4] = sub * 2.0 ** -133                                         # bf16 subnormals only
    # L, L and 14 subnormals; with the amax make_input gives (~1e7-1e9) L = 2^16 (and mostly 2^10) make blocks of
    # the fast RN path, the smaller L ones of the general path (scale byte 0)
    for j, big in enumerate((2.0 ** -90, 1.5, 2.0 ** 10, 2.0 ** 16)):
        x[80:96, 5 + j] = sub * 2.0 ** -133
        x[80, 5 + j], x[81, 5 + j] = big, big
        x[96:112, 9 + j] = sub * 2.0 ** -133
        x[96, 9 + j], x[99, 9 + j] = big, -big
    x[112:128, 13], x[128:144, 14] = 0.0, -0.0
    x = x.to(torch.bfloat16)
    check_cast(kern, x, **MODES[mode])
    finite = x.clone()
    finite[0:64, 0:4] = 1.0
    a = ref.compute_amax(finite, rht=True)
    check_cast(kern, finite, **MODES[mode])
    check_cast(kern, finite, amax=a * 0.25, **MODES[mode])   # saturating scales
    check_cast(kern, x, amax=a, **MODES[mode])


def test_infinite_amax_and_inf_input(kern, gen):
    x = make_input((64, 64), torch.float32, gen)
    x[2, 2] = float("inf")
    x[40, 9] = -float("inf")
    check_cast(kern, x, **MODES["both"])
    check_cast(kern, x, **MODES["both_sr"])


# ------------------------------------------------------------------------------------------------
# dequantize
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mode", ["both", "both_rht_sr", "both_2d"])
def test_dequantize_matches_reference(kern, gen, dtype, out_dtype, mode):
    x = make_input((208, 400), dtype, gen)
    kw = MODES[mode]
    amax = ref.compute_amax(x, rht=kw.get("rht", False))
    rd, rs, cd, cs = ref.cast(x, amax, rowwise=True, columnwise=True, block_2d=kw.get("block_2d", False),
                              rht=kw.get("rht", False), stochastic_rounding=kw.get("sr", False),
                              seed=kw.get("seed", 0), rng_offset=0, row_offset=0)
    for data, scale, a in ((rd, rs, amax[0]), (cd, cs, amax[1])):
        dec = fmt.global_decode_scale(a)
        want = ref.dequantize(data, scale, dec, out_dtype)
        got = kern.dequantize(data.cuda(), scale.cuda(), dec.cuda(), out_dtype)
        assert_same_floats(got, want, f"dequantize {mode} -> {out_dtype}")


def test_dequantize_special_decode_scales(kern, gen):
    data = torch.randint(0, 256, (32, 64), generator=gen, dtype=torch.uint8)
    scale = torch.randint(0, 256, (32, 8), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn)
    for d in (0.0, float("nan"), float("inf"), 1e-40, 3e38, 1.0 / 2688.0):
        dec = torch.tensor(d, dtype=torch.float32)
        for out_dtype in DTYPES:
            want = ref.dequantize(data, scale, dec, out_dtype)
            got = kern.dequantize(data.cuda(), scale.cuda(), dec.cuda(), out_dtype)
            assert_same_floats(got, want, f"dequantize dec={d} -> {out_dtype}")


def random_layout(rows, row_bytes, gen):
    """Random codes (every byte value) and E4M3 scale bytes (finite and NaN) of one NVFP4 layout, on the CPU."""
    data = torch.randint(0, 256, (rows, row_bytes), generator=gen, dtype=torch.uint8)
    scale = torch.randint(0, 256, (rows, row_bytes // 8), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn)
    return data, scale


def gathered(parts, gen, pad_bytes):
    """The 2-D tensors `parts` (same shape [R, C], uint8) as a 3-D view [G, R, C] of one CUDA byte buffer, slice g at
    g * (R * C + pad_bytes): rank-major slices with gaps, as a gathered buffer may hold them."""
    g, (r, c) = len(parts), parts[0].shape
    step = r * c + pad_bytes
    buf = torch.randint(0, 256, (g * step,), generator=gen, dtype=torch.uint8).cuda()
    for i, t in enumerate(parts):
        buf[i * step:i * step + r * c] = t.view(torch.uint8).reshape(-1).cuda()
    return buf.as_strided((g, r, c), (step, c, 1))


@pytest.mark.parametrize("out_dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_decode_operands_match_reference(kern, gen, out_dtype):
    # two operands of different sizes in one launch, decoded without their global scales (decode scale 1), and alpha /
    # shift on the device as format.gemm_alpha gives them, for random amaxes
    one = torch.ones((), dtype=torch.float32)
    for (ra, ka), (rb, kb) in (((64, 32), (48, 16)), ((1040, 264), (16, 8)), ((0, 8), (32, 24))):
        a_data, a_scale = random_layout(ra, ka, gen)
        b_data, b_scale = random_layout(rb, kb, gen)
        amax = torch.exp(torch.randn(2, generator=gen) * 8).float()
        a_op, b_op, alpha, shift = kern.decode_operands(a_data.cuda(), a_scale.cuda(), b_data.cuda(), b_scale.cuda(),
                                                        amax[0].cuda(), amax[1].cuda(), out_dtype)
        want_alpha, want_shift = fmt.gemm_alpha(amax[0], amax[1])
        assert_same_floats(alpha, want_alpha, "alpha")
        assert shift.item() == want_shift.item() == 1.0
        assert_same_floats(a_op, ref.dequantize(a_data, a_scale, one, out_dtype), f"A {out_dtype}")
        assert_same_floats(b_op, ref.dequantize(b_data, b_scale, one, out_dtype), f"B {out_dtype}")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_decode_operands_alpha_overflow(kern, gen, out_dtype):
    # amaxes near 1e38 each: S_dec(a) * S_dec(b) overflows fp32, so alpha takes 2^-110 and operand A 2^110 (exact)
    a_data, a_scale = random_layout(32, 64, gen)
    b_data, b_scale = random_layout(16, 64, gen)
    a_scale.view(torch.uint8).clamp_(max=0x7E)  # finite scales: A's values times 2^110 stay finite
    amax = (1e38 * (1 + torch.rand(2, generator=gen))).float()
    a_op, b_op, alpha, shift = kern.decode_operands(a_data.cuda(), a_scale.cuda(), b_data.cuda(), b_scale.cuda(),
                                                    amax[0].cuda(), amax[1].cuda(), out_dtype)
    want_alpha, want_shift = fmt.gemm_alpha(amax[0], amax[1])
    assert want_shift.item() == 2.0**110 and torch.isfinite(want_alpha)
    assert_same_floats(alpha, want_alpha, "alpha")
    assert_same_floats(shift, want_shift, "shift")
    one = torch.ones((), dtype=torch.float32)
    assert_same_floats(a_op, ref.dequantize(a_data, a_scale, want_shift, out_dtype), "A times the shift")
    assert_same_floats(b_op, ref.dequantize(b_data, b_scale, one, out_dtype), "B")
    assert torch.isfinite(a_op.float()).all()  # no decoded value of A overflows (at most 2688 * 2^110)


@pytest.mark.parametrize("out_dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_dequantize_amax_and_unit_decode(kern, gen, out_dtype):
    # the decode scale computed in the kernel from amax (S_dec = 1 / S_enc), or 1 without either
    data, scale = random_layout(80, 48, gen)
    for a in (torch.exp(torch.randn((), generator=gen) * 10).float(), torch.tensor(0.0), torch.tensor(float("inf")),
              torch.tensor(1e-44)):
        got = kern.dequantize(data.cuda(), scale.cuda(), None, out_dtype, amax=a.cuda())
        want = ref.dequantize(data, scale, fmt.global_decode_scale(a), out_dtype)
        assert_same_floats(got, want, f"dequantize amax={a.item()} -> {out_dtype}")
    got = kern.dequantize(data.cuda(), scale.cuda(), None, out_dtype)
    assert_same_floats(got, ref.dequantize(data, scale, torch.ones(()), out_dtype), f"dequantize d=1 -> {out_dtype}")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_decode_strided_slices(kern, gen, out_dtype):
    # 3-D views [G, R, row_bytes] / [G, R, row_bytes / 8] with gaps between the slices (one gathered buffer),
    # decoded as if they were contiguous [G * R, ...] copies: decode_operands and dequantize
    # (the last but one: slices 8-byte misaligned, which the backend copies first)
    for g, r, row_bytes, pad in ((4, 48, 32, 16), (2, 1040, 264, 4096), (3, 16, 8, 8), (2, 16, 8, 3), (1, 32, 16, 0)):
        a_parts = [random_layout(r, row_bytes, gen) for _ in range(g)]
        b_parts = [random_layout(r // 2 or 1, 2 * row_bytes, gen) for _ in range(g)]
        a_data, a_scale = gathered([d for d, _ in a_parts], gen, pad), gathered([s for _, s in a_parts], gen, pad)
        b_data, b_scale = gathered([d for d, _ in b_parts], gen, pad), gathered([s for _, s in b_parts], gen, pad)
        a_scale, b_scale = a_scale.view(torch.float8_e4m3fn), b_scale.view(torch.float8_e4m3fn)
        if g > 1 and pad:
            assert not a_data.is_contiguous() and not a_scale.is_contiguous()
        amax = torch.exp(torch.randn(2, generator=gen) * 8).float().cuda()
        got = kern.decode_operands(a_data, a_scale, b_data, b_scale, amax[0], amax[1], out_dtype)
        want = kern.decode_operands(a_data.contiguous().reshape(g * r, -1), a_scale.contiguous(),
                                    b_data.contiguous().reshape(-1, 2 * row_bytes), b_scale.contiguous(),
                                    amax[0], amax[1], out_dtype)
        for name, x, y in zip(("A", "B", "alpha", "shift"), got, want):
            assert_same_floats(x, y, f"decode_operands {name}, G={g} R={r} pad={pad}")
        ref_a = ref.dequantize(torch.cat([d for d, _ in a_parts]), torch.cat([s for _, s in a_parts]),
                               fmt.global_decode_scale(amax[0].cpu()), out_dtype)
        for kw in (dict(decode_scale=fmt.global_decode_scale(amax[0])), dict(decode_scale=None, amax=amax[0])):
            got = kern.dequantize(a_data, a_scale, out_dtype=out_dtype, **kw)
            assert_same_floats(got, ref_a, f"dequantize {list(kw)}, G={g} R={r} pad={pad}")


# ------------------------------------------------------------------------------------------------
# swap_first_dims
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dtype", [
    ((3, 5), torch.uint8), ((3, 5, 7), torch.uint8), ((2, 7, 9), torch.float8_e4m3fn),
    ((4, 48, 160), torch.uint8), ((5, 3, 33), torch.uint8), ((1, 1, 1), torch.uint8),
    ((4, 8, 64), torch.uint8), ((3, 4, 8), torch.uint8), ((3, 4, 4), torch.float8_e4m3fn),
    ((2, 3, 4, 5), torch.uint8), ((4, 1024, 256), torch.uint8), ((7, 1), torch.uint8),
])
def test_swap_first_dims(kern, gen, shape, dtype):
    t = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).view(dtype)
    got = kern.swap_first_dims(t.cuda())
    want = ref.swap_first_dims(t)
    assert got.is_contiguous()
    assert_same_bits(got, want, f"swap_first_dims {shape}")


def test_swap_first_dims_noncontiguous(kern, gen):
    t = torch.randint(0, 256, (6, 10, 12), generator=gen, dtype=torch.uint8)
    v = t.cuda().transpose(1, 2)  # [6, 12, 10], not contiguous
    assert_same_bits(kern.swap_first_dims(v), ref.swap_first_dims(t.transpose(1, 2)), "non-contiguous")


# ------------------------------------------------------------------------------------------------
# stochastic rounding: determinism, seeds, unbiasedness
# ------------------------------------------------------------------------------------------------

def test_sr_deterministic_and_seed_dependent(kern, gen):
    x = make_input((128, 256), torch.bfloat16, gen).cuda()
    amax = kern.compute_amax(x, rht=True)
    kw = dict(rowwise=True, columnwise=True, block_2d=False, rht=True, stochastic_rounding=True, row_offset=0)
    a = kern.cast(x, amax, seed=11, rng_offset=0, **kw)
    b = kern.cast(x, amax, seed=11, rng_offset=0, **kw)
    c = kern.cast(x, amax, seed=12, rng_offset=0, **kw)
    d = kern.cast(x, amax, seed=11, rng_offset=1, **kw)
    for i in (0, 2):
        assert torch.equal(a[i], b[i])
        assert not torch.equal(a[i], c[i])
        assert not torch.equal(a[i], d[i])
        assert torch.equal(a[i + 1].view(torch.uint8), c[i + 1].view(torch.uint8))  # scales don't depend on SR


def test_sr_row_offset_matches_full_tensor(kern, gen):
    # a shard quantized with row_offset draws the same numbers as those rows of the full tensor
    x = make_input((96, 64), torch.float32, gen).cuda()
    amax = kern.compute_amax(x, rht=False)
    kw = dict(rowwise=True, columnwise=True, block_2d=False, rht=False, stochastic_rounding=True, seed=3,
              rng_offset=9)
    full = kern.cast(x, amax, row_offset=0, **kw)
    shard = kern.cast(x[32:64], amax, row_offset=32, **kw)
    assert torch.equal(shard[0], full[0][32:64])
    assert torch.equal(shard[2], full[2][:, 16:32])


@pytest.mark.parametrize("shape,dtype", [((1040, 528), torch.bfloat16), ((528, 1040), torch.float16),
                                         ((208, 400), torch.float32), ((1040, 532), torch.bfloat16)],
                         ids=["wide_bf16", "wide_fp16", "tile_fp32", "tile_bf16_cols"])
def test_sr_device_keys_match_host_keys(kern, gen, shape, dtype):
    # rng_offset as a one-element int64 CUDA tensor: the kernels compute the stream keys themselves; the bits must
    # be those of the host-key path (an int rng_offset) for random seeds and offsets, offsets >= 2^32 included
    x = make_input(shape, dtype, gen).cuda()
    r = torch.randint(0, 2**62, (8,), generator=gen).tolist()
    cases = [(r[0] * 4 + 3, r[1] * 4 + 1), (r[2] * 4, r[3] % 2**32), (r[4], 2**32), (r[5] % 1000, 2**63 + r[6]),
             (2**64 - 1, 2**64 - 1), (r[7], 0)]
    modes = ["both_sr", "both_2d_sr", "both_rht_sr"] if shape[1] % 16 == 0 else ["col_rht_sr"]
    for mode in modes:
        kw = dict(block_2d=False, rht=False, row_offset=0)
        kw.update({k: v for k, v in MODES[mode].items() if k not in ("seed", "rng_offset", "sr")})
        kw["stochastic_rounding"] = True
        amax = kern.compute_amax(x, rht=kw["rht"])
        for seed, offset in cases:
            want = kern.cast(x, amax, seed=seed, rng_offset=offset, **kw)
            dev_offset = torch.tensor([offset - 2**64 if offset >= 2**63 else offset], dtype=torch.int64,
                                      device=x.device)
            got = kern.cast(x, amax, seed=seed, rng_offset=dev_offset, **kw)
            for name, g, w in zip(NAMES, got, want):
                if w is not None:
                    assert_same_bits(g, w, f"{name} {mode} seed={seed} rng_offset={offset}")
    # explicit streams, on both paths, against the keys of those streams
    kw = dict(rowwise=True, columnwise=shape[1] % 16 == 0, block_2d=False, rht=False, stochastic_rounding=True,
              row_offset=0)
    if not kw["columnwise"]:
        kw.update(rowwise=False, columnwise=True)
    amax = kern.compute_amax(x, rht=False)
    offset = torch.tensor([r[0]], dtype=torch.int64, device=x.device)
    a = kern.cast(x, amax, seed=r[1], rng_offset=r[0], streams=(7, 2**32 - 1), **kw)
    b = kern.cast(x, amax, seed=r[1], rng_offset=offset, streams=(7, 2**32 - 1), **kw)
    c = kern.cast(x, amax, seed=r[1], rng_offset=r[0], **kw)
    for i in (0, 2):
        if a[i] is not None:
            assert torch.equal(a[i], b[i])
            assert not torch.equal(a[i], c[i])


@pytest.mark.parametrize("layout", ["rowwise", "columnwise", "columnwise_rht"])
def test_sr_unbiased(kern, layout):
    # E[dequantized] = clamp(v, -6, 6) * s * S_dec exactly. Over N fixed seeds each element's mean is within a
    # Bernstein bound (failure probability 1e-9 per element) built from its per-draw variance
    # (b - v)(v - a) (s S_dec)^2, and the z-scores average out (|mean z| < 6 / sqrt(count)). Fixed seeds:
    # the test is deterministic, no flakes.
    g = torch.Generator().manual_seed(20240607)
    x = make_input((32, 64), torch.float32, g, extremes=False).cuda()
    rht = layout == "columnwise_rht"
    col = layout != "rowwise"
    amax = kern.compute_amax(x, rht=rht)
    n_seeds = 1024
    acc = None
    for s in range(n_seeds):
        out = kern.cast(x, amax, rowwise=not col, columnwise=col, block_2d=False, rht=rht, stochastic_rounding=True,
                        seed=1000 + s, rng_offset=s, row_offset=0)
        data, scale = (out[2], out[3]) if col else (out[0], out[1])
        a = amax[1] if col else amax[0]
        deq = kern.dequantize(data, scale, fmt.global_decode_scale(a), torch.float32).double()
        acc = deq if acc is None else acc + deq
    mean = acc / n_seeds
    # exact expectation from the (deterministic) scales
    src = ref._columnwise_source(x.cpu(), rht).double() if col else x.cpu().double()
    a = (amax[1] if col else amax[0]).cpu()
    s_enc = fmt.global_encode_scale(a)
    s_dec = (1.0 / s_enc).double()
    data, scale = (out[2], out[3]) if col else (out[0], out[1])
    sf = scale.cpu().float().double().repeat_interleave(16, dim=1)
    enc = fmt.block_encode_scale(scale.cpu(), 1.0 / s_enc).double().repeat_interleave(16, dim=1)
    v = (src.float().double() * enc).clamp(-6, 6)  # the fp32 rounding of x*e is below the tolerance
    unit = sf * s_dec
    target = v * unit
    mag = v.abs()
    grid = torch.tensor(fmt.E2M1_MAGNITUDES, dtype=torch.float64)
    lo_idx = (mag[..., None] >= grid).sum(-1).clamp(min=1) - 1
    lo = grid[lo_idx]
    hi = grid[(lo_idx + 1).clamp(max=7)]
    step = (hi - lo).clamp(min=0.5)
    p = ((mag - lo) / step).clamp(0, 1)                 # probability of rounding up
    var = step ** 2 * p * (1 - p) * unit ** 2             # per-draw variance of the dequantized value
    # Bernstein: P(|mean - E| > sqrt(2 var L / N) + 2 L step unit / (3 N)) <= 2 exp(-L); L = ln(2e9)
    big_l = math.log(2e9)
    err = (mean.cpu() - target).abs()
    tol = (2 * var * big_l / n_seeds).sqrt() + 2 * big_l * step * unit / (3 * n_seeds) + 1e-6 * target.abs()
    if not bool((err <= tol).all()):
        i = ((err - tol) / tol.clamp(min=1e-30)).flatten().argmax().item()
        raise AssertionError(f"element {divmod(i, err.shape[1])}: mean {mean.flatten()[i].item()!r} target "
                             f"{target.flatten()[i].item()!r} tol {tol.flatten()[i].item()!r} p {p.flatten()[i].item()!r}")
    # aggregate bias: z-scores of the elements where the normal approximation holds (N p (1 - p) >= 5)
    ok = n_seeds * p * (1 - p) >= 5
    z = ((mean.cpu() - target) / (var / n_seeds).sqrt())[ok]
    assert z.numel() > 200
    assert abs(z.mean().item()) < 6 / math.sqrt(z.numel()), f"mean z = {z.mean().item():.3f} over {z.numel()}"
    assert 0.5 < z.std().item() < 1.5, f"z std = {z.std().item():.3f}"


# ------------------------------------------------------------------------------------------------
# through the public API
# ------------------------------------------------------------------------------------------------

def test_quantizer_backends_agree(kern, gen):
    x = make_input((4, 48, 160), torch.bfloat16, gen)
    for kw in (dict(), dict(rht=True, stochastic_rounding=True, seed=7), dict(block_2d=True)):
        qc = NVFP4Quantizer(backend="cuda", **kw)(x.cuda(), rng_offset=5, row_offset=0)
        qr = NVFP4Quantizer(backend="reference", **kw)(x, rng_offset=5, row_offset=0)
        for name in NAMES:
            assert_same_bits(getattr(qc, name), getattr(qr, name), f"quantizer {kw} {name}")
        assert_same_floats(qc.dequantize(torch.float32), qr.dequantize(torch.float32), "dequantize")


# ------------------------------------------------------------------------------------------------
# RHT overflow (docs/numerics.md, section 6): inputs whose transform overflows the dtype or fp32, infinities
# ------------------------------------------------------------------------------------------------

def overflow_input_with_infinities(rows, cols, dtype, gen, infinities: bool):
    from tests.test_rht_overflow import overflow_input

    x = overflow_input(rows, cols, dtype, gen)
    if infinities:  # +inf and -inf in one chunk, a lone inf in another (both NaN blocks, left out of the amax)
        x[16 + 3, 1], x[16 + 9, 1], x[5, cols - 1] = float("inf"), float("-inf"), float("-inf")
    return x


RHT_OVERFLOW_MODES = ["col_rht", "both_rht", "col_rht_sr", "both_rht_sr", "both_2d_rht"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mode", RHT_OVERFLOW_MODES)
@pytest.mark.parametrize("shape", [(48, 80), (208, 400), (528, 1040), (32, 20)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("infinities", [False, True])
def test_rht_overflow_cast_matches_reference(kern, gen, shape, mode, dtype, infinities):
    if (MODES[mode]["rowwise"] or MODES[mode].get("block_2d")) and shape[1] % 16:
        pytest.skip("the rowwise layout and 16x16 tiles need n % 16 == 0")
    x = overflow_input_with_infinities(*shape, dtype, gen, infinities)
    want = check_cast(kern, x, **MODES[mode])
    col_scales = want[3].view(torch.uint8)
    if not infinities:
        assert (col_scales != 0x7F).all()  # finite inputs: no NaN block
    elif not MODES[mode].get("block_2d"):
        assert col_scales[1, 1].item() == 0x7F and col_scales[shape[1] - 1, 0].item() == 0x7F


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", [(48, 80), (528, 1040), (32, 20), (64, 36)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("infinities", [False, True])
def test_rht_overflow_amax_matches_reference(kern, gen, shape, dtype, infinities):
    x = overflow_input_with_infinities(*shape, dtype, gen, infinities)
    want = ref.compute_amax(x, rht=True)
    assert torch.isfinite(want[1])
    assert_same_floats(kern.compute_amax(x.cuda(), rht=True), want, f"amax {dtype} {shape} inf={infinities}")


OPERAND_CASES = [
    ((512, 1024), "both_rht_sr"), ((208, 400), "both_rht_sr"), ((1168, 1040), "both"), ((528, 1040), "both_rht"),
    ((33, 48), "row_sr_off"), ((1040, 528), "row"), ((1040, 532), "col_rht_sr"), ((208, 400), "col"),
    ((1040, 528), "both_2d"),   # 16x16 tiles: decoded after the cast
    ((64, 36), "col_rht"),      # rows of 72 bytes: the 128-row kernel, decoded after the cast
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape,mode", OPERAND_CASES,
                         ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else c)
def test_cast_operands_are_the_decoded_layouts(kern, gen, shape, mode, dtype):
    # the decoded operands a cast writes next to its codes (in the cast's pass for bf16/fp16 of their own dtype with
    # 1x16 blocks, else by a decode after it) are the codes and scales decoded with d = 1, bit for bit (NaN and inf
    # blocks included), in the operands' dtype; the codes and scales are the reference's
    kw = dict(MODES[mode])
    x = make_input(shape, dtype, gen)
    amax = ref.compute_amax(x, rht=kw.get("rht", False) and kw["columnwise"])  # of the finite values
    x[16 + 3, 5], x[1, 7] = float("nan"), float("inf")  # NaN blocks in both layouts, inf ones (saturating)
    want = check_cast(kern, x, **kw, amax=amax)
    xc, amax = x.cuda(), amax.cuda()
    args = dict(rowwise=kw["rowwise"], columnwise=kw["columnwise"], block_2d=kw.get("block_2d", False),
                rht=kw.get("rht", False), stochastic_rounding=kw.get("sr", False), seed=kw.get("seed", 0),
                rng_offset=kw.get("rng_offset", 0), row_offset=kw.get("row_offset", 0))
    for op_dtype in {dtype, torch.bfloat16}:
        fused = kern.operands_fused(xc, args["block_2d"], op_dtype)
        assert fused == (dtype == op_dtype and dtype != torch.float32 and not args["block_2d"] and shape[1] % 8 == 0)
        *codes, rop, cop, _ = kern.cast_with_operands(xc, amax, operand_dtype=op_dtype, **args)
        for name, g, w in zip(NAMES, codes, want):
            if w is None:
                assert g is None, name
            else:
                assert_same_bits(g, w, f"{name} with operands ({mode}, {dtype}, fused={fused})")
        for op, data, scale, what in ((rop, codes[0], codes[1], "rowwise"), (cop, codes[2], codes[3], "columnwise")):
            if data is None:
                assert op is None, what
                continue
            assert_same_bits(op, kern.dequantize(data, scale, None, op_dtype), f"{what} operand ({mode}, {dtype})")
            assert_same_floats(op, ref.dequantize(data.cpu(), scale.cpu(), None, op_dtype),
                               f"{what} operand vs reference ({mode}, {dtype})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape,mode", [((512, 1024), "both_rht_sr"), ((1168, 1040), "both"), ((1040, 528), "row"),
                                        ((208, 400), "col_rht"), ((1040, 528), "both_2d")],
                         ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else c)
@pytest.mark.parametrize("big", [False, True], ids=["plain", "alpha_overflow"])
def test_cast_operands_scaled_for_their_gemm_pairs(kern, gen, shape, mode, dtype, big):
    # with the GEMM partners' amaxes each operand is the layout decoded times gemm_alpha(amax_i, partner_i).shift and
    # alpha[i] that pair's alpha (in the cast's pass or by a decode after it); without its codes kept a layout's
    # codes are None and its operand keeps its bits
    if big and dtype == torch.float16:
        pytest.skip("fp16 amaxes never make the S_dec product overflow")
    kw = dict(MODES[mode])
    x = make_input(shape, dtype, gen, extremes=False)
    if big:
        x = (x.double() / x.double().abs().max() * 1e36).to(dtype)
    args = dict(rowwise=kw["rowwise"], columnwise=kw["columnwise"], block_2d=kw.get("block_2d", False),
                rht=kw.get("rht", False), stochastic_rounding=kw.get("sr", False), seed=kw.get("seed", 0),
                rng_offset=kw.get("rng_offset", 0), row_offset=kw.get("row_offset", 0))
    xc = x.cuda()
    amax = kern.compute_amax(xc, rht=args["rht"] and args["columnwise"])
    partners = [torch.tensor([3e38 if big else 7.5]).cuda(), torch.tensor([2e38 if big else 0.25]).cuda()]
    op_dtype = torch.bfloat16 if dtype == torch.float32 else dtype
    plain = kern.cast_with_operands(xc, amax, operand_dtype=op_dtype, **args)
    for keep in ((True, True), (False, False)):
        *codes, rop, cop, alpha = kern.cast_with_operands(xc, amax, operand_dtype=op_dtype, partner_amax=partners,
                                                          keep_codes=keep, **args)
        for i, (op, want_op, present) in enumerate(((rop, plain[4], args["rowwise"]),
                                                    (cop, plain[5], args["columnwise"]))):
            want_alpha, shift = fmt.gemm_alpha(amax[i].cpu(), partners[i][0].cpu())
            if not present:
                assert op is None and alpha[i].item() == 1.0
                continue
            assert (shift.item() == 2.0**110) == big
            assert_same_floats(alpha[i], want_alpha, f"alpha {i} ({mode}, {dtype})")
            assert_same_floats(op, (want_op.float() * shift.cuda()).to(op_dtype), f"operand {i} ({mode}, {dtype})")
            for j in (2 * i, 2 * i + 1):
                if keep[i]:
                    assert_same_bits(codes[j], plain[j], f"{NAMES[j]} ({mode}, {dtype})")
                else:
                    assert codes[j] is None, NAMES[j]


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("big", [False, True], ids=["plain", "alpha_overflow"])
def test_decode_operand_b_moves_the_shift_to_b(kern, gen, out_dtype, big):
    # B decoded with gemm_alpha's shift (A comes decoded from its cast), alpha and shift as decode_operands gives them
    b_data, b_scale = random_layout(16, 64, gen)
    b_scale.view(torch.uint8).clamp_(max=0x7E)  # finite scales: B's values times 2^110 stay finite
    amax = (1e38 * (1 + torch.rand(2, generator=gen))).float() if big else torch.rand(2, generator=gen) * 10
    b_op, alpha, shift = kern.decode_operand_b(b_data.cuda(), b_scale.cuda(), amax[0].cuda(), amax[1].cuda(), out_dtype)
    want_alpha, want_shift = fmt.gemm_alpha(amax[0], amax[1])
    assert want_shift.item() == (2.0**110 if big else 1.0)
    assert_same_floats(alpha, want_alpha, "alpha")
    assert_same_floats(shift, want_shift, "shift")
    assert_same_floats(b_op, ref.dequantize(b_data, b_scale, want_shift, out_dtype), "B times the shift")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).split(".")[-1])
def test_one_overflowing_chunk_among_ordinary_ones_sr(kern, gen, dtype):
    # the SR cast sends a whole warp down the overflow path when one of its lanes' chunks overflows; the warp's other
    # tasks (ordinary chunks of the same 16 rows) must keep their bits
    x = torch.randn(512, 1024, generator=gen).to(dtype)
    top = torch.finfo(dtype).max
    col = int(torch.randint(0, 1024, (1,), generator=gen))
    x[16:32, col] = (top / 2) * torch.tensor(rht_mod.RHT_SIGNS, dtype=torch.float64).to(dtype)  # coherent: overflows
    check_cast(kern, x, **MODES["both_rht_sr"])
    check_cast(kern, x, **MODES["col_rht_sr"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_rht_nan_input_gives_a_nan_layout_on_both_backends(kern, dtype):
    x = torch.ones(64, 48, dtype=dtype)
    x[7, 3], x[40, 5] = float("nan"), float("inf")
    amax = ref.compute_amax(x, rht=True)
    assert torch.isnan(amax).all()
    assert torch.isnan(kern.compute_amax(x.cuda(), rht=True)).all()
    want = check_cast(kern, x, **MODES["both_rht_sr"], amax=amax)
    assert (want[3].view(torch.uint8) == 0x7F).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_rht_overflow_quantizer_backends_agree(kern, gen, dtype):
    x = overflow_input_with_infinities(64, 96, dtype, gen, infinities=False)
    for kw in (dict(rht=True), dict(rht=True, stochastic_rounding=True, seed=11)):
        qc = NVFP4Quantizer(backend="cuda", **kw)(x.cuda(), rng_offset=3, row_offset=0)
        qr = NVFP4Quantizer(backend="reference", **kw)(x, rng_offset=3, row_offset=0)
        for name in NAMES + ("amax_rowwise", "amax_columnwise"):
            assert_same_bits(getattr(qc, name), getattr(qr, name), f"quantizer {kw} {name}")
