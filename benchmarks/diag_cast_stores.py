"""Diagnostic, not part of the library: time the fused cast (both layouts, 1D blocks, bf16; with --rht the
columnwise layout RHT'd) with parts of its memory traffic or compute switched off or changed at run time
(wrong outputs), to see what limits it.

    python benchmarks/diag_cast_stores.py [--kernel 82|7|17] [--rht] [--modes 0 15 ...]   # on a GPU machine
    python benchmarks/diag_cast_stores.py --kernel 7 --rht --modes 0 15 2048 2063   # the RHT cast as it runs,
                                                                  # without stores / loads / both

Builds a patched copy of csrc/ in /tmp/exp_csrc (the patch asserts the lines it edits, so it fails loudly
once the kernel changes) and selects the mode through the cast variant (variant + 1000 * mode bits):
1 rowwise data, 2 rowwise scales, 4 columnwise data, 8 columnwise scales switched off; 16 / 32 the
rowwise / columnwise scales as one 8-byte store per row / column; 64 prefetch the next tile's scale
sectors into L2; 256 scales written
tile-major (whole sectors, wrong layout); 512 no quantization (stores of raw bits); 1024 scale stores
with an L2 evict-last policy; 2048 no loads after the first two tiles (compute on stale tiles); 4096 data
written tile-major. The wide kernel (7, and 17 without its both-layouts path) takes modes 1, 2, 4, 8 (stores
off), 512 (no quantization: variant 17 only) and 2048 (no loads after its first ring of 4 sub-tiles).
Results: docs/benchmarks.md.
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
    patches += [
        # helpers
        ("__device__ __forceinline__ void cp_async_commit()",
         "__device__ __forceinline__ uint64_t pol_evict_last() {\n"
         "  uint64_t pol;\n"
         "  asm volatile(\"createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\" : \"=l\"(pol));\n"
         "  return pol;\n"
         "}\n"
         "__device__ __forceinline__ void st_el_u8(uint8_t* a, uint32_t v) {\n"
         "  asm volatile(\"st.global.L2::cache_hint.b8 [%0], %1, %2;\" :: \"l\"(a), \"h\"(static_cast<unsigned short>(v)), \"l\"(pol_evict_last()) : \"memory\");\n"
         "}\n"
         "__device__ __forceinline__ void st_el_u32(void* a, uint32_t v) {\n"
         "  asm volatile(\"st.global.L2::cache_hint.b32 [%0], %1, %2;\" :: \"l\"(a), \"r\"(v), \"l\"(pol_evict_last()) : \"memory\");\n"
         "}\n"
         "__device__ __forceinline__ void cp_async_commit()"),
        # 2048: no loads after the first two tiles
        ("      if (tile + gridDim.x < p.num_tiles) {\n        cursor_coords(p, cur, ty, tx);\n"
         "        load_tile<T, TM, RB>(p, bufs + ((it + 1) & 1) * S::kTileBytes, ty, tx);\n      }",
         "      if (tile + gridDim.x < p.num_tiles) {\n        cursor_coords(p, cur, ty, tx);\n"
         "        if (!(p.dbg & 2048) || it == 0) load_tile<T, TM, RB>(p, bufs + ((it + 1) & 1) * S::kTileBytes, ty, tx);\n"
         "        if (p.dbg & 64) {  // prefetch the next tile's scale sectors into L2\n"
         "          const int64_t nr0 = static_cast<int64_t>(ty) * S::kTM, nc0 = static_cast<int64_t>(tx) * S::kTN;\n"
         "          const uint8_t* pf = nullptr;\n"
         "          if (tid < S::kTM) {\n"
         "            if (p.do_row && nr0 + tid < p.m) pf = p.rs + (nr0 + tid) * (p.n / 16) + nc0 / 16;\n"
         "          } else if (tid - S::kTM < S::kTN) {\n"
         "            const int c = tid - S::kTM;\n"
         "            if (p.do_col && nc0 + c < p.n) pf = p.cs + (nc0 + c) * (p.m / 16) + nr0 / 16;\n"
         "          }\n"
         "          if (pf) asm volatile(\"prefetch.global.L2 [%0];\" :: \"l\"(pf));\n"
         "        }\n      }"),
        # 512: no quantization, column phase
        ("        for (int k = 0; k < 16; ++k) raw[k] = *reinterpret_cast<const P*>(buf + (lr + k) * RB + cl * sizeof(T));\n",
         "        for (int k = 0; k < 16; ++k) raw[k] = *reinterpret_cast<const P*>(buf + (lr + k) * RB + cl * sizeof(T));\n"
         "        if constexpr (sizeof(T) == 2) {\n"
         "          if (p.dbg & 512) {\n"
         "            if (p.do_col) {\n"
         "              col_stage[rb * S::kNPair + pp] = make_uint4(raw[0] ^ raw[4], raw[5] ^ raw[9], raw[10] ^ raw[14], raw[15] ^ raw[1]);\n"
         "              col_sstage[cl * S::kNRB + rb] = static_cast<uint8_t>(raw[3]);\n"
         "              col_sstage[(cl + 1) * S::kNRB + rb] = static_cast<uint8_t>(raw[7]);\n"
         "            }\n"
         "            continue;\n"
         "          }\n"
         "        }\n"),
        # 512: no quantization, row phase
        ("        for (int q = 0; q < 8; ++q) v[q] = src[q];\n",
         "        for (int q = 0; q < 8; ++q) v[q] = src[q];\n"
         "        if constexpr (sizeof(T) == 2) {\n"
         "          if (p.dbg & 512) {\n"
         "            *reinterpret_cast<uint2*>(rd_p) = make_uint2(v[0] ^ v[6], v[3] ^ v[7]);\n"
         "            *rs_p = static_cast<uint8_t>(v[5]);\n"
         "            continue;\n"
         "          }\n"
         "        }\n"),
        # 4096: rowwise data tile-major
        ("        if (!(p.dbg & 1)) *reinterpret_cast<uint2*>(rd_p) = q;\n",
         "        const int64_t tile_lin = static_cast<int64_t>(r0 / S::kTM) * p.tiles_x + c0 / S::kTN;\n"
         "        uint8_t* rdw = (p.dbg & 4096) ? p.rd + tile_lin * (S::kTM * S::kTN / 2) + row * (S::kTN / 2) + blk * 8 : rd_p;\n"
         "        if (!(p.dbg & 1)) *reinterpret_cast<uint2*>(rdw) = q;\n"),
        # 256 / 1024: rowwise scales tile-major / evict-last
        ("        } else if (!(p.dbg & 2)) {\n          *rs_p = s;\n        }",
         "        } else if (p.dbg & 2) {\n"
         "        } else if (p.dbg & 256) {\n"
         "          p.rs[tile_lin * (S::kTM * S::kBPR) + row * S::kBPR + blk] = s;\n"
         "        } else if (p.dbg & 1024) {\n"
         "          st_el_u8(rs_p, s);\n"
         "        } else {\n"
         "          *rs_p = s;\n"
         "        }"),
        # 4096: columnwise data tile-major
        ("          if (!(p.dbg & 4))\n"
         "            *reinterpret_cast<uint4*>(dst + j * kColStep * cstride) = make_uint4(part0.x, part0.y, part1.x, part1.y);",
         "          const int64_t tile_lin = static_cast<int64_t>(r0 / S::kTM) * p.tiles_x + c0 / S::kTN;\n"
         "          uint8_t* dw = (p.dbg & 4096) ? p.cd + tile_lin * (S::kTM * S::kTN / 2) + (col0 + j * kColStep) * (S::kTM / 2) + 16 * h\n"
         "                                       : dst + j * kColStep * cstride;\n"
         "          if (!(p.dbg & 4)) *reinterpret_cast<uint4*>(dw) = make_uint4(part0.x, part0.y, part1.x, part1.y);"),
        # 256: columnwise scales tile-major (one 8-byte store per column)
        ("      if (tid < cols && (p.dbg & 32)) {",
         "      if (tid < cols && (p.dbg & 256) && !(p.dbg & 8)) {\n"
         "        const int64_t tile_lin = static_cast<int64_t>(r0 / S::kTM) * p.tiles_x + c0 / S::kTN;\n"
         "        *reinterpret_cast<uint2*>(p.cs + tile_lin * (S::kTN * S::kNRB) + tid * S::kNRB) =\n"
         "            *reinterpret_cast<const uint2*>(col_sstage + tid * S::kNRB);\n"
         "      } else if (tid < cols && (p.dbg & 32)) {"),
        # 1024: columnwise scales evict-last
        ("            reinterpret_cast<uint32_t*>(sdst)[q] = reinterpret_cast<const uint32_t*>(ss)[q];",
         "            if (p.dbg & 1024) st_el_u32(reinterpret_cast<uint32_t*>(sdst) + q, reinterpret_cast<const uint32_t*>(ss)[q]);\n"
         "            else reinterpret_cast<uint32_t*>(sdst)[q] = reinterpret_cast<const uint32_t*>(ss)[q];"),
    ]
    patches += [  # the wide kernel (variant 17, which keeps 1D casts on its general path): 1, 2, 4, 8 stores off,
                  # 512 no quantization, 2048 no loads
        ("  const int full_variant = variant;", "  const int full_variant = variant % 1000;"),
        ("column_pair<T, RHT, SR>(p, raw, k_col, etab_c, static_cast<uint32_t>(r0 + g * 16),",
         "if (p.dbg & 512) {\n"
         "            codes = make_uint4(raw[0] ^ raw[4], raw[5] ^ raw[9], raw[10] ^ raw[14], raw[15] ^ raw[1]);\n"
         "            scales = static_cast<uint16_t>(raw[3]);\n"
         "          } else column_pair<T, RHT, SR>(p, raw, k_col, etab_c, static_cast<uint32_t>(r0 + g * 16),"),
        ("    const uint2 codes = row_block_codes<T, SR>(",
         "    const uint2 codes = (p.dbg & 512) ? make_uint2(v[0] ^ v[6], v[3] ^ v[7]) : row_block_codes<T, SR>("),
        ("      *reinterpret_cast<uint2*>(rd_p + i * rstride) = codes;\n"
         "      rs_p[i * sstride] = static_cast<uint8_t>(s);",
         "      if (!(p.dbg & 1)) *reinterpret_cast<uint2*>(rd_p + i * rstride) = codes;\n"
         "      if (!(p.dbg & 2)) rs_p[i * sstride] = static_cast<uint8_t>(s);"),
        ("*reinterpret_cast<uint4*>(d) = make_uint4(lo.x, lo.y, hi.x, hi.y);",
         "if (!(p.dbg & 4)) *reinterpret_cast<uint4*>(d) = make_uint4(lo.x, lo.y, hi.x, hi.y);"),
        ("*reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);",
         "if (!(p.dbg & 8)) *reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);"),
        ("if (lane == 0) mbar_arrive_expect_tx(&full[slot], static_cast<uint32_t>(rows * cols * 2));",
         "const bool skip = (p.dbg & 2048) && seq >= kStages;\n"
         "        if (lane == 0) {\n"
         "          if (skip) mbar_arrive(&full[slot]);\n"
         "          else mbar_arrive_expect_tx(&full[slot], static_cast<uint32_t>(rows * cols * 2));\n"
         "        }"),
        ("if (lane < rows) {", "if (lane < rows && !skip) {"),
    ]
    for old, new in patches:
        assert cu.count(old) == 1, f"the kernel changed; patch target not found: {old[:60]!r}"
        cu = cu.replace(old, new)
    (src / "nvfp4_kernels.cu").write_text(cu)
    return src


MODES = {0: "all stores", 1: "no row data", 2: "no row scales", 4: "no col data", 8: "no col scales",
         10: "no scales", 15: "no stores", 16: "row scales x8", 32: "col scales x8", 48: "both scales x8",
         64: "prefetch scale sectors", 1024: "scales evict-last", 1088: "evict-last + prefetch",
         256: "scales tile-major", 4352: "all tile-major", 4096: "data tile-major", 512: "no quantization",
         527: "no quant, no stores", 768: "no quant, scales tm", 2048: "no loads", 2063: "no loads, no stores"}


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", type=int, nargs="*", default=list(MODES))
    ap.add_argument("--sizes", type=int, nargs="*", default=[16384, 8192])
    ap.add_argument("--kernel", type=int, default=82,
                    help="cast variant the modes apply to (82: the 128-row kernel, 7: the wide kernel as the library "
                         "runs it, 17: the wide kernel without its both-layouts path)")
    ap.add_argument("--rht", action="store_true", help="the RHT cast (columnwise layout RHT'd) instead of the 1D cast")
    args = ap.parse_args()
    from bench_kernels import bench, bench_input, cast_bytes, copy_bandwidth
    from fp4dist.backends import cuda as K

    K._CSRC = patched_sources()
    assert K.available(), "the patched kernels did not build"
    copy = copy_bandwidth()
    for s in args.sizes:
        x = bench_input(s)
        amax = K.compute_amax(x, rht=args.rht)
        nbytes = cast_bytes(s, s)
        for mode in args.modes:
            what = MODES.get(mode, str(mode))
            K._CAST_VARIANT = args.kernel + 1000 * mode
            t = bench(lambda: K.cast(x, amax, rowwise=True, columnwise=True, block_2d=False, rht=args.rht,
                                     stochastic_rounding=False, seed=0, rng_offset=0, row_offset=0))
            print(f"{s} {mode:5d} {what:24s} {t:7.1f} us  {nbytes / t / 1e3 / copy * 100:5.1f}% of copy (full byte count)",
                  flush=True)


if __name__ == "__main__":
    main()
