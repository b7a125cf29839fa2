// Decoding NVFP4 codes into GEMM operands: e2m1(code) * float(scale) * d, rounded once to O. Shared by the decode
// launches (dequantize.cu) and the casts that write a decoded operand next to their codes (cast/cast_wide.cu), so
// both give the same bits.
#pragma once

#include "dtype_traits.cuh"
#include "numerics.cuh"

namespace fp4dist_cuda {

// The E2M1 value of code c (0..15, sign in bit 3): the table a kernel keeps in shared memory.
FP4_HD float e2m1_value(uint32_t c) {
  const uint32_t mag = c & 7u;
  const float v = mag < 4u ? 0.5f * static_cast<float>(mag) : (mag == 7u ? 6.0f : static_cast<float>(mag - 2u));
  return (c & 8u) ? -v : v;
}

template <typename O>
struct DequantIO;
template <>
struct DequantIO<__nv_bfloat16> {
  static constexpr int kG = 8;  // codes per 16-byte output vector
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

// kG codes (code i in nibble i of codes) decoded with the block scale's value f: lut[code] * f, then times dec
// when kDec, as one 16-byte vector.
template <typename O, bool kDec>
__device__ __forceinline__ uint4 dequant_scaled(uint32_t codes, float f, float dec, const float* lut) {
  constexpr int kG = DequantIO<O>::kG;
  float v[kG];
#pragma unroll
  for (int i = 0; i < kG; ++i) {
    const float scaled = lut[(codes >> (4 * i)) & 0xfu] * f;
    v[i] = kDec ? scaled * dec : scaled;
  }
  if constexpr (kG == 4) {
    return make_uint4(f2u(v[0]), f2u(v[1]), f2u(v[2]), f2u(v[3]));
  } else {
    return make_uint4(DequantIO<O>::pack(v[0], v[1]), DequantIO<O>::pack(v[2], v[3]),
                      DequantIO<O>::pack(v[4], v[5]), DequantIO<O>::pack(v[6], v[7]));
  }
}

// kG codes with scale byte s: (lut[code] * float(s)) * dec.
template <typename O>
__device__ __forceinline__ uint4 dequant_group(uint32_t codes, uint8_t s, float dec, const float* lut) {
  return dequant_scaled<O, true>(codes, e4m3_to_float(s), dec, lut);
}

// The same bits for a power of two dec (gemm_alpha's shift) that keeps every value finite: lut[code] * float(s) is
// exact, so multiplying it or the scale by the power of two gives one value; here the scale, once per group.
template <typename O>
__device__ __forceinline__ uint4 dequant_group_pow2(uint32_t codes, uint8_t s, float pow2, const float* lut) {
  return dequant_scaled<O, false>(codes, e4m3_to_float(s) * pow2, 1.0f, lut);
}

}  // namespace fp4dist_cuda
