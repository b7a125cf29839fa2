// The 128-row cast kernel: fp32 inputs and 16-bit inputs whose rows are not 16-byte aligned (the wide
// kernel, cast_wide.cu, takes the other 16-bit casts).
//
// A CTA of 256 threads loops over tiles of X (tile rows of 256 bytes): bf16/fp16 128 rows x 128 cols, fp32
// 128 rows x 64 cols, double-buffered in shared memory with cp.async (the next tile loads while this one is
// computed). Per tile:
//   column phase: task (column pair p, 16-row group rb) reads its 16 x 2 values (4- or 8-byte shared
//     loads, conflict-free), optionally RHTs the two 16-chunks, quantizes two columnwise blocks and
//     stages 2 x 8 code bytes + 2 scale bytes in shared memory. With 16x16 tiles it also reduces the
//     tile max over 8 lanes (16 columns) and leaves it in shared memory for the row phase.
//   row phase: a task quantizes one rowwise block (16 consecutive elements of one row) and writes its
//     8 code bytes and its scale byte straight to global memory (8 lanes = one contiguous 64-byte row
//     segment); the staged columnwise codes then go out as 16-byte stores (32 K bytes per column and
//     tile) and the staged columnwise scales as one 4- or 8-byte store per column.
// Two barriers per tile: S1 (tile landed, previous tile done: the prefetch of the next tile into the
// other buffer is issued right after it) and S2 (column stage complete).

#include "../common/launch.cuh"
#include "../common/ptx.cuh"
#include "block_codes.cuh"

namespace fp4dist_cuda {

constexpr int kThreads = 256;

// Tile order: tiles are visited in groups of G = group_rows tile rows; inside a group the tile row varies
// fastest, so the CTAs in flight cover G tile rows x (grid / G) tile columns: longer contiguous runs per
// column of the columnwise output, shorter ones per row of the input (G = 1: plain row-major order).
// A CTA walks tiles blockIdx.x, + gridDim.x, ...; the cursor follows the walk with additions only
// (no division per tile, except by the rows of a last, partial group).
struct TileCursor {
  uint32_t g, r;         // group, index of the tile inside the group
  uint32_t rows_g, size; // tile rows in group g, tiles in group g
};
__device__ __forceinline__ void cursor_fix(const CastParams& p, TileCursor& c) {
  while (c.r >= c.size && c.size > 0) {
    c.r -= c.size;
    ++c.g;
    const uint32_t first = c.g * p.group_rows;
    c.rows_g = first < p.tiles_y ? min(p.group_rows, p.tiles_y - first) : 0u;
    c.size = c.rows_g * p.tiles_x;
  }
}
__device__ __forceinline__ TileCursor cursor_at(const CastParams& p, uint32_t tile) {
  TileCursor c;
  c.g = 0;
  c.r = tile;
  c.rows_g = min(p.group_rows, p.tiles_y);
  c.size = c.rows_g * p.tiles_x;
  cursor_fix(p, c);
  return c;
}
__device__ __forceinline__ void cursor_coords(const CastParams& p, const TileCursor& c, uint32_t& ty, uint32_t& tx) {
  tx = (c.rows_g == p.group_rows && p.group_shift < 32) ? c.r >> p.group_shift : c.r / c.rows_g;
  ty = c.g * p.group_rows + (c.r - tx * c.rows_g);
}

// A tile is TM rows x RB bytes of X: TN = RB / sizeof(T) columns.
template <typename T, int TM, int RB>
struct TileShape {
  static constexpr int kRB = RB;                                            // bytes per tile row
  static constexpr int kTN = RB / static_cast<int>(sizeof(T));              // columns
  static constexpr int kTM = TM;                                            // rows
  static constexpr int kBPR = kTN / 16;                                     // row blocks per tile row
  static constexpr int kNPair = kTN / 2;                                    // column pairs
  static constexpr int kNRB = kTM / 16;                                     // 16-row groups
  static constexpr int kTileBytes = kTM * kRB;
  static constexpr int kRowTasks = kTM * kBPR / kThreads;                   // row blocks per thread
  static constexpr int kColTasks = kNPair * kNRB / kThreads;                // column tasks per thread
  static constexpr int kCPC = kNRB / 2;                                     // 16-byte chunks per column
  static constexpr int kColChunks = kTN * kCPC / kThreads;                  // per thread
  static constexpr int kColStageBytes = kNRB * kNPair * 16;
  // tiles x2, column code stage, column scale stage, 2 x 128 encode scales, 16x16-tile maxima
  static constexpr int kSmemBytes = 2 * kTileBytes + kColStageBytes + kTN * kNRB + 2 * 128 * 4 + kNRB * kBPR * 4;
  static_assert(kNPair * kNRB % kThreads == 0 && kTM * kBPR % kThreads == 0 && kTN * kCPC % kThreads == 0,
                "tile tasks must divide evenly among the threads");
  static_assert(kNPair % 32 == 0, "a warp's column tasks share one 16-row group");
};

// Loads the tile at (ty, tx) into buf: 16-byte cp.async (zero-filled outside X) when vec_ok, else element
// loads. A thread's chunks are one 16-byte column of the tile, kRowsPerPass rows apart.
template <typename T, int TM, int RB>
__device__ __forceinline__ void load_tile(const CastParams& p, uint8_t* buf, uint32_t ty, uint32_t tx) {
  using S = TileShape<T, TM, RB>;
  const int r0 = static_cast<int>(ty) * S::kTM, c0 = static_cast<int>(tx) * S::kTN;
  const int rows = min(S::kTM, static_cast<int>(p.m) - r0), cols = min(S::kTN, static_cast<int>(p.n) - c0);
  const T* xt = static_cast<const T*>(p.x) + static_cast<int64_t>(r0) * p.n + c0;
  constexpr int kVec = 16 / sizeof(T);
  if (p.vec_ok) {
    constexpr int kChunksPerRow = RB / 16, kRowsPerPass = kThreads / kChunksPerRow;
    constexpr int kChunks = S::kTileBytes / 16 / kThreads;
    static_assert(kThreads % kChunksPerRow == 0, "a pass must cover whole tile rows");
    const int row = threadIdx.x / kChunksPerRow, cc = threadIdx.x % kChunksPerRow;
    const char* src = reinterpret_cast<const char*>(xt + static_cast<int64_t>(row) * p.n + cc * kVec);
    const int64_t step = static_cast<int64_t>(kRowsPerPass) * p.n * static_cast<int64_t>(sizeof(T));
    uint8_t* dst = buf + row * RB + cc * 16;
    if (rows == S::kTM && cols == S::kTN) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) cp_async16(dst + i * kRowsPerPass * RB, src + i * step, true);
    } else {
      const bool col_ok = cc * kVec < cols;
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const bool valid = col_ok && row + i * kRowsPerPass < rows;
        cp_async16(dst + i * kRowsPerPass * RB, valid ? src + i * step : reinterpret_cast<const char*>(xt), valid);
      }
    }
  } else {
    for (int q = threadIdx.x; q < S::kTM * S::kTN; q += kThreads) {
      const int row = q / S::kTN, col = q % S::kTN;
      float v = 0.0f;
      if (row < rows && col < cols) v = Tr<T>::load1(xt + static_cast<int64_t>(row) * p.n + col);
      Tr<T>::store1(buf + row * RB + col * sizeof(T), v);
    }
  }
}

// Register caps: RN kernels 80 registers (3 CTAs per SM, as shared memory allows for 128-row tiles), SR
// kernels (hashes) 128 (2 CTAs per SM).
template <bool SR>
constexpr int cast_min_ctas() { return SR ? 2 : 3; }

template <typename T, bool RHT, bool SR, int TM, int RB>
__global__ void __launch_bounds__(kThreads, cast_min_ctas<SR>()) cast_kernel(const CastParams params,
                                                                           const SrKeySource<SR> keys) {
  CastParams keyed;  // SR: params with the keys of the key source (RN: params as they are, not copied)
  if constexpr (SR) keyed = with_stream_keys(params, keys);
  const CastParams& p = SR ? keyed : params;
  using S = TileShape<T, TM, RB>;
  using TT = Tr<T>;
  using P = typename TT::P;
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* bufs = smem;
  uint4* col_stage = reinterpret_cast<uint4*>(smem + 2 * S::kTileBytes);           // [NRB][NPair]
  uint8_t* col_sstage = smem + 2 * S::kTileBytes + S::kColStageBytes;              // [TN][NRB]
  float* etab = reinterpret_cast<float*>(col_sstage + S::kTN * S::kNRB);           // [2][128]
  uint32_t* tamax = reinterpret_cast<uint32_t*>(etab + 256);                       // [NRB][BPR]

  const int tid = threadIdx.x;
  const int lane = tid & 31;

  // Global scales (device-side; no host sync). Row: amax[0], column: amax[1].
  const float senc_r = global_encode_scale(p.amax[0]);
  const float senc_c = global_encode_scale(p.amax[1]);
  const float k_row = senc_r * kInvSix, k_col = senc_c * kInvSix;
  // Encode scale e of every scale byte a block can get: bmax * k >= 0 or NaN, so s <= 0x7F.
  etab[tid] = block_encode_scale(static_cast<uint8_t>(tid & 127), (tid < 128 ? 1.0f / senc_r : 1.0f / senc_c));
  const float* etab_r = etab;
  const float* etab_c = etab + 128;

  uint32_t tile = blockIdx.x;
  TileCursor cur = cursor_at(p, tile);
  uint32_t ty = 0, tx = 0;
  if (tile < p.num_tiles) {
    cursor_coords(p, cur, ty, tx);
    load_tile<T, TM, RB>(p, bufs, ty, tx);
  }
  cp_async_commit();

  for (int it = 0; tile < p.num_tiles; ++it, tile += gridDim.x) {
    const int r0 = static_cast<int>(ty) * S::kTM, c0 = static_cast<int>(tx) * S::kTN;
    cp_async_wait<0>();
    __syncthreads();  // S1: this tile is in shared memory; every thread is done with the previous tile
    {
      cur.r += gridDim.x;  // prefetch the next tile into the other buffer (free since S1)
      cursor_fix(p, cur);
      if (tile + gridDim.x < p.num_tiles) {
        cursor_coords(p, cur, ty, tx);
        load_tile<T, TM, RB>(p, bufs + ((it + 1) & 1) * S::kTileBytes, ty, tx);
      }
      cp_async_commit();
    }

    const uint8_t* buf = bufs + (it & 1) * S::kTileBytes;
    const int rows = min(S::kTM, static_cast<int>(p.m) - r0);  // valid rows / cols of this tile
    const int cols = min(S::kTN, static_cast<int>(p.n) - c0);


    // ---------------- column phase ----------------
    if (p.do_col || p.block_2d) {
#pragma unroll
      for (int j = 0; j < S::kColTasks; ++j) {
        const int task = tid + j * kThreads;
        const int pp = task % S::kNPair, rb = task / S::kNPair;
        const int cl = 2 * pp, lr = rb * 16;
        P raw[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) raw[k] = *reinterpret_cast<const P*>(buf + (lr + k) * RB + cl * sizeof(T));
        uint4 codes;
        uint16_t scales;
        column_pair<T, RHT, SR>(p, raw, buf + lr * RB + cl * sizeof(T), RB, k_col, etab_c, static_cast<uint32_t>(r0 + lr),
                                static_cast<uint32_t>(c0 + cl), lane, tamax + rb * S::kBPR + pp / 8, codes, scales);
        if (p.do_col) {
          col_stage[rb * S::kNPair + pp] = codes;
          col_sstage[cl * S::kNRB + rb] = static_cast<uint8_t>(scales);
          col_sstage[(cl + 1) * S::kNRB + rb] = static_cast<uint8_t>(scales >> 8);
        }
      }
    }
    __syncthreads();  // S2: column stage and tile maxima complete

    // ---------------- row phase: codes and scales straight to global memory ----------------
    if (p.do_row) {
      // A thread's row blocks share one column block (blk) and are kRowStep rows apart.
      constexpr int kRowStep = kThreads / S::kBPR;
      const int blk = tid % S::kBPR, row0 = tid / S::kBPR;
      const int64_t rstride = p.n / 2, sstride = p.n / 16;
      uint8_t* rd_p = p.rd + static_cast<int64_t>(r0 + row0) * rstride + c0 / 2 + blk * 8;
      uint8_t* rs_p = p.rs + static_cast<int64_t>(r0 + row0) * sstride + c0 / 16 + blk;
      const P* src = reinterpret_cast<const P*>(buf + row0 * RB + blk * 16 * sizeof(T));
      const bool blk_ok = blk * 16 < cols;
#pragma unroll 2
      for (int row = row0; row < rows && blk_ok;
           row += kRowStep, rd_p += kRowStep * rstride, rs_p += kRowStep * sstride, src += kRowStep * RB / sizeof(P)) {
        P v[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = src[q];
        uint8_t s;
        const uint2 q = row_block<T, SR>(p, v, p.block_2d ? tamax[(row / 16) * S::kBPR + blk] : 0u, k_row, etab_r,
                                         static_cast<uint32_t>(r0 + row), static_cast<uint32_t>(c0 + blk * 16), s);
        *reinterpret_cast<uint2*>(rd_p) = q;
        *rs_p = s;
      }
    }

    // ---------------- columnwise write-out from the stage ----------------
    // A thread moves 16-byte chunks (32 rows of one column: h = chunk % kCPC) kThreads / kCPC columns apart.
    if (p.do_col) {
      const int64_t cstride = p.m / 2;
      constexpr int kColStep = kThreads / S::kCPC;
      const int col0 = tid / S::kCPC, h = tid % S::kCPC;
      uint8_t* dst = p.cd + static_cast<int64_t>(c0 + col0) * cstride + r0 / 2 + 16 * h;
      const uint2* st = reinterpret_cast<const uint2*>(col_stage) + ((2 * h) * S::kNPair + col0 / 2) * 2 + (col0 & 1);
      constexpr int kPartStride = S::kNPair * 2;  // uint2 entries between 16-row groups 2h and 2h + 1
      static_assert(kColStep % 2 == 0, "a thread's columns keep their parity");
      if (rows == S::kTM && cols == S::kTN && p.col_data_vec) {
#pragma unroll
        for (int j = 0; j < S::kColChunks; ++j) {
          const uint2 part0 = st[j * kColStep], part1 = st[j * kColStep + kPartStride];
          *reinterpret_cast<uint4*>(dst + j * kColStep * cstride) = make_uint4(part0.x, part0.y, part1.x, part1.y);
        }
      } else {
#pragma unroll
        for (int j = 0; j < S::kColChunks; ++j) {
          const int col = col0 + j * kColStep;
          if (col < cols && 32 * h < rows) {
            const uint2 part0 = st[j * kColStep];
            uint8_t* d = dst + j * kColStep * cstride;
            if (32 * h + 16 < rows) {
              const uint2 part1 = st[j * kColStep + kPartStride];
              if (p.col_data_vec) {
                *reinterpret_cast<uint4*>(d) = make_uint4(part0.x, part0.y, part1.x, part1.y);
              } else {
                reinterpret_cast<uint2*>(d)[0] = part0;
                reinterpret_cast<uint2*>(d)[1] = part1;
              }
            } else {
              *reinterpret_cast<uint2*>(d) = part0;
            }
          }
        }
      }
      if (tid < cols) {
        const uint8_t* ss = col_sstage + tid * S::kNRB;
        uint8_t* sdst = p.cs + static_cast<int64_t>(c0 + tid) * (p.m / 16) + r0 / 16;
        if (p.col_scale_vec) {
#pragma unroll
          for (int q = 0; q < S::kNRB / 4; ++q)
            reinterpret_cast<uint32_t*>(sdst)[q] = reinterpret_cast<const uint32_t*>(ss)[q];
        } else {
          for (int rb = 0; rb < S::kNRB && 16 * rb < rows; ++rb) sdst[rb] = ss[rb];
        }
      }
    }
  }
  cp_async_wait<0>();
}

namespace {

template <typename T, bool RHT, bool SR, int TM, int RB>
cudaError_t launch_cast_t(const CastParams& p0, const SrKeySource<true>& keys, cudaStream_t stream) {
  using S = TileShape<T, TM, RB>;
  CastParams p = p0;
  const int64_t tiles_x = (p.n + S::kTN - 1) / S::kTN, tiles_y = (p.m + S::kTM - 1) / S::kTM;
  const int64_t num_tiles = tiles_x * tiles_y;
  if (num_tiles == 0) return cudaSuccess;
  if (num_tiles > 0x7fffffff || p.m > 0x7fffffff - 256 || p.n > 0x7fffffff - 256) return cudaErrorInvalidValue;
  p.tiles_x = static_cast<uint32_t>(tiles_x);
  p.tiles_y = static_cast<uint32_t>(tiles_y);
  p.num_tiles = static_cast<uint32_t>(num_tiles);
  if (p.group_rows < 1) p.group_rows = 1;
  p.group_shift = 32;
  for (uint32_t k = 0; k < 32; ++k)
    if (p.group_rows == (1u << k)) p.group_shift = k;
  p.col_scale_vec = p.do_col && (p.m % S::kTM == 0) && (reinterpret_cast<uintptr_t>(p.cs) % 4 == 0);
  p.col_data_vec = p.do_col && (p.m % 32 == 0) && (reinterpret_cast<uintptr_t>(p.cd) % 16 == 0);
  auto kern = cast_kernel<T, RHT, SR, TM, RB>;
  static int ctas_per_sm[kMaxDevices] = {};  // per instantiation and device; 0: not set up yet
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (ctas_per_sm[dev] == 0) {  // the attribute is per device, so set it on each one once
    err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    if (err != cudaSuccess) return err;
    int occ = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, kThreads, S::kSmemBytes);
    if (err != cudaSuccess) return err;
    ctas_per_sm[dev] = occ > 0 ? occ : 1;
  }
  int64_t grid = static_cast<int64_t>(sm_count()) * ctas_per_sm[dev];
  if (grid > num_tiles) grid = num_tiles;
  kern<<<static_cast<unsigned>(grid), kThreads, S::kSmemBytes, stream>>>(p, key_source<SR>(keys));
  return cudaGetLastError();
}

template <typename T, int TM, int RB>
cudaError_t launch_cast_k(const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr, cudaStream_t stream) {
  if (rht) {
    return sr ? launch_cast_t<T, true, true, TM, RB>(p, keys, stream) : launch_cast_t<T, true, false, TM, RB>(p, keys, stream);
  }
  return sr ? launch_cast_t<T, false, true, TM, RB>(p, keys, stream) : launch_cast_t<T, false, false, TM, RB>(p, keys, stream);
}

}  // namespace

cudaError_t launch_cast_tile(int dtype, const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                             cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_cast_k<__nv_bfloat16, 128, 256>(p, keys, rht, sr, stream);
    case 1: return launch_cast_k<__half, 128, 256>(p, keys, rht, sr, stream);
    case 2: return launch_cast_k<float, 128, 256>(p, keys, rht, sr, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fp4dist_cuda
