// Per-dtype element access for the kernels (bf16, fp16, fp32 inputs), host + device like numerics.cuh.
// A "pair" P is two consecutive elements (one 32-bit word for 16-bit types, a float2 for fp32). Acc
// accumulates max of |x| as raw magnitude bits, which orders like the values and keeps NaN (NaN bits exceed
// inf bits), unlike fmaxf.
#pragma once

#include <type_traits>

#include "numerics.cuh"

namespace fp4dist_cuda {

template <typename T>
struct Tr;

template <>
struct Tr<__nv_bfloat16> {
  using P = uint32_t;
  using Acc = uint32_t;
  FP4_HD static float first(P p) { return u2f(prmt(p, 0u, 0x1044u)); }  // p << 16 as a byte move (ALU pipe)
  FP4_HD static float second(P p) { return u2f(p & 0xffff0000u); }
  FP4_HD static Acc acc_zero() { return 0u; }
  FP4_HD static void acc_add(Acc& c, P p) {
#ifdef __CUDA_ARCH__
    // per half: max(|c|, |p|), NaN if either is NaN; the sign bits are junk (masked below)
    asm("max.NaN.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(c) : "r"(c), "r"(p));
#else
    c = vmaxu2(c & 0x7fff7fffu, nan_canon16(p & 0x7fff7fffu, 0x7f80u, 0x7fffu));
#endif
  }
  FP4_HD static uint32_t first_bits(Acc c) { return (c & 0x7fffu) << 16; }  // fp32 bits of |max|
  FP4_HD static uint32_t second_bits(Acc c) { return c & 0x7fff0000u; }
  FP4_HD static P round_pair(float a, float b) {  // RNE to bf16, packed (a low)
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t u;
    std::memcpy(&u, &h, 4);
    return u;
  }
  FP4_HD static float load1(const void* p) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return u2f(static_cast<uint32_t>(b) << 16);
  }
  FP4_HD static void store1(void* p, float v) {  // v already representable
    uint16_t b = static_cast<uint16_t>(f2u(v) >> 16);
    std::memcpy(p, &b, 2);
  }
};

template <>
struct Tr<__half> {
  using P = uint32_t;
  using Acc = uint32_t;
  FP4_HD static float h2f(uint32_t bits16) {
    __half_raw r;
    r.x = static_cast<unsigned short>(bits16);
    return __half2float(__half(r));
  }
  FP4_HD static float first(P p) { return h2f(p & 0xffffu); }
  FP4_HD static float second(P p) { return h2f(p >> 16); }
  FP4_HD static Acc acc_zero() { return 0u; }
  FP4_HD static void acc_add(Acc& c, P p) {
#ifdef __CUDA_ARCH__
    asm("max.NaN.xorsign.abs.f16x2 %0, %1, %2;" : "=r"(c) : "r"(c), "r"(p));
#else
    c = vmaxu2(c & 0x7fff7fffu, nan_canon16(p & 0x7fff7fffu, 0x7c00u, 0x7fffu));
#endif
  }
  FP4_HD static uint32_t first_bits(Acc c) { return f2u(h2f(c & 0x7fffu)); }
  FP4_HD static uint32_t second_bits(Acc c) { return f2u(h2f((c >> 16) & 0x7fffu)); }
  FP4_HD static P round_pair(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    std::memcpy(&u, &h, 4);
    return u;
  }
  FP4_HD static float load1(const void* p) {
    uint16_t b;
    std::memcpy(&b, p, 2);
    return h2f(b);
  }
  FP4_HD static void store1(void* p, float v) {
    __half h = __float2half_rn(v);
    std::memcpy(p, &h, 2);
  }
};

template <>
struct Tr<float> {
  using P = float2;
  using Acc = uint2;
  FP4_HD static float first(P p) { return p.x; }
  FP4_HD static float second(P p) { return p.y; }
  FP4_HD static Acc acc_zero() { return make_uint2(0u, 0u); }
  FP4_HD static void acc_add(Acc& c, P p) {
    c.x = max_u32(c.x, f2u(p.x) & 0x7fffffffu);
    c.y = max_u32(c.y, f2u(p.y) & 0x7fffffffu);
  }
  FP4_HD static uint32_t first_bits(Acc c) { return c.x; }
  FP4_HD static uint32_t second_bits(Acc c) { return c.y; }
  FP4_HD static P round_pair(float a, float b) { return make_float2(a, b); }
  FP4_HD static float load1(const void* p) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  FP4_HD static void store1(void* p, float v) { std::memcpy(p, &v, 4); }
};

// Max of two accumulators. A 16-bit accumulator is itself a packed pair, so it merges like a pair; the fp32
// one holds magnitude bits per column.
template <typename TT>
FP4_HD typename TT::Acc acc_merge(typename TT::Acc a, typename TT::Acc b) {
  if constexpr (std::is_same<typename TT::Acc, typename TT::P>::value) {
    TT::acc_add(a, b);
  } else {
    a = make_uint2(max_u32(a.x, b.x), max_u32(a.y, b.y));
  }
  return a;
}

// Block max of N pairs with four independent accumulators (a short dependency chain).
template <typename TT, int N>
FP4_HD typename TT::Acc acc_of(const typename TT::P (&v)[N]) {
  static_assert(N >= 8 && N % 4 == 0, "every accumulator takes at least two pairs");
  typename TT::Acc a[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (std::is_same<typename TT::Acc, typename TT::P>::value) {
      a[k] = v[k];  // a packed 16-bit pair: the max below takes the magnitudes of both operands
    } else {
      a[k] = TT::acc_zero();
      TT::acc_add(a[k], v[k]);
    }
  }
#pragma unroll
  for (int k = 4; k < N; ++k) TT::acc_add(a[k & 3], v[k]);
  return acc_merge<TT>(acc_merge<TT>(a[0], a[1]), acc_merge<TT>(a[2], a[3]));
}

}  // namespace fp4dist_cuda
