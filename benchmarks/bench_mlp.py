"""Forward+backward of a ColumnParallel -> GELU -> RowParallel MLP block, NVFP4 vs bf16, one process.

    python benchmarks/bench_mlp.py                                  # H100: hidden 4096, ffn 16384, 8192 tokens
    python benchmarks/bench_mlp.py --hidden 256 --ffn 1024 --tokens 512 --device cpu   # a smoke run

Times the median step with CUDA events (or the wall clock on CPU), and breaks the GPU time of one
step down by kernel (torch.profiler): NVFP4 quantize/dequantize kernels, GEMMs, everything else.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time

import torch
import torch.nn.functional as F

from fp4dist import HighPrecisionRecipe, NVFP4Recipe
from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear

GEMM = re.compile(r"gemm|cutlass|xmma|nvjet|sm90_|cublas", re.I)
QUANT = re.compile(r"nvfp4|quantiz|amax|dequant|swap_first|fp4", re.I)


def build(recipe, hidden, ffn, device):
    up = ColumnParallelLinear(hidden, ffn, bias=False, recipe=recipe).to(device, torch.bfloat16)
    down = RowParallelLinear(ffn, hidden, bias=False, recipe=recipe).to(device, torch.bfloat16)
    return up, down


def step(up, down, x, dy):
    y = down(F.gelu(up(x)))
    y.backward(dy)
    up.weight.grad = down.weight.grad = x.grad = None


def median_ms(fn, device, warmup=3, iters=10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def breakdown_ms(fn) -> dict[str, float]:
    """GPU kernel time of one call of fn, by category (ms)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {"quantize": 0.0, "gemm": 0.0, "other": 0.0}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3
        if t <= 0:
            continue
        key = "quantize" if QUANT.search(e.key) else "gemm" if GEMM.search(e.key) else "other"
        out[key] += t
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", help="NVFP4 quantization backend")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16)
    flops = 3 * 2 * 2 * args.tokens * args.hidden * args.ffn  # 2 linears x (fprop, dgrad, wgrad)
    rows = {}
    for name, recipe in (("bf16", HighPrecisionRecipe()), ("nvfp4", NVFP4Recipe(backend=args.backend))):
        up, down = build(recipe, args.hidden, args.ffn, device)
        fn = functools.partial(step, up, down, x, dy)
        ms = median_ms(fn, device)
        rows[name] = {"ms": ms, "tflops": flops / ms / 1e9}
        if device.type == "cuda":
            rows[name].update(breakdown_ms(fn))
        del up, down, fn
    lines = [f"MLP block fwd+bwd, tokens {args.tokens}, hidden {args.hidden}, ffn {args.ffn}, {device} "
             f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})", "",
             "| recipe | step ms | TFLOP/s (GEMM flops) | quantize ms | GEMM ms | other ms |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        parts = " | ".join(f"{r[k]:.3f}" if k in r else "n/a" for k in ("quantize", "gemm", "other"))
        lines.append(f"| {name} | {r['ms']:.3f} | {r['tflops']:.0f} | {parts} |")
    lines.append("")
    lines.append(f"NVFP4 / bf16 step time: {rows['nvfp4']['ms'] / rows['bf16']['ms']:.2f}x (target <= 1.5x)")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
