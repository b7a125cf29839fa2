"""The benchmarks users run still run: a CPU smoke run of each, with a deadline, checking what their tables claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_bench_gather_runs_and_its_steady_gathers_are_one_collective(tmp_path):
    out = tmp_path / "gather.md"
    _run(["benchmarks/bench_gather.py", "--nproc", "2", "--device", "cpu", "--sizes-mb", "1", "--iters", "2",
          "--out", str(out)], timeout=300)
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 1 |")]
    detail = {(r[1].strip(), r[2].strip()): r for r in rows if len(r) == 10}
    assert {v for v, _ in detail} == {"bf16", "rowwise", "rowwise copy-in", "both", "both copy-in"}, detail
    for (variant, mode), r in detail.items():
        collectives, host_reads = float(r[7]), float(r[8])
        assert (collectives, host_reads) == (1, 0), (variant, mode, r)  # after the first gather of a signature


def test_bench_train_step_runs_both_recipes(tmp_path):
    results = tmp_path / "steps.jsonl"
    _run(["benchmarks/bench_train_step.py", "--device", "cpu", "--models", "tiny", "--modes", "eager", "--iters", "1",
          "--json", str(results)], timeout=300)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["recipe"], r["mode"]) for r in rows] == [("bf16", "eager"), ("nvfp4", "eager")], rows
    assert all("error" not in r and r["step_ms"] > 0 for r in rows), rows


def test_bench_train_step_groups_kernels_by_name_and_template_arguments():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_train_step import add_kernel

    by_kernel = {}
    launches = [("void fp4dist_cuda::cast_wide_kernel<__nv_bfloat16, true, true, true, true>(CastParams)", 0.05),
                ("void fp4dist_cuda::cast_wide_kernel<__nv_bfloat16, true, false, true, true>(CastParams)", 0.03),
                ("void fp4dist_cuda::cast_wide_kernel<__nv_bfloat16, true, true, true, true>(CastParams)", 0.07),
                ("Memset (Device)", 0.001), ("Memset (Device)", 0.002)]
    for name, ms in launches:
        add_kernel(by_kernel, name, ms)
    sr = by_kernel["void fp4dist_cuda::cast_wide_kernel<__nv_bfloat16, true, true, true, true>"]
    rn = by_kernel["void fp4dist_cuda::cast_wide_kernel<__nv_bfloat16, true, false, true, true>"]
    assert sr == [0.05 + 0.07, 2] and rn == [0.03, 1]
    assert by_kernel["Memset (Device)"] == [0.001 + 0.002, 2] and len(by_kernel) == 3
