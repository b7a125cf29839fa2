// The wide cast kernel: bf16 / fp16 inputs with 16-byte aligned rows (the 128-row kernel, cast_tile.cu,
// takes the other casts).
//
// Why: the 128-row kernel writes its scales 8 bytes per row / column per tile (a quarter of a
// 32-byte sector) and re-synchronizes the CTA twice per tile; on the H100, with its quantization switched
// off, it still ran at 61% of copy bandwidth, 76% with the same scales in whole sectors (docs/benchmarks.md).
// Here every global write covers whole sectors:
//   unit = 512 rows x 512 columns of X, visited by one CTA as 16 sub-tiles of 32 rows (32 KB each);
//   rowwise: a warp quantizes one row of a sub-tile (32 lanes x 16 columns) and writes 256 contiguous code
//     bytes and 32 contiguous scale bytes;
//   columnwise: codes are staged per 128 rows (64 bytes per column, 4 lanes per column), scales for the
//     whole unit (32 bytes per column, 2 lanes per column).
// One CTA per SM: a producer warp streams sub-tiles into a 4-stage shared-memory ring with bulk copies
// (cp.async.bulk, one per row, completion on an mbarrier); 16 compute warps consume them and hand each stage
// back through a second mbarrier. Compute warps wait for each other only where data crosses warps: the two
// warps that staged the same 64 columns once per 128 rows, and with 16x16 tiles all 16 once per unit (the
// rowwise scales).
// Per sub-tile, compute warp w: column task (16-row group w / 8, column pair 32 (w % 8) + lane) and, with 1x16
// blocks, the rowwise blocks of rows 2w and 2w + 1 (block = lane). With 16x16 tiles the column task's 8 lanes
// of a tile also give its rowwise codes: the tile's codes (the same for both layouts when their scales are),
// transposed by shuffles; each row of the warp's 16 x 64 region leaves as 32 contiguous bytes, and the
// rowwise scales, one per tile, are staged for the unit. Partial units (m or n not multiples of 512) compute on
// stale shared memory where X ends and write only what lies inside X.

#include "../common/decode.cuh"
#include "../common/launch.cuh"
#include "../common/ptx.cuh"
#include "block_codes.cuh"

namespace fp4dist_cuda {

namespace wide {
constexpr int kCols = 512;                             // columns per unit and sub-tile
constexpr int kSubRows = 32;                           // rows per sub-tile (one ring stage)
constexpr int kUnitRows = 512;                         // most rows per unit (columnwise scales: 32 per column)
constexpr int kChunkRows = 128;                        // columnwise codes leave in 128-row chunks
constexpr int kStages = 4;
constexpr int kWarps = 16;                             // compute warps
constexpr int kComputeThreads = kWarps * 32;
constexpr int kThreads = kComputeThreads + 32;         // + the producer warp
constexpr int kRowBytes = kCols * 2;
constexpr int kStageBytes = kSubRows * kRowBytes;                    // 32 KB
constexpr int kColStageBytes = kChunkRows / 2 * kCols;               // 32 KB: [q 4][g 2][column 512] x 8 bytes
constexpr int kColScaleBytes = kUnitRows / 16 * kCols;               // 16 KB: [block 32][column 512]
constexpr int kRowTileScaleBytes = kUnitRows / 16 * (kCols / 16);   // 1 KB: [16-row group 32][tile column 32]
constexpr int kSmemBytes = kStages * kStageBytes + 2 * kColStageBytes + kColScaleBytes + 2 * 128 * 4 +
                           2 * kRowTileScaleBytes + 2 * kStages * 8;
static_assert(kWarps * 32 == 2 * (kCols / 2), "one column task per compute thread and sub-tile");
static_assert(kWarps * 2 == kSubRows && kCols / 16 == 32, "two rows per compute warp, one block per lane");
}  // namespace wide

__device__ __forceinline__ void compute_sync() {  // the compute warps only (barrier 1)
  asm volatile("bar.sync 1, %0;" ::"n"(wide::kComputeThreads) : "memory");
}
// Warps j and j + 8 hold columns [64 j, 64 j + 64) of the column stages (barriers 4..11, 64 threads).
__device__ __forceinline__ void column_pair_sync(int j) {
  asm volatile("bar.sync %0, 64;" ::"r"(4 + j) : "memory");
}

// kOps: ops.rop / ops.cop may be set (the decoded operands); the kernels without them carry none of that code.
template <typename T, bool RHT, bool SR, bool kBoth, bool kOps>
__global__ void __launch_bounds__(wide::kThreads, 1) cast_wide_kernel(const CastParams params,
                                                                            const SrKeySource<SR> keys,
                                                                            const OperandOut<kOps> ops) {
  CastParams keyed;  // SR: params with the keys of the key source (RN: params as they are, not copied)
  if constexpr (SR) keyed = with_stream_keys(params, keys);
  const CastParams& p = SR ? keyed : params;
  using namespace wide;
  using TT = Tr<T>;
  using P = typename TT::P;
  static_assert(sizeof(T) == 2, "16-bit inputs only");
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* ring = smem;                                                  // [kStages][32 rows][1024 bytes]
  uint8_t* col_stage = ring + kStages * kStageBytes;                     // [2][kColStageBytes]
  uint8_t* col_scales = col_stage + 2 * kColStageBytes;                  // [32][512]
  float* etab = reinterpret_cast<float*>(col_scales + kColScaleBytes);   // [2][128]: encode scales
  uint8_t* row_tile_scales = reinterpret_cast<uint8_t*>(etab + 256);    // [2][32][32]: 16x16 tiles, rowwise
  uint64_t* full = reinterpret_cast<uint64_t*>(row_tile_scales + 2 * kRowTileScaleBytes);  // [kStages]: loaded
  uint64_t* empty = full + kStages;                                      // [kStages]: stage consumed

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(&full[st], 1);
      mbar_init(&empty[st], kWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();  // the producer starts loading now, while the compute warps build the encode-scale table

  const int m = static_cast<int>(p.m), n = static_cast<int>(p.n);
  const uint32_t units_x = (n + kCols - 1) / kCols;
  const int U = static_cast<int>(p.unit_rows);  // 128, 256 or 512 rows per unit

  if (warp == kWarps) {  // producer: one bulk copy per row of each sub-tile
    uint32_t seq = 0;
    for (uint32_t unit = blockIdx.x; unit < p.num_tiles; unit += gridDim.x) {
      const int R0 = static_cast<int>(unit / units_x) * U, C0 = static_cast<int>(unit % units_x) * kCols;
      const int cols = min(kCols, n - C0), unit_rows = min(U, m - R0);
      for (int k = 0; k * kSubRows < unit_rows; ++k, ++seq) {
        const int slot = seq % kStages;
        if (seq >= kStages) mbar_wait(&empty[slot], ((seq / kStages) & 1) ^ 1);
        const int rows = min(kSubRows, unit_rows - k * kSubRows);
        if (lane == 0) mbar_arrive_expect_tx(&full[slot], static_cast<uint32_t>(rows * cols * 2));
        __syncwarp();
        if (lane < rows) {
          const T* src = static_cast<const T*>(p.x) + static_cast<int64_t>(R0 + k * kSubRows + lane) * n + C0;
          bulk_load(ring + slot * kStageBytes + lane * kRowBytes, src, static_cast<uint32_t>(cols * 2), &full[slot]);
        }
      }
    }
    return;
  }

  const float senc_r = global_encode_scale(p.amax[0]);
  const float senc_c = global_encode_scale(p.amax[1]);
  __shared__ float op_lut[16];  // E2M1 values by code, for the decoded operands
  if (tid < 256)
    etab[tid] = block_encode_scale(static_cast<uint8_t>(tid & 127), (tid < 128 ? 1.0f / senc_r : 1.0f / senc_c));
  if (kOps && tid < 16) op_lut[tid] = e2m1_value(static_cast<uint32_t>(tid));
  compute_sync();
  const float k_row = senc_r * kInvSix, k_col = senc_c * kInvSix;
  // the decoded operands' gemm_alpha shifts (1 without a partner); alpha for the GEMMs, by one thread
  float shift_r = 1.0f, shift_c = 1.0f;
  if constexpr (kOps) {
    const GemmAlpha ga_r = ops.partner_row != nullptr ? gemm_alpha(p.amax[0], *ops.partner_row) : GemmAlpha{1.0f, 1.0f};
    const GemmAlpha ga_c = ops.partner_col != nullptr ? gemm_alpha(p.amax[1], *ops.partner_col) : GemmAlpha{1.0f, 1.0f};
    shift_r = ga_r.shift, shift_c = ga_c.shift;
    if (ops.alpha_out != nullptr && blockIdx.x == 0 && tid == 0) {
      ops.alpha_out[0] = ga_r.alpha;
      ops.alpha_out[1] = ga_c.alpha;
    }
  }
  const float* etab_r = etab;
  const float* etab_c = etab + 128;
  const int g = warp >> 3, pair = ((warp & 7) << 5) | lane, cpair = 2 * pair;  // column task
  const int64_t rstride = n / 2, sstride = n / 16, cstride = m / 2, csstride = m / 16;
  const int64_t rd_step = kSubRows * rstride, rs_step = kSubRows * sstride;  // rowwise outputs per sub-tile
  // Per sub-tile pieces (buf: the stage in the ring). A column task: rows 16 g .. 16 g + 15, columns cpair,
  // cpair + 1, as 16 pairs (row k in raw[k]).
  const auto load_column = [&](const uint8_t* buf, P (&raw)[16]) {
#pragma unroll
    for (int j = 0; j < 16; ++j) raw[j] = *reinterpret_cast<const P*>(buf + (g * 16 + j) * kRowBytes + pair * 4);
  };
  // Its codes and scale bytes into the column stages: [q][g][column ^ 4q] x 8 bytes (conflict-free here and in
  // the write-out) and [block of the unit][column].
  const auto stage_column = [&](uint8_t* stage, int q, int k, uint4 codes, uint16_t scales) {
    if (p.cd == nullptr) return;  // the operand alone
    *reinterpret_cast<uint4*>(stage + ((q * 2 + g) * kCols + (cpair ^ (q << 2))) * 8) = codes;
    *reinterpret_cast<uint16_t*>(col_scales + (k * 2 + g) * kCols + cpair) = scales;
  };
  // The rowwise 1x16 block of row 2 warp + i (block = lane): load, and codes + scale byte out (rd_p / rs_p:
  // where this lane's codes / scale of row 2 warp go; row: global row of row 2 warp).
  const auto load_row = [&](const uint8_t* buf, int i, P (&v)[8]) {
    const uint4* src = reinterpret_cast<const uint4*>(buf + (2 * warp + i) * kRowBytes + lane * 32);
    const uint4 lo = src[0], hi = src[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  };
  const auto emit_row = [&](const P (&v)[8], int i, uint32_t bits, uint32_t s, int row, int rows, int C0, int cols,
                            uint8_t* rd_p, uint8_t* rs_p) {
    const uint2 codes = row_block_codes<T, SR>(p, v, bits, etab_r[s], static_cast<uint32_t>(row + i),
                                               static_cast<uint32_t>(C0 + lane * 16));
    if (2 * warp + i < rows && lane * 16 < cols) {
      if (p.rd != nullptr) {
        *reinterpret_cast<uint2*>(rd_p + i * rstride) = codes;
        rs_p[i * sstride] = static_cast<uint8_t>(s);
      }
      if constexpr (kOps) {
        if (ops.rop != nullptr) {
          T* row_p = static_cast<T*>(ops.rop) + static_cast<int64_t>(row + i) * n;
          uint4* d = reinterpret_cast<uint4*>(row_p + C0 + lane * 16);
          d[0] = dequant_group_pow2<T>(codes.x, static_cast<uint8_t>(s), shift_r, op_lut);
          d[1] = dequant_group_pow2<T>(codes.y, static_cast<uint8_t>(s), shift_r, op_lut);
        }
      }
    }
  };
  // The decoded columnwise operand of a column task (rows 16 g .. 16 g + 15 of the sub-tile at row r0, columns
  // cpair, cpair + 1 of the unit at C0): 16 contiguous values per column of [n, m].
  const auto emit_column_operand = [&](uint4 codes, uint32_t scales, int r0, int rows, int C0, int cols) {
    if constexpr (kOps) {
      if (ops.cop == nullptr || g * 16 >= rows) return;
      T* base = static_cast<T*>(ops.cop) + static_cast<int64_t>(C0 + cpair) * m + r0 + g * 16;
      if (cpair < cols) {
        uint4* d = reinterpret_cast<uint4*>(base);
        d[0] = dequant_group_pow2<T>(codes.x, static_cast<uint8_t>(scales), shift_c, op_lut);
        d[1] = dequant_group_pow2<T>(codes.y, static_cast<uint8_t>(scales), shift_c, op_lut);
      }
      if (cpair + 1 < cols) {
        uint4* d = reinterpret_cast<uint4*>(base + m);
        d[0] = dequant_group_pow2<T>(codes.z, static_cast<uint8_t>(scales >> 8), shift_c, op_lut);
        d[1] = dequant_group_pow2<T>(codes.w, static_cast<uint8_t>(scales >> 8), shift_c, op_lut);
      }
    }
  };
  uint32_t seq = 0, chunk_seq = 0, unit_seq = 0;
  for (uint32_t unit = blockIdx.x; unit < p.num_tiles; unit += gridDim.x, ++unit_seq) {
    const int R0 = static_cast<int>(unit / units_x) * U, C0 = static_cast<int>(unit % units_x) * kCols;
    const int cols = min(kCols, n - C0), unit_rows = min(U, m - R0);
    // this lane's rowwise codes / scale of row 2 warp in the unit's first sub-tile
    uint8_t* const rd_unit =
        p.rd != nullptr ? p.rd + static_cast<int64_t>(R0 + 2 * warp) * rstride + C0 / 2 + lane * 8 : nullptr;
    uint8_t* const rs_unit =
        p.rs != nullptr ? p.rs + static_cast<int64_t>(R0 + 2 * warp) * sstride + C0 / 16 + lane : nullptr;
    for (int k = 0; k * kSubRows < unit_rows; ++k, ++seq) {
      const int slot = seq % kStages;
      const int r0 = R0 + k * kSubRows, rows = min(kSubRows, unit_rows - k * kSubRows);
      uint8_t* const rd_p = rd_unit + k * rd_step;  // used only when p.rd is set
      uint8_t* const rs_p = rs_unit + k * rs_step;
      const int q = k & 3;  // 32-row piece of the 128-row chunk
      uint8_t* stage = col_stage + (chunk_seq & 1) * kColStageBytes;
      const bool last_sub = (k + 1) * kSubRows >= unit_rows;
      mbar_wait(&full[slot], (seq / kStages) & 1);
      const uint8_t* buf = ring + slot * kStageBytes;

      if constexpr (kBoth) {
        // ---- both layouts, 1x16 blocks: loads, maxima and scales of all four blocks first (their latencies
        // overlap), then the codes of each part ----
        P raw[16], v[2][8];
        load_column(buf, raw);
        load_row(buf, 0, v[0]);
        load_row(buf, 1, v[1]);
        uint32_t bits_a, bits_b, in_a = 0, in_b = 0;
        bool wide = false;  // RHT's overflow path (block_codes.cuh, column_rht_wide)
        if constexpr (RHT) {
          wide = rht_column_rounded<T>(raw, in_a, in_b, bits_a, bits_b);
          // with SR the whole warp takes the same path (the overflow path gives any task its spec values), so
          // that the common path can share the row hashes across the warp
          if constexpr (SR) wide = __any_sync(0xffffffffu, wide);
        } else {
          column_maxima<T>(raw, bits_a, bits_b);
        }
        const uint32_t bits_0 = row_maximum<T>(v[0]), bits_1 = row_maximum<T>(v[1]);
        uint16_t cs2 = e4m3x2_satfinite(u2f(bits_a) * k_col, u2f(bits_b) * k_col);  // bytes <= 0x7F
        const uint16_t rs2 = e4m3x2_satfinite(u2f(bits_0) * k_row, u2f(bits_1) * k_row);
        const uint32_t sa = cs2 & 0xffu, sb = cs2 >> 8;
        const uint32_t grow = static_cast<uint32_t>(r0 + g * 16), ca = static_cast<uint32_t>(C0 + cpair);
        uint4 ccodes;
        if (wide) {
          const WideTask w = column_rht_wide<T, SR>(buf + (g * 16) * kRowBytes + pair * 4, kRowBytes, k_col, etab_c,
                                                    p.key_col, p.row_offset + grow, ca, false);
          ccodes = w.codes;
          cs2 = static_cast<uint16_t>(w.scales);
        } else {
          ccodes = column_block_codes<T, SR, RowHashes::warp>(p, raw, bits_a, bits_b, etab_c[sa], etab_c[sb], grow,
                                                               ca, p.key_col);
        }
        stage_column(stage, q, k, ccodes, cs2);
        emit_row(v[0], 0, bits_0, rs2 & 0xffu, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
        emit_row(v[1], 1, bits_1, rs2 >> 8, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
        emit_column_operand(ccodes, cs2, r0, rows, C0, cols);
      } else if (p.block_2d) {
        // ---- 16x16 tiles: lane group u = lane / 8 quantizes tile (g, 4 (warp % 8) + u) of the sub-tile from its
        // column task; its rowwise codes are the tile's codes transposed across the 8 lanes. No other warp
        // takes part: the rowwise scales (one per tile) are staged and written at the end of the unit ----
        P raw[16];
        load_column(buf, raw);
        uint32_t bits_a, bits_b;
        column_maxima<T>(raw, bits_a, bits_b);
        const uint32_t tile_in = tile_max8(max_u32(bits_a, bits_b));  // of the input
        const uint32_t grow = static_cast<uint32_t>(r0 + g * 16), ca = static_cast<uint32_t>(C0 + cpair);
        uint4 rcodes = make_uint4(0u, 0u, 0u, 0u);
        uint32_t s_r = 0;
        float e_r = 0.0f;
        if (p.do_row) {
          s_r = e4m3_satfinite(u2f(tile_in) * k_row);
          e_r = etab_r[s_r];
          rcodes = column_block_codes<T, SR>(p, raw, tile_in, tile_in, e_r, e_r, grow, ca, p.key_row);
        }
        if (p.do_col) {
          uint32_t bits_c = tile_in;
          bool wide = false;
          if constexpr (RHT) {
            uint32_t in_a, in_b;
            wide = __any_sync(0xffffffffu, rht_column_rounded<T>(raw, in_a, in_b, bits_a, bits_b));
            if (wide) {  // the overflow path, the whole warp (its tile max needs every lane)
              const WideTask w = column_rht_wide<T, SR>(buf + (g * 16) * kRowBytes + pair * 4, kRowBytes, k_col,
                                                        etab_c, p.key_col, p.row_offset + grow, ca, true);
              stage_column(stage, q, k, w.codes, static_cast<uint16_t>(w.scales));
            } else {
              bits_c = tile_max8(max_u32(bits_a, bits_b));
            }
          }
          if (!wide) {
            const uint32_t s_c = e4m3_satfinite(u2f(bits_c) * k_col);
            const float e_c = etab_c[s_c];
            // the same scale and SR stream give the same codes (the rowwise ones are already there)
            const bool same = !RHT && p.do_row && e_c == e_r && (!SR || p.key_col == p.key_row);
            const uint4 ccodes =
                same ? rcodes : column_block_codes<T, SR>(p, raw, bits_c, bits_c, e_c, e_c, grow, ca, p.key_col);
            stage_column(stage, q, k, ccodes, static_cast<uint16_t>(s_c * 0x101u));
          }
        }
        if (p.do_row) {
          const uint4 rows2 = tile_rows_from_columns(rcodes, lane);  // rows 2 (lane % 8), + 1 of the tile
          const int tile_c = 16 * (pair >> 3);                        // the tile's first column in the unit
          if (g * 16 < rows && tile_c < cols) {
            uint8_t* d = p.rd + static_cast<int64_t>(r0 + g * 16 + 2 * (lane & 7)) * rstride + (C0 + tile_c) / 2;
            *reinterpret_cast<uint2*>(d) = make_uint2(rows2.x, rows2.y);
            *reinterpret_cast<uint2*>(d + rstride) = make_uint2(rows2.z, rows2.w);
          }
          if ((lane & 7) == 0)
            row_tile_scales[(unit_seq & 1) * kRowTileScaleBytes + (k * 2 + g) * 32 + (pair >> 3)] =
                static_cast<uint8_t>(s_r);
        }
      } else {
        // ---- one layout, 1x16 blocks: the column task or the rowwise blocks ----
        if (p.do_col) {
          P raw[16];
          load_column(buf, raw);
          uint4 codes;
          uint16_t scales;
          column_pair<T, RHT, SR>(p, raw, buf + (g * 16) * kRowBytes + pair * 4, kRowBytes, k_col, etab_c,
                                  static_cast<uint32_t>(r0 + g * 16),
                                  static_cast<uint32_t>(C0 + cpair), lane, nullptr, codes, scales);
          stage_column(stage, q, k, codes, scales);
          emit_column_operand(codes, scales, r0, rows, C0, cols);
        }
        if (p.do_row) {
          P v[2][8];
          load_row(buf, 0, v[0]);
          load_row(buf, 1, v[1]);
          const uint32_t bits_0 = row_maximum<T>(v[0]), bits_1 = row_maximum<T>(v[1]);
          const uint16_t rs2 = e4m3x2_satfinite(u2f(bits_0) * k_row, u2f(bits_1) * k_row);  // bytes <= 0x7F
          emit_row(v[0], 0, bits_0, rs2 & 0xffu, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
          emit_row(v[1], 1, bits_1, rs2 >> 8, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[slot]);  // this warp is done with the stage

      if (p.block_2d && p.do_row && last_sub) {
        // ---- rowwise scales of the unit, 16x16 tiles: warp w writes 16-row groups 2w, 2w + 1, one row per store
        // (32 lanes, 32 bytes) ----
        compute_sync();  // every tile scale of the unit is staged
        const uint8_t* staged = row_tile_scales + (unit_seq & 1) * kRowTileScaleBytes;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int grp = 2 * warp + h;
          if (grp * 16 < unit_rows && lane * 16 < cols) {
            const uint8_t sb = staged[grp * 32 + lane];
            uint8_t* d = p.rs + static_cast<int64_t>(R0 + grp * 16) * sstride + C0 / 16 + lane;
#pragma unroll
            for (int rr = 0; rr < 16; ++rr) d[rr * sstride] = sb;
          }
        }
      }

      if (!p.do_col || p.cd == nullptr || (q != 3 && !last_sub)) continue;
      // ---- columnwise codes of the 128-row chunk: 4 lanes per column, 64 contiguous bytes. Columns
      // [64 j, 64 j + 64) were staged by warps j and j + 8 only, so only those two wait for each other ----
      column_pair_sync(warp & 7);
      ++chunk_seq;
      const int crow0 = r0 - q * kSubRows, crows = min(kChunkRows, m - crow0);
      const int pair_tid = (warp >> 3) * 32 + lane, pair_c0 = (warp & 7) * 64;  // 64 threads, 64 columns
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = pair_c0 + j * 16 + (pair_tid >> 2), qq = pair_tid & 3;
        if (c < cols && qq * 32 < crows) {
          const int cs = c ^ (qq << 2);
          const uint2 lo = *reinterpret_cast<const uint2*>(stage + ((qq * 2) * kCols + cs) * 8);
          const uint2 hi = *reinterpret_cast<const uint2*>(stage + ((qq * 2 + 1) * kCols + cs) * 8);
          uint8_t* d = p.cd + static_cast<int64_t>(C0 + c) * cstride + crow0 / 2 + qq * 16;
          if (qq * 32 + 16 < crows) {
            if (p.col_data_vec) {
              *reinterpret_cast<uint4*>(d) = make_uint4(lo.x, lo.y, hi.x, hi.y);
            } else {
              reinterpret_cast<uint2*>(d)[0] = lo;
              reinterpret_cast<uint2*>(d)[1] = hi;
            }
          } else {
            *reinterpret_cast<uint2*>(d) = lo;
          }
        }
      }
      if (!last_sub) continue;
      // ---- columnwise scales of the unit: 2 lanes per column, 32 contiguous bytes ----
      const int nblk = unit_rows / 16;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = pair_c0 + j * 32 + (pair_tid >> 1), half = pair_tid & 1;
        if (c < cols && half * 16 < nblk) {
          uint8_t* d = p.cs + static_cast<int64_t>(C0 + c) * csstride + R0 / 16 + half * 16;
          const uint8_t* src = col_scales + half * 16 * kCols + c;
          if (nblk == 32 && p.col_scale_vec) {
            uint32_t w[4];
#pragma unroll
            for (int b = 0; b < 4; ++b)
              w[b] = src[(4 * b) * kCols] | (src[(4 * b + 1) * kCols] << 8) | (src[(4 * b + 2) * kCols] << 16) |
                     (static_cast<uint32_t>(src[(4 * b + 3) * kCols]) << 24);
            *reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);
          } else {
            for (int b = 0; b < 16 && half * 16 + b < nblk; ++b) d[b] = src[b * kCols];
          }
        }
      }
      column_pair_sync(warp & 7);  // col_scales is rewritten by the next unit
    }
  }
}

namespace {

template <typename T, bool RHT, bool SR, bool kBoth, bool kOps>
cudaError_t launch_cast_wide_t(const CastParams& p0, const SrKeySource<true>& keys, const OperandOut<true>& ops,
                               cudaStream_t stream) {
  CastParams p = p0;
  // Rows per unit: 512 keeps every columnwise scale write a whole 32-byte sector, but a tensor of few units
  // leaves SMs idle (8192 x 1024 is 32 units of 512 rows). Take the unit height whose waves of units (one CTA per
  // SM) cost the fewest rows per CTA, the tallest on a tie.
  const int64_t units_x = (p.n + wide::kCols - 1) / wide::kCols, sms = sm_count();
  int64_t units = 0, best_cost = INT64_MAX;
  for (int rows = wide::kUnitRows; rows >= wide::kChunkRows; rows /= 2) {
    const int64_t u = units_x * ((p.m + rows - 1) / rows), cost = (u + sms - 1) / sms * rows;
    if (cost < best_cost) best_cost = cost, units = u, p.unit_rows = static_cast<uint32_t>(rows);
  }
  if (units == 0) return cudaSuccess;
  p.num_tiles = static_cast<uint32_t>(units);
  p.col_scale_vec = p.do_col && (p.m % 256 == 0) && (reinterpret_cast<uintptr_t>(p.cs) % 16 == 0);
  p.col_data_vec = p.do_col && (p.m % 32 == 0) && (reinterpret_cast<uintptr_t>(p.cd) % 16 == 0);
  auto kern = cast_wide_kernel<T, RHT, SR, kBoth, kOps>;
  static bool ready[kMaxDevices] = {};  // the shared-memory attribute is per device
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (!ready[dev]) {
    err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, wide::kSmemBytes);
    if (err != cudaSuccess) return err;
    ready[dev] = true;
  }
  const int64_t grid = units < sms ? units : sms;
  OperandOut<kOps> out{};
  if constexpr (kOps) out = ops;
  kern<<<static_cast<unsigned>(grid), wide::kThreads, wide::kSmemBytes, stream>>>(p, key_source<SR>(keys), out);
  return cudaGetLastError();
}

template <typename T, bool kBoth, bool kOps>
cudaError_t launch_cast_wide_b(const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                               const OperandOut<true>& ops, cudaStream_t stream) {
  if (rht) {
    return sr ? launch_cast_wide_t<T, true, true, kBoth, kOps>(p, keys, ops, stream)
              : launch_cast_wide_t<T, true, false, kBoth, kOps>(p, keys, ops, stream);
  }
  return sr ? launch_cast_wide_t<T, false, true, kBoth, kOps>(p, keys, ops, stream)
            : launch_cast_wide_t<T, false, false, kBoth, kOps>(p, keys, ops, stream);
}

// Casts to both layouts with 1x16 blocks take the kBoth path.
template <typename T>
cudaError_t launch_cast_wide_dtype(const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                                   const OperandOut<true>& ops, cudaStream_t stream) {
  // never with 16x16 tiles (launch_cast)
  const bool with_ops = ops.rop != nullptr || ops.cop != nullptr || ops.alpha_out != nullptr;
  if (p.do_row && p.do_col && !p.block_2d) {
    return with_ops ? launch_cast_wide_b<T, true, true>(p, keys, rht, sr, ops, stream)
                    : launch_cast_wide_b<T, true, false>(p, keys, rht, sr, ops, stream);
  }
  return with_ops ? launch_cast_wide_b<T, false, true>(p, keys, rht, sr, ops, stream)
                  : launch_cast_wide_b<T, false, false>(p, keys, rht, sr, ops, stream);
}

}  // namespace

cudaError_t launch_cast_wide(int dtype, const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                             const OperandOut<true>& ops, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_cast_wide_dtype<__nv_bfloat16>(p, keys, rht, sr, ops, stream);
    case 1: return launch_cast_wide_dtype<__half>(p, keys, rht, sr, ops, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fp4dist_cuda
