// What a cast launch hands its kernel, and the two cast kernel families' launchers (cast_tile.cu,
// cast_wide.cu), which cast_dispatch.cu chooses between. Plain C++: no device code here.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace fp4dist_cuda {

struct CastParams {
  const void* x;
  int64_t m, n;
  const float* amax;  // [2]: rowwise, columnwise
  uint8_t* rd;        // [m, n/2]
  uint8_t* rs;        // [m, n/16]
  uint8_t* cd;        // [n, m/2]
  uint8_t* cs;        // [n, m/16]
  int do_row, do_col, block_2d;
  int vec_ok;         // x 16-byte aligned and n * sizeof(T) % 16 == 0
  int col_scale_vec;  // columnwise scale segments likewise
  int col_data_vec;   // columnwise 32-row chunks can be written as one 16-byte store
  uint32_t key_row, key_col, row_offset;
  uint32_t tiles_x, tiles_y, num_tiles;
  uint32_t group_rows;  // tile order: groups of this many tile rows, column-major inside a group
  uint32_t group_shift; // log2(group_rows) if a power of two, else 32
  uint32_t unit_rows;   // the wide kernel's rows per unit (128, 256 or 512; set by its launcher)
};

// Where the SR kernels take their keys from: with rng_offset set, each CTA replaces p.key_row / p.key_col by
// stream_key(seed, *rng_offset, stream_row / stream_col) (with_stream_keys, block_codes.cuh). The RN kernels
// get the empty SrKeySource<false>.
template <bool SR>
struct SrKeySource {};
template <>
struct SrKeySource<true> {
  const int64_t* rng_offset;  // null: keep p.key_row / p.key_col
  uint64_t seed;
  uint32_t stream_row, stream_col;
};

// The decoded operands a wide cast writes next to its codes (launch_cast's rop / cop): OperandOut<true> for the
// kernels that can, the empty OperandOut<false> for the others (kept out of CastParams: two more fields there
// change the register allocation of every cast kernel).
template <bool kOps>
struct OperandOut {};
template <>
struct OperandOut<true> {
  void* rop;  // [m, n] in X's dtype, or null
  void* cop;  // [n, m] in X's dtype, or null
  const float* partner_row;  // the GEMM partners' amaxes (CastOperands, fp4dist.h), or null
  const float* partner_col;
  float* alpha_out;          // [2], or null
};

// dtype: 0 bf16, 1 fp16, 2 fp32. p: everything but the fields each launcher sets itself (tile counts, the
// vectorized-store flags, the tile order's shift); keys: used with sr.
// The 128-row kernel: any dtype and alignment; p.group_rows tile rows per group of the tile order (0 or 1:
// row-major).
cudaError_t launch_cast_tile(int dtype, const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                             cudaStream_t stream);
// The wide kernel: bf16 / fp16 (dtype 0 / 1) only, with p.vec_ok and m, n <= 2^31 - 1 - 512; ops: the decoded
// operands (1x16 blocks only), null where not wanted; p.rd / p.cd null with p.do_row / p.do_col where the layout's
// operand is written without its codes.
cudaError_t launch_cast_wide(int dtype, const CastParams& p, const SrKeySource<true>& keys, bool rht, bool sr,
                             const OperandOut<true>& ops, cudaStream_t stream);

}  // namespace fp4dist_cuda
