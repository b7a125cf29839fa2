// The one Python module of fp4dist's CUDA code: the NVFP4 kernels' launchers (csrc/fp4dist.h) and the
// cuBLAS device-alpha GEMM. Shapes, dtypes and allocation are checked and done in fp4dist/backends/cuda.py
// (except for the eager linear at the end, which allocates its own outputs); this layer checks what would make a
// kernel read or write out of bounds, then launches on the current stream.

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "fp4dist.h"


namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return 0;
    case at::kHalf: return 1;
    case at::kFloat: return 2;
    default: TORCH_CHECK(false, "fp4dist kernels take bfloat16, float16 or float32, got ", t.scalar_type());
  }
  return -1;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fp4dist CUDA ", what, " failed: ", cudaGetErrorString(err));
}

void check_byte_tensor(const at::Tensor& t, const at::Tensor& like, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(t.element_size() == 1 && t.is_contiguous(), name, " must be a contiguous byte tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must have shape [", rows, ", ", cols,
              "], got ", t.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
}

uint8_t* byte_ptr(const at::Tensor& t) { return static_cast<uint8_t*>(t.data_ptr()); }

// A decoded operand the cast writes (rop [m, n] / cop [n, m] in X's dtype), or null for an empty tensor.
void* operand_ptr(const at::Tensor& op, const at::Tensor& x, int64_t rows, int64_t cols, const char* name) {
  if (op.numel() == 0) return nullptr;
  TORCH_CHECK(op.device() == x.device() && op.scalar_type() == x.scalar_type() && op.is_contiguous() &&
                  op.dim() == 2 && op.size(0) == rows && op.size(1) == cols &&
                  reinterpret_cast<uintptr_t>(op.data_ptr()) % 16 == 0,
              name, " must be a contiguous, 16-byte aligned [", rows, ", ", cols,
              "] tensor of x's dtype on x's device");
  return op.data_ptr();
}

// t as a one-element fp32 tensor on like's device, or null for an empty t.
const float* optional_scalar(const at::Tensor& t, const at::Tensor& like, const char* name) {
  if (t.numel() == 0) return nullptr;
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.scalar_type() == at::kFloat && t.numel() == 1, name,
              " must be a one-element fp32 tensor on ", like.device());
  return t.data_ptr<float>();
}

// t as a contiguous fp32 CUDA tensor of numel elements on like's device.
float* f32_vector_ptr(const at::Tensor& t, const at::Tensor& like, int64_t numel, const char* what) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == numel,
              what, " must be a contiguous fp32 CUDA tensor of ", numel, " elements on ", like.device());
  return t.data_ptr<float>();
}

// The GEMM partners' amaxes and the alpha output of a cast's decoded operands (fp4dist_cuda::CastOperands), each
// empty where not given.
struct OperandPairs {
  const at::Tensor& partner_row;
  const at::Tensor& partner_col;
  const at::Tensor& alpha_out;
};

void launch_cast_checked(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
                         const at::Tensor& cd, const at::Tensor& cs, const at::Tensor& rop, const at::Tensor& cop,
                         const OperandPairs& pairs, bool do_row, bool do_col, bool block_2d, bool rht, bool sr,
                         const fp4dist_cuda::CastRng& rng) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D CUDA tensor");
  float* const amax_p = f32_vector_ptr(amax, x, 2, "cast: amax");
  const int64_t m = x.size(0), n = x.size(1);
  void* const rop_p = operand_ptr(rop, x, m, n, "rowwise_operand");
  void* const cop_p = operand_ptr(cop, x, n, m, "columnwise_operand");
  // a layout's codes may be left out (empty data and scales) where its operand is written
  const bool row_codes = do_row && (rop_p == nullptr || rd.numel() != 0 || rs.numel() != 0);
  const bool col_codes = do_col && (cop_p == nullptr || cd.numel() != 0 || cs.numel() != 0);
  if (do_row) {
    TORCH_CHECK(n % 16 == 0, "rowwise needs n % 16 == 0");
    if (row_codes) {
      check_byte_tensor(rd, x, m, n / 2, "rowwise_data");
      check_byte_tensor(rs, x, m, n / 16, "rowwise_scale_inv");
    }
  }
  if (do_col) {
    TORCH_CHECK(m % 16 == 0, "columnwise needs m % 16 == 0");
    if (col_codes) {
      check_byte_tensor(cd, x, n, m / 2, "columnwise_data");
      check_byte_tensor(cs, x, n, m / 16, "columnwise_scale_inv");
    }
  }
  if (block_2d) TORCH_CHECK(m % 16 == 0 && n % 16 == 0, "block_2d needs m % 16 == 0 and n % 16 == 0");
  TORCH_CHECK((rop_p == nullptr || do_row) && (cop_p == nullptr || do_col),
              "a decoded operand needs its layout to be cast");
  fp4dist_cuda::CastOperands ops{};
  ops.rop = rop_p;
  ops.cop = cop_p;
  ops.partner_row = optional_scalar(pairs.partner_row, x, "partner_row");
  ops.partner_col = optional_scalar(pairs.partner_col, x, "partner_col");
  TORCH_CHECK((ops.partner_row == nullptr || rop_p != nullptr) && (ops.partner_col == nullptr || cop_p != nullptr),
              "cast: a GEMM partner's amax needs its layout's decoded operand");
  if (pairs.alpha_out.numel() != 0) ops.alpha_out = f32_vector_ptr(pairs.alpha_out, x, 2, "cast: alpha_out");
  TORCH_CHECK((rop_p == nullptr && cop_p == nullptr && ops.alpha_out == nullptr) ||
                  fp4dist_cuda::cast_operands_fused(dtype_code(x), x.data_ptr(), m, n, block_2d),
              "cast: decoded operands need a bf16/fp16 X with 16-byte aligned rows and 1x16 blocks");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fp4dist_cuda::launch_cast(dtype_code(x), x.data_ptr(), m, n, amax_p,
                                       row_codes ? byte_ptr(rd) : nullptr, row_codes ? byte_ptr(rs) : nullptr,
                                       col_codes ? byte_ptr(cd) : nullptr, col_codes ? byte_ptr(cs) : nullptr, ops,
                                       do_row, do_col, block_2d, rht, sr, rng,
                                       c10::cuda::getCurrentCUDAStream().stream()),
             "cast");
}

// SR keys computed on the host (fp4dist.rng.stream_key), passed as their 32 bits.
void cast(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
          const at::Tensor& cd, const at::Tensor& cs, const at::Tensor& rop, const at::Tensor& cop,
          const at::Tensor& partner_row, const at::Tensor& partner_col, const at::Tensor& alpha_out, bool do_row,
          bool do_col, bool block_2d, bool rht, bool sr, int64_t key_row, int64_t key_col, int64_t row_offset) {
  fp4dist_cuda::CastRng rng{};
  rng.key_row = static_cast<uint32_t>(key_row);
  rng.key_col = static_cast<uint32_t>(key_col);
  rng.row_offset = static_cast<uint32_t>(row_offset);
  launch_cast_checked(x, amax, rd, rs, cd, cs, rop, cop, {partner_row, partner_col, alpha_out}, do_row, do_col,
                      block_2d, rht, sr, rng);
}

// SR keys computed on the device from seed (a uint64 passed as its int64 bits), the one-element int64 CUDA tensor
// rng_offset (read by the kernels, never by the host) and the two streams.
void cast_device_key(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
                     const at::Tensor& cd, const at::Tensor& cs, const at::Tensor& rop, const at::Tensor& cop,
                     const at::Tensor& partner_row, const at::Tensor& partner_col, const at::Tensor& alpha_out,
                     bool do_row, bool do_col, bool block_2d, bool rht, bool sr, int64_t seed,
                     const at::Tensor& rng_offset, int64_t stream_row, int64_t stream_col,
                     int64_t row_offset) {
  TORCH_CHECK(rng_offset.is_cuda() && rng_offset.device() == x.device() && rng_offset.scalar_type() == at::kLong &&
                  rng_offset.numel() == 1,
              "rng_offset must be a one-element int64 tensor on ", x.device());
  TORCH_CHECK(stream_row >= 0 && stream_row <= UINT32_MAX && stream_col >= 0 && stream_col <= UINT32_MAX,
              "SR streams must lie in [0, 2^32)");
  fp4dist_cuda::CastRng rng{};
  rng.seed = static_cast<uint64_t>(seed);
  rng.rng_offset = rng_offset.data_ptr<int64_t>();
  rng.stream_row = static_cast<uint32_t>(stream_row);
  rng.stream_col = static_cast<uint32_t>(stream_col);
  rng.row_offset = static_cast<uint32_t>(row_offset);
  launch_cast_checked(x, amax, rd, rs, cd, cs, rop, cop, {partner_row, partner_col, alpha_out}, do_row, do_col,
                      block_2d, rht, sr, rng);
}

void check_amax_args(const at::Tensor& x, const at::Tensor& out, int64_t numel, bool rht, const char* name) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), name, ": inputs must be contiguous 2-D CUDA tensors");
  f32_vector_ptr(out, x, numel, (std::string(name) + ": out").c_str());
  if (rht) TORCH_CHECK(x.size(0) % 16 == 0, name, ": the RHT amax needs m % 16 == 0");
}

// out fp32 [2] = (max|X|, max|columnwise source|), see fp4dist_cuda::launch_amax.
void amax(const at::Tensor& x, const at::Tensor& out, bool rht) {
  check_amax_args(x, out, 2, rht, "amax");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fp4dist_cuda::launch_amax(dtype_code(x), x.data_ptr(), x.size(0), x.size(1), rht, out.data_ptr<float>(),
                                       c10::cuda::getCurrentCUDAStream().stream()),
             "amax");
}

// out fp32 [4] = (amax(a) [2], amax(b) [2]): one memset for both amax passes.
void amax_pair(const at::Tensor& a, bool rht_a, const at::Tensor& b, bool rht_b, const at::Tensor& out) {
  check_amax_args(a, out, 4, rht_a, "amax_pair");
  check_amax_args(b, out, 4, rht_b, "amax_pair");
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  float* o = out.data_ptr<float>();
  check_cuda(cudaMemsetAsync(o, 0, 4 * sizeof(float), stream), "amax_pair");
  check_cuda(fp4dist_cuda::launch_amax_into(dtype_code(a), a.data_ptr(), a.size(0), a.size(1), rht_a, o, stream),
             "amax_pair");
  check_cuda(fp4dist_cuda::launch_amax_into(dtype_code(b), b.data_ptr(), b.size(0), b.size(1), rht_b, o + 2, stream),
             "amax_pair");
}

// data [R, row_bytes] (contiguous) or [G, R, row_bytes] (rows contiguous, any 8-byte multiple between slices),
// scale [G, R, row_bytes / 8] likewise (or any contiguous tensor of that many bytes), out [G * R, 2 * row_bytes].
fp4dist_cuda::PackedOperand packed_operand(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& out,
                                           const char* name) {
  TORCH_CHECK(data.is_cuda() && data.element_size() == 1 && (data.dim() == 2 || data.dim() == 3), name,
              " data must be a 2-D or 3-D byte CUDA tensor, got ", data.sizes());
  const bool sliced = data.dim() == 3;
  const int64_t slices = sliced ? data.size(0) : 1, rows = data.size(-2), row_bytes = data.size(-1);
  TORCH_CHECK(row_bytes % 8 == 0, name, " data: rows must hold a multiple of 8 bytes (16 codes per block)");
  TORCH_CHECK(data.stride(-1) == 1 && (data.stride(-2) == row_bytes || rows <= 1), name,
              " data: each slice must be row-major and contiguous");
  const int64_t data_stride = sliced && slices > 1 ? data.stride(0) : rows * row_bytes;
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data.data_ptr()) % 8 == 0 && data_stride % 8 == 0, name,
              " data must be 8-byte aligned, and so must its slices");
  const int64_t row_scales = row_bytes / 8;
  TORCH_CHECK(scale.is_cuda() && scale.device() == data.device() && scale.element_size() == 1, name,
              " scale_inv must be a byte tensor on ", data.device());
  int64_t scale_stride = rows * row_scales;
  if (sliced && scale.dim() == 3) {
    TORCH_CHECK(scale.size(0) == slices && scale.size(1) == rows && scale.size(2) == row_scales, name,
                " scale_inv must have shape [", slices, ", ", rows, ", ", row_scales, "], got ", scale.sizes());
    TORCH_CHECK(scale.stride(2) == 1 && (scale.stride(1) == row_scales || rows <= 1), name,
                " scale_inv: each slice must be row-major and contiguous");
    if (slices > 1) scale_stride = scale.stride(0);
  } else {
    TORCH_CHECK(scale.is_contiguous() && scale.numel() == slices * rows * row_scales, name,
                " scale_inv must be a contiguous byte tensor of ", slices * rows * row_scales, " elements");
  }
  TORCH_CHECK(out.is_cuda() && out.device() == data.device() && out.is_contiguous() &&
                  out.numel() == slices * rows * row_bytes * 2 && reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0,
              name, " out must be a contiguous 16-byte aligned CUDA tensor of ", slices * rows * row_bytes * 2,
              " elements");
  fp4dist_cuda::PackedOperand op{};
  op.data = static_cast<const uint8_t*>(data.data_ptr());
  op.scale = static_cast<const uint8_t*>(scale.data_ptr());
  op.slices = slices;
  op.rows = rows;
  op.row_bytes = row_bytes;
  op.data_stride = data_stride;
  op.scale_stride = scale_stride;
  op.out = out.data_ptr();
  return op;
}

// out = e2m1 * float(scale) * d: d = decode_scale, else S_dec(amax), else 1 (empty tensors: not given).
void dequantize(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& decode_scale,
                const at::Tensor& amax, const at::Tensor& out) {
  const fp4dist_cuda::PackedOperand op = packed_operand(data, scale, out, "dequantize:");
  const float* dec = optional_scalar(decode_scale, data, "decode_scale");
  const float* am = optional_scalar(amax, data, "amax");
  TORCH_CHECK(dec == nullptr || am == nullptr, "dequantize: give decode_scale or amax, not both");
  const c10::cuda::CUDAGuard guard(data.device());
  check_cuda(fp4dist_cuda::launch_dequantize(dtype_code(out), op, dec, am, c10::cuda::getCurrentCUDAStream().stream()),
             "dequantize");
}

// The amaxes (both required) and the alpha / shift outputs of a GEMM pair's decode launch, checked against
// `like`'s device; what: the launch's name, shift_name: its shift output's name. Returns the amax pointers.
std::pair<const float*, const float*> gemm_pair_scalars(const at::Tensor& amax_a, const at::Tensor& amax_b,
                                                        const at::Tensor& alpha_out, const at::Tensor& shift_out,
                                                        const at::Tensor& like, const char* what,
                                                        const char* shift_name) {
  const float* am_a = optional_scalar(amax_a, like, "amax_a");
  const float* am_b = optional_scalar(amax_b, like, "amax_b");
  TORCH_CHECK(am_a != nullptr && am_b != nullptr, what, ": amax_a and amax_b are required");
  for (const at::Tensor* t : {&alpha_out, &shift_out}) {
    TORCH_CHECK(t->is_cuda() && t->device() == like.device() && t->scalar_type() == at::kFloat && t->numel() >= 1,
                what, ": alpha_out and ", shift_name, " must be fp32 tensors on ", like.device());
  }
  return {am_a, am_b};
}

void decode_operands(const at::Tensor& data_a, const at::Tensor& scale_a, const at::Tensor& out_a,
                     const at::Tensor& data_b, const at::Tensor& scale_b, const at::Tensor& out_b,
                     const at::Tensor& amax_a, const at::Tensor& amax_b, const at::Tensor& alpha_out,
                     const at::Tensor& a_shift_out) {
  const fp4dist_cuda::PackedOperand a = packed_operand(data_a, scale_a, out_a, "decode_operands: operand A");
  const fp4dist_cuda::PackedOperand b = packed_operand(data_b, scale_b, out_b, "decode_operands: operand B");
  TORCH_CHECK(data_b.device() == data_a.device() && out_a.scalar_type() == out_b.scalar_type(),
              "decode_operands: both operands on one device, both outputs of one dtype");
  const auto [am_a, am_b] =
      gemm_pair_scalars(amax_a, amax_b, alpha_out, a_shift_out, data_a, "decode_operands", "a_shift_out");
  const c10::cuda::CUDAGuard guard(data_a.device());
  check_cuda(fp4dist_cuda::launch_decode_operands(dtype_code(out_a), a, b, am_a, am_b, alpha_out.data_ptr<float>(),
                                                  a_shift_out.data_ptr<float>(),
                                                  c10::cuda::getCurrentCUDAStream().stream()),
             "decode_operands");
}

// Operand B of a GEMM whose operand A came decoded from its cast: B with the pair's shift, alpha and the shift.
void decode_operand_b(const at::Tensor& data_b, const at::Tensor& scale_b, const at::Tensor& out_b,
                      const at::Tensor& amax_a, const at::Tensor& amax_b, const at::Tensor& alpha_out,
                      const at::Tensor& shift_out) {
  const fp4dist_cuda::PackedOperand b = packed_operand(data_b, scale_b, out_b, "decode_operand_b: operand B");
  const auto [am_a, am_b] =
      gemm_pair_scalars(amax_a, amax_b, alpha_out, shift_out, data_b, "decode_operand_b", "shift_out");
  const c10::cuda::CUDAGuard guard(data_b.device());
  check_cuda(fp4dist_cuda::launch_decode_operand_b(dtype_code(out_b), b, am_a, am_b, alpha_out.data_ptr<float>(),
                                                   shift_out.data_ptr<float>(),
                                                   c10::cuda::getCurrentCUDAStream().stream()),
             "decode_operand_b");
}

// The bytes of t's storage from t's first element on (what a byte offset into t may reach).
int64_t bytes_from(const at::Tensor& t) {
  return static_cast<int64_t>(t.storage().nbytes()) - t.storage_offset() * static_cast<int64_t>(t.element_size());
}

// Part k: in bytes [a, b[k], row_bytes[k]] at in + in_offsets[k], slice i at + i * in_stride[k] (b[k] rows
// contiguous) -> out [b[k], a, row_bytes[k]] at out + out_offsets[k]; in and out are byte offsets from each tensor's
// first element (in may be a strided view: its storage bounds the reads), one launch for all parts.
void swap_first_dims(const at::Tensor& in, const at::Tensor& out, int64_t a, const std::vector<int64_t>& in_offsets,
                     const std::vector<int64_t>& in_stride, const std::vector<int64_t>& b,
                     const std::vector<int64_t>& row_bytes, const std::vector<int64_t>& out_offsets) {
  TORCH_CHECK(in.is_cuda() && out.is_cuda() && in.device() == out.device(), "in and out must be on one CUDA device");
  TORCH_CHECK(out.is_contiguous() && !out.is_alias_of(in), "out must be contiguous and share no storage with in");
  const size_t count = in_offsets.size();
  TORCH_CHECK(count >= 1 && count <= static_cast<size_t>(fp4dist_cuda::kMaxSwapParts) && in_stride.size() == count &&
                  b.size() == count && row_bytes.size() == count && out_offsets.size() == count,
              "swap_first_dims: 1 to ", fp4dist_cuda::kMaxSwapParts, " parts, one entry per part in every list");
  TORCH_CHECK(a >= 0, "swap_first_dims: a must be >= 0");
  const int64_t in_bytes = bytes_from(in), out_bytes = static_cast<int64_t>(out.nbytes());
  fp4dist_cuda::SwapPart parts[fp4dist_cuda::kMaxSwapParts];
  for (size_t k = 0; k < count; ++k) {
    const int64_t slice = b[k] * row_bytes[k];
    TORCH_CHECK(b[k] >= 0 && row_bytes[k] >= 0 && in_offsets[k] >= 0 && out_offsets[k] >= 0, "swap_first_dims part ",
                k, ": negative size or offset");
    TORCH_CHECK(a <= 1 || in_stride[k] >= slice, "swap_first_dims part ", k, ": in_stride ", in_stride[k],
                " is less than a slice (", slice, " bytes)");
    TORCH_CHECK(a * slice == 0 || in_offsets[k] + (a - 1) * (a > 1 ? in_stride[k] : 0) + slice <= in_bytes,
                "swap_first_dims part ", k, ": reads past the end of in");
    TORCH_CHECK(out_offsets[k] + a * slice <= out_bytes, "swap_first_dims part ", k, ": writes past the end of out");
    parts[k].in = static_cast<const uint8_t*>(in.data_ptr()) + in_offsets[k];
    parts[k].out = static_cast<uint8_t*>(out.data_ptr()) + out_offsets[k];
    parts[k].b = b[k];
    parts[k].row_bytes = row_bytes[k];
    parts[k].in_stride = in_stride[k];
  }
  const c10::cuda::CUDAGuard guard(in.device());
  check_cuda(fp4dist_cuda::launch_swap_first_dims(parts, static_cast<int>(count), a,
                                                  c10::cuda::getCurrentCUDAStream().stream()),
             "swap_first_dims");
}

// beta = 0 for cuBLAS in device pointer mode: one fp32 zero per device, made once outside CUDA graph capture
// and kept for the life of the process (a fresh one, from the graph's pool, while capturing before that).
at::Tensor device_zero(const at::Tensor& like) {
  static std::mutex mutex;
  static std::array<at::Tensor*, 64> zeros{};
  const int index = like.get_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (index >= 0 && index < 64 && zeros[index] != nullptr) return *zeros[index];
  at::Tensor zero = at::zeros({1}, like.options().dtype(at::kFloat));
  if (index >= 0 && index < 64 &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    c10::cuda::getCurrentCUDAStream().synchronize();  // once per device: later GEMMs may run on other streams
    zeros[index] = new at::Tensor(zero);               // never freed: it must outlive every cuBLAS call
  }
  return zero;
}

// gathered: the gathered bytes; the trailers are rows of 4 int64 at byte offset + r * stride. bad_count: int64 [],
// record: int64 [rows, 4] contiguous, both on gathered's device.
void check_trailers(const at::Tensor& gathered, int64_t offset, int64_t stride, int64_t rows, const at::Tensor& bad_count,
                    const at::Tensor& record) {
  TORCH_CHECK(gathered.is_cuda() && gathered.is_contiguous(), "check_trailers: gathered must be a contiguous CUDA tensor");
  TORCH_CHECK(rows >= 1 && offset >= 0 && stride >= 32 && offset % 8 == 0 && stride % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(gathered.data_ptr()) % 8 == 0,
              "check_trailers: trailers must be 8-byte aligned rows of 32 bytes or more apart");
  TORCH_CHECK(offset + (rows - 1) * stride + 32 <= static_cast<int64_t>(gathered.nbytes()),
              "check_trailers: the trailers reach past the end of gathered");
  for (const at::Tensor* t : {&bad_count, &record}) {
    TORCH_CHECK(t->is_cuda() && t->device() == gathered.device() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "check_trailers: bad_count and record must be contiguous int64 tensors on ", gathered.device());
  }
  TORCH_CHECK(bad_count.numel() == 1 && record.numel() == rows * 4, "check_trailers: bad_count must hold 1 element and "
              "record ", rows * 4);
  const c10::cuda::CUDAGuard guard(gathered.device());
  check_cuda(fp4dist_cuda::launch_check_trailers(
                 reinterpret_cast<const int64_t*>(static_cast<const uint8_t*>(gathered.data_ptr()) + offset), rows,
                 stride / 8, bad_count.data_ptr<int64_t>(), record.data_ptr<int64_t>(),
                 c10::cuda::getCurrentCUDAStream().stream()),
             "check_trailers");
}

// The end of a steady-state all_gather_nvfp4 on the CUDA backend, built once per signature and group
// (fp4dist/distributed.py GatherPlan; the arguments are fp4dist/gather_buffer.py GatheredLayout's): given the
// gathered bytes uint8 [nbytes], launch the device check of the trailers and, where the layout has one, the
// columnwise reorder, and return the six components (rowwise data / scales, columnwise data / scales, rowwise /
// columnwise amax; None where absent) as views, in one call.
class GatherFinish {
 public:
  // A view: (component slot 0..3, sizes, strides, byte offset, is E4M3 scales).
  using View = std::tuple<int64_t, std::vector<int64_t>, std::vector<int64_t>, int64_t, bool>;

  GatherFinish(int64_t nbytes, int64_t world, std::vector<View> views, std::vector<View> swapped_views,
               std::vector<int64_t> swap_in_offsets, std::vector<int64_t> swap_in_stride, std::vector<int64_t> swap_rows,
               std::vector<int64_t> swap_row_bytes, std::vector<int64_t> swap_out_offsets, int64_t swap_out_nbytes,
               int64_t amax_index, bool rowwise, bool columnwise, int64_t trailer_offset, int64_t trailer_stride,
               at::Tensor bad_count, at::Tensor record)
      : nbytes_(nbytes), world_(world), views_(std::move(views)), swapped_views_(std::move(swapped_views)),
        swap_out_nbytes_(swap_out_nbytes), amax_index_(amax_index), rowwise_(rowwise), columnwise_(columnwise),
        trailer_offset_(trailer_offset), trailer_stride_(trailer_stride), bad_count_(std::move(bad_count)),
        record_(std::move(record)) {
    TORCH_CHECK(world >= 1 && trailer_offset % 8 == 0 && trailer_stride % 8 == 0 && trailer_stride >= 32 &&
                    trailer_offset + (world - 1) * trailer_stride + 32 <= nbytes,
                "GatherFinish: the trailers must be 8-byte aligned rows inside the gathered bytes");
    TORCH_CHECK(amax_index >= 0 && (amax_index + 2) * 4 <= nbytes, "GatherFinish: amax_index out of range");
    TORCH_CHECK(bad_count_.is_cuda() && record_.device() == bad_count_.device() && bad_count_.scalar_type() == at::kLong &&
                    record_.scalar_type() == at::kLong && bad_count_.numel() == 1 && record_.numel() == world * 4 &&
                    bad_count_.is_contiguous() && record_.is_contiguous(),
                "GatherFinish: bad_count (int64 [1]) and record (int64 [world, 4]) must be contiguous, on one GPU");
    const size_t count = swap_in_offsets.size();
    TORCH_CHECK(count <= static_cast<size_t>(fp4dist_cuda::kMaxSwapParts) && swap_in_stride.size() == count &&
                    swap_rows.size() == count && swap_row_bytes.size() == count && swap_out_offsets.size() == count,
                "GatherFinish: at most ", fp4dist_cuda::kMaxSwapParts, " reorder parts, one entry per part in each list");
    for (size_t k = 0; k < count; ++k) {
      const int64_t slice = swap_rows[k] * swap_row_bytes[k];
      TORCH_CHECK(swap_rows[k] >= 0 && swap_row_bytes[k] >= 0 && swap_in_offsets[k] >= 0 && swap_out_offsets[k] >= 0 &&
                      (world <= 1 || swap_in_stride[k] >= slice) &&
                      swap_in_offsets[k] + (world - 1) * swap_in_stride[k] + slice <= nbytes &&
                      swap_out_offsets[k] + world * slice <= swap_out_nbytes,
                  "GatherFinish: reorder part ", k, " reaches outside its buffers");
      fp4dist_cuda::SwapPart part{};
      part.b = swap_rows[k];
      part.row_bytes = swap_row_bytes[k];
      part.in_stride = swap_in_stride[k];
      parts_.push_back(part);
    }
    swap_in_offsets_ = std::move(swap_in_offsets);
    swap_out_offsets_ = std::move(swap_out_offsets);
    check_views(views_, nbytes);
    check_views(swapped_views_, swap_out_nbytes);
  }

  using Maybe = std::optional<at::Tensor>;  // None in Python where a layout is absent

  std::tuple<Maybe, Maybe, Maybe, Maybe, Maybe, Maybe> operator()(const at::Tensor& gathered) const {
    TORCH_CHECK(gathered.device() == bad_count_.device() && gathered.scalar_type() == at::kByte &&
                    gathered.is_contiguous() && gathered.storage_offset() == 0 &&
                    static_cast<int64_t>(gathered.nbytes()) == nbytes_ &&
                    reinterpret_cast<uintptr_t>(gathered.data_ptr()) % 16 == 0,
                "GatherFinish: gathered must be a 16-byte aligned contiguous uint8 tensor of ", nbytes_, " bytes on ",
                bad_count_.device());
    const c10::cuda::CUDAGuard guard(gathered.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const uint8_t* base = static_cast<const uint8_t*>(gathered.data_ptr());
    if (world_ > 1) {  // one rank's trailer always equals rank 0's
      check_cuda(fp4dist_cuda::launch_check_trailers(reinterpret_cast<const int64_t*>(base + trailer_offset_),
                                                     world_, trailer_stride_ / 8, bad_count_.data_ptr<int64_t>(),
                                                     record_.data_ptr<int64_t>(), stream),
                 "check_trailers");
    }
    at::Tensor slots[4];
    make_views(gathered, views_, slots);
    if (!parts_.empty()) {
      const at::Tensor out = at::empty({swap_out_nbytes_}, gathered.options());
      fp4dist_cuda::SwapPart parts[fp4dist_cuda::kMaxSwapParts];
      for (size_t k = 0; k < parts_.size(); ++k) {
        parts[k] = parts_[k];
        parts[k].in = base + swap_in_offsets_[k];
        parts[k].out = static_cast<uint8_t*>(out.data_ptr()) + swap_out_offsets_[k];
      }
      check_cuda(fp4dist_cuda::launch_swap_first_dims(parts, static_cast<int>(parts_.size()), world_, stream),
                 "swap_first_dims");
      make_views(out, swapped_views_, slots);
    }
    at::Tensor amax_r, amax_c;
    if (rowwise_ || columnwise_) {
      const at::Tensor f = gathered.view(at::kFloat);
      if (rowwise_) amax_r = f.select(0, amax_index_);
      if (columnwise_) amax_c = f.select(0, amax_index_ + 1);
    }
    const auto maybe = [](const at::Tensor& t) { return t.defined() ? Maybe(t) : Maybe(); };
    return {maybe(slots[0]), maybe(slots[1]), maybe(slots[2]), maybe(slots[3]), maybe(amax_r), maybe(amax_c)};
  }

 private:
  static void check_views(const std::vector<View>& views, int64_t nbytes) {
    for (const View& v : views) {
      const auto& [slot, size, stride, offset, e4m3] = v;
      TORCH_CHECK(slot >= 0 && slot < 4 && size.size() == stride.size() && offset >= 0, "GatherFinish: a bad view");
      int64_t last = offset;
      for (size_t d = 0; d < size.size(); ++d) {
        TORCH_CHECK(size[d] >= 0 && stride[d] >= 0, "GatherFinish: a bad view");
        last += size[d] > 0 ? (size[d] - 1) * stride[d] : 0;
      }
      TORCH_CHECK(last < nbytes, "GatherFinish: a view reaches past its buffer");
    }
  }

  static void make_views(const at::Tensor& buf, const std::vector<View>& views, at::Tensor* slots) {
    for (const View& v : views) {
      const auto& [slot, size, stride, offset, e4m3] = v;
      at::Tensor t = buf.as_strided(size, stride, offset);
      slots[slot] = e4m3 ? t.view(at::kFloat8_e4m3fn) : t;
    }
  }

  int64_t nbytes_, world_;
  std::vector<View> views_, swapped_views_;
  std::vector<fp4dist_cuda::SwapPart> parts_;
  std::vector<int64_t> swap_in_offsets_, swap_out_offsets_;
  int64_t swap_out_nbytes_, amax_index_;
  bool rowwise_, columnwise_;
  int64_t trailer_offset_, trailer_stride_;
  at::Tensor bad_count_, record_;
};

// out [m, n] = alpha * a [m, k] @ b^T for b [n, k], or (b_kn) a @ b for b [k, n].
void gemm_alpha(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, const at::Tensor& out, bool b_kn) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && alpha.is_cuda() && out.is_cuda(), "gemm_alpha: CUDA tensors only");
  TORCH_CHECK(a.device() == b.device() && alpha.device() == a.device() && out.device() == a.device(),
              "gemm_alpha: a, b, alpha and out must be on one device");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "gemm_alpha: a, b and out must be 2-D");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && out.is_contiguous(), "gemm_alpha: contiguous tensors only");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf),
              "gemm_alpha: a and b must both be bfloat16 or both float16");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == 1, "gemm_alpha: alpha must be one fp32 value");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(b_kn ? 1 : 0);
  TORCH_CHECK(b.size(b_kn ? 0 : 1) == k, "gemm_alpha: contraction dims differ: a ", a.sizes(), ", b ", b.sizes(),
              b_kn ? " (b as [k, n])" : " (b as [n, k])");
  TORCH_CHECK(out.size(0) == m && out.size(1) == n, "gemm_alpha: out must be [", m, ", ", n, "]");
  TORCH_CHECK(m < INT32_MAX && n < INT32_MAX && k < INT32_MAX, "gemm_alpha: dims must fit in int32");
  if (m == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor beta = device_zero(alpha);
  // the current stream's handle
  const int status = fp4dist_cuda::launch_gemm_alpha(at::cuda::getCurrentCUDABlasHandle(), dtype_code(a),
                                                     dtype_code(out), m, n, k, a.data_ptr(), b.data_ptr(), b_kn,
                                                     alpha.data_ptr<float>(), beta.data_ptr<float>(), out.data_ptr());
  TORCH_CHECK(status == 0, "gemm_alpha: cublasGemmEx failed with status ", status);
}

// ---- The eager NVFP4 linear (fp4dist/parallel/eager_linear.py): forward and backward of a local Y = X W^T (no
// sequence parallelism), each in one call, with the launches and arguments of the Python path
// (fp4dist/parallel/nvfp4_function.py), so the same bits at a fraction of the host time. The Python side checks that
// a call qualifies (shapes multiples of 16, aligned contiguous inputs, the recipe's layouts); these checks guard the
// kernels' bounds as everywhere else.

at::Tensor empty_like_opts(const at::Tensor& like, at::IntArrayRef shape, at::ScalarType dtype) {
  return at::empty(shape, like.options().dtype(dtype));
}

// forward: x [m, k] (bf16/fp16), w [n, k] (bf16/fp16/fp32). X's columnwise layout (RHT when x_rht) only with
// need_dw. W's operand for the dgrad: with w_block_2d (16x16 tiles, whose two layouts are one transposed) W's decoded
// rowwise operand [n, k] itself, else (need_dx) W's columnwise codes. Returns (y [m, n] in x's dtype, X columnwise
// data, scales, amax [1], then W's decoded operand and an empty tensor, or W's columnwise data and scales, then W's
// amax [1]); a layout not made is empty.
std::vector<at::Tensor> linear_forward(const at::Tensor& x, const at::Tensor& w, bool need_dx, bool need_dw,
                                       bool x_rht, bool w_block_2d) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_forward: x [m, k] and w [n, k]");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const at::ScalarType u8 = at::kByte, e4m3 = at::kFloat8_e4m3fn, f32 = at::kFloat;
  const at::Tensor none = empty_like_opts(x, {0}, u8), no_x = empty_like_opts(x, {0}, x.scalar_type());
  const at::Tensor no_w = empty_like_opts(w, {0}, w.scalar_type()), no_f = empty_like_opts(x, {0}, f32);
  // the amaxes of W and X (one memset): X's cast scales its operand for the pair (X, W) and writes the GEMM's alpha
  const at::Tensor amax_wx = empty_like_opts(x, {4}, f32);
  amax_pair(w, false, x, x_rht && need_dw, amax_wx);
  const at::Tensor amax_w = amax_wx.narrow(0, 0, 2), amax_x = amax_wx.narrow(0, 2, 2);
  // X: the GEMM's operand A (no rowwise codes) and (wgrad) the columnwise layout
  const at::Tensor x_cd = need_dw ? empty_like_opts(x, {k, m / 2}, u8) : none;
  const at::Tensor x_cs = need_dw ? empty_like_opts(x, {k, m / 16}, e4m3) : none;
  const at::Tensor x_op = empty_like_opts(x, {m, k}, x.scalar_type()), alpha = empty_like_opts(x, {2}, f32);
  cast(x, amax_x, none, none, x_cd, x_cs, x_op, no_x, amax_w.narrow(0, 0, 1), no_f, alpha, true, need_dw, false,
       x_rht && need_dw, false, 0, 0, 0);
  // W: rowwise codes (and columnwise ones for a dgrad that cannot share the rowwise operand), decoded with d = 1
  const bool w_cols = need_dx && !w_block_2d;
  const at::Tensor w_rd = empty_like_opts(w, {n, k / 2}, u8), w_rs = empty_like_opts(w, {n, k / 16}, e4m3);
  const at::Tensor w_cd = w_cols ? empty_like_opts(w, {k, n / 2}, u8) : none;
  const at::Tensor w_cs = w_cols ? empty_like_opts(w, {k, n / 16}, e4m3) : none;
  cast(w, amax_w, w_rd, w_rs, w_cd, w_cs, no_w, no_w, no_f, no_f, no_f, true, w_cols, w_block_2d, false, false, 0, 0,
       0);
  const at::Tensor w_op = empty_like_opts(x, {n, k}, x.scalar_type());
  dequantize(w_rd, w_rs, no_f, no_f, w_op);
  const at::Tensor y = empty_like_opts(x, {m, n}, x.scalar_type());
  gemm_alpha(x_op, w_op, alpha.narrow(0, 0, 1), y, false);
  const bool share_w = need_dx && w_block_2d;
  return {y, x_cd, x_cs, amax_x.narrow(0, 1, 1), share_w ? w_op : w_cd, share_w ? none : w_cs,
          amax_w.narrow(0, 1, 1)};
}

// backward: dy [m, n] (x's dtype) and what linear_forward returned after y: X's columnwise layout ([k, m / 2],
// [k, m / 16], amax [1]); W's decoded operand [n, k] and an empty tensor (w_shared), or W's columnwise layout ([k,
// n / 2], [k, n / 16]); W's amax [1]. dY is cast to its decoded operands only, rowwise (need_dx) and columnwise
// (need_dw, RHT when g_rht), SR when g_sr with keys from (g_seed, rng_offset, stream_row / stream_col) on the
// device, each scaled for its GEMM's pair and with the GEMMs' alphas. Returns (dx [m, k] in dy's dtype, dw [n, k] in
// dw_dtype: 0 bf16, 1 fp16, 2 fp32); one not asked for is empty.
std::vector<at::Tensor> linear_backward(const at::Tensor& dy, const at::Tensor& x_cd, const at::Tensor& x_cs,
                                        const at::Tensor& x_amax, const at::Tensor& w_a, const at::Tensor& w_b,
                                        const at::Tensor& w_amax, const at::Tensor& rng_offset, bool need_dx,
                                        bool need_dw, bool w_shared, bool g_rht, bool g_sr, int64_t g_seed,
                                        int64_t stream_row, int64_t stream_col, int64_t dw_dtype) {
  TORCH_CHECK(dy.dim() == 2, "linear_backward: dy must be 2-D");
  TORCH_CHECK(dw_dtype >= 0 && dw_dtype <= 2, "linear_backward: dw_dtype must be 0, 1 or 2");
  const int64_t m = dy.size(0), n = dy.size(1);
  const at::ScalarType u8 = at::kByte, f32 = at::kFloat;
  const at::Tensor none = empty_like_opts(dy, {0}, u8), no_op = empty_like_opts(dy, {0}, dy.scalar_type());
  const at::Tensor no_f = empty_like_opts(dy, {0}, f32);
  const at::Tensor amax_dy = empty_like_opts(dy, {2}, f32);
  amax(dy, amax_dy, g_rht && need_dw);
  const at::Tensor rop = need_dx ? empty_like_opts(dy, {m, n}, dy.scalar_type()) : no_op;
  const at::Tensor cop = need_dw ? empty_like_opts(dy, {n, m}, dy.scalar_type()) : no_op;
  const at::Tensor alpha = empty_like_opts(dy, {2}, f32);
  const at::Tensor& partner_row = need_dx ? w_amax : no_f;
  const at::Tensor& partner_col = need_dw ? x_amax : no_f;
  if (g_sr) {
    cast_device_key(dy, amax_dy, none, none, none, none, rop, cop, partner_row, partner_col, alpha, need_dx, need_dw,
                    false, g_rht && need_dw, true, g_seed, rng_offset, stream_row, stream_col, 0);
  } else {
    cast(dy, amax_dy, none, none, none, none, rop, cop, partner_row, partner_col, alpha, need_dx, need_dw, false,
         g_rht && need_dw, false, 0, 0, 0);
  }
  at::Tensor dx = no_op, dw = no_op;
  if (need_dx) {  // dX = dY W
    if (w_shared) {  // W [n, k] itself
      dx = empty_like_opts(dy, {m, w_a.size(1)}, dy.scalar_type());
      gemm_alpha(rop, w_a, alpha.narrow(0, 0, 1), dx, true);
    } else {  // W's columnwise layout [k, n]
      const at::Tensor w_op = empty_like_opts(dy, {w_a.size(0), n}, dy.scalar_type());
      dequantize(w_a, w_b, no_f, no_f, w_op);
      dx = empty_like_opts(dy, {m, w_a.size(0)}, dy.scalar_type());
      gemm_alpha(rop, w_op, alpha.narrow(0, 0, 1), dx, false);
    }
  }
  if (need_dw) {  // dW = dY^T X: A = dY's columnwise operand [n, m], B = X's columnwise layout [k, m]
    const int64_t k = x_cd.size(0);
    const at::Tensor x_op = empty_like_opts(dy, {k, m}, dy.scalar_type());
    dequantize(x_cd, x_cs, no_f, no_f, x_op);
    const at::ScalarType out = dw_dtype == 0 ? at::kBFloat16 : (dw_dtype == 1 ? at::kHalf : at::kFloat);
    dw = empty_like_opts(dy, {n, k}, out);
    gemm_alpha(cop, x_op, alpha.narrow(0, 1, 1), dw, false);
  }
  return {dx, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fp4dist NVFP4 CUDA kernels";
  m.def("cast", &cast, "NVFP4 cast pass (rowwise and/or columnwise), SR keys from the host");
  m.def("cast_device_key", &cast_device_key, "NVFP4 cast pass, SR keys from (seed, device rng_offset, streams)");
  m.def("amax", &amax, "amax pass: out[0] = max|X|, out[1] = max|columnwise source|");
  m.def("amax_pair", &amax_pair, "two amax passes into out [4] after one memset");
  m.def("dequantize", &dequantize, "NVFP4 dequantize of one layout (2-D, or 3-D slices)");
  m.def("decode_operands", &decode_operands, "a GEMM's two NVFP4 operands without global scales, alpha, shift");
  m.def("decode_operand_b", &decode_operand_b, "a GEMM's operand B with the pair's shift, alpha, shift");
  m.def("swap_first_dims", &swap_first_dims, "parts [a, b, row_bytes] (strided slices) -> [b, a, row_bytes], one launch");
  m.def("check_trailers", &check_trailers, "all_gather_nvfp4's device check of the gathered trailers");
  pybind11::class_<GatherFinish>(m, "GatherFinish", "the end of a steady-state all_gather_nvfp4 in one call")
      .def(pybind11::init<int64_t, int64_t, std::vector<GatherFinish::View>, std::vector<GatherFinish::View>,
                          std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                          std::vector<int64_t>, int64_t, int64_t, bool, bool, int64_t, int64_t, at::Tensor,
                          at::Tensor>())
      .def("__call__", &GatherFinish::operator());
  m.def("gemm_alpha", &gemm_alpha, "out = alpha * a @ b^T (cuBLAS, fp32 accumulation, alpha on the device)");
  m.def("linear_forward", &linear_forward, "the eager NVFP4 linear's forward (a local linear) in one call");
  m.def("linear_backward", &linear_backward, "the eager NVFP4 linear's backward (a local linear) in one call");
}
