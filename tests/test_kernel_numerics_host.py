"""The CUDA kernels' numerics checked on the CPU: csrc/common/numerics.cuh compiled for the host (its helpers
are __host__ __device__) by nvcc, no GPU needed. tests/host/fast_rn_check.cu checks the cast's fast RN path
against the general rounding, tests/host/fast_sr_check.cu its SR rounding against the rule step by step;
tests/host/numerics_probe.cu answers queries that are compared with the Python definitions (fp4dist.rng)."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fp4dist import format as fmt
from fp4dist import rng

NVCC = shutil.which("nvcc")
HOST = Path(__file__).parent / "host"
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (host compilation only, no GPU)")


def build(source: Path, exe: Path) -> Path:
    done = subprocess.run([NVCC, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-o", str(exe), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return exe


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Runs the host numerics probe on a list of query lines, returns its answer lines."""
    exe = build(HOST / "numerics_probe.cu", tmp_path_factory.mktemp("probe") / "numerics_probe")

    def ask(queries: list[str]) -> list[str]:
        done = subprocess.run([str(exe)], input="\n".join(queries) + "\n", capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        answers = done.stdout.splitlines()
        assert len(answers) == len(queries), (len(answers), len(queries))
        return answers

    return ask


def run_host_check(name: str, tmp_path: Path, timeout: int) -> str:
    """Builds and runs tests/host/<name>.cu; its stdout, after asserting a zero exit status."""
    exe = build(HOST / f"{name}.cu", tmp_path / name)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@needs_nvcc
def test_fast_rn_path_matches_the_general_rounding_on_the_host(tmp_path):
    out = run_host_check("fast_rn_check", tmp_path, timeout=600)
    # every fp32 |a| < 7 (1,088,421,888 values) and the random blocks, with no mismatch
    assert "magnitudes: 1088421888 values x 2 signs, 0 mismatches" in out, out
    assert out.count(" 0 mismatches") == 3, out


@needs_nvcc
def test_fast_sr_rounding_matches_the_stepwise_rounding_on_the_host(tmp_path):
    out = run_host_check("fast_sr_check", tmp_path, timeout=900)
    # every fp32 in [0, 6] (1,086,324,737 values) with the draws either side of its threshold, specials, the hash
    # forms and random blocks, with no mismatch
    assert "magnitudes: 1086324737 values x 3 draws, 0 mismatches" in out, out
    assert out.count(" 0 mismatches") == 4, out


@needs_nvcc
def test_device_stream_key_matches_rng_stream_key(probe, gen):
    # the SR key the cast kernels compute from (seed, rng_offset, stream) on the device, as uint64 / uint32
    r = random.Random(int(gen.initial_seed()))
    edges = [0, 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**63, 2**64 - 1]
    cases = [(s, o, t) for s in edges for o in edges for t in (0, 1, 2**32 - 1)]
    cases += [(r.getrandbits(64), r.getrandbits(r.choice((8, 32, 33, 64))), r.getrandbits(32)) for _ in range(2000)]
    got = probe([f"key {s} {o} {t}" for s, o, t in cases])
    for (s, o, t), g in zip(cases, got):
        assert int(g) == rng.stream_key(s, o, t), (s, o, t)


@needs_nvcc
def test_device_gemm_alpha_matches_format_gemm_alpha(probe, gen):
    # the rule decode_operands applies on the device, bit for bit against format.gemm_alpha: random magnitudes over
    # the whole fp32 range (normal and subnormal), pairs around the overflow of S_dec * S_dec, zeros, inf, NaN
    specials = torch.tensor([0.0, 1e-45, 1e-40, 1.1754944e-38, 1.0, 2688.0, 3e38, fmt.FLT_MAX, float("inf"),
                             float("nan")])
    bits = torch.randint(0, 0x7F800000, (3000,), generator=gen, dtype=torch.int64).to(torch.int32)
    rand = bits.view(torch.float32)
    near = torch.exp(torch.rand(1000, generator=gen) * 20 + 70)  # ~2.5e30..1.2e39: products of S_dec around FLT_MAX
    near = near.clamp(max=fmt.FLT_MAX).float()
    a = torch.cat([specials.repeat_interleave(len(specials)), rand[:1500], near[:500], 1e38 * torch.ones(1)])
    b = torch.cat([specials.repeat(len(specials)), rand[1500:], near[500:], 1e38 * torch.ones(1)])
    alpha, shift = fmt.gemm_alpha(a, b)
    got = probe([f"alpha {x} {y}" for x, y in zip(a.view(torch.int32).tolist(), b.view(torch.int32).tolist())])
    want_alpha = (alpha.view(torch.int32).long() & 0xFFFFFFFF).tolist()
    want_shift = (shift.view(torch.int32).long() & 0xFFFFFFFF).tolist()
    for i, line in enumerate(got):
        g_alpha, g_shift = (int(v) for v in line.split())
        case = (a[i].item(), b[i].item(), line)
        if torch.isnan(alpha[i]):
            assert (g_alpha & 0x7FFFFFFF) > 0x7F800000, case  # any NaN
        else:
            assert g_alpha == want_alpha[i], case
        assert g_shift == want_shift[i], case
    assert bool((shift > 1).any()) and bool((shift == 1).any())  # both branches of the rule were taken


def _rht_chunks(gen, dtype, count):
    """Chunks [count, 16] in dtype around its overflow: near its top (random and coherent signs, the RHT's d), at
    the 2^124 prescale threshold, moderate, with +-inf, with NaN."""
    from fp4dist.rht import RHT_SIGNS

    top = torch.finfo(dtype).max
    mag = torch.exp2(-10 * torch.rand(count, 16, generator=gen, dtype=torch.float64) ** 3)
    scale = torch.tensor([top, top / 3, 2.0**124, 2.0**124 * (1 - 2.0**-20), 1.0, 1e-30], dtype=torch.float64)
    scale = scale[torch.randint(0, len(scale), (count, 1), generator=gen)]
    sign = torch.where(torch.rand(count, 16, generator=gen) < 0.5, -1.0, 1.0).double()
    coherent = torch.rand(count, 1, generator=gen) < 0.5
    sign = torch.where(coherent, torch.tensor(RHT_SIGNS, dtype=torch.float64).expand(count, 16), sign)
    x = (sign * mag * scale).clamp(-top, top).to(dtype)
    x[0] = top
    x[1, 3], x[1, 9] = float("inf"), float("-inf")
    x[2, 5] = float("inf")
    x[3, 7] = float("nan")
    x[4, 2], x[4, 3] = float("nan"), float("inf")
    return x


@needs_nvcc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("sr", [False, True])
def test_device_rht_overflow_path_matches_the_reference(probe, gen, dtype, sr):
    # the kernels' columnwise RHT task (csrc/cast/rht_source.cuh and wide_column_codes) and the amax pass's rule
    # (rht_column_amax) on the CPU against fp4dist.rht.columnwise_source / columnwise_amax and the reference
    # quantization of that source, bit for bit
    from fp4dist import rht as rht_mod
    from fp4dist.backends import reference as ref

    chunks = _rht_chunks(gen, dtype, 400)
    key, row0, col = 0x9E3779B9, 48, 5
    sources = rht_mod.columnwise_source(chunks)
    # a finite amax for each chunk's quantization: its own RHT amax, or a fixed one where that is 0 / NaN
    amaxes = [rht_mod.columnwise_amax(s[None], c[None]) for s, c in zip(sources, chunks)]
    amaxes = [a if torch.isfinite(a) and a > 0 else torch.tensor(1.0) for a in amaxes]
    dcode = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}[dtype]
    queries = []
    for c, a in zip(chunks, amaxes):
        words = " ".join(str(w) for w in (c.float().view(torch.int32).long() & 0xFFFFFFFF).tolist())
        amax_bits = a.float().view(torch.int32).item() & 0xFFFFFFFF
        queries.append(f"rht {dcode} {amax_bits} {int(sr)} {key} {row0} {col} {words}")
    answers = probe(queries)
    wide_seen = 0
    for i, (line, c, src, a) in enumerate(zip(answers, chunks, sources, amaxes)):
        got = [int(v) for v in line.split()]
        wide, amax_part, scale, code_lo, code_hi, values = got[0], got[1], got[2], got[3], got[4], got[5:21]
        pass_parts = got[21:]
        wide_seen += wide
        case = (i, c.tolist(), line)
        want_values = src.view(torch.int32).long() & 0xFFFFFFFF
        nan = torch.isnan(src)
        got_values = torch.tensor(values, dtype=torch.int64)
        assert torch.equal(got_values[~nan], want_values[~nan]), case
        assert ((got_values[nan] & 0x7FFFFFFF) > 0x7F800000).all(), case
        want_amax = rht_mod.columnwise_amax(src[None], c[None])
        if torch.isnan(want_amax):
            assert (amax_part & 0x7FFFFFFF) > 0x7F800000, case
        else:
            assert amax_part == want_amax.view(torch.int32).item(), case
        # the amax pass's rule (one rounding per column) gives the same bits as the cast task's source maxima, for
        # the chunk and for it in reverse row order as the second column of its task
        assert pass_parts[0] == amax_part, case
        flipped = c.flip(0)
        want_flipped = rht_mod.columnwise_amax(rht_mod.columnwise_source(flipped[None]), flipped[None])
        if torch.isnan(want_flipped):
            assert (pass_parts[1] & 0x7FFFFFFF) > 0x7F800000, case
        else:
            assert pass_parts[1] == want_flipped.view(torch.int32).item(), case
        bits = None
        if sr:
            bits = rng.random_bits(key, torch.arange(16)[None] + row0, torch.full((1, 16), col))
        data, scales = ref._quantize_rows(src[None], a, False, bits)
        assert scale == scales.view(torch.uint8).item(), case
        want_words = data.reshape(-1).tolist()
        got_bytes = list(code_lo.to_bytes(4, "little") + code_hi.to_bytes(4, "little"))
        assert got_bytes == want_words, case
    assert wide_seen > 40  # the overflow path was exercised (infinities, NaNs, overflowing chunks)
