// check_trailers: the device check of one all_gather_nvfp4 (fp4dist/gather_check.py). The gathered trailers are
// `rows` rows of 4 int64 words, row r at trailers + r * stride words. When any word differs from row 0's, the
// one CTA copies every row into record [rows, 4] (contiguous) and adds 1 to *bad_count; else it writes nothing.

#include "fp4dist.h"

namespace fp4dist_cuda {

namespace {

constexpr int kCheckThreads = 128;

__global__ void __launch_bounds__(kCheckThreads)
    check_trailers_kernel(const int64_t* trailers, int64_t rows, int64_t stride, int64_t* bad_count,
                          int64_t* record) {
  const int64_t words = rows * 4;
  int differ = 0;
  for (int64_t k = threadIdx.x; k < words; k += kCheckThreads) {
    differ |= trailers[(k / 4) * stride + k % 4] != trailers[k % 4];
  }
  if (!__syncthreads_or(differ)) return;
  for (int64_t k = threadIdx.x; k < words; k += kCheckThreads) record[k] = trailers[(k / 4) * stride + k % 4];
  if (threadIdx.x == 0) *bad_count += 1;
}

}  // namespace

cudaError_t launch_check_trailers(const int64_t* trailers, int64_t rows, int64_t stride, int64_t* bad_count,
                                  int64_t* record, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  check_trailers_kernel<<<1, kCheckThreads, 0, stream>>>(trailers, rows, stride, bad_count, record);
  return cudaGetLastError();
}

}  // namespace fp4dist_cuda
