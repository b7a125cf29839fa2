"""One line of cast timings for A/B runs of kernel variants (benchmarks/ab_cast_variants.sh).

    python benchmarks/cast_times.py TAG

For 8192^2 and 16384^2 bf16 inputs (the same inputs as bench_kernels.py, seed 0): the fused cast to both
layouts (1D, RHT, 2D), do_bench median in us and % of the 1 GiB copy measured in the same process.
"""

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import bench, bench_input, cast_bytes, cast_kwargs, copy_bandwidth  # noqa: E402
from fp4dist.backends import cuda as K  # noqa: E402


def main():
    tag = sys.argv[1] if len(sys.argv) > 1 else "tree"
    copy_gbs = copy_bandwidth()
    cells = [f"{tag:28s} copy {copy_gbs:5.0f} GB/s"]
    for s in (8192, 16384):
        torch.manual_seed(0)
        x = bench_input(s)
        amax, amax_rht = K.compute_amax(x, rht=False), K.compute_amax(x, rht=True)
        nbytes = cast_bytes(s, s)
        for name, kw, a in (("1D", cast_kwargs(), amax), ("RHT", cast_kwargs(rht=True), amax_rht),
                            ("2D", cast_kwargs(block_2d=True), amax)):
            t = bench(functools.partial(K.cast, x, a, **kw))
            cells.append(f"{s}:{name} {t:6.1f} us {100 * nbytes / (t * 1e-6) / 1e9 / copy_gbs:5.1f}%")
        del x
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
