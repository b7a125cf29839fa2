"""Diagnose the cast kernel: time it per layout (rowwise only, columnwise only, both) and optionally run it
once more for a profiler (Nsight Compute: ``ncu --launch-skip K --launch-count 1 python ... --profile``).

    python benchmarks/profile_cast.py [--size 16384] [--mode 1d|rht|2d] [--profile | --fixed-costs | --kernel-times]
    python benchmarks/profile_cast.py --training-shapes [--rows 8192] [--cols 1024 3072 4096]

--fixed-costs times the fused cast (both layouts) and a copy of the same byte count two ways: as
bench_kernels.py does (triton do_bench, which flushes L2 before each call) and back to back (50 calls
between two events, no flush), to show what each call pays besides its bytes. --kernel-times reports, for
the same two operations, the kernel's own duration on the GPU (torch.profiler, median of 20 calls, each after
the same 256 MB cache flush as do_bench) next to the do_bench time, which also counts the launch and the gaps.

--training-shapes times, at the activation and gradient shapes of a training step ([rows, cols] bf16 randn), the
casts a linear makes (kernel durations as --kernel-times takes them): the gradient's (SR, both layouts, RHT on the
columnwise one) with both decoded operands and without, the input's (RN, both layouts, RHT) with its rowwise
operand and without, and the RHT amax pass.

Bytes counted as in bench_kernels.py: the input read once + the requested outputs written once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import bench, bench_input, cast_bytes, copy_bandwidth  # noqa: E402
from fp4dist.backends import cuda as K  # noqa: E402


def back_to_back(fn, reps: int = 50) -> float:
    """Mean time per call of reps calls launched back to back, in microseconds."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def kernel_time(fn, name_part: str, reps: int = 20) -> float:
    """Median GPU duration (us) of the kernels whose name contains name_part, one call of fn per L2 flush."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    durations = sorted(e.time_range.end - e.time_range.start for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA and name_part in e.name)
    if not durations:
        raise RuntimeError(f"no kernel named *{name_part}* in the profile")
    return durations[len(durations) // 2]


def training_shapes(rows: int, widths: list[int]) -> None:
    """Prints the table of --training-shapes (us per call, kernel durations)."""
    print("| input (bf16) | gradient cast, both operands | without operands | input cast, rowwise operand | without "
          "| RHT amax |")
    print("|---|---:|---:|---:|---:|---:|")
    offset = torch.zeros(1, dtype=torch.int64, device="cuda")
    for n in widths:
        x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        amax = K.compute_amax(x, rht=True)
        kw = dict(rowwise=True, columnwise=True, block_2d=False, rht=True, seed=1, rng_offset=offset, row_offset=0)
        ops = dict(operand_dtype=torch.bfloat16)
        times = [kernel_time(lambda: K.cast_with_operands(x, amax, stochastic_rounding=True, **kw, **ops), "cast_"),
                 kernel_time(lambda: K.cast(x, amax, stochastic_rounding=True, **kw), "cast_"),
                 kernel_time(lambda: K.cast_with_operands(x, amax, stochastic_rounding=False, columnwise_operand=False,
                                                          **kw, **ops), "cast_"),
                 kernel_time(lambda: K.cast(x, amax, stochastic_rounding=False, **kw), "cast_"),
                 kernel_time(lambda: K.compute_amax(x, rht=True), "amax_rht")]
        print(f"| {rows} x {n} | " + " | ".join(f"{t:.1f} us" for t in times) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--mode", choices=["1d", "rht", "2d"], default="1d")
    ap.add_argument("--profile", action="store_true", help="one warm-up cast, then one cast (both layouts) to profile")
    ap.add_argument("--fixed-costs", action="store_true", help="do_bench vs back-to-back timing, cast and copy")
    ap.add_argument("--kernel-times", action="store_true", help="GPU kernel duration vs do_bench, cast and copy")
    ap.add_argument("--training-shapes", action="store_true", help="the casts and the RHT amax of a training step")
    ap.add_argument("--rows", type=int, default=8192, help="--training-shapes: rows (tokens per step)")
    ap.add_argument("--cols", type=int, nargs="+", default=[1024, 3072, 4096], help="--training-shapes: widths")
    args = ap.parse_args()
    if args.training_shapes:
        training_shapes(args.rows, args.cols)
        return
    s = args.size
    x = bench_input(s)
    rht, block_2d = args.mode == "rht", args.mode == "2d"
    amax = K.compute_amax(x, rht=rht)

    def cast(row, col):
        return K.cast(x, amax, rowwise=row, columnwise=col, block_2d=block_2d, rht=rht, stochastic_rounding=False,
                      seed=0, rng_offset=0, row_offset=0)

    if args.fixed_costs or args.kernel_times:
        nbytes = cast_bytes(s, s)
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        if args.kernel_times:
            for name, fn, kern in (("cast both", lambda: cast(True, True), "cast_"),
                                   ("copy, same bytes", lambda: dst.copy_(src), "Memcpy")):
                t_kernel, t_bench = kernel_time(fn, kern), bench(fn)
                print(f"{args.mode} {s}x{s} {name:16s} kernel {t_kernel:8.1f} us ({nbytes / t_kernel / 1e3:5.0f} GB/s), "
                      f"do_bench {t_bench:8.1f} us ({nbytes / t_bench / 1e3:5.0f} GB/s)")
            return
        for name, fn in (("cast both", lambda: cast(True, True)), ("copy, same bytes", lambda: dst.copy_(src))):
            t_flush, t_b2b = bench(fn), back_to_back(fn)
            print(f"{args.mode} {s}x{s} {name:16s} do_bench {t_flush:8.1f} us ({nbytes / t_flush / 1e3:5.0f} GB/s), "
                  f"back to back {t_b2b:8.1f} us ({nbytes / t_b2b / 1e3:5.0f} GB/s)")
        return
    if args.profile:
        cast(True, True)
        torch.cuda.synchronize()
        cast(True, True)
        torch.cuda.synchronize()
        return
    copy = copy_bandwidth()
    layout_bytes = s * s // 2 + s * s // 16
    for name, row, col in (("rowwise", True, False), ("columnwise", False, True), ("both", True, True)):
        t = bench(lambda: cast(row, col))
        nbytes = 2 * s * s + layout_bytes * (row + col)
        gbs = nbytes / (t * 1e-6) / 1e9
        print(f"{args.mode} {s}x{s} {name:10s} {t:8.1f} us {gbs:6.0f} GB/s {100 * gbs / copy:5.1f}% of copy ({copy:.0f})")


if __name__ == "__main__":
    main()
