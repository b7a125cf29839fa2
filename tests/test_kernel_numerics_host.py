"""The CUDA cast kernels' fast RN path, checked on the CPU: csrc/common/numerics.cuh compiled for the host
(its helpers are __host__ __device__) by nvcc, no GPU needed. See tests/host/fast_rn_check.cu."""

import shutil
import subprocess
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
SOURCE = Path(__file__).parent / "host" / "fast_rn_check.cu"


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (host compilation only, no GPU)")
def test_fast_rn_path_matches_the_general_rounding_on_the_host(tmp_path):
    exe = tmp_path / "fast_rn_check"
    build = subprocess.run([NVCC, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-o", str(exe), str(SOURCE)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # every fp32 |a| < 7 (1,088,421,888 values) and the random blocks, with no mismatch
    assert "magnitudes: 1088421888 values x 2 signs, 0 mismatches" in run.stdout, run.stdout
    assert run.stdout.count(" 0 mismatches") == 3, run.stdout
