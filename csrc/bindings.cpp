// The one Python module of fp4dist's CUDA code: the NVFP4 kernels' launchers (csrc/fp4dist.h) and the
// cuBLAS device-alpha GEMM. Shapes, dtypes and allocation are checked and done in fp4dist/backends/cuda.py;
// this layer checks what would make a kernel read or write out of bounds, then launches on the current stream.

#include <cstdint>

#include <ATen/cuda/CUDAContextLight.h>
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

void dequantize(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& dec, const at::Tensor& out) {
  TORCH_CHECK(data.is_cuda() && data.dim() == 2 && data.is_contiguous() && data.element_size() == 1,
              "data must be a contiguous 2-D byte CUDA tensor");
  const int64_t rows = data.size(0), half = data.size(1);
  TORCH_CHECK(half % 8 == 0, "data.shape[1] must be a multiple of 8 (16 codes per block)");
  TORCH_CHECK(scale.is_cuda() && scale.device() == data.device() && scale.is_contiguous() &&
                  scale.element_size() == 1 && scale.numel() == rows * (half / 8),
              "scale_inv must be a contiguous byte tensor of data.shape[0] * data.shape[1] / 8 elements");
  TORCH_CHECK(dec.is_cuda() && dec.device() == data.device() && dec.scalar_type() == at::kFloat && dec.numel() == 1,
              "decode_scale must be a one-element fp32 CUDA tensor");
  TORCH_CHECK(out.is_cuda() && out.device() == data.device() && out.is_contiguous() && out.numel() == rows * half * 2,
              "out must be a contiguous CUDA tensor of ", rows * half * 2, " elements");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data.data_ptr()) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0,
              "data must be 8-byte and out 16-byte aligned");
  const c10::cuda::CUDAGuard guard(data.device());
  check_cuda(fp4dist_cuda::launch_dequantize(dtype_code(out), byte_ptr(data), static_cast<const uint8_t*>(scale.data_ptr()),
                                             dec.data_ptr<float>(), out.data_ptr(), rows * (half / 8),
                                             c10::cuda::getCurrentCUDAStream().stream()),
             "dequantize");
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
  const at::Tensor beta = at::zeros({1}, alpha.options());
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
  m.def("dequantize", &dequantize, "NVFP4 dequantize of one layout");
  m.def("swap_first_dims", &swap_first_dims, "[a, b, row_bytes] -> [b, a, row_bytes]");
  m.def("gemm_alpha", &gemm_alpha, "out = alpha * a @ b^T (cuBLAS, fp32 accumulation, alpha on the device)");
}
