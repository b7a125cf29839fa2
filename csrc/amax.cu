// amax pass: out[0] = max|X|, out[1] = max|columnwise source| (with rht: RHT(X^T) rounded to X's dtype, with the
// overflow rule of cast/rht_source.cuh; else max|X| again), fp32, NaN propagating.
//   amax_kernel<T>            max|X| (grid-stride, 16-byte loads, one atomicMax per CTA)
//   amax_rht_kernel<T, kPairs> max|X| and max|RHT(X^T)| (16-row strips, one thread per two columns of a strip)

#include <algorithm>

#include "common/dtype_traits.cuh"
#include "common/launch.cuh"
#include "common/numerics.cuh"
#include "cast/rht_source.cuh"
#include "fp4dist.h"

namespace fp4dist_cuda {

// Block-wide max of fp32 magnitude bits, then one atomicMax per CTA into out[0] and out[1]
// (amax >= 0, so unsigned order of the bits is the order of the values; NaN bits win).
__device__ __forceinline__ void block_max_atomic(uint32_t v0, uint32_t v1, float* out) {
  __shared__ uint32_t red[2][32];
  v0 = __reduce_max_sync(0xffffffffu, v0);
  v1 = __reduce_max_sync(0xffffffffu, v1);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    red[0][warp] = v0;
    red[1][warp] = v1;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    v0 = lane < nw ? red[0][lane] : 0u;
    v1 = lane < nw ? red[1][lane] : 0u;
    v0 = __reduce_max_sync(0xffffffffu, v0);
    v1 = __reduce_max_sync(0xffffffffu, v1);
    if (lane == 0) {
      atomicMax(reinterpret_cast<unsigned int*>(out), v0);
      atomicMax(reinterpret_cast<unsigned int*>(out) + 1, v1);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(256) amax_kernel(const T* x, int64_t numel, int vec_ok, float* out) {
  using TT = Tr<T>;
  using P = typename TT::P;
  typename TT::Acc acc = TT::acc_zero();
  const int64_t gtid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  constexpr int kVec = 16 / sizeof(T);
  int64_t done = 0;
  if (vec_ok) {
    const int64_t nvec = numel / kVec;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    int64_t i = gtid;
    for (; i + 3 * stride < nvec; i += 4 * stride) {
      uint4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = __ldg(xv + i + u * stride);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const P* pv = reinterpret_cast<const P*>(&v[u]);
#pragma unroll
        for (int q = 0; q < 16 / (2 * static_cast<int>(sizeof(T))); ++q) TT::acc_add(acc, pv[q]);
      }
    }
    for (; i < nvec; i += stride) {
      const uint4 v = __ldg(xv + i);
      const P* pv = reinterpret_cast<const P*>(&v);
#pragma unroll
      for (int q = 0; q < 16 / (2 * static_cast<int>(sizeof(T))); ++q) TT::acc_add(acc, pv[q]);
    }
    done = nvec * kVec;
  }
  uint32_t bits = max_u32(TT::first_bits(acc), TT::second_bits(acc));
  for (int64_t i = done + gtid; i < numel; i += stride) {
    bits = max_u32(bits, f2u(TT::load1(x + i)) & 0x7fffffffu);
  }
  block_max_atomic(bits, bits, out);
}

// Rowwise amax and the amax of RHT(X^T) (the columnwise source, rht_source.cuh: rounded to T, or on the overflow
// path fp32 values, chunks with an infinity left out). Thread t of CTA (bx, by) takes column task bx * 256 + t (two
// adjacent columns, or with kPairs false one column as a task of that column twice) in the 16-row strips by,
// by + gridDim.y, ...: a warp's 16 row loads are 128 (256 for fp32) contiguous bytes each.
template <typename T, bool kPairs>
__global__ void __launch_bounds__(256, 4) amax_rht_kernel(const T* x, int64_t m, int64_t n, float* out) {
  using TT = Tr<T>;
  using P = typename TT::P;
  const int64_t strips = m / 16, tasks = kPairs ? n / 2 : n;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  uint32_t row_bits = 0, col_bits = 0;
  if (task < tasks) {
    for (int64_t s = blockIdx.y; s < strips; s += gridDim.y) {
      P pairs[16];
      if constexpr (kPairs) {
        const P* base = reinterpret_cast<const P*>(x + s * 16 * n) + task;
        const int64_t row = n / 2;
#pragma unroll
        for (int k = 0; k < 16; ++k) pairs[k] = __ldg(base + k * row);
      } else {
        const T* base = x + s * 16 * n + task;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          const float v = TT::load1(base + k * n);
          pairs[k] = TT::round_pair(v, v);  // exact: v is a T
        }
      }
      uint32_t in_a, in_b, amax_a, amax_b;
      rht_column_amax<T>(pairs, in_a, in_b, amax_a, amax_b);
      row_bits = max_u32(row_bits, max_u32(in_a, in_b));
      col_bits = max_u32(col_bits, max_u32(amax_a, amax_b));
    }
  }
  block_max_atomic(row_bits, col_bits, out);
}

namespace {
template <typename T>
cudaError_t launch_amax_t(const void* xv, int64_t m, int64_t n, bool rht, float* out, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  const int64_t numel = m * n;
  if (numel == 0) return cudaSuccess;
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (!rht) {
    const int grid = grid_for((numel + kVec - 1) / kVec, 256, 8);
    amax_kernel<T><<<grid, 256, 0, stream>>>(x, numel, aligned ? 1 : 0, out);
  } else {
    // 256 column tasks per CTA; strips spread over CTAs until about 8 per SM, then grid-strided
    const bool pairs = n % 2 == 0 && reinterpret_cast<uintptr_t>(x) % (2 * sizeof(T)) == 0;
    const int64_t tasks = pairs ? n / 2 : n, strips = m / 16;
    if (strips == 0) return cudaSuccess;
    const int64_t gx = (tasks + 255) / 256;
    if (gx > 0x7fffffffLL) return cudaErrorInvalidValue;
    const int64_t gy = std::max<int64_t>(1, std::min<int64_t>({strips, 65535, (sm_count() * 8 + gx - 1) / gx}));
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
    if (pairs) {
      amax_rht_kernel<T, true><<<grid, 256, 0, stream>>>(x, m, n, out);
    } else {
      amax_rht_kernel<T, false><<<grid, 256, 0, stream>>>(x, m, n, out);
    }
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_amax(int dtype, const void* x, int64_t m, int64_t n, bool rht, float* out, cudaStream_t stream) {
  if (dtype < 0 || dtype > 2) return cudaErrorInvalidValue;
  // the CTAs atomicMax their maxima (fp32 bits of values >= 0) into out: start from +0
  const cudaError_t err = cudaMemsetAsync(out, 0, 2 * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  return launch_amax_into(dtype, x, m, n, rht, out, stream);
}

cudaError_t launch_amax_into(int dtype, const void* x, int64_t m, int64_t n, bool rht, float* out,
                             cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_amax_t<__nv_bfloat16>(x, m, n, rht, out, stream);
    case 1: return launch_amax_t<__half>(x, m, n, rht, out, stream);
    case 2: return launch_amax_t<float>(x, m, n, rht, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fp4dist_cuda
