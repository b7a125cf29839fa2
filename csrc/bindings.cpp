// The one Python module of fp4dist's CUDA code: the NVFP4 kernels' launchers (csrc/fp4dist.h) and the
// cuBLAS device-alpha GEMM. Shapes, dtypes and allocation are checked and done in fp4dist/backends/cuda.py;
// this layer checks what would make a kernel read or write out of bounds, then launches on the current stream.

#include <array>
#include <cstdint>
#include <mutex>

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

void launch_cast_checked(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
                         const at::Tensor& cd, const at::Tensor& cs, bool do_row, bool do_col, bool block_2d, bool rht,
                         bool sr, const fp4dist_cuda::CastRng& rng) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D CUDA tensor");
  TORCH_CHECK(amax.is_cuda() && amax.device() == x.device() && amax.scalar_type() == at::kFloat &&
                  amax.is_contiguous() && amax.numel() == 2,
              "amax must be a contiguous fp32 CUDA tensor of 2 elements");
  const int64_t m = x.size(0), n = x.size(1);
  if (do_row) {
    TORCH_CHECK(n % 16 == 0, "rowwise needs n % 16 == 0");
    check_byte_tensor(rd, x, m, n / 2, "rowwise_data");
    check_byte_tensor(rs, x, m, n / 16, "rowwise_scale_inv");
  }
  if (do_col) {
    TORCH_CHECK(m % 16 == 0, "columnwise needs m % 16 == 0");
    check_byte_tensor(cd, x, n, m / 2, "columnwise_data");
    check_byte_tensor(cs, x, n, m / 16, "columnwise_scale_inv");
  }
  if (block_2d) TORCH_CHECK(m % 16 == 0 && n % 16 == 0, "block_2d needs m % 16 == 0 and n % 16 == 0");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fp4dist_cuda::launch_cast(dtype_code(x), x.data_ptr(), m, n, amax.data_ptr<float>(),
                                       do_row ? byte_ptr(rd) : nullptr, do_row ? byte_ptr(rs) : nullptr,
                                       do_col ? byte_ptr(cd) : nullptr, do_col ? byte_ptr(cs) : nullptr, do_row,
                                       do_col, block_2d, rht, sr, rng, c10::cuda::getCurrentCUDAStream().stream()),
             "cast");
}

// SR keys computed on the host (fp4dist.rng.stream_key), passed as their 32 bits.
void cast(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
          const at::Tensor& cd, const at::Tensor& cs, bool do_row, bool do_col, bool block_2d, bool rht, bool sr,
          int64_t key_row, int64_t key_col, int64_t row_offset) {
  fp4dist_cuda::CastRng rng{};
  rng.key_row = static_cast<uint32_t>(key_row);
  rng.key_col = static_cast<uint32_t>(key_col);
  rng.row_offset = static_cast<uint32_t>(row_offset);
  launch_cast_checked(x, amax, rd, rs, cd, cs, do_row, do_col, block_2d, rht, sr, rng);
}

// SR keys computed on the device from seed (a uint64 passed as its int64 bits), the one-element int64 CUDA tensor
// rng_offset (read by the kernels, never by the host) and the two streams.
void cast_device_key(const at::Tensor& x, const at::Tensor& amax, const at::Tensor& rd, const at::Tensor& rs,
                     const at::Tensor& cd, const at::Tensor& cs, bool do_row, bool do_col, bool block_2d, bool rht,
                     bool sr, int64_t seed, const at::Tensor& rng_offset, int64_t stream_row, int64_t stream_col,
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
  launch_cast_checked(x, amax, rd, rs, cd, cs, do_row, do_col, block_2d, rht, sr, rng);
}

void amax(const at::Tensor& x, const at::Tensor& out, bool rht) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D CUDA tensor");
  TORCH_CHECK(out.is_cuda() && out.device() == x.device() && out.scalar_type() == at::kFloat &&
                  out.is_contiguous() && out.numel() == 2,
              "out must be a contiguous fp32 CUDA tensor of 2 elements");
  if (rht) TORCH_CHECK(x.size(0) % 16 == 0, "the RHT amax needs m % 16 == 0");
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fp4dist_cuda::launch_amax(dtype_code(x), x.data_ptr(), x.size(0), x.size(1), rht, out.data_ptr<float>(),
                                       c10::cuda::getCurrentCUDAStream().stream()),
             "amax");
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

// t as a one-element fp32 tensor on like's device, or null for an empty t.
const float* optional_scalar(const at::Tensor& t, const at::Tensor& like, const char* name) {
  if (t.numel() == 0) return nullptr;
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.scalar_type() == at::kFloat && t.numel() == 1, name,
              " must be a one-element fp32 tensor on ", like.device());
  return t.data_ptr<float>();
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

void decode_operands(const at::Tensor& data_a, const at::Tensor& scale_a, const at::Tensor& out_a,
                     const at::Tensor& data_b, const at::Tensor& scale_b, const at::Tensor& out_b,
                     const at::Tensor& amax_a, const at::Tensor& amax_b, const at::Tensor& alpha_out,
                     const at::Tensor& a_shift_out) {
  const fp4dist_cuda::PackedOperand a = packed_operand(data_a, scale_a, out_a, "decode_operands: operand A");
  const fp4dist_cuda::PackedOperand b = packed_operand(data_b, scale_b, out_b, "decode_operands: operand B");
  TORCH_CHECK(data_b.device() == data_a.device() && out_a.scalar_type() == out_b.scalar_type(),
              "decode_operands: both operands on one device, both outputs of one dtype");
  const float* am_a = optional_scalar(amax_a, data_a, "amax_a");
  const float* am_b = optional_scalar(amax_b, data_a, "amax_b");
  TORCH_CHECK(am_a != nullptr && am_b != nullptr, "decode_operands: amax_a and amax_b are required");
  for (const at::Tensor* t : {&alpha_out, &a_shift_out}) {
    TORCH_CHECK(t->is_cuda() && t->device() == data_a.device() && t->scalar_type() == at::kFloat && t->numel() >= 1,
                "decode_operands: alpha_out and a_shift_out must be fp32 tensors on ", data_a.device());
  }
  const c10::cuda::CUDAGuard guard(data_a.device());
  check_cuda(fp4dist_cuda::launch_decode_operands(dtype_code(out_a), a, b, am_a, am_b, alpha_out.data_ptr<float>(),
                                                  a_shift_out.data_ptr<float>(),
                                                  c10::cuda::getCurrentCUDAStream().stream()),
             "decode_operands");
}

void swap_first_dims(const at::Tensor& in, const at::Tensor& out, int64_t a, int64_t b, int64_t row_bytes) {
  TORCH_CHECK(in.is_cuda() && out.is_cuda() && in.device() == out.device(), "in and out must be on one CUDA device");
  TORCH_CHECK(in.is_contiguous() && out.is_contiguous(), "in and out must be contiguous");
  TORCH_CHECK(a >= 0 && b >= 0 && row_bytes >= 0 && in.nbytes() == static_cast<size_t>(a * b * row_bytes) &&
                  out.nbytes() == in.nbytes(),
              "in and out must hold a * b * row_bytes bytes");
  const c10::cuda::CUDAGuard guard(in.device());
  check_cuda(fp4dist_cuda::launch_swap_first_dims(in.data_ptr(), out.data_ptr(), a, b, row_bytes,
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

void gemm_alpha(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, const at::Tensor& out) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && alpha.is_cuda() && out.is_cuda(), "gemm_alpha: CUDA tensors only");
  TORCH_CHECK(a.device() == b.device() && alpha.device() == a.device() && out.device() == a.device(),
              "gemm_alpha: a, b, alpha and out must be on one device");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "gemm_alpha: a, b and out must be 2-D");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && out.is_contiguous(), "gemm_alpha: contiguous tensors only");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf),
              "gemm_alpha: a and b must both be bfloat16 or both float16");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == 1, "gemm_alpha: alpha must be one fp32 value");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(0);
  TORCH_CHECK(b.size(1) == k, "gemm_alpha: contraction dims differ: a ", a.sizes(), ", b ", b.sizes());
  TORCH_CHECK(out.size(0) == m && out.size(1) == n, "gemm_alpha: out must be [", m, ", ", n, "]");
  TORCH_CHECK(m < INT32_MAX && n < INT32_MAX && k < INT32_MAX, "gemm_alpha: dims must fit in int32");
  if (m == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor beta = device_zero(alpha);
  // the current stream's handle
  const int status = fp4dist_cuda::launch_gemm_alpha(at::cuda::getCurrentCUDABlasHandle(), dtype_code(a),
                                                     dtype_code(out), m, n, k, a.data_ptr(), b.data_ptr(),
                                                     alpha.data_ptr<float>(), beta.data_ptr<float>(), out.data_ptr());
  TORCH_CHECK(status == 0, "gemm_alpha: cublasGemmEx failed with status ", status);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fp4dist NVFP4 CUDA kernels";
  m.def("cast", &cast, "NVFP4 cast pass (rowwise and/or columnwise), SR keys from the host");
  m.def("cast_device_key", &cast_device_key, "NVFP4 cast pass, SR keys from (seed, device rng_offset, streams)");
  m.def("amax", &amax, "amax pass: out[0] = max|X|, out[1] = max|columnwise source|");
  m.def("dequantize", &dequantize, "NVFP4 dequantize of one layout (2-D, or 3-D slices)");
  m.def("decode_operands", &decode_operands, "a GEMM's two NVFP4 operands without global scales, alpha, shift");
  m.def("swap_first_dims", &swap_first_dims, "[a, b, row_bytes] -> [b, a, row_bytes]");
  m.def("gemm_alpha", &gemm_alpha, "out = alpha * a @ b^T (cuBLAS, fp32 accumulation, alpha on the device)");
}
