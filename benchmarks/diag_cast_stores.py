"""Diagnostic, not part of the library: time the fused cast (both layouts, 1D, bf16) with some of its output
stores switched off at run time (same compute, wrong outputs), to see which stores limit it.

    python benchmarks/diag_cast_stores.py        # on a GPU machine; results in docs/benchmarks.md

Builds a patched copy of csrc/ in /tmp/exp_csrc (the patch asserts the lines it edits, so it fails loudly
once the kernel changes) and selects the mode through the cast variant (variant + 1000 * mode bits:
1 rowwise data, 2 rowwise scales, 4 columnwise data, 8 columnwise scales switched off; 16 / 32 the
rowwise / columnwise scales as one 8-byte store per row / column).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def patched_sources() -> Path:
    """csrc/ copied to /tmp/exp_csrc with the store switches added."""
    src = Path("/tmp/exp_csrc")
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "csrc", src)
    cu = (src / "nvfp4_kernels.cu").read_text()
    patches = [
        ("  uint32_t group_shift; // log2(group_rows) if a power of two, else 32\n};",
         "  uint32_t group_shift; // log2(group_rows) if a power of two, else 32\n  int dbg;\n};"),
        ("  p.group_rows = static_cast<uint32_t>(variant / 10);",
         "  p.dbg = variant / 1000;\n  variant %= 1000;\n  p.group_rows = static_cast<uint32_t>(variant / 10);"),
        ("        *reinterpret_cast<uint2*>(rd_p) = q;\n        *rs_p = s;",
         "        if (!(p.dbg & 1)) *reinterpret_cast<uint2*>(rd_p) = q;\n"
         "        if (p.dbg & 16) {  // one 8-byte store per row: gather the 8 lanes' scale bytes\n"
         "          uint32_t w = static_cast<uint32_t>(s) << (8 * (lane & 3));\n"
         "          w |= __shfl_xor_sync(0xffffffffu, w, 1);\n"
         "          w |= __shfl_xor_sync(0xffffffffu, w, 2);\n"
         "          const uint32_t hi = __shfl_down_sync(0xffffffffu, w, 4);\n"
         "          if ((lane & 7) == 0) *reinterpret_cast<uint2*>(rs_p) = make_uint2(w, hi);\n"
         "        } else if (!(p.dbg & 2)) {\n"
         "          *rs_p = s;\n"
         "        }"),
        ("          *reinterpret_cast<uint4*>(dst + j * kColStep * cstride) = make_uint4(part0.x, part0.y, part1.x, part1.y);",
         "          if (!(p.dbg & 4))\n"
         "            *reinterpret_cast<uint4*>(dst + j * kColStep * cstride) = make_uint4(part0.x, part0.y, part1.x, part1.y);"),
        ("      if (tid < cols) {\n        const uint8_t* ss",
         "      if (tid < cols && (p.dbg & 32)) {  // one 8-byte store per column\n"
         "        *reinterpret_cast<uint2*>(p.cs + static_cast<int64_t>(c0 + tid) * (p.m / 16) + r0 / 16) =\n"
         "            *reinterpret_cast<const uint2*>(col_sstage + tid * S::kNRB);\n"
         "      } else if (tid < cols && !(p.dbg & 8)) {\n"
         "        const uint8_t* ss"),
    ]
    for old, new in patches:
        assert old in cu, f"the kernel changed; patch target not found: {old[:60]!r}"
        cu = cu.replace(old, new)
    (src / "nvfp4_kernels.cu").write_text(cu)
    return src


MODES = ((0, "all stores"), (1, "no row data"), (2, "no row scales"), (4, "no col data"), (8, "no col scales"),
         (10, "no scales"), (15, "no stores"), (16, "row scales x8"), (32, "col scales x8"), (48, "both scales x8"))


def main():
    from bench_kernels import bench, copy_bandwidth
    from fp4dist.backends import cuda as K

    K._CSRC = patched_sources()
    assert K.available(), "the patched kernels did not build"
    copy = copy_bandwidth()
    for s in (16384, 8192):
        x = torch.randn(s, s, device="cuda", dtype=torch.bfloat16) * torch.exp(
            torch.randn(s, 1, device="cuda") * 2).to(torch.bfloat16)
        amax = K.compute_amax(x, rht=False)
        nbytes = 2 * s * s + 2 * (s * s // 2 + s * s // 16)
        for mode, what in MODES:
            K._CAST_VARIANT = 82 + 1000 * mode
            t = bench(lambda: K.cast(x, amax, rowwise=True, columnwise=True, block_2d=False, rht=False,
                                     stochastic_rounding=False, seed=0, rng_offset=0, row_offset=0))
            print(f"{s} {what:14s} {t:7.1f} us  {nbytes / t / 1e3 / copy * 100:5.1f}% of copy (full byte count)",
                  flush=True)


if __name__ == "__main__":
    main()
