// launch_cast: picks the cast kernel from the input's dtype and alignment.
//   bf16 / fp16, X 16-byte aligned and rows of a multiple of 16 bytes: the wide kernel (cast_wide.cu), with its
//     both-layouts path for casts to both layouts with 1x16 blocks;
//   everything else (fp32, unaligned 16-bit rows): the 128-row kernel (cast_tile.cu), its tiles visited in
//     groups of 8 tile rows for 16-bit inputs and in row-major order for fp32.

#include "../fp4dist.h"
#include "cast_params.h"

namespace fp4dist_cuda {

namespace {
bool wide_kernel_takes(int dtype, const void* x, int64_t m, int64_t n) {
  // the wide kernel's bulk copies need 16-byte aligned rows; m, n < 2^31 - 512 keep its int math exact
  return dtype != 2 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && (n * 2) % 16 == 0 && m <= 0x7fffffff - 512 &&
         n <= 0x7fffffff - 512;
}
}  // namespace

bool cast_operands_fused(int dtype, const void* x, int64_t m, int64_t n, bool block_2d) {
  return !block_2d && wide_kernel_takes(dtype, x, m, n);
}

cudaError_t launch_cast(int dtype, const void* x, int64_t m, int64_t n, const float* amax, uint8_t* rd, uint8_t* rs,
                        uint8_t* cd, uint8_t* cs, const CastOperands& ops, bool do_row, bool do_col, bool block_2d,
                        bool rht, bool sr, const CastRng& rng, cudaStream_t stream) {
  if (dtype < 0 || dtype > 2) return cudaErrorInvalidValue;
  if ((ops.rop != nullptr && !do_row) || (ops.cop != nullptr && !do_col)) return cudaErrorInvalidValue;
  const bool with_ops = ops.rop != nullptr || ops.cop != nullptr || ops.alpha_out != nullptr;
  if (with_ops && !cast_operands_fused(dtype, x, m, n, block_2d)) return cudaErrorInvalidValue;
  // a layout cast without codes is one whose operand is written
  if ((do_row && (rd == nullptr) != (rs == nullptr)) || (do_col && (cd == nullptr) != (cs == nullptr)) ||
      (do_row && rd == nullptr && ops.rop == nullptr) || (do_col && cd == nullptr && ops.cop == nullptr)) {
    return cudaErrorInvalidValue;
  }
  CastParams p{};
  p.x = x;
  p.m = m;
  p.n = n;
  p.amax = amax;
  p.rd = rd;
  p.rs = rs;
  p.cd = cd;
  p.cs = cs;
  p.do_row = do_row;
  p.do_col = do_col;
  p.block_2d = block_2d;
  p.key_row = rng.key_row;
  p.key_col = rng.key_col;
  p.row_offset = rng.row_offset;
  SrKeySource<true> keys{};
  keys.rng_offset = sr ? rng.rng_offset : nullptr;
  keys.seed = rng.seed;
  keys.stream_row = rng.stream_row;
  keys.stream_col = rng.stream_col;
  const int64_t elem_size = dtype == 2 ? 4 : 2;
  p.vec_ok = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && ((n * elem_size) % 16 == 0);
  if (elem_size == 2) {
    if (wide_kernel_takes(dtype, x, m, n)) {
      return launch_cast_wide(dtype, p, keys, rht, sr,
                              {ops.rop, ops.cop, ops.partner_row, ops.partner_col, ops.alpha_out}, stream);
    }
    p.group_rows = 8;
  }
  return launch_cast_tile(dtype, p, keys, rht, sr, stream);
}

}  // namespace fp4dist_cuda
