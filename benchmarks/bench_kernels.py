"""Bandwidth of the fp4dist CUDA kernels, against a device-to-device copy and torch.compile.

    python benchmarks/bench_kernels.py [--sizes 8192 16384] [--no-compile] [--out table.md]

For each square bf16 input X [s, s] it times (CUDA events, triton.testing.do_bench median):
  cast 1D        rowwise + columnwise, 1x16 blocks, RN: the cast pass alone (given amax)
  amax+cast 1D   the amax pass and the cast pass together (what a quantize() call costs)
  cast RHT       rowwise + columnwise with the RHT on the columnwise layout
  cast SR+RHT    the same with stochastic rounding: the gradient's cast
  cast 2D        rowwise + columnwise, 16x16 tiles
  dequantize     rowwise layout -> bf16
  swap_first_dims  uint8 [4, s, s/2] -> [s, 4, s/2] (s = 8192: [4, 8192, 4096])
Bytes counted: the input read once plus the outputs written once (amax+cast uses the same count,
so its GB/s is an effective rate; it really reads X twice). "% of copy" divides by the rate of
dst.copy_(src) on a 1 GiB buffer (read + write bytes) measured in the same run; the targets are judged on
it. "% of same-size copy" divides by the rate of a copy that moves the row's own byte count (half read,
half written), timed the same way: it pays the same fixed costs per call (launch, ramp-up, the dirty L2
that do_bench's cache flush leaves behind), which weigh more at 8192^2 than on 1 GiB. The torch.compile
column compiles the reference backend's functions (fp4dist/backends/reference.py) for the same call.
Inputs are far larger than the 50 MB L2, so they are not rotated. The targets apply to the kernel
alone: for quantization they refer to the cast pass (row "cast 1D"), not to amax+cast.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fp4dist import format as fmt  # noqa: E402
from fp4dist.backends import reference as ref  # noqa: E402

TARGETS = {"cast 1D": 0.80, "cast RHT": 0.75, "cast 2D": 0.80, "dequantize": 0.80, "swap_first_dims": 0.85}


def bench(fn) -> float:
    """Median time of fn() in microseconds."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=50, rep=400, return_mode="median") * 1e3


@functools.lru_cache(maxsize=None)
def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """GB/s (read + write) of dst.copy_(src) on nbytes-byte uint8 buffers."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    t = bench(functools.partial(dst.copy_, src))
    del src, dst
    return 2 * nbytes / (t * 1e-6) / 1e9


def cast_kwargs(block_2d=False, rht=False, sr=False):
    return dict(rowwise=True, columnwise=True, block_2d=block_2d, rht=rht, stochastic_rounding=sr, seed=0,
                rng_offset=0, row_offset=0)


def bench_input(s: int) -> torch.Tensor:
    """The benchmarks' input: bf16 [s, s], standard normal rows scaled by exp(2 N(0, 1)) each."""
    return torch.randn(s, s, device="cuda", dtype=torch.bfloat16) * torch.exp(
        torch.randn(s, 1, device="cuda") * 2).to(torch.bfloat16)


def cast_bytes(m: int, n: int, elem_size: int = 2) -> int:
    """Bytes a cast to both layouts moves: X [m, n] read once, codes and scales of both layouts written once."""
    return m * n * elem_size + 2 * (m * n // 2 + m * n // 16)


def try_compile(make, *args):
    """(time in us, note) of torch.compile(make()) on args, or (None, reason)."""
    try:
        fn = torch.compile(make(), dynamic=False)
        fn(*args)
        torch.cuda.synchronize()
        return bench(lambda: fn(*args)), ""
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    finally:
        torch._dynamo.reset()


def run(sizes, compile_baseline: bool):
    from fp4dist.backends import cuda as K

    assert K.available(), "fp4dist CUDA kernels unavailable"
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth()
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; copy bandwidth {copy_gbs:.0f} GB/s (read + write)", flush=True)
    rows = []

    def add(name, shape, nbytes, t_us, t_comp=None, note=""):
        gbs = nbytes / (t_us * 1e-6) / 1e9
        ratio = gbs / copy_gbs
        ratio_same = gbs / copy_bandwidth(nbytes // 32 * 16)
        target = TARGETS.get(name)
        rows.append(dict(name=name, shape=shape, mb=nbytes / 1e6, us=t_us, gbs=gbs, ratio=ratio,
                         ratio_same=ratio_same, target=target,
                         met=None if target is None else ratio >= target, comp=t_comp,
                         speedup=None if t_comp is None else t_comp / t_us, note=note))
        print(f"  {name:16s} {shape:18s} {t_us:9.1f} us {gbs:7.0f} GB/s {100 * ratio:5.1f}% of copy"
              + (f"  compiled {t_comp:9.1f} us ({t_comp / t_us:.1f}x)" if t_comp else f"  {note}"), flush=True)

    for s in sizes:
        m = n = s
        x = bench_input(s)
        amax = K.compute_amax(x, rht=False)
        amax_rht = K.compute_amax(x, rht=True)
        in_bytes = m * n * x.element_size()
        cast_nbytes = cast_bytes(m, n, x.element_size())
        shape = f"{m}x{n} bf16"

        for name, kw, a, rht_amax in (("cast 1D", cast_kwargs(), amax, False),
                                      ("cast RHT", cast_kwargs(rht=True), amax_rht, True),
                                      ("cast SR+RHT", cast_kwargs(rht=True, sr=True), amax_rht, True),
                                      ("cast 2D", cast_kwargs(block_2d=True), amax, False)):
            t = bench(functools.partial(K.cast, x, a, **kw))
            tc, note = (None, "compile skipped")
            if compile_baseline:
                tc, note = try_compile(lambda kw=kw: functools.partial(ref.cast, **kw), x, a)
            add(name, shape, cast_nbytes, t, tc, note)
            if name == "cast 1D":
                def both(x=x):
                    return K.cast(x, K.compute_amax(x, rht=False), **cast_kwargs())
                t2 = bench(both)
                tc2, note2 = (None, "compile skipped")
                if compile_baseline:
                    tc2, note2 = try_compile(
                        lambda: (lambda x: ref.cast(x, ref.compute_amax(x, rht=False), **cast_kwargs())), x)
                add("amax+cast 1D", shape, cast_nbytes, t2, tc2, note2)

        t = bench(functools.partial(K.compute_amax, x, rht=False))
        add("amax", shape, in_bytes, t, None, "(amax pass alone)")
        t = bench(functools.partial(K.compute_amax, x, rht=True))
        add("amax RHT", shape, in_bytes, t, None, "(amax pass alone, with the RHT'd columnwise amax)")

        rd, rs, _, _ = K.cast(x, amax, rowwise=True, columnwise=False, block_2d=False, rht=False,
                              stochastic_rounding=False, seed=0, rng_offset=0, row_offset=0)
        dec = fmt.global_decode_scale(amax[0])
        t = bench(functools.partial(K.dequantize, rd, rs, dec, torch.bfloat16))
        tc, note = (None, "compile skipped")
        if compile_baseline:
            tc, note = try_compile(lambda: ref.dequantize, rd, rs, dec, torch.bfloat16)
        add("dequantize", f"{m}x{n} ->bf16", rd.numel() + rs.numel() + m * n * 2, t, tc, note)
        del x, rd, rs

        t8 = torch.randint(0, 256, (4, s, s // 2), device="cuda", dtype=torch.uint8)
        t = bench(functools.partial(K.swap_first_dims, t8))
        tc, note = (None, "compile skipped")
        if compile_baseline:
            tc, note = try_compile(lambda: ref.swap_first_dims, t8)
        add("swap_first_dims", f"[4,{s},{s // 2}] u8", 2 * t8.numel(), t, tc, note)
        del t8
        torch.cuda.empty_cache()
    return props, copy_gbs, rows


def table(props, copy_gbs, rows, cmd) -> str:
    lines = [f"Device: {props.name} ({props.multi_processor_count} SMs); torch {torch.__version__}, CUDA "
             f"{torch.version.cuda}; device-to-device copy: {copy_gbs:.0f} GB/s (read + write, 1 GiB buffer).",
             f"Command: `{cmd}`", "",
             "| kernel | input | MB moved | time (us) | GB/s | % of copy | % of same-size copy | target | met | "
             "torch.compile (us) | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        tgt = f"{100 * r['target']:.0f}%" if r["target"] else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        comp = f"{r['comp']:.1f}" if r["comp"] else (r["note"] or "-")
        sp = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        lines.append(f"| {r['name']} | {r['shape']} | {r['mb']:.0f} | {r['us']:.1f} | {r['gbs']:.0f} | "
                     f"{100 * r['ratio']:.1f}% | {100 * r['ratio_same']:.1f}% | {tgt} | {met} | {comp} | {sp} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--out", type=str, default=None, help="also write the table as markdown here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    props, copy_gbs, rows = run(args.sizes, not args.no_compile)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    md = table(props, copy_gbs, rows, cmd)
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
