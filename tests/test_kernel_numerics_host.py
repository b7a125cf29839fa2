"""The CUDA kernels' numerics checked on the CPU: csrc/common/numerics.cuh compiled for the host (its helpers
are __host__ __device__) by nvcc, no GPU needed. tests/host/fast_rn_check.cu checks the cast's fast RN path
against the general rounding; tests/host/numerics_probe.cu answers queries that are compared with the Python
definitions (fp4dist.rng)."""

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


@needs_nvcc
def test_fast_rn_path_matches_the_general_rounding_on_the_host(tmp_path):
    exe = build(HOST / "fast_rn_check.cu", tmp_path / "fast_rn_check")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # every fp32 |a| < 7 (1,088,421,888 values) and the random blocks, with no mismatch
    assert "magnitudes: 1088421888 values x 2 signs, 0 mismatches" in run.stdout, run.stdout
    assert run.stdout.count(" 0 mismatches") == 3, run.stdout


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
