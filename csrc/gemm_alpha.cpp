// out[M, N] = alpha * a[M, K] @ b[N, K]^T (or a @ b[K, N]) through cuBLAS, with alpha read from device memory.
//
// The NVFP4 GEMM multiplies exactly decoded operands (e2m1 * e4m3, exact in bf16/fp16) and applies
// the product of the two fp32 global decode scales as alpha to the fp32 accumulator before the one
// rounding to the output dtype. alpha lives on the GPU (it comes from the amax pass); passing it by
// pointer (CUBLAS_POINTER_MODE_DEVICE) keeps the host from waiting for it.

#include <cublas_v2.h>

#include "fp4dist.h"

namespace fp4dist_cuda {

namespace {
cudaDataType_t cuda_type(int dtype) {
  switch (dtype) {
    case 0: return CUDA_R_16BF;
    case 1: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}
}  // namespace

int launch_gemm_alpha(cublasContext* handle, int ab_dtype, int out_dtype, int64_t m, int64_t n, int64_t k,
                      const void* a, const void* b, bool b_kn, const float* alpha, const float* beta, void* out) {
  cublasPointerMode_t previous;
  cublasStatus_t status = cublasGetPointerMode(handle, &previous);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_DEVICE);
  // Row-major out = a @ b^T is column-major out^T = b @ a^T: cuBLAS sees b as [k, n] (transposed) and
  // a as [k, m], both with leading dimension k, and writes out^T [n, m] with leading dimension n.
  // With b_kn, b [k, n] row-major is column-major [n, k] with leading dimension n, taken as it is.
  status = cublasGemmEx(handle, b_kn ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                        static_cast<int>(m), static_cast<int>(k), alpha, b, cuda_type(ab_dtype),
                        static_cast<int>(b_kn ? n : k), a,
                        cuda_type(ab_dtype), static_cast<int>(k), beta, out, cuda_type(out_dtype),
                        static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  cublasSetPointerMode(handle, previous);
  return status;
}

}  // namespace fp4dist_cuda
