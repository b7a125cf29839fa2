// out[M, N] = alpha * a[M, K] @ b[N, K]^T through cuBLAS, with alpha read from device memory.
//
// The NVFP4 GEMM multiplies exactly decoded operands (e2m1 * e4m3, exact in bf16/fp16) and applies
// the product of the two fp32 global decode scales as alpha to the fp32 accumulator before the one
// rounding to the output dtype. alpha lives on the GPU (it comes from the amax pass); passing it by
// pointer (CUBLAS_POINTER_MODE_DEVICE) keeps the host from waiting for it. A separate extension from
// the quantization kernels, so that a toolkit without cuBLAS headers only loses this path.

#include <cstdint>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>
#include <torch/extension.h>

namespace {

cudaDataType_t cuda_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kHalf: return CUDA_R_16F;
    case at::kFloat: return CUDA_R_32F;
    default: TORCH_CHECK(false, "gemm_alpha: unsupported dtype ", t.scalar_type());
  }
  return CUDA_R_32F;
}

void gemm_alpha(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, at::Tensor& out) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && alpha.is_cuda() && out.is_cuda(), "gemm_alpha: CUDA tensors only");
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
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  cublasPointerMode_t previous;
  TORCH_CHECK(cublasGetPointerMode(handle, &previous) == CUBLAS_STATUS_SUCCESS, "gemm_alpha: cublasGetPointerMode");
  cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_DEVICE);
  // Row-major out = a @ b^T is column-major out^T = b @ a^T: cuBLAS sees b as [k, n] (transposed) and
  // a as [k, m], both with leading dimension k, and writes out^T [n, m] with leading dimension n.
  const cublasStatus_t status = cublasGemmEx(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
      alpha.data_ptr<float>(), b.data_ptr(), cuda_type(b), static_cast<int>(k), a.data_ptr(), cuda_type(a),
      static_cast<int>(k), beta.data_ptr<float>(), out.data_ptr(), cuda_type(out), static_cast<int>(n),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  cublasSetPointerMode(handle, previous);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "gemm_alpha: cublasGemmEx failed with status ", static_cast<int>(status));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm_alpha", &gemm_alpha, "out = alpha * a @ b^T (cuBLAS, fp32 accumulation, alpha on the device)");
}
