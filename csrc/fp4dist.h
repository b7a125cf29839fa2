// The launchers of fp4dist's CUDA kernels: plain C++ on raw device pointers, no torch. Each launches on
// `stream` and returns the launch's error (the GEMM: a cublasStatus_t as int). csrc/bindings.cpp checks
// shapes, dtypes and alignment before it calls them. dtype codes: 0 bf16, 1 fp16, 2 fp32.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

struct cublasContext;  // cublasHandle_t is cublasContext*

namespace fp4dist_cuda {

// Stochastic rounding's random streams (fp4dist/rng.py). With rng_offset null: the keys key_row / key_col as
// given (computed on the host); else each CTA computes key_row / key_col = stream_key(seed, *rng_offset,
// stream_row / stream_col) itself (rng_offset: one int64 in device memory, its 64 bits taken as the offset).
// Rows are counted from row_offset.
struct CastRng {
  uint32_t key_row, key_col;
  uint64_t seed;
  const int64_t* rng_offset;
  uint32_t stream_row, stream_col;
  uint32_t row_offset;
};

// The decoded operands a cast writes next to its codes, and the GEMMs they are operand A of. rop [m, n] / cop
// [n, m] (X's dtype, 16-byte aligned, or null): the rowwise / columnwise layout decoded, e2m1(code) * float(scale)
// (the bits launch_dequantize gives with d = 1). partner_row / partner_col (device fp32, or null): the amax of the
// GEMM's other operand; the operand is then written times gemm_alpha(amax[i], *partner).shift (common/numerics.cuh)
// and alpha_out[i] = its alpha, so that alpha * op @ B^T, B decoded with d = 1, is the product of the two layouts.
// alpha_out: fp32 [2] written by one thread (1 where there is no partner), or null.
struct CastOperands {
  void* rop = nullptr;
  void* cop = nullptr;
  const float* partner_row = nullptr;
  const float* partner_col = nullptr;
  float* alpha_out = nullptr;
};

// NVFP4 cast of X [m, n] (row-major) into the requested layouts, with the global scales from amax [2]
// (rowwise, columnwise). rd [m, n/2] / rs [m, n/16] rowwise codes / E4M3 scales; cd [n, m/2] / cs [n, m/16]
// columnwise (of X^T, or of RHT(X^T) with rht); all 16-byte aligned; null where not requested, and (both of a
// layout) where only its decoded operand is wanted. sr: stochastic rounding with the streams of rng (unused
// without sr). ops: the decoded operands, only with 1x16 blocks and where cast_operands_fused says.
cudaError_t launch_cast(int dtype, const void* x, int64_t m, int64_t n, const float* amax, uint8_t* rd, uint8_t* rs,
                        uint8_t* cd, uint8_t* cs, const CastOperands& ops, bool do_row, bool do_col, bool block_2d,
                        bool rht, bool sr, const CastRng& rng, cudaStream_t stream);
// Whether launch_cast can write decoded operands for X [m, n] of this dtype at x: the wide kernel's inputs (16-bit,
// 16-byte aligned rows) with 1x16 blocks.
bool cast_operands_fused(int dtype, const void* x, int64_t m, int64_t n, bool block_2d);

// out: fp32 [2] (any contents: the launcher zeroes it on the stream first) = (max|X|, max|RHT(X^T)|) with
// rht, (max|X|, max|X|) without; NaN propagates. An empty X gives (0, 0).
cudaError_t launch_amax(int dtype, const void* x, int64_t m, int64_t n, bool rht, float* out, cudaStream_t stream);
// launch_amax without the zeroing: out must already hold +0 (the CTAs atomicMax into it), e.g. one of several amax
// outputs that the caller zeroed with one memset.
cudaError_t launch_amax_into(int dtype, const void* x, int64_t m, int64_t n, bool rht, float* out,
                             cudaStream_t stream);

// One NVFP4 layout to decode: G slices of R rows of row_bytes code bytes (2 codes each, element 2i in the low
// nibble) and row_bytes / 8 E4M3 scale bytes (one per 16 codes), both row-major inside a slice. Slice s starts at
// data + s * data_stride (a multiple of 8 bytes; data 8-byte aligned) and scale + s * scale_stride. out: the
// decoded [G * R, 2 * row_bytes] values, contiguous, 16-byte aligned.
struct PackedOperand {
  const uint8_t* data;
  const uint8_t* scale;
  int64_t slices, rows, row_bytes;  // G, R, row_bytes (a multiple of 8)
  int64_t data_stride, scale_stride;
  void* out;
};

// A GEMM's operand B decoded with the shift of gemm_alpha(*amax_a, *amax_b) (operand A came decoded from its cast,
// launch_cast's rop / cop, without one): out = e2m1 * float(scale) * shift, and alpha_out[0] / shift_out[0] as in
// launch_decode_operands. alpha * A @ out^T is then the product launch_decode_operands' operands give, bit for bit
// (the power-of-two shift scales exact products either way).
cudaError_t launch_decode_operand_b(int out_dtype, const PackedOperand& b, const float* amax_a, const float* amax_b,
                                    float* alpha_out, float* shift_out, cudaStream_t stream);

// out = e2m1(code) * float(scale) * d, rounded once to out_dtype, d = *decode_scale, else S_dec(*amax) = 1 / S_enc
// (computed in the kernel), else (both null) 1.
cudaError_t launch_dequantize(int out_dtype, const PackedOperand& op, const float* decode_scale, const float* amax,
                              cudaStream_t stream);

// A GEMM's two operands in one launch, without their global scales: out_a = e2m1 * float(scale) * shift,
// out_b = e2m1 * float(scale) (exact in bf16 / fp16 / fp32), and, by one thread, alpha_out[0] / shift_out[0] =
// gemm_alpha(*amax_a, *amax_b) (common/numerics.cuh): alpha * shift = S_dec(a) * S_dec(b), shift = 1 unless that
// product overflows fp32. The operands may differ in size (or be empty); both outputs are of out_dtype.
cudaError_t launch_decode_operands(int out_dtype, const PackedOperand& a, const PackedOperand& b,
                                   const float* amax_a, const float* amax_b, float* alpha_out, float* shift_out,
                                   cudaStream_t stream);

// One part of a swap_first_dims launch: in [a, b, row_bytes] whose slice i (b rows of row_bytes, contiguous) starts
// at in + i * in_stride bytes; out [b, a, row_bytes] contiguous. in and out must not overlap.
struct SwapPart {
  const void* in;
  void* out;
  int64_t b, row_bytes, in_stride;
};
constexpr int kMaxSwapParts = 2;

// Each of the `count` parts (1 <= count <= kMaxSwapParts) [a, b_k, row_bytes_k] -> [b_k, a, row_bytes_k], in one
// launch (e.g. a gather's columnwise data and scales, read in place from the gathered buffer).
cudaError_t launch_swap_first_dims(const SwapPart* parts, int count, int64_t a, cudaStream_t stream);

// all_gather_nvfp4's device check: trailers are `rows` rows of 4 int64 words, row r at trailers + r * stride
// words (8-byte aligned). If any row differs from row 0, record [rows, 4] (contiguous) = the rows and
// *bad_count += 1; else nothing is written. One CTA, no host sync.
cudaError_t launch_check_trailers(const int64_t* trailers, int64_t rows, int64_t stride, int64_t* bad_count,
                                  int64_t* record, cudaStream_t stream);

// out [m, n] (row-major, out_dtype) = *alpha * a [m, k] @ b [n, k]^T + *beta * out (b_kn: b is [k, n] and the
// product a @ b), through cublasGemmEx with fp32 accumulation; a, b of ab_dtype (bf16 or fp16); alpha and beta fp32
// in device memory. Runs on the handle's stream. Returns the cublasStatus_t.
int launch_gemm_alpha(cublasContext* handle, int ab_dtype, int out_dtype, int64_t m, int64_t n, int64_t k,
                      const void* a, const void* b, bool b_kn, const float* alpha, const float* beta, void* out);

}  // namespace fp4dist_cuda
