// swap_first_dims: up to kMaxSwapParts parts in one launch, part k: in [a, b_k, R_k bytes] -> out [b_k, a, R_k bytes];
// out row (j * a + i) = in row (i, j), which starts at in + i * in_stride_k + j * R_k (the a slices may lie
// anywhere, each holding its b_k rows contiguous). Rows move as the widest W-byte words (16 / 8 / 4 / 1) that every
// part's R_k, in_stride_k and pointers allow; the flat output word index picks the part.

#include "common/launch.cuh"
#include "fp4dist.h"

namespace fp4dist_cuda {

namespace {

// What a thread needs of the parts, in W-byte words; end[k] is the exclusive end of part k's output words.
template <typename I>
struct SwapArgs {
  const void* in[kMaxSwapParts];
  void* out[kMaxSwapParts];
  I wpr[kMaxSwapParts], in_stride[kMaxSwapParts], end[kMaxSwapParts];
  I a;
  int count;
};

template <typename W, typename I>
__device__ __forceinline__ void locate(const SwapArgs<I>& p, I o, const W*& src, W*& dst) {
  // at most kMaxSwapParts (2) compares; the unrolled selects keep the params out of local memory
  I begin = 0, wpr = p.wpr[0], in_stride = p.in_stride[0];
  const void* in = p.in[0];
  void* out = p.out[0];
#pragma unroll
  for (int k = 1; k < kMaxSwapParts; ++k) {
    if (k < p.count && o >= p.end[k - 1]) {
      begin = p.end[k - 1];
      wpr = p.wpr[k];
      in_stride = p.in_stride[k];
      in = p.in[k];
      out = p.out[k];
    }
  }
  const I local = o - begin;
  const I orow = local / wpr, w = local - orow * wpr;
  const I j = orow / p.a, i = orow - j * p.a;
  src = static_cast<const W*>(in) + i * in_stride + j * wpr + w;
  dst = static_cast<W*>(out) + local;
}

template <typename W, typename I>
__global__ void __launch_bounds__(256) swap_kernel(const SwapArgs<I> p) {
  const I total = p.end[p.count - 1];
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  I o = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; o + 3 * stride < total; o += 4 * stride) {
    W v[4];
    W* dst[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const W* src;
      locate<W, I>(p, o + u * stride, src, dst[u]);
      v[u] = *src;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) *dst[u] = v[u];
  }
  for (; o < total; o += stride) {
    const W* src;
    W* dst;
    locate<W, I>(p, o, src, dst);
    *dst = *src;
  }
}

template <typename W, typename I>
cudaError_t launch_swap_w(const SwapPart* parts, int count, int64_t a, int64_t total, cudaStream_t stream) {
  constexpr int64_t w = static_cast<int64_t>(sizeof(W));
  SwapArgs<I> p{};
  p.a = static_cast<I>(a);
  p.count = count;
  int64_t end = 0;
  for (int k = 0; k < count; ++k) {
    p.in[k] = parts[k].in;
    p.out[k] = parts[k].out;
    p.wpr[k] = static_cast<I>(parts[k].row_bytes / w);
    p.in_stride[k] = static_cast<I>(parts[k].in_stride / w);
    end += a * parts[k].b * (parts[k].row_bytes / w);
    p.end[k] = static_cast<I>(end);
  }
  swap_kernel<W, I><<<grid_for(total, 256, 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename W>
cudaError_t launch_swap_words(const SwapPart* parts, int count, int64_t a, cudaStream_t stream) {
  constexpr int64_t w = static_cast<int64_t>(sizeof(W));
  int64_t total = 0, span = 0;  // output words; the largest word index read, + 1
  for (int k = 0; k < count; ++k) {
    total += a * parts[k].b * (parts[k].row_bytes / w);
    const int64_t read = ((a - 1) * parts[k].in_stride + parts[k].b * parts[k].row_bytes) / w;
    span = span > read ? span : read;
  }
  const int64_t limit = int64_t(1) << 31;
  if (total < limit && span < limit) return launch_swap_w<W, uint32_t>(parts, count, a, total, stream);
  return launch_swap_w<W, uint64_t>(parts, count, a, total, stream);
}

}  // namespace

cudaError_t launch_swap_first_dims(const SwapPart* parts, int count, int64_t a, cudaStream_t stream) {
  if (count < 1 || count > kMaxSwapParts) return cudaErrorInvalidValue;
  // drop empty parts (the kernel's part search assumes each holds at least one word)
  SwapPart live[kMaxSwapParts];
  int n = 0;
  uintptr_t al = 0;
  for (int k = 0; k < count; ++k) {
    if (a * parts[k].b * parts[k].row_bytes == 0) continue;
    live[n++] = parts[k];
    al |= reinterpret_cast<uintptr_t>(parts[k].in) | reinterpret_cast<uintptr_t>(parts[k].out) |
          static_cast<uintptr_t>(parts[k].row_bytes) | static_cast<uintptr_t>(a > 1 ? parts[k].in_stride : 0);
  }
  if (n == 0) return cudaSuccess;
  if (al % 16 == 0) return launch_swap_words<uint4>(live, n, a, stream);
  if (al % 8 == 0) return launch_swap_words<uint2>(live, n, a, stream);
  if (al % 4 == 0) return launch_swap_words<uint32_t>(live, n, a, stream);
  return launch_swap_words<uint8_t>(live, n, a, stream);
}

}  // namespace fp4dist_cuda
