// swap_first_dims: [a, b, R bytes] -> [b, a, R bytes]; out row (j * a + i) = in row (i * b + j), rows moved as
// the widest W-byte words (16 / 8 / 4 / 1) that R and both pointers allow.

#include "common/launch.cuh"
#include "fp4dist.h"

namespace fp4dist_cuda {

template <typename W, typename I>
__global__ void __launch_bounds__(256) swap_kernel(const W* in, W* out, I a, I b, I wpr, I total) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  I o = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  auto src_index = [&](I oi) {
    const I orow = oi / wpr, w = oi - orow * wpr;
    const I j = orow / a, i = orow - j * a;
    return (i * b + j) * wpr + w;
  };
  for (; o + 3 * stride < total; o += 4 * stride) {
    W v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = in[src_index(o + u * stride)];
#pragma unroll
    for (int u = 0; u < 4; ++u) out[o + u * stride] = v[u];
  }
  for (; o < total; o += stride) out[o] = in[src_index(o)];
}

namespace {
template <typename W>
cudaError_t launch_swap_w(const void* in, void* out, int64_t a, int64_t b, int64_t row_bytes, cudaStream_t stream) {
  const int64_t wpr = row_bytes / static_cast<int64_t>(sizeof(W));
  const int64_t total = a * b * wpr;
  const int grid = grid_for(total, 256, 8);
  if (total < (int64_t(1) << 31)) {
    swap_kernel<W, uint32_t><<<grid, 256, 0, stream>>>(static_cast<const W*>(in), static_cast<W*>(out),
        static_cast<uint32_t>(a), static_cast<uint32_t>(b), static_cast<uint32_t>(wpr), static_cast<uint32_t>(total));
  } else {
    swap_kernel<W, uint64_t><<<grid, 256, 0, stream>>>(static_cast<const W*>(in), static_cast<W*>(out),
        static_cast<uint64_t>(a), static_cast<uint64_t>(b), static_cast<uint64_t>(wpr), static_cast<uint64_t>(total));
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_swap_first_dims(const void* in, void* out, int64_t a, int64_t b, int64_t row_bytes,
                                   cudaStream_t stream) {
  if (a * b * row_bytes == 0) return cudaSuccess;
  const uintptr_t al = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  if (row_bytes % 16 == 0 && al % 16 == 0) return launch_swap_w<uint4>(in, out, a, b, row_bytes, stream);
  if (row_bytes % 8 == 0 && al % 8 == 0) return launch_swap_w<uint2>(in, out, a, b, row_bytes, stream);
  if (row_bytes % 4 == 0 && al % 4 == 0) return launch_swap_w<uint32_t>(in, out, a, b, row_bytes, stream);
  return launch_swap_w<uint8_t>(in, out, a, b, row_bytes, stream);
}

}  // namespace fp4dist_cuda
