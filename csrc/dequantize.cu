// Dequantize: out[i] = (e2m1(code_i) * float(scale)) * S_dec (the product e2m1 * scale is exact),
// rounded once to O (bf16 / fp16 / fp32). A thread handles G = 16 / sizeof(O) consecutive codes (8 for
// bf16/fp16, 4 for fp32) so that each thread writes one 16-byte vector and a warp writes 512 contiguous bytes.

#include "common/dtype_traits.cuh"
#include "common/launch.cuh"
#include "common/numerics.cuh"
#include "fp4dist.h"

namespace fp4dist_cuda {

__constant__ float kE2M1[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

template <typename O>
struct DequantIO;
template <>
struct DequantIO<__nv_bfloat16> {
  static constexpr int kG = 8;
  using In = uint32_t;
  __device__ static uint32_t pack(float a, float b) { return Tr<__nv_bfloat16>::round_pair(a, b); }
};
template <>
struct DequantIO<__half> {
  static constexpr int kG = 8;
  using In = uint32_t;
  __device__ static uint32_t pack(float a, float b) { return Tr<__half>::round_pair(a, b); }
};
template <>
struct DequantIO<float> {
  static constexpr int kG = 4;
  using In = uint16_t;
};

template <typename O>
__device__ __forceinline__ uint4 dequant_group(uint32_t codes, uint8_t s, float dec, const float* lut) {
  constexpr int kG = DequantIO<O>::kG;
  const float f = e4m3_to_float(s);
  float v[kG];
#pragma unroll
  for (int i = 0; i < kG; ++i) v[i] = (lut[(codes >> (4 * i)) & 0xfu] * f) * dec;
  if constexpr (kG == 4) {
    return make_uint4(f2u(v[0]), f2u(v[1]), f2u(v[2]), f2u(v[3]));
  } else {
    return make_uint4(DequantIO<O>::pack(v[0], v[1]), DequantIO<O>::pack(v[2], v[3]),
                      DequantIO<O>::pack(v[4], v[5]), DequantIO<O>::pack(v[6], v[7]));
  }
}

// ngroups = rows * half * 2 / G; group g reads codes [G g, G g + G) and the scale of block G g / 16.
template <typename O>
__global__ void __launch_bounds__(256) dequant_kernel(const uint8_t* data, const uint8_t* scale, const float* dec_ptr,
                                                      O* out, int64_t ngroups) {
  using IO = DequantIO<O>;
  using In = typename IO::In;
  constexpr int kPerBlock = 16 / IO::kG;  // groups per 16-code block
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = kE2M1[threadIdx.x];
  __syncthreads();
  const float dec = *dec_ptr;
  const In* din = reinterpret_cast<const In*>(data);
  uint4* o = reinterpret_cast<uint4*>(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; g + 3 * stride < ngroups; g += 4 * stride) {
    In d[4];
    uint8_t s[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      d[u] = __ldg(din + g + u * stride);
      s[u] = __ldg(scale + (g + u * stride) / kPerBlock);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) o[g + u * stride] = dequant_group<O>(d[u], s[u], dec, lut);
  }
  for (; g < ngroups; g += stride) o[g] = dequant_group<O>(__ldg(din + g), __ldg(scale + g / kPerBlock), dec, lut);
}

// data: [nblocks * 8] bytes (4-byte aligned), scale: [nblocks], out: [nblocks * 16] (16-byte aligned).
cudaError_t launch_dequantize(int out_dtype, const uint8_t* data, const uint8_t* scale, const float* dec, void* out,
                              int64_t nblocks, cudaStream_t stream) {
  if (nblocks == 0) return cudaSuccess;
  switch (out_dtype) {
    case 0: dequant_kernel<__nv_bfloat16><<<grid_for(nblocks * 2, 256, 8), 256, 0, stream>>>(
                data, scale, dec, static_cast<__nv_bfloat16*>(out), nblocks * 2); break;
    case 1: dequant_kernel<__half><<<grid_for(nblocks * 2, 256, 8), 256, 0, stream>>>(
                data, scale, dec, static_cast<__half*>(out), nblocks * 2); break;
    case 2: dequant_kernel<float><<<grid_for(nblocks * 4, 256, 8), 256, 0, stream>>>(
                data, scale, dec, static_cast<float*>(out), nblocks * 4); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace fp4dist_cuda
