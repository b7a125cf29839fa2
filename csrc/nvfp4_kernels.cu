// NVFP4 CUDA kernels of fp4dist (Hopper, sm_90).
//
// Bit-exact with fp4dist/backends/reference.py (see shared/docs/nvfp4-numerics.md and docs/kernels.md):
// same E2M1 codes, same E4M3 scale bytes, same amax. Build with -fmad=false and WITHOUT fast math / ftz:
// every product and sum below is meant as one IEEE fp32 operation, and S_dec can be subnormal.
//
// This file has no torch dependency: it exposes plain C++ launchers (namespace fp4dist_cuda) that
// csrc/bindings.cpp calls with raw pointers and the current stream. The numeric helpers are
// __host__ __device__ so they can also be checked on a CPU (compile with -DFP4DIST_NO_KERNELS).
//
// Kernels (sm_90 only; nothing here is sm_100-specific):
//   cast_wide_kernel<T, RHT, SR, kBoth>  bf16 / fp16 with 16-byte aligned rows (the default): one pass over
//                                    X in 512 x 512 units, a producer warp streaming 32-row sub-tiles
//   cast_kernel<T, RHT, SR, TM, RB>  the other casts (fp32, unaligned rows): one pass over X [m, n], both
//                                    layouts from one shared-memory tile of TM rows x RB bytes
//   amax_kernel<T>            max|X| (grid-stride, 16-byte loads, one atomicMax per CTA)
//   amax_rht_kernel<T, V>     max|X| and max|RHT(X^T)| (16-row strips, V columns per thread)
//   dequant_kernel<O>         e2m1 * float(scale) * S_dec -> bf16/fp16/fp32
//   swap_kernel<W>            [a, b, R bytes] -> [b, a, R bytes]

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define FP4_HD __host__ __device__ __forceinline__

namespace fp4dist_cuda {

// ------------------------------------------------------------------------------------------------
// Numerics (host + device)
// ------------------------------------------------------------------------------------------------

constexpr float kFltMax = 3.40282346638528859811704183484516925440e+38f;
constexpr float kInvSix = 1.0f / 6.0f;  // fp32(1/6), as torch.tensor(1.0) / 6.0

FP4_HD uint32_t f2u(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FP4_HD float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

FP4_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {  // byte i of the result = byte sel[i] of {b, a}
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
#else
  const uint64_t ab = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((ab >> (8 * ((sel >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
#endif
}

// Per-16-bit-lane unsigned max.
FP4_HD uint32_t vmaxu2(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __vmaxu2(a, b);
#else
  uint32_t lo = (a & 0xffffu) > (b & 0xffffu) ? (a & 0xffffu) : (b & 0xffffu);
  uint32_t hi = (a >> 16) > (b >> 16) ? (a >> 16) : (b >> 16);
  return lo | (hi << 16);
#endif
}

FP4_HD uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

// Host model of max.NaN on packed 16-bit magnitudes: a NaN half (bits above inf) becomes the
// canonical NaN 0x7fff, which exceeds every other magnitude, so an unsigned max keeps it.
FP4_HD uint32_t nan_canon16(uint32_t mag2, uint32_t inf_bits, uint32_t nan_bits) {
  uint32_t lo = mag2 & 0xffffu, hi = mag2 >> 16;
  if (lo > inf_bits) lo = nan_bits;
  if (hi > inf_bits) hi = nan_bits;
  return lo | (hi << 16);
}

// lowbias32 (fp4dist/rng.py).
FP4_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// S_enc = 2688 / amax; FLT_MAX where that overflows (NaN stays NaN); 1 where it is 0.
FP4_HD float global_encode_scale(float amax) {
  float s = 2688.0f / amax;
  if (s > kFltMax) s = kFltMax;
  if (s == 0.0f) s = 1.0f;
  return s;
}

FP4_HD float e4m3_to_float(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  return __half2float(__half(h));
}

// e4m3(clamp(min(x, FLT_MAX), -448, 448)) with RNE, for x >= 0 or NaN: the saturating conversion
// gives 448 for anything above 448 (inf included) and NaN (0x7F) for NaN, as the clamp + cast do.
FP4_HD uint16_t e4m3x2_satfinite(float lo, float hi) {
  return static_cast<uint16_t>(__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
}
FP4_HD uint8_t e4m3_satfinite(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

// e = min(1 / fp32(float(s) * S_dec), FLT_MAX) with NaN propagating (torch.minimum).
FP4_HD float block_encode_scale(uint8_t s, float s_dec) {
  float e = 1.0f / (e4m3_to_float(s) * s_dec);
  return e > kFltMax ? kFltMax : e;
}

// Round-down fp32 add (device: add.rm; host: exact double sum, then step down if rounded up).
FP4_HD float fadd_rd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rd(a, b);
#else
  double s = static_cast<double>(a) + static_cast<double>(b);  // exact for the operands used here
  float f = static_cast<float>(s);
  if (static_cast<double>(f) > s) f = u2f(f2u(f) - 1);           // positive operands only
  return f;
#endif
}

// |v| clamped to [0, 6], NaN -> 0. On the device fmaxf returns the non-NaN operand (max.f32); host
// compilers may vectorize fmaxf into maxps, which does not, so the host spells it out.
FP4_HD float e2m1_mag(float v) {
#ifdef __CUDA_ARCH__
  return fminf(fmaxf(fabsf(v), 0.0f), 6.0f);
#else
  const float a = std::fabs(v);
  return a != a ? 0.0f : (a > 6.0f ? 6.0f : a);
#endif
}

// Magic constants 1.5 * 2^k whose ulp is the E2M1 spacing of m's range: 0.5 on [0, 2), 1 on [2, 4),
// 2 on [4, 6]. m + magic rounds m to that grid; the bits of the sum minus (bits of magic - offset)
// give the code directly (offset 0, 2, 4 = the code of 0, 2, 4 relative to the grid origin).
struct E2M1Grid {
  float magic;
  uint32_t base;  // bits(magic) - code offset
};
FP4_HD E2M1Grid e2m1_grid(float m) {
  E2M1Grid g;
  if (m < 2.0f) {
    g.magic = 6291456.0f;   // 1.5 * 2^22, 0x4AC00000
    g.base = 0x4AC00000u;
  } else if (m < 4.0f) {
    g.magic = 12582912.0f;  // 1.5 * 2^23, 0x4B400000
    g.base = 0x4B400000u - 2u;
  } else {
    g.magic = 25165824.0f;  // 1.5 * 2^24, 0x4BC00000
    g.base = 0x4BC00000u - 4u;
  }
  return g;
}

// format.round_to_e2m1 of clamp(v, -6, 6): RNE to the E2M1 grid, sign bit iff v < 0, NaN -> 0.
// Not used by the kernels (they use e2m1_rn_fma / e2m1_rn_mag_fast); the reference of tests/host/fast_rn_check.cu.
FP4_HD uint32_t e2m1_rn(float v) {
  float m = e2m1_mag(v);
  E2M1Grid g = e2m1_grid(m);
  uint32_t code = f2u(m + g.magic) - g.base;
  return code | (v < 0.0f ? 8u : 0u);
}

// format.round_to_e2m1_stochastic of clamp(v, -6, 6) with one 32-bit random word.
FP4_HD uint32_t e2m1_sr(float v, uint32_t word) {
  float m = e2m1_mag(v);
  E2M1Grid g = e2m1_grid(m);
  float fl = fadd_rd(m, g.magic);      // magic + the grid point at or below m
  uint32_t lower = f2u(fl) - g.base;   // its code
  float low = fl - g.magic;            // its value (exact)
  float inv_step = m < 2.0f ? 2.0f : (m < 4.0f ? 1.0f : 0.5f);
  float frac = (m - low) * inv_step;   // exact; 0 at m == 6
  float r = static_cast<float>(word >> 8) * 5.9604644775390625e-08f;  // k * 2^-24, exact
  uint32_t code = lower + (r < frac ? 1u : 0u);
  return code | (v < 0.0f ? 8u : 0u);
}

FP4_HD float sat01(float x) {  // clamp to [0, 1], NaN -> 0 (PTX .sat)
#ifdef __CUDA_ARCH__
  return __saturatef(x);
#else
  return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x));
#endif
}

FP4_HD float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// RN code of v (format.round_to_e2m1 of clamp(v, -6, 6)) computed on the FMA pipe only.
// With a = |v| and the saturated pieces u0 = sat(a/2), u1 = sat(a/2 - 1), u2 = sat(a/2 - 2):
//   code = rint(4 u0) + rint(2 u1 + u2)   (= rint(2a) on [0, 2), rint(a) + 2 on [2, 4),
//                                             rint(a/2) + 4 on [4, 6], 7 above 6)
// s12 = 2 u1 + u2 is exact (u2 > 0 forces u1 = 1), and 4 u0 and s12 are never both fractional
// (s12 > 0 forces u0 = 1), so M + rint(4 u0) + s12 with M = 1.5 * 2^23 (ulp 1, even) rounds exactly
// once, ties to even, exactly as the thresholds do. The sign adds 8 iff v < 0 (sat(v * -inf): 1 for
// v < 0, 0 for v >= 0, -0 and NaN since 0 * inf is NaN); a NaN v gives all pieces 0, i.e. code 0.
// The result is the float M + code, whose bits are 0x4B400000 + code. Checked against the threshold
// form on every fp32 with |v| <= 8 and a sample of the rest (NaN, inf, huge).
constexpr uint32_t kRnMagicBits = 0x4B400000u;
#ifdef __CUDA_ARCH__
// Saturating ops spelled in PTX so that .sat stays fused into the FMUL / FFMA (one FMA-pipe op each).
__device__ __forceinline__ float mul_sat(float a, float b) {
  float r;
  asm("mul.rn.sat.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float fma_sat(float a, float b, float c) {
  float r;
  asm("fma.rn.sat.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
  return r;
}
#else
inline float mul_sat(float a, float b) { return sat01(a * b); }
inline float fma_sat(float a, float b, float c) { return sat01(std::fma(a, b, c)); }
#endif
FP4_HD float e2m1_rn_fma(float v) {
  const float sgn = mul_sat(v, -INFINITY);
  const float a = fabsf(v);
  // u_k = sat(a / 2 - k); a * 0.5 is exact unless a < 2^-125, where every piece is 0 anyway
  const float u0 = mul_sat(a, 0.5f), u1 = fma_sat(a, 0.5f, -1.0f), u2 = fma_sat(a, 0.5f, -2.0f);
  const float s12 = fma_rn(u1, 2.0f, u2);          // exact
  const float r = fma_rn(u0, 4.0f, 12582912.0f);   // M + rint(4 u0); M or M + 4 when s12 > 0
  return fma_rn(sgn, 8.0f, r + s12);
}

// Sum over the 8 nibbles of (kRnMagicBits << 4i) mod 2^32: packing 8 results by plain shifted adds
// leaves this constant on top of the 8 codes.
constexpr uint32_t rn_pack_bias() {
  uint32_t b = 0;
  for (int i = 0; i < 8; ++i) b += kRnMagicBits << (4 * i);
  return b;
}
constexpr uint32_t kRnPackBias = rn_pack_bias();

// Quantize 16 values with encode scale e; element i goes to nibble i of the 64-bit result
// (element 2j in the low nibble of byte j). word(i) gives the SR word of element i.
template <bool SR, typename XFn, typename WordFn>
FP4_HD uint2 quantize16_fn(XFn xf, float e, WordFn word) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const float v = xf(i) * e;
    const int sh = 4 * (i & 7);
    if constexpr (SR) {
      w[i >> 3] |= e2m1_sr(v, word(i)) << sh;
    } else {
      w[i >> 3] += f2u(e2m1_rn_fma(v)) << sh;  // the nibbles never carry; the bias is removed below
    }
  }
  if constexpr (!SR) {
    w[0] -= kRnPackBias;
    w[1] -= kRnPackBias;
  }
  return make_uint2(w[0], w[1]);
}

// ---- Fast RN path for blocks of 16-bit inputs ------------------------------------------------------
// Valid for a block whose products a = x * e all satisfy |a| < 7 and cannot underflow to -0 for a
// negative nonzero x: rn(bmax * e) < 7 and e >= 2^-16 (an fp32 product of a nonzero bf16, >= 2^-133,
// and e >= 2^-16 is >= 2^-149, so it is nonzero). NaN / inf blocks and blocks with saturating scales fail
// the test and take the general path (quantize16_fn).
//
// Magnitude: on [0, 7) the E2M1 code with RNE is rint(g(|a|)), g = min(2|a|, |a| + 2, |a|/2 + 4): g maps
// the grid {0, .5, 1, 1.5, 2, 3, 4, 6} to 0..7 and every tie to a half-integer whose even neighbour is the
// even code; (6, 7) maps into (7, 7.5). rint is monotone, so rint(g) = min of the three rints, each one
// FMA/FADD onto M = 1.5 * 2^23 (ulp 1) rounding the exact |a|-affine value once, ties to even. Result: the
// bits of M + code, kRnMagicBits + code. Checked on the host against e2m1_rn for every fp32 |a| < 7.
FP4_HD uint32_t e2m1_rn_mag_fast(float a) {
  const float m = fabsf(a);
  const float c1 = fma_rn(m, 2.0f, 12582912.0f);
  const float c2 = m + 12582914.0f;
  const float c3 = fma_rn(m, 0.5f, 12582916.0f);
  return f2u(fminf(fminf(c1, c2), c3));
}
constexpr float kFastMaxProduct = 7.0f;
constexpr float kFastMinScale = 1.52587890625e-05f;  // 2^-16
FP4_HD bool rn_fast_ok(float bmax, float e) { return bmax * e < kFastMaxProduct && e >= kFastMinScale; }

// Sign bits: set.lt on a packed pair of 16-bit values read as bf16 gives bf16 1.0 (0x3F80) in each half
// that is negative and nonzero (the sign bit alone, i.e. -0, is not < 0). For fp16 inputs the same
// predicate holds for every finite value (NaN and inf blocks take the general path). In a 0x3F80 half the
// low byte is 0x80 (bit 7) and the high byte 0x3F (bit 3 set): byte moves (prmt) place the flags at bit 3
// (even element) and bit 7 (odd element) of each output byte.
FP4_HD uint32_t neg_flags2(uint32_t p) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("set.lt.bf16x2.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(p), "r"(0u));
  return r;
#else
  auto neg = [](uint32_t h) { return (h & 0x8000u) && (h & 0x7fffu) != 0 && (h & 0x7fffu) <= 0x7f80u; };
  return (neg(p & 0xffffu) ? 0x3f80u : 0u) | (neg(p >> 16) ? 0x3f800000u : 0u);
#endif
}
// Sign bits of 8 consecutive elements held as 4 pairs (element 2j in the low half of p[j]): bit 3 of byte j
// for element 2j, bit 7 for element 2j + 1 (the nibble layout of the codes).
FP4_HD uint32_t sign_bits_pairs(uint32_t p0, uint32_t p1, uint32_t p2, uint32_t p3) {
  const uint32_t a = prmt(neg_flags2(p0), neg_flags2(p1), 0x6251u);  // [lo0 hi-byte, lo1 hi-byte, hi0 lo-byte, hi1 lo-byte]
  const uint32_t b = prmt(neg_flags2(p2), neg_flags2(p3), 0x6251u);
  return (prmt(a, b, 0x5410u) & 0x08080808u) | prmt(a, b, 0x7632u);
}
// Sign bits of two columns (low / high halves of p[k], k = row) over 8 rows: .x column of the low halves,
// .y of the high halves, same layout as above with element = row.
FP4_HD uint2 sign_bits_columns(const uint32_t (&p)[8]) {
  uint32_t f[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) f[k] = neg_flags2(p[k]);
  // rows 4h + {0, 2} give bit 3, rows 4h + {1, 3} bit 7: t_h = [lo bytes 0-1, hi bytes 0-1] of rows 4h..4h+3
  const uint32_t t0 = (prmt(f[0], f[2], 0x7351u) & 0x08080808u) | prmt(f[1], f[3], 0x6240u);
  const uint32_t t1 = (prmt(f[4], f[6], 0x7351u) & 0x08080808u) | prmt(f[5], f[7], 0x6240u);
  return make_uint2(prmt(t0, t1, 0x5410u), prmt(t0, t1, 0x7632u));
}

// 16 values with encode scale e on the fast path; element i to nibble i, sign bits s0 (elements 0-7) and
// s1 (8-15) from the functions above.
template <typename XFn>
FP4_HD uint2 quantize16_rn_fast(XFn xf, float e, uint32_t s0, uint32_t s1) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < 16; ++i) w[i >> 3] += e2m1_rn_mag_fast(xf(i) * e) << (4 * (i & 7));
  return make_uint2(w[0] - kRnPackBias + s0, w[1] - kRnPackBias + s1);
}

// 16-point RHT of a chunk, in place: signs, butterfly h = 1, 2, 4, 8 ((a, b) -> (a + b, a - b)),
// then * 0.25 (fp32). The caller rounds the result to the input dtype.
// d = [1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1]: bit i of the mask set where d[i] = -1.
constexpr uint32_t kRhtNegMask = 0xD7E8u;

FP4_HD void rht16(float (&a)[16]) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    if ((kRhtNegMask >> i) & 1u) a[i] = -a[i];
  }
#pragma unroll
  for (int h = 1; h < 16; h *= 2) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      if ((i & h) == 0) {
        float x = a[i], y = a[i + h];
        a[i] = x + y;
        a[i + h] = x - y;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 16; ++i) a[i] = a[i] * 0.25f;
}

// ------------------------------------------------------------------------------------------------
// Per-dtype element access. A "pair" P is two consecutive elements (one 32-bit word for 16-bit
// types, a float2 for fp32). Acc accumulates max of |x| as raw magnitude bits, which orders like the
// values and keeps NaN (NaN bits exceed inf bits), unlike fmaxf.
// ------------------------------------------------------------------------------------------------

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

#ifndef FP4DIST_NO_KERNELS

// ------------------------------------------------------------------------------------------------
// Device helpers
// ------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int size = valid ? 16 : 0;  // 0: fill with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(size) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ------------------------------------------------------------------------------------------------
// Cast kernel
//
// A CTA of 256 threads loops over tiles of X (tile rows of 256 bytes):
//   bf16/fp16: (64 K) rows x 128 cols, fp32: 128 rows x 64 cols (K = 1 or 2, a template parameter),
// double-buffered in shared memory with cp.async (the next tile loads while this one is computed).
// Per tile:
//   column phase: task (column pair p, 16-row group rb) reads its 16 x 2 values (4- or 8-byte shared
//     loads, conflict-free), optionally RHTs the two 16-chunks, quantizes two columnwise blocks and
//     stages 2 x 8 code bytes + 2 scale bytes in shared memory. With 16x16 tiles it also reduces the
//     tile max over 8 lanes (16 columns) and leaves it in shared memory for the row phase.
//   row phase: a task quantizes one rowwise block (16 consecutive elements of one row) and writes its
//     8 code bytes and its scale byte straight to global memory (8 lanes = one contiguous 64-byte row
//     segment); the staged columnwise codes then go out as 16-byte stores (32 K bytes per column and
//     tile) and the staged columnwise scales as one 4- or 8-byte store per column.
// Two barriers per tile: S1 (tile landed, previous tile done: the prefetch of the next tile into the
// other buffer is issued right after it) and S2 (column stage complete).
// RN blocks of 16-bit inputs whose products stay below 7 take the fast path (quantize16_rn_fast: 3 FMA-pipe
// roundings + 2 min per element, sign bits from packed compares); the others (NaN / inf / saturating
// scales, fp32 inputs, SR) take the general path (quantize16_fn). Both give the same bits.
// ------------------------------------------------------------------------------------------------

constexpr int kThreads = 256;

struct CastParams {
  const void* x;
  int64_t m, n;
  const float* amax;  // [2]: rowwise, columnwise
  uint8_t* rd;        // [m, n/2]
  uint8_t* rs;        // [m, n/16]
  uint8_t* cd;        // [n, m/2]
  uint8_t* cs;        // [n, m/16]
  int do_row, do_col, block_2d;
  int vec_ok;         // x 16-byte aligned and n * sizeof(T) % 16 == 0
  int col_scale_vec;  // columnwise scale segments likewise
  int col_data_vec;   // columnwise 32-row chunks can be written as one 16-byte store
  uint32_t key_row, key_col, row_offset;
  uint32_t tiles_x, tiles_y, num_tiles;
  uint32_t group_rows;  // tile order: groups of this many tile rows, column-major inside a group
  uint32_t group_shift; // log2(group_rows) if a power of two, else 32
};

// Tile order: tiles are visited in groups of G = group_rows tile rows; inside a group the tile row varies
// fastest, so the CTAs in flight cover G tile rows x (grid / G) tile columns: longer contiguous runs per
// column of the columnwise output, shorter ones per row of the input (G = 1: plain row-major order).
// A CTA walks tiles blockIdx.x, + gridDim.x, ...; the cursor follows the walk with additions only
// (no division per tile, except by the rows of a last, partial group).
struct TileCursor {
  uint32_t g, r;         // group, index of the tile inside the group
  uint32_t rows_g, size; // tile rows in group g, tiles in group g
};
__device__ __forceinline__ void cursor_fix(const CastParams& p, TileCursor& c) {
  while (c.r >= c.size && c.size > 0) {
    c.r -= c.size;
    ++c.g;
    const uint32_t first = c.g * p.group_rows;
    c.rows_g = first < p.tiles_y ? min(p.group_rows, p.tiles_y - first) : 0u;
    c.size = c.rows_g * p.tiles_x;
  }
}
__device__ __forceinline__ TileCursor cursor_at(const CastParams& p, uint32_t tile) {
  TileCursor c;
  c.g = 0;
  c.r = tile;
  c.rows_g = min(p.group_rows, p.tiles_y);
  c.size = c.rows_g * p.tiles_x;
  cursor_fix(p, c);
  return c;
}
__device__ __forceinline__ void cursor_coords(const CastParams& p, const TileCursor& c, uint32_t& ty, uint32_t& tx) {
  tx = (c.rows_g == p.group_rows && p.group_shift < 32) ? c.r >> p.group_shift : c.r / c.rows_g;
  ty = c.g * p.group_rows + (c.r - tx * c.rows_g);
}

// A tile is TM rows x RB bytes of X: TN = RB / sizeof(T) columns.
template <typename T, int TM, int RB>
struct TileShape {
  static constexpr int kRB = RB;                                            // bytes per tile row
  static constexpr int kTN = RB / static_cast<int>(sizeof(T));              // columns
  static constexpr int kTM = TM;                                            // rows
  static constexpr int kBPR = kTN / 16;                                     // row blocks per tile row
  static constexpr int kNPair = kTN / 2;                                    // column pairs
  static constexpr int kNRB = kTM / 16;                                     // 16-row groups
  static constexpr int kTileBytes = kTM * kRB;
  static constexpr int kRowTasks = kTM * kBPR / kThreads;                   // row blocks per thread
  static constexpr int kColTasks = kNPair * kNRB / kThreads;                // column tasks per thread
  static constexpr int kCPC = kNRB / 2;                                     // 16-byte chunks per column
  static constexpr int kColChunks = kTN * kCPC / kThreads;                  // per thread
  static constexpr int kColStageBytes = kNRB * kNPair * 16;
  // tiles x2, column code stage, column scale stage, 2 x 128 encode scales, 16x16-tile maxima
  static constexpr int kSmemBytes = 2 * kTileBytes + kColStageBytes + kTN * kNRB + 2 * 128 * 4 + kNRB * kBPR * 4;
  static_assert(kNPair * kNRB % kThreads == 0 && kTM * kBPR % kThreads == 0 && kTN * kCPC % kThreads == 0,
                "tile tasks must divide evenly among the threads");
  static_assert(kNPair % 32 == 0, "a warp's column tasks share one 16-row group");
};

// ---- Per-block work shared by the cast kernels ----------------------------------------------------------
// A columnwise task holds columns ca, ca + 1 over 16 rows as 16 packed pairs raw[k] (row k); a rowwise block
// holds 16 consecutive elements of one row as 8 packed pairs v. Codes: element i in nibble i (columnwise:
// .x/.y column ca, .z/.w column ca + 1). grow: global row of the first element, before row_offset.

// Block maxima (fp32 magnitude bits) of a columnwise task; with RHT, raw becomes the RHT'd pairs rounded to T
// (one rounding from fp32) and the maxima are theirs.
template <typename T, bool RHT>
__device__ __forceinline__ void column_maxima(typename Tr<T>::P (&raw)[16], uint32_t& bits_a, uint32_t& bits_b) {
  using TT = Tr<T>;
  if constexpr (RHT) {
    float a[16], b[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      a[k] = TT::first(raw[k]);
      b[k] = TT::second(raw[k]);
    }
    rht16(a);
    rht16(b);
#pragma unroll
    for (int k = 0; k < 16; ++k) raw[k] = TT::round_pair(a[k], b[k]);
  }
  const typename TT::Acc acc = acc_of<TT>(raw);
  bits_a = TT::first_bits(acc);
  bits_b = TT::second_bits(acc);
}

template <typename T>
__device__ __forceinline__ uint32_t row_maximum(const typename Tr<T>::P (&v)[8]) {
  const typename Tr<T>::Acc acc = acc_of<Tr<T>>(v);
  return max_u32(Tr<T>::first_bits(acc), Tr<T>::second_bits(acc));
}

// Fast RN path (16-bit inputs, both blocks passing rn_fast_ok).
template <typename T>
__device__ __forceinline__ uint4 column_codes_fast(const uint32_t (&raw)[16], float ea, float eb) {
  uint32_t top[8], bottom[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    top[k] = raw[k];
    bottom[k] = raw[k + 8];
  }
  const uint2 sg_top = sign_bits_columns(top), sg_bottom = sign_bits_columns(bottom);
  const uint2 qa = quantize16_rn_fast([&](int k) { return Tr<T>::first(raw[k]); }, ea, sg_top.x, sg_bottom.x);
  const uint2 qb = quantize16_rn_fast([&](int k) { return Tr<T>::second(raw[k]); }, eb, sg_top.y, sg_bottom.y);
  return make_uint4(qa.x, qa.y, qb.x, qb.y);
}
template <typename T>
__device__ __forceinline__ uint2 row_codes_fast(const uint32_t (&v)[8], float e) {
  return quantize16_rn_fast([&](int i) { return (i & 1) ? Tr<T>::second(v[i >> 1]) : Tr<T>::first(v[i >> 1]); }, e,
                            sign_bits_pairs(v[0], v[1], v[2], v[3]), sign_bits_pairs(v[4], v[5], v[6], v[7]));
}

// General path: any block, RN or SR.
// key: the SR stream key (p.key_col for the columnwise layout).
template <typename T, bool SR>
__device__ __forceinline__ uint4 column_codes(const CastParams& p, const typename Tr<T>::P (&raw)[16], float ea,
                                              float eb, uint32_t grow, uint32_t ca, uint32_t key) {
  uint32_t hrow[16] = {};
  if constexpr (SR) {
#pragma unroll
    for (int k = 0; k < 16; ++k) hrow[k] = mix32(key ^ (p.row_offset + grow + k));
  }
  const uint32_t cb = ca + 1;
  const uint2 qa = quantize16_fn<SR>([&](int k) { return Tr<T>::first(raw[k]); }, ea,
                                     [&](int k) { return mix32(hrow[k] ^ ca); });
  const uint2 qb = quantize16_fn<SR>([&](int k) { return Tr<T>::second(raw[k]); }, eb,
                                     [&](int k) { return mix32(hrow[k] ^ cb); });
  return make_uint4(qa.x, qa.y, qb.x, qb.y);
}
template <typename T, bool SR>
__device__ __forceinline__ uint2 row_codes(const CastParams& p, const typename Tr<T>::P (&v)[8], float e, uint32_t grow,
                                           uint32_t cbase) {
  uint32_t hr = 0;
  if constexpr (SR) hr = mix32(p.key_row ^ (p.row_offset + grow));
  return quantize16_fn<SR>([&](int i) { return (i & 1) ? Tr<T>::second(v[i >> 1]) : Tr<T>::first(v[i >> 1]); }, e,
                           [&](int i) { return mix32(hr ^ (cbase + i)); });
}

// Max over the 8 lanes (16 columns) of a 16x16 tile.
__device__ __forceinline__ uint32_t tile_max8(uint32_t t) {
  t = max_u32(t, __shfl_xor_sync(0xffffffffu, t, 1));
  t = max_u32(t, __shfl_xor_sync(0xffffffffu, t, 2));
  return max_u32(t, __shfl_xor_sync(0xffffffffu, t, 4));
}

// Codes of a columnwise task (columns a, b, encode scales ea, eb) or of a rowwise block (e): the fast path
// where every block passes rn_fast_ok, else the general path. bits: block maxima (fp32 magnitude bits).
template <typename T, bool SR>
__device__ __forceinline__ uint4 column_block_codes(const CastParams& p, const typename Tr<T>::P (&raw)[16],
                                                    uint32_t bits_a, uint32_t bits_b, float ea, float eb,
                                                    uint32_t grow, uint32_t ca, uint32_t key) {
  if constexpr (!SR && sizeof(T) == 2) {
    if (rn_fast_ok(u2f(bits_a), ea) && rn_fast_ok(u2f(bits_b), eb)) return column_codes_fast<T>(raw, ea, eb);
  }
  return column_codes<T, SR>(p, raw, ea, eb, grow, ca, key);
}
template <typename T, bool SR>
__device__ __forceinline__ uint2 row_block_codes(const CastParams& p, const typename Tr<T>::P (&v)[8], uint32_t bits,
                                                 float e, uint32_t grow, uint32_t cbase) {
  if constexpr (!SR && sizeof(T) == 2) {
    if (rn_fast_ok(u2f(bits), e)) return row_codes_fast<T>(v, e);
  }
  return row_codes<T, SR>(p, v, e, grow, cbase);
}

// Transposes the codes of a 16x16 tile held by the 8 lanes t = lane % 8 of a lane group. In: lane t's columnwise
// codes of columns 2t, 2t + 1 (as column_codes returns them: .x / .y rows 0-7 / 8-15 of column 2t, .z / .w of
// column 2t + 1). Out: rows 2t (.x, .y) and 2t + 1 (.z, .w) of the tile in the rowwise layout (byte j = columns
// 2j, 2j + 1, low nibble first). Byte (row r; columns 2t, 2t + 1) travels to lane r / 2 in three exchanges
// with lane ^ 1, ^ 2, ^ 4: each moves half of a lane's 16 bytes, those whose destination differs in that bit.
__device__ __forceinline__ uint4 tile_rows_from_columns(const uint4 c, int lane) {
  // e0 / o0: rows 0, 2, 4, 6 / 1, 3, 5, 7 (byte q: row 2q / 2q + 1); e1 / o1: rows 8-15 likewise
  uint32_t e0 = (c.x & 0x0F0F0F0Fu) | ((c.z << 4) & 0xF0F0F0F0u);
  uint32_t o0 = ((c.x >> 4) & 0x0F0F0F0Fu) | (c.z & 0xF0F0F0F0u);
  uint32_t e1 = (c.y & 0x0F0F0F0Fu) | ((c.w << 4) & 0xF0F0F0F0u);
  uint32_t o1 = ((c.y >> 4) & 0x0F0F0F0Fu) | (c.w & 0xF0F0F0F0u);
  {  // destination lane bit 0 = byte bit 0: keep the bytes whose bit 0 is this lane's, swap the others
    const bool x = lane & 1;
    const uint32_t send = x ? 0x6420u : 0x7531u, keep_e = x ? 0x3514u : 0x5240u, keep_o = x ? 0x3716u : 0x7260u;
    const uint32_t r0 = __shfl_xor_sync(0xffffffffu, prmt(e0, o0, send), 1);
    const uint32_t r1 = __shfl_xor_sync(0xffffffffu, prmt(e1, o1, send), 1);
    e0 = prmt(e0, r0, keep_e), o0 = prmt(o0, r0, keep_o), e1 = prmt(e1, r1, keep_e), o1 = prmt(o1, r1, keep_o);
  }
  {  // destination lane bit 1 = byte bit 1
    const bool x = lane & 2;
    const uint32_t send = x ? 0x5410u : 0x7632u, keep_e = x ? 0x3254u : 0x5410u, keep_o = x ? 0x3276u : 0x7610u;
    const uint32_t r0 = __shfl_xor_sync(0xffffffffu, prmt(e0, o0, send), 2);
    const uint32_t r1 = __shfl_xor_sync(0xffffffffu, prmt(e1, o1, send), 2);
    e0 = prmt(e0, r0, keep_e), o0 = prmt(o0, r0, keep_o), e1 = prmt(e1, r1, keep_e), o1 = prmt(o1, r1, keep_o);
  }
  {  // destination lane bit 2 = word (rows 0-7 or 8-15)
    const bool x = lane & 4;
    const uint32_t r0 = __shfl_xor_sync(0xffffffffu, x ? e0 : e1, 4);
    const uint32_t r1 = __shfl_xor_sync(0xffffffffu, x ? o0 : o1, 4);
    if (x) {
      e0 = r0, o0 = r1;
    } else {
      e1 = r0, o1 = r1;
    }
  }
  return make_uint4(e0, e1, o0, o1);
}

// A columnwise task. With 16x16 tiles the tile max of the input (before any RHT) goes to *tile_max (written
// by the first lane of each 8); with do_col the two blocks are quantized: codes, scales = byte of ca | of
// ca + 1 << 8. etab_c: encode scales by scale byte.
template <typename T, bool RHT, bool SR>
__device__ __forceinline__ void column_pair(const CastParams& p, typename Tr<T>::P (&raw)[16], float k_col,
                                            const float* etab_c, uint32_t grow, uint32_t ca, int lane,
                                            uint32_t* tile_max, uint4& codes, uint16_t& scales) {
  uint32_t bits_a = 0, bits_b = 0, tile_in = 0;  // tile_in: 16x16 tile max of the input (before any RHT)
  if constexpr (RHT) {
    if (p.block_2d) {
      uint32_t a, b;
      column_maxima<T, false>(raw, a, b);
      tile_in = tile_max8(max_u32(a, b));
    }
  } else {
    column_maxima<T, false>(raw, bits_a, bits_b);
    if (p.block_2d) tile_in = tile_max8(max_u32(bits_a, bits_b));
  }
  if (p.block_2d && (lane & 7) == 0) *tile_max = tile_in;
  if (!p.do_col) return;
  if constexpr (RHT) {
    column_maxima<T, true>(raw, bits_a, bits_b);
    if (p.block_2d) bits_a = bits_b = tile_max8(max_u32(bits_a, bits_b));
  } else {
    if (p.block_2d) bits_a = bits_b = tile_in;
  }
  scales = e4m3x2_satfinite(u2f(bits_a) * k_col, u2f(bits_b) * k_col);
  const uint32_t sa = scales & 127, sb = (scales >> 8) & 127;
  codes = column_block_codes<T, SR>(p, raw, bits_a, bits_b, etab_c[sa], etab_c[sb], grow, ca, p.key_col);
}

// A rowwise block at column cbase. bits_2d: the 16x16 tile max (fp32 magnitude bits) when p.block_2d.
// Returns the codes, the scale byte in s.
template <typename T, bool SR>
__device__ __forceinline__ uint2 row_block(const CastParams& p, const typename Tr<T>::P (&v)[8], uint32_t bits_2d,
                                           float k_row, const float* etab_r, uint32_t grow, uint32_t cbase,
                                           uint8_t& s) {
  const uint32_t bits = p.block_2d ? bits_2d : row_maximum<T>(v);
  s = e4m3_satfinite(u2f(bits) * k_row);
  const float e = etab_r[s & 127];
  return row_block_codes<T, SR>(p, v, bits, e, grow, cbase);
}

// Loads the tile at (ty, tx) into buf: 16-byte cp.async (zero-filled outside X) when vec_ok, else element
// loads. A thread's chunks are one 16-byte column of the tile, kRowsPerPass rows apart.
template <typename T, int TM, int RB>
__device__ __forceinline__ void load_tile(const CastParams& p, uint8_t* buf, uint32_t ty, uint32_t tx) {
  using S = TileShape<T, TM, RB>;
  const int r0 = static_cast<int>(ty) * S::kTM, c0 = static_cast<int>(tx) * S::kTN;
  const int rows = min(S::kTM, static_cast<int>(p.m) - r0), cols = min(S::kTN, static_cast<int>(p.n) - c0);
  const T* xt = static_cast<const T*>(p.x) + static_cast<int64_t>(r0) * p.n + c0;
  constexpr int kVec = 16 / sizeof(T);
  if (p.vec_ok) {
    constexpr int kChunksPerRow = RB / 16, kRowsPerPass = kThreads / kChunksPerRow;
    constexpr int kChunks = S::kTileBytes / 16 / kThreads;
    static_assert(kThreads % kChunksPerRow == 0, "a pass must cover whole tile rows");
    const int row = threadIdx.x / kChunksPerRow, cc = threadIdx.x % kChunksPerRow;
    const char* src = reinterpret_cast<const char*>(xt + static_cast<int64_t>(row) * p.n + cc * kVec);
    const int64_t step = static_cast<int64_t>(kRowsPerPass) * p.n * static_cast<int64_t>(sizeof(T));
    uint8_t* dst = buf + row * RB + cc * 16;
    if (rows == S::kTM && cols == S::kTN) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) cp_async16(dst + i * kRowsPerPass * RB, src + i * step, true);
    } else {
      const bool col_ok = cc * kVec < cols;
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const bool valid = col_ok && row + i * kRowsPerPass < rows;
        cp_async16(dst + i * kRowsPerPass * RB, valid ? src + i * step : reinterpret_cast<const char*>(xt), valid);
      }
    }
  } else {
    for (int q = threadIdx.x; q < S::kTM * S::kTN; q += kThreads) {
      const int row = q / S::kTN, col = q % S::kTN;
      float v = 0.0f;
      if (row < rows && col < cols) v = Tr<T>::load1(xt + static_cast<int64_t>(row) * p.n + col);
      Tr<T>::store1(buf + row * RB + col * sizeof(T), v);
    }
  }
}

// Register caps: RN kernels 80 registers (3 CTAs per SM, as shared memory allows for 128-row tiles), SR
// kernels (hashes) 128 (2 CTAs per SM).
template <bool SR>
constexpr int cast_min_ctas() { return SR ? 2 : 3; }

template <typename T, bool RHT, bool SR, int TM, int RB>
__global__ void __launch_bounds__(kThreads, cast_min_ctas<SR>()) cast_kernel(const CastParams p) {
  using S = TileShape<T, TM, RB>;
  using TT = Tr<T>;
  using P = typename TT::P;
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* bufs = smem;
  uint4* col_stage = reinterpret_cast<uint4*>(smem + 2 * S::kTileBytes);           // [NRB][NPair]
  uint8_t* col_sstage = smem + 2 * S::kTileBytes + S::kColStageBytes;              // [TN][NRB]
  float* etab = reinterpret_cast<float*>(col_sstage + S::kTN * S::kNRB);           // [2][128]
  uint32_t* tamax = reinterpret_cast<uint32_t*>(etab + 256);                       // [NRB][BPR]

  const int tid = threadIdx.x;
  const int lane = tid & 31;

  // Global scales (device-side; no host sync). Row: amax[0], column: amax[1].
  const float senc_r = global_encode_scale(p.amax[0]);
  const float senc_c = global_encode_scale(p.amax[1]);
  const float k_row = senc_r * kInvSix, k_col = senc_c * kInvSix;
  // Encode scale e of every scale byte a block can get: bmax * k >= 0 or NaN, so s <= 0x7F.
  etab[tid] = block_encode_scale(static_cast<uint8_t>(tid & 127), (tid < 128 ? 1.0f / senc_r : 1.0f / senc_c));
  const float* etab_r = etab;
  const float* etab_c = etab + 128;

  uint32_t tile = blockIdx.x;
  TileCursor cur = cursor_at(p, tile);
  uint32_t ty = 0, tx = 0;
  if (tile < p.num_tiles) {
    cursor_coords(p, cur, ty, tx);
    load_tile<T, TM, RB>(p, bufs, ty, tx);
  }
  cp_async_commit();

  for (int it = 0; tile < p.num_tiles; ++it, tile += gridDim.x) {
    const int r0 = static_cast<int>(ty) * S::kTM, c0 = static_cast<int>(tx) * S::kTN;
    cp_async_wait<0>();
    __syncthreads();  // S1: this tile is in shared memory; every thread is done with the previous tile
    {
      cur.r += gridDim.x;  // prefetch the next tile into the other buffer (free since S1)
      cursor_fix(p, cur);
      if (tile + gridDim.x < p.num_tiles) {
        cursor_coords(p, cur, ty, tx);
        load_tile<T, TM, RB>(p, bufs + ((it + 1) & 1) * S::kTileBytes, ty, tx);
      }
      cp_async_commit();
    }

    const uint8_t* buf = bufs + (it & 1) * S::kTileBytes;
    const int rows = min(S::kTM, static_cast<int>(p.m) - r0);  // valid rows / cols of this tile
    const int cols = min(S::kTN, static_cast<int>(p.n) - c0);


    // ---------------- column phase ----------------
    if (p.do_col || p.block_2d) {
#pragma unroll
      for (int j = 0; j < S::kColTasks; ++j) {
        const int task = tid + j * kThreads;
        const int pp = task % S::kNPair, rb = task / S::kNPair;
        const int cl = 2 * pp, lr = rb * 16;
        P raw[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) raw[k] = *reinterpret_cast<const P*>(buf + (lr + k) * RB + cl * sizeof(T));
        uint4 codes;
        uint16_t scales;
        column_pair<T, RHT, SR>(p, raw, k_col, etab_c, static_cast<uint32_t>(r0 + lr),
                                static_cast<uint32_t>(c0 + cl), lane, tamax + rb * S::kBPR + pp / 8, codes, scales);
        if (p.do_col) {
          col_stage[rb * S::kNPair + pp] = codes;
          col_sstage[cl * S::kNRB + rb] = static_cast<uint8_t>(scales);
          col_sstage[(cl + 1) * S::kNRB + rb] = static_cast<uint8_t>(scales >> 8);
        }
      }
    }
    __syncthreads();  // S2: column stage and tile maxima complete

    // ---------------- row phase: codes and scales straight to global memory ----------------
    if (p.do_row) {
      // A thread's row blocks share one column block (blk) and are kRowStep rows apart.
      constexpr int kRowStep = kThreads / S::kBPR;
      const int blk = tid % S::kBPR, row0 = tid / S::kBPR;
      const int64_t rstride = p.n / 2, sstride = p.n / 16;
      uint8_t* rd_p = p.rd + static_cast<int64_t>(r0 + row0) * rstride + c0 / 2 + blk * 8;
      uint8_t* rs_p = p.rs + static_cast<int64_t>(r0 + row0) * sstride + c0 / 16 + blk;
      const P* src = reinterpret_cast<const P*>(buf + row0 * RB + blk * 16 * sizeof(T));
      const bool blk_ok = blk * 16 < cols;
#pragma unroll 2
      for (int row = row0; row < rows && blk_ok;
           row += kRowStep, rd_p += kRowStep * rstride, rs_p += kRowStep * sstride, src += kRowStep * RB / sizeof(P)) {
        P v[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = src[q];
        uint8_t s;
        const uint2 q = row_block<T, SR>(p, v, p.block_2d ? tamax[(row / 16) * S::kBPR + blk] : 0u, k_row, etab_r,
                                         static_cast<uint32_t>(r0 + row), static_cast<uint32_t>(c0 + blk * 16), s);
        *reinterpret_cast<uint2*>(rd_p) = q;
        *rs_p = s;
      }
    }

    // ---------------- columnwise write-out from the stage ----------------
    // A thread moves 16-byte chunks (32 rows of one column: h = chunk % kCPC) kThreads / kCPC columns apart.
    if (p.do_col) {
      const int64_t cstride = p.m / 2;
      constexpr int kColStep = kThreads / S::kCPC;
      const int col0 = tid / S::kCPC, h = tid % S::kCPC;
      uint8_t* dst = p.cd + static_cast<int64_t>(c0 + col0) * cstride + r0 / 2 + 16 * h;
      const uint2* st = reinterpret_cast<const uint2*>(col_stage) + ((2 * h) * S::kNPair + col0 / 2) * 2 + (col0 & 1);
      constexpr int kPartStride = S::kNPair * 2;  // uint2 entries between 16-row groups 2h and 2h + 1
      static_assert(kColStep % 2 == 0, "a thread's columns keep their parity");
      if (rows == S::kTM && cols == S::kTN && p.col_data_vec) {
#pragma unroll
        for (int j = 0; j < S::kColChunks; ++j) {
          const uint2 part0 = st[j * kColStep], part1 = st[j * kColStep + kPartStride];
          *reinterpret_cast<uint4*>(dst + j * kColStep * cstride) = make_uint4(part0.x, part0.y, part1.x, part1.y);
        }
      } else {
#pragma unroll
        for (int j = 0; j < S::kColChunks; ++j) {
          const int col = col0 + j * kColStep;
          if (col < cols && 32 * h < rows) {
            const uint2 part0 = st[j * kColStep];
            uint8_t* d = dst + j * kColStep * cstride;
            if (32 * h + 16 < rows) {
              const uint2 part1 = st[j * kColStep + kPartStride];
              if (p.col_data_vec) {
                *reinterpret_cast<uint4*>(d) = make_uint4(part0.x, part0.y, part1.x, part1.y);
              } else {
                reinterpret_cast<uint2*>(d)[0] = part0;
                reinterpret_cast<uint2*>(d)[1] = part1;
              }
            } else {
              *reinterpret_cast<uint2*>(d) = part0;
            }
          }
        }
      }
      if (tid < cols) {
        const uint8_t* ss = col_sstage + tid * S::kNRB;
        uint8_t* sdst = p.cs + static_cast<int64_t>(c0 + tid) * (p.m / 16) + r0 / 16;
        if (p.col_scale_vec) {
#pragma unroll
          for (int q = 0; q < S::kNRB / 4; ++q)
            reinterpret_cast<uint32_t*>(sdst)[q] = reinterpret_cast<const uint32_t*>(ss)[q];
        } else {
          for (int rb = 0; rb < S::kNRB && 16 * rb < rows; ++rb) sdst[rb] = ss[rb];
        }
      }
    }
  }
  cp_async_wait<0>();
}

// ------------------------------------------------------------------------------------------------
// Wide cast kernel (bf16 / fp16 inputs, the default for them)
//
// Why: the 128 x 128 kernel above writes its scales 8 bytes per row / column per tile (a quarter of a
// 32-byte sector) and re-synchronizes the CTA twice per tile; on the H100, with its quantization switched
// off, it still ran at 61% of copy bandwidth, 76% with the same scales in whole sectors (docs/benchmarks.md).
// Here every global write covers whole sectors:
//   unit = 512 rows x 512 columns of X, visited by one CTA as 16 sub-tiles of 32 rows (32 KB each);
//   rowwise: a warp quantizes one row of a sub-tile (32 lanes x 16 columns) and writes 256 contiguous code
//     bytes and 32 contiguous scale bytes;
//   columnwise: codes are staged per 128 rows (64 bytes per column, 4 lanes per column), scales for the
//     whole unit (32 bytes per column, 2 lanes per column).
// One CTA per SM: a producer warp streams sub-tiles into a 4-stage shared-memory ring with bulk copies
// (cp.async.bulk, one per row, completion on an mbarrier); 16 compute warps consume them and hand each stage
// back through a second mbarrier. Compute warps wait for each other only where data crosses warps: the two
// warps that staged the same 64 columns once per 128 rows, and with 16x16 tiles all 16 once per unit (the
// rowwise scales).
// Per sub-tile, compute warp w: column task (16-row group w / 8, column pair 32 (w % 8) + lane) and, with 1x16
// blocks, the rowwise blocks of rows 2w and 2w + 1 (block = lane). With 16x16 tiles the column task's 8 lanes
// of a tile also give its rowwise codes: the tile's codes (the same for both layouts when their scales are),
// transposed by shuffles; each row of the warp's 16 x 64 region leaves as 32 contiguous bytes, and the
// rowwise scales, one per tile, are staged for the unit. Partial units (m or n not multiples of 512) compute on
// stale shared memory where X ends and write only what lies inside X.
// ------------------------------------------------------------------------------------------------

namespace wide {
constexpr int kCols = 512;                             // columns per unit and sub-tile
constexpr int kSubRows = 32;                           // rows per sub-tile (one ring stage)
constexpr int kUnitRows = 512;                         // rows per unit (columnwise scales: 32 per column)
constexpr int kChunkRows = 128;                        // columnwise codes leave in 128-row chunks
constexpr int kStages = 4;
constexpr int kWarps = 16;                             // compute warps
constexpr int kComputeThreads = kWarps * 32;
constexpr int kThreads = kComputeThreads + 32;         // + the producer warp
constexpr int kRowBytes = kCols * 2;
constexpr int kStageBytes = kSubRows * kRowBytes;                    // 32 KB
constexpr int kColStageBytes = kChunkRows / 2 * kCols;               // 32 KB: [q 4][g 2][column 512] x 8 bytes
constexpr int kColScaleBytes = kUnitRows / 16 * kCols;               // 16 KB: [block 32][column 512]
constexpr int kRowTileScaleBytes = kUnitRows / 16 * (kCols / 16);   // 1 KB: [16-row group 32][tile column 32]
constexpr int kSmemBytes = kStages * kStageBytes + 2 * kColStageBytes + kColScaleBytes + 2 * 128 * 4 +
                           2 * kRowTileScaleBytes + 2 * kStages * 8;
static_assert(kWarps * 32 == 2 * (kCols / 2), "one column task per compute thread and sub-tile");
static_assert(kWarps * 2 == kSubRows && kCols / 16 == 32, "two rows per compute warp, one block per lane");
}  // namespace wide

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned); completion counted on bar.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
__device__ __forceinline__ void compute_sync() {  // the compute warps only (barrier 1)
  asm volatile("bar.sync 1, %0;" ::"n"(wide::kComputeThreads) : "memory");
}
// Warps j and j + 8 hold columns [64 j, 64 j + 64) of the column stages (barriers 4..11, 64 threads).
__device__ __forceinline__ void column_pair_sync(int j) {
  asm volatile("bar.sync %0, 64;" ::"r"(4 + j) : "memory");
}

template <typename T, bool RHT, bool SR, bool kBoth>
__global__ void __launch_bounds__(wide::kThreads, 1) cast_wide_kernel(const CastParams p) {
  using namespace wide;
  using TT = Tr<T>;
  using P = typename TT::P;
  static_assert(sizeof(T) == 2, "16-bit inputs only");
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* ring = smem;                                                  // [kStages][32 rows][1024 bytes]
  uint8_t* col_stage = ring + kStages * kStageBytes;                     // [2][kColStageBytes]
  uint8_t* col_scales = col_stage + 2 * kColStageBytes;                  // [32][512]
  float* etab = reinterpret_cast<float*>(col_scales + kColScaleBytes);   // [2][128]: encode scales
  uint8_t* row_tile_scales = reinterpret_cast<uint8_t*>(etab + 256);    // [2][32][32]: 16x16 tiles, rowwise
  uint64_t* full = reinterpret_cast<uint64_t*>(row_tile_scales + 2 * kRowTileScaleBytes);  // [kStages]: loaded
  uint64_t* empty = full + kStages;                                      // [kStages]: stage consumed

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(&full[st], 1);
      mbar_init(&empty[st], kWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();  // the producer starts loading now, while the compute warps build the encode-scale table

  const int m = static_cast<int>(p.m), n = static_cast<int>(p.n);
  const uint32_t units_x = (n + kCols - 1) / kCols;

  if (warp == kWarps) {  // producer: one bulk copy per row of each sub-tile
    uint32_t seq = 0;
    for (uint32_t unit = blockIdx.x; unit < p.num_tiles; unit += gridDim.x) {
      const int R0 = static_cast<int>(unit / units_x) * kUnitRows, C0 = static_cast<int>(unit % units_x) * kCols;
      const int cols = min(kCols, n - C0), unit_rows = min(kUnitRows, m - R0);
      for (int k = 0; k * kSubRows < unit_rows; ++k, ++seq) {
        const int slot = seq % kStages;
        if (seq >= kStages) mbar_wait(&empty[slot], ((seq / kStages) & 1) ^ 1);
        const int rows = min(kSubRows, unit_rows - k * kSubRows);
        if (lane == 0) mbar_arrive_expect_tx(&full[slot], static_cast<uint32_t>(rows * cols * 2));
        __syncwarp();
        if (lane < rows) {
          const T* src = static_cast<const T*>(p.x) + static_cast<int64_t>(R0 + k * kSubRows + lane) * n + C0;
          bulk_load(ring + slot * kStageBytes + lane * kRowBytes, src, static_cast<uint32_t>(cols * 2), &full[slot]);
        }
      }
    }
    return;
  }

  const float senc_r = global_encode_scale(p.amax[0]);
  const float senc_c = global_encode_scale(p.amax[1]);
  if (tid < 256)
    etab[tid] = block_encode_scale(static_cast<uint8_t>(tid & 127), (tid < 128 ? 1.0f / senc_r : 1.0f / senc_c));
  compute_sync();
  const float k_row = senc_r * kInvSix, k_col = senc_c * kInvSix;
  const float* etab_r = etab;
  const float* etab_c = etab + 128;
  const int g = warp >> 3, pair = ((warp & 7) << 5) | lane, cpair = 2 * pair;  // column task
  const int64_t rstride = n / 2, sstride = n / 16, cstride = m / 2, csstride = m / 16;
  const int64_t rd_step = kSubRows * rstride, rs_step = kSubRows * sstride;  // rowwise outputs per sub-tile
  // Per sub-tile pieces (buf: the stage in the ring). A column task: rows 16 g .. 16 g + 15, columns cpair,
  // cpair + 1, as 16 pairs (row k in raw[k]).
  const auto load_column = [&](const uint8_t* buf, P (&raw)[16]) {
#pragma unroll
    for (int j = 0; j < 16; ++j) raw[j] = *reinterpret_cast<const P*>(buf + (g * 16 + j) * kRowBytes + pair * 4);
  };
  // Its codes and scale bytes into the column stages: [q][g][column ^ 4q] x 8 bytes (conflict-free here and in
  // the write-out) and [block of the unit][column].
  const auto stage_column = [&](uint8_t* stage, int q, int k, uint4 codes, uint16_t scales) {
    *reinterpret_cast<uint4*>(stage + ((q * 2 + g) * kCols + (cpair ^ (q << 2))) * 8) = codes;
    *reinterpret_cast<uint16_t*>(col_scales + (k * 2 + g) * kCols + cpair) = scales;
  };
  // The rowwise 1x16 block of row 2 warp + i (block = lane): load, and codes + scale byte out (rd_p / rs_p:
  // where this lane's codes / scale of row 2 warp go; row: global row of row 2 warp).
  const auto load_row = [&](const uint8_t* buf, int i, P (&v)[8]) {
    const uint4* src = reinterpret_cast<const uint4*>(buf + (2 * warp + i) * kRowBytes + lane * 32);
    const uint4 lo = src[0], hi = src[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  };
  const auto emit_row = [&](const P (&v)[8], int i, uint32_t bits, uint32_t s, int row, int rows, int C0, int cols,
                            uint8_t* rd_p, uint8_t* rs_p) {
    const uint2 codes = row_block_codes<T, SR>(p, v, bits, etab_r[s], static_cast<uint32_t>(row + i),
                                               static_cast<uint32_t>(C0 + lane * 16));
    if (2 * warp + i < rows && lane * 16 < cols) {
      *reinterpret_cast<uint2*>(rd_p + i * rstride) = codes;
      rs_p[i * sstride] = static_cast<uint8_t>(s);
    }
  };
  uint32_t seq = 0, chunk_seq = 0, unit_seq = 0;
  for (uint32_t unit = blockIdx.x; unit < p.num_tiles; unit += gridDim.x, ++unit_seq) {
    const int R0 = static_cast<int>(unit / units_x) * kUnitRows, C0 = static_cast<int>(unit % units_x) * kCols;
    const int cols = min(kCols, n - C0), unit_rows = min(kUnitRows, m - R0);
    // this lane's rowwise codes / scale of row 2 warp in the unit's first sub-tile
    uint8_t* const rd_unit = p.do_row ? p.rd + static_cast<int64_t>(R0 + 2 * warp) * rstride + C0 / 2 + lane * 8 : nullptr;
    uint8_t* const rs_unit = p.do_row ? p.rs + static_cast<int64_t>(R0 + 2 * warp) * sstride + C0 / 16 + lane : nullptr;
    for (int k = 0; k * kSubRows < unit_rows; ++k, ++seq) {
      const int slot = seq % kStages;
      const int r0 = R0 + k * kSubRows, rows = min(kSubRows, unit_rows - k * kSubRows);
      uint8_t* const rd_p = rd_unit + k * rd_step;  // used only when p.do_row
      uint8_t* const rs_p = rs_unit + k * rs_step;
      const int q = k & 3;  // 32-row piece of the 128-row chunk
      uint8_t* stage = col_stage + (chunk_seq & 1) * kColStageBytes;
      const bool last_sub = (k + 1) * kSubRows >= unit_rows;
      mbar_wait(&full[slot], (seq / kStages) & 1);
      const uint8_t* buf = ring + slot * kStageBytes;

      if constexpr (kBoth) {
        // ---- both layouts, 1x16 blocks: loads, maxima and scales of all four blocks first (their latencies
        // overlap), then the codes of each part ----
        P raw[16], v[2][8];
        load_column(buf, raw);
        load_row(buf, 0, v[0]);
        load_row(buf, 1, v[1]);
        uint32_t bits_a, bits_b;
        column_maxima<T, RHT>(raw, bits_a, bits_b);
        const uint32_t bits_0 = row_maximum<T>(v[0]), bits_1 = row_maximum<T>(v[1]);
        const uint16_t cs2 = e4m3x2_satfinite(u2f(bits_a) * k_col, u2f(bits_b) * k_col);  // bytes <= 0x7F
        const uint16_t rs2 = e4m3x2_satfinite(u2f(bits_0) * k_row, u2f(bits_1) * k_row);
        const uint32_t sa = cs2 & 0xffu, sb = cs2 >> 8;
        const uint4 ccodes = column_block_codes<T, SR>(p, raw, bits_a, bits_b, etab_c[sa], etab_c[sb],
                                                       static_cast<uint32_t>(r0 + g * 16),
                                                       static_cast<uint32_t>(C0 + cpair), p.key_col);
        stage_column(stage, q, k, ccodes, cs2);
        emit_row(v[0], 0, bits_0, rs2 & 0xffu, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
        emit_row(v[1], 1, bits_1, rs2 >> 8, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
      } else if (p.block_2d) {
        // ---- 16x16 tiles: lane group u = lane / 8 quantizes tile (g, 4 (warp % 8) + u) of the sub-tile from its
        // column task; its rowwise codes are the tile's codes transposed across the 8 lanes. No other warp
        // takes part: the rowwise scales (one per tile) are staged and written at the end of the unit ----
        P raw[16];
        load_column(buf, raw);
        uint32_t bits_a, bits_b;
        column_maxima<T, false>(raw, bits_a, bits_b);
        const uint32_t tile_in = tile_max8(max_u32(bits_a, bits_b));  // of the input
        const uint32_t grow = static_cast<uint32_t>(r0 + g * 16), ca = static_cast<uint32_t>(C0 + cpair);
        uint4 rcodes = make_uint4(0u, 0u, 0u, 0u);
        uint32_t s_r = 0;
        float e_r = 0.0f;
        if (p.do_row) {
          s_r = e4m3_satfinite(u2f(tile_in) * k_row);
          e_r = etab_r[s_r];
          rcodes = column_block_codes<T, SR>(p, raw, tile_in, tile_in, e_r, e_r, grow, ca, p.key_row);
        }
        if (p.do_col) {
          uint32_t bits_c = tile_in;
          if constexpr (RHT) {
            column_maxima<T, true>(raw, bits_a, bits_b);
            bits_c = tile_max8(max_u32(bits_a, bits_b));
          }
          const uint32_t s_c = e4m3_satfinite(u2f(bits_c) * k_col);
          const float e_c = etab_c[s_c];
          // the same scale and SR stream give the same codes (the rowwise ones are already there)
          const bool same = !RHT && p.do_row && e_c == e_r && (!SR || p.key_col == p.key_row);
          const uint4 ccodes =
              same ? rcodes : column_block_codes<T, SR>(p, raw, bits_c, bits_c, e_c, e_c, grow, ca, p.key_col);
          stage_column(stage, q, k, ccodes, static_cast<uint16_t>(s_c * 0x101u));
        }
        if (p.do_row) {
          const uint4 rows2 = tile_rows_from_columns(rcodes, lane);  // rows 2 (lane % 8), + 1 of the tile
          const int tile_c = 16 * (pair >> 3);                        // the tile's first column in the unit
          if (g * 16 < rows && tile_c < cols) {
            uint8_t* d = p.rd + static_cast<int64_t>(r0 + g * 16 + 2 * (lane & 7)) * rstride + (C0 + tile_c) / 2;
            *reinterpret_cast<uint2*>(d) = make_uint2(rows2.x, rows2.y);
            *reinterpret_cast<uint2*>(d + rstride) = make_uint2(rows2.z, rows2.w);
          }
          if ((lane & 7) == 0)
            row_tile_scales[(unit_seq & 1) * kRowTileScaleBytes + (k * 2 + g) * 32 + (pair >> 3)] =
                static_cast<uint8_t>(s_r);
        }
      } else {
        // ---- one layout, 1x16 blocks: the column task or the rowwise blocks ----
        if (p.do_col) {
          P raw[16];
          load_column(buf, raw);
          uint4 codes;
          uint16_t scales;
          column_pair<T, RHT, SR>(p, raw, k_col, etab_c, static_cast<uint32_t>(r0 + g * 16),
                                  static_cast<uint32_t>(C0 + cpair), lane, nullptr, codes, scales);
          stage_column(stage, q, k, codes, scales);
        }
        if (p.do_row) {
          P v[2][8];
          load_row(buf, 0, v[0]);
          load_row(buf, 1, v[1]);
          const uint32_t bits_0 = row_maximum<T>(v[0]), bits_1 = row_maximum<T>(v[1]);
          const uint16_t rs2 = e4m3x2_satfinite(u2f(bits_0) * k_row, u2f(bits_1) * k_row);  // bytes <= 0x7F
          emit_row(v[0], 0, bits_0, rs2 & 0xffu, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
          emit_row(v[1], 1, bits_1, rs2 >> 8, r0 + 2 * warp, rows, C0, cols, rd_p, rs_p);
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[slot]);  // this warp is done with the stage

      if (p.block_2d && p.do_row && last_sub) {
        // ---- rowwise scales of the unit, 16x16 tiles: warp w writes 16-row groups 2w, 2w + 1, one row per store
        // (32 lanes, 32 bytes) ----
        compute_sync();  // every tile scale of the unit is staged
        const uint8_t* staged = row_tile_scales + (unit_seq & 1) * kRowTileScaleBytes;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int grp = 2 * warp + h;
          if (grp * 16 < unit_rows && lane * 16 < cols) {
            const uint8_t sb = staged[grp * 32 + lane];
            uint8_t* d = p.rs + static_cast<int64_t>(R0 + grp * 16) * sstride + C0 / 16 + lane;
#pragma unroll
            for (int rr = 0; rr < 16; ++rr) d[rr * sstride] = sb;
          }
        }
      }

      if (!p.do_col || (q != 3 && !last_sub)) continue;
      // ---- columnwise codes of the 128-row chunk: 4 lanes per column, 64 contiguous bytes. Columns
      // [64 j, 64 j + 64) were staged by warps j and j + 8 only, so only those two wait for each other ----
      column_pair_sync(warp & 7);
      ++chunk_seq;
      const int crow0 = r0 - q * kSubRows, crows = min(kChunkRows, m - crow0);
      const int pair_tid = (warp >> 3) * 32 + lane, pair_c0 = (warp & 7) * 64;  // 64 threads, 64 columns
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = pair_c0 + j * 16 + (pair_tid >> 2), qq = pair_tid & 3;
        if (c < cols && qq * 32 < crows) {
          const int cs = c ^ (qq << 2);
          const uint2 lo = *reinterpret_cast<const uint2*>(stage + ((qq * 2) * kCols + cs) * 8);
          const uint2 hi = *reinterpret_cast<const uint2*>(stage + ((qq * 2 + 1) * kCols + cs) * 8);
          uint8_t* d = p.cd + static_cast<int64_t>(C0 + c) * cstride + crow0 / 2 + qq * 16;
          if (qq * 32 + 16 < crows) {
            if (p.col_data_vec) {
              *reinterpret_cast<uint4*>(d) = make_uint4(lo.x, lo.y, hi.x, hi.y);
            } else {
              reinterpret_cast<uint2*>(d)[0] = lo;
              reinterpret_cast<uint2*>(d)[1] = hi;
            }
          } else {
            *reinterpret_cast<uint2*>(d) = lo;
          }
        }
      }
      if (!last_sub) continue;
      // ---- columnwise scales of the unit: 2 lanes per column, 32 contiguous bytes ----
      const int nblk = unit_rows / 16;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = pair_c0 + j * 32 + (pair_tid >> 1), half = pair_tid & 1;
        if (c < cols && half * 16 < nblk) {
          uint8_t* d = p.cs + static_cast<int64_t>(C0 + c) * csstride + R0 / 16 + half * 16;
          const uint8_t* src = col_scales + half * 16 * kCols + c;
          if (nblk == 32 && p.col_scale_vec) {
            uint32_t w[4];
#pragma unroll
            for (int b = 0; b < 4; ++b)
              w[b] = src[(4 * b) * kCols] | (src[(4 * b + 1) * kCols] << 8) | (src[(4 * b + 2) * kCols] << 16) |
                     (static_cast<uint32_t>(src[(4 * b + 3) * kCols]) << 24);
            *reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);
          } else {
            for (int b = 0; b < 16 && half * 16 + b < nblk; ++b) d[b] = src[b * kCols];
          }
        }
      }
      column_pair_sync(warp & 7);  // col_scales is rewritten by the next unit
    }
  }
}

// ------------------------------------------------------------------------------------------------
// amax kernels
// ------------------------------------------------------------------------------------------------

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

// Rowwise amax and the amax of RHT(X^T) (rounded to T), from 16-row x V-column strips.
template <typename T, int V>
__global__ void __launch_bounds__(256) amax_rht_kernel(const T* x, int64_t m, int64_t n, float* out) {
  using TT = Tr<T>;
  using P = typename TT::P;
  const int64_t groups = m / 16, ncv = n / V, items = groups * ncv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint32_t row_bits = 0, col_bits = 0;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items; it += stride) {
    const int64_t g = it / ncv, cv = it - g * ncv;
    const T* base = x + (g * 16) * n + cv * V;
    if constexpr (V * sizeof(T) == 16) {
      uint4 raw[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) raw[k] = __ldg(reinterpret_cast<const uint4*>(base + k * n));
      typename TT::Acc racc = TT::acc_zero(), cacc = TT::acc_zero();
      constexpr int kPairs = V / 2;
#pragma unroll
      for (int q = 0; q < kPairs; ++q) {
        float a[16], b[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          const P v = reinterpret_cast<const P*>(&raw[k])[q];
          a[k] = TT::first(v);
          b[k] = TT::second(v);
          TT::acc_add(racc, v);
        }
        rht16(a);
        rht16(b);
#pragma unroll
        for (int k = 0; k < 16; ++k) TT::acc_add(cacc, TT::round_pair(a[k], b[k]));
      }
      row_bits = max_u32(row_bits, max_u32(TT::first_bits(racc), TT::second_bits(racc)));
      col_bits = max_u32(col_bits, max_u32(TT::first_bits(cacc), TT::second_bits(cacc)));
    } else {
      // scalar fallback: one column per item
      float a[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        a[k] = TT::load1(base + k * n);
        row_bits = max_u32(row_bits, f2u(a[k]) & 0x7fffffffu);
      }
      rht16(a);
#pragma unroll
      for (int k = 0; k < 16; k += 2) {
        typename TT::Acc c = TT::acc_zero();
        TT::acc_add(c, TT::round_pair(a[k], a[k + 1]));
        col_bits = max_u32(col_bits, max_u32(TT::first_bits(c), TT::second_bits(c)));
      }
    }
  }
  block_max_atomic(row_bits, col_bits, out);
}

// ------------------------------------------------------------------------------------------------
// Dequantize: out[i] = (e2m1(code_i) * float(scale)) * S_dec (the product e2m1 * scale is exact),
// rounded once to O. A thread handles G = 16 / sizeof(O) consecutive codes (8 for bf16/fp16, 4 for
// fp32) so that each thread writes one 16-byte vector and a warp writes 512 contiguous bytes.
// ------------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------------
// swap_first_dims: out row (j * a + i) = in row (i * b + j), rows of R bytes moved as W-byte words.
// ------------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------------
// Launchers (called from bindings.cpp)
// ------------------------------------------------------------------------------------------------

namespace {

constexpr int kMaxDevices = 64;

int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n > 0 ? n : 1;
}

template <typename T, bool RHT, bool SR, int TM, int RB>
cudaError_t launch_cast_t(const CastParams& p0, cudaStream_t stream) {
  using S = TileShape<T, TM, RB>;
  CastParams p = p0;
  const int64_t tiles_x = (p.n + S::kTN - 1) / S::kTN, tiles_y = (p.m + S::kTM - 1) / S::kTM;
  const int64_t num_tiles = tiles_x * tiles_y;
  if (num_tiles == 0) return cudaSuccess;
  if (num_tiles > 0x7fffffff || p.m > 0x7fffffff - 256 || p.n > 0x7fffffff - 256) return cudaErrorInvalidValue;
  p.tiles_x = static_cast<uint32_t>(tiles_x);
  p.tiles_y = static_cast<uint32_t>(tiles_y);
  p.num_tiles = static_cast<uint32_t>(num_tiles);
  if (p.group_rows < 1) p.group_rows = 1;
  p.group_shift = 32;
  for (uint32_t k = 0; k < 32; ++k)
    if (p.group_rows == (1u << k)) p.group_shift = k;
  p.col_scale_vec = p.do_col && (p.m % S::kTM == 0) && (reinterpret_cast<uintptr_t>(p.cs) % 4 == 0);
  p.col_data_vec = p.do_col && (p.m % 32 == 0) && (reinterpret_cast<uintptr_t>(p.cd) % 16 == 0);
  auto kern = cast_kernel<T, RHT, SR, TM, RB>;
  static int ctas_per_sm[kMaxDevices] = {};  // per instantiation and device; 0: not set up yet
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (ctas_per_sm[dev] == 0) {  // the attribute is per device, so set it on each one once
    err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    if (err != cudaSuccess) return err;
    int occ = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, kThreads, S::kSmemBytes);
    if (err != cudaSuccess) return err;
    ctas_per_sm[dev] = occ > 0 ? occ : 1;
  }
  int64_t grid = static_cast<int64_t>(sm_count()) * ctas_per_sm[dev];
  if (grid > num_tiles) grid = num_tiles;
  kern<<<static_cast<unsigned>(grid), kThreads, S::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int TM, int RB>
cudaError_t launch_cast_k(const CastParams& p, bool rht, bool sr, cudaStream_t stream) {
  if (rht) {
    return sr ? launch_cast_t<T, true, true, TM, RB>(p, stream) : launch_cast_t<T, true, false, TM, RB>(p, stream);
  }
  return sr ? launch_cast_t<T, false, true, TM, RB>(p, stream) : launch_cast_t<T, false, false, TM, RB>(p, stream);
}

template <typename T, bool RHT, bool SR, bool kBoth>
cudaError_t launch_cast_wide_t(const CastParams& p0, cudaStream_t stream) {
  CastParams p = p0;
  const int64_t units = ((p.n + wide::kCols - 1) / wide::kCols) * ((p.m + wide::kUnitRows - 1) / wide::kUnitRows);
  if (units == 0) return cudaSuccess;
  p.num_tiles = static_cast<uint32_t>(units);
  p.col_scale_vec = p.do_col && (p.m % 256 == 0) && (reinterpret_cast<uintptr_t>(p.cs) % 16 == 0);
  p.col_data_vec = p.do_col && (p.m % 32 == 0) && (reinterpret_cast<uintptr_t>(p.cd) % 16 == 0);
  auto kern = cast_wide_kernel<T, RHT, SR, kBoth>;
  static bool ready[kMaxDevices] = {};  // the shared-memory attribute is per device
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (!ready[dev]) {
    err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, wide::kSmemBytes);
    if (err != cudaSuccess) return err;
    ready[dev] = true;
  }
  const int64_t grid = units < sm_count() ? units : sm_count();
  kern<<<static_cast<unsigned>(grid), wide::kThreads, wide::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, bool kBoth>
cudaError_t launch_cast_wide_b(const CastParams& p, bool rht, bool sr, cudaStream_t stream) {
  if (rht) {
    return sr ? launch_cast_wide_t<T, true, true, kBoth>(p, stream) : launch_cast_wide_t<T, true, false, kBoth>(p, stream);
  }
  return sr ? launch_cast_wide_t<T, false, true, kBoth>(p, stream) : launch_cast_wide_t<T, false, false, kBoth>(p, stream);
}

// both_path: casts to both layouts with 1x16 blocks take the kBoth path (variant 17 turns it off, for comparison)
template <typename T>
cudaError_t launch_cast_wide(const CastParams& p, bool rht, bool sr, bool both_path, cudaStream_t stream) {
  if (both_path && p.do_row && p.do_col && !p.block_2d) return launch_cast_wide_b<T, true>(p, rht, sr, stream);
  return launch_cast_wide_b<T, false>(p, rht, sr, stream);
}

// variant = shape + 10 * G. Shape 7 (16-bit inputs, 16-byte aligned X): the wide kernel (G ignored; other inputs
// take shape 2 with G = 8). Tile shapes of the 128-row kernel for 16-bit inputs (rows x columns): 1: 64 x 128, 2: 128 x 128,
// 3: 256 x 64 (columnwise output in whole 128-byte lines per column and tile); fp32 inputs always use
// 128 x 64. G: tile rows per group of the tile order (see TileCursor; 0 or 1: row-major).
template <typename T>
cudaError_t launch_cast_dtype(CastParams p, bool rht, bool sr, int variant, cudaStream_t stream) {
  const uintptr_t xa = reinterpret_cast<uintptr_t>(p.x);
  p.vec_ok = (xa % 16 == 0) && ((p.n * static_cast<int64_t>(sizeof(T))) % 16 == 0);
  const int full_variant = variant;
  p.group_rows = static_cast<uint32_t>(variant / 10);  // variant = shape + 10 * group rows
  variant %= 10;
  if constexpr (sizeof(T) == 2) {
    // the wide kernel's bulk copies need 16-byte aligned rows (vec_ok); m, n < 2^31 - 512 keep its int math exact
    const bool wide_ok = p.vec_ok && p.m <= 0x7fffffff - 512 && p.n <= 0x7fffffff - 512;
    if (variant == 7 && wide_ok) return launch_cast_wide<T>(p, rht, sr, full_variant != 17, stream);
    if (variant == 7) {
      variant = 2;
      p.group_rows = 8;
    }
    if (variant == 1) return launch_cast_k<T, 64, 256>(p, rht, sr, stream);
    if (variant == 3) return launch_cast_k<T, 256, 128>(p, rht, sr, stream);
    return launch_cast_k<T, 128, 256>(p, rht, sr, stream);
  }
  return launch_cast_k<T, 128, 256>(p, rht, sr, stream);
}

int grid_for(int64_t work_items, int threads, int ctas_per_sm) {
  int64_t g = (work_items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sm_count()) * ctas_per_sm;
  if (g > cap) g = cap;
  if (g < 1) g = 1;
  return static_cast<int>(g);
}

}  // namespace

// dtype: 0 bf16, 1 fp16, 2 fp32
cudaError_t launch_cast(int dtype, const void* x, int64_t m, int64_t n, const float* amax, uint8_t* rd, uint8_t* rs,
                        uint8_t* cd, uint8_t* cs, bool do_row, bool do_col, bool block_2d, bool rht, bool sr,
                        uint32_t key_row, uint32_t key_col, uint32_t row_offset, int variant,
                        cudaStream_t stream) {
  CastParams p{};
  p.x = x;
  p.m = m;
  p.n = n;
  p.amax = amax;
  p.rd = rd;
  p.rs = rs;
  p.cd = cd;
  p.cs = cs;
  p.do_row = do_row;
  p.do_col = do_col;
  p.block_2d = block_2d;
  p.key_row = key_row;
  p.key_col = key_col;
  p.row_offset = row_offset;
  switch (dtype) {
    case 0: return launch_cast_dtype<__nv_bfloat16>(p, rht, sr, variant, stream);
    case 1: return launch_cast_dtype<__half>(p, rht, sr, variant, stream);
    case 2: return launch_cast_dtype<float>(p, rht, sr, variant, stream);
    default: return cudaErrorInvalidValue;
  }
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
  } else if (aligned && n % kVec == 0) {
    const int grid = grid_for((m / 16) * (n / kVec), 256, 4);
    amax_rht_kernel<T, kVec><<<grid, 256, 0, stream>>>(x, m, n, out);
  } else {
    const int grid = grid_for((m / 16) * n, 256, 4);
    amax_rht_kernel<T, 1><<<grid, 256, 0, stream>>>(x, m, n, out);
  }
  return cudaGetLastError();
}
}  // namespace

// out: fp32 [2], zeroed by the caller. Without rht both entries get max|X|.
cudaError_t launch_amax(int dtype, const void* x, int64_t m, int64_t n, bool rht, float* out, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_amax_t<__nv_bfloat16>(x, m, n, rht, out, stream);
    case 1: return launch_amax_t<__half>(x, m, n, rht, out, stream);
    case 2: return launch_amax_t<float>(x, m, n, rht, out, stream);
    default: return cudaErrorInvalidValue;
  }
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

#endif  // FP4DIST_NO_KERNELS

}  // namespace fp4dist_cuda
