// NVFP4 numerics shared by the kernels and their host-side checks (tests/host/): E2M1 rounding (RN, SR),
// the E4M3 block scale and the fp32 global scale, the SR hash, the 16-point RHT and its overflow rule.
//
// Bit-exact with fp4dist/format.py, fp4dist/rng.py and fp4dist/rht.py. Every function is
// __host__ __device__ (device code uses the PTX forms, host code a plain C++ model of the same
// operation), so the same header compiles into the kernels and, unchanged, into a CPU program.
// Build with -fmad=false and WITHOUT fast math / ftz: every product and sum below is meant as one IEEE
// fp32 operation, and S_dec can be subnormal.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define FP4_HD __host__ __device__ __forceinline__

namespace fp4dist_cuda {

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

// lowbias32 (fp4dist/rng.py) = mix32_tail(xorshift16(x)). Its first step is linear over GF(2), so the word of
// element (row, col), mix32(h ^ col) with h the row's hash, is mix32_tail(xorshift16(h) ^ xorshift16(col)): the
// kernels compute xorshift16 once per row and once per column instead of once per element.
FP4_HD uint32_t xorshift16(uint32_t x) { return x ^ (x >> 16); }
FP4_HD uint32_t mix32_tail(uint32_t x) {
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
FP4_HD uint32_t mix32(uint32_t x) { return mix32_tail(xorshift16(x)); }

// fp4dist/rng.py's stream_key: the 32-bit key of one (seed, rng_offset, stream), seed and offset taken as
// 64-bit values (hi, lo halves). Element (row, col) of a stream draws mix32(mix32(key ^ row) ^ col).
FP4_HD uint32_t stream_key(uint64_t seed, uint64_t rng_offset, uint32_t stream) {
  uint32_t k = mix32(stream ^ 0x9E3779B9u);
  k = mix32(k ^ static_cast<uint32_t>(rng_offset >> 32));
  k = mix32(k ^ static_cast<uint32_t>(rng_offset));
  k = mix32(k ^ static_cast<uint32_t>(seed >> 32));
  return k ^ static_cast<uint32_t>(seed);
}

// S_enc = 2688 / amax; FLT_MAX where that overflows (NaN stays NaN); 1 where it is 0.
FP4_HD float global_encode_scale(float amax) {
  float s = 2688.0f / amax;
  if (s > kFltMax) s = kFltMax;
  if (s == 0.0f) s = 1.0f;
  return s;
}

// S_dec = 1 / S_enc (IEEE division).
FP4_HD float global_decode_scale(float amax) { return 1.0f / global_encode_scale(amax); }

// The alpha a GEMM of two operands decoded without their global scales applies, as fp32 (format.gemm_alpha):
// alpha = S_dec(amax_a) * S_dec(amax_b) (one rounding), shift = 1; where that product is +inf (S_dec <= FLT_MAX
// / 2688 each, so only when both are large), alpha = (S_dec(amax_a) * 2^-110) * S_dec(amax_b) and shift = 2^110,
// by which operand A's decoded values (at most 2688) are multiplied instead, exactly. A NaN amax gives a NaN alpha.
struct GemmAlpha {
  float alpha, shift;
};
FP4_HD GemmAlpha gemm_alpha(float amax_a, float amax_b) {
  const float da = global_decode_scale(amax_a), db = global_decode_scale(amax_b);
  GemmAlpha r{da * db, 1.0f};
  if (r.alpha == INFINITY) {
    r.alpha = (da * 0x1p-110f) * db;
    r.shift = 0x1p110f;
  }
  return r;
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

// format.round_to_e2m1_stochastic of clamp(v, -6, 6) with one 32-bit random word, step by step as
// docs/numerics.md section 7 states it. Not used by the kernels (they use e2m1_sr_fma); the reference of
// tests/host/fast_sr_check.cu.
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

// Round-up fp32 a * b + c (one rounding; device: fma.rp). The host model rounds the exact value up: a * b is
// exact in double, TwoSum gives p + c as s + err exactly, and s (or the float above it) is the answer.
FP4_HD float fma_ru(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_ru(a, b, c);
#else
  const double p = static_cast<double>(a) * static_cast<double>(b), cd = static_cast<double>(c);
  const double s = p + cd, bv = s - p, err = (p - (s - bv)) + (cd - bv);
  const float f = static_cast<float>(s);
  const double fd = static_cast<double>(f);
  return (fd < s || (fd == s && err > 0.0)) ? std::nextafter(f, INFINITY) : f;
#endif
}
FP4_HD float fadd_ru(float a, float b) { return fma_ru(a, 1.0f, b); }

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

// SR code of v (e2m1_sr) on the FMA pipe, as the bits of M + code like e2m1_rn_fma. With m = |v| clamped to [0, 6]
// (NaN -> 0) and r = (word >> 8) * 2^-24, e2m1_sr rounds up iff r < frac, where g(m) = lower code + frac and
// g = min(2m, m + 2, m/2 + 4) (section 1's grid maps to 0..7, each piece affine with slope 1 / spacing). So
//   code = ceil(g(m) - r) = min(ceil(2m - r), ceil(m - r) + 2, ceil(m/2 - r) + 4)      (ceil is monotone)
// One round-up op gives y >= x - r with ceil(y) = ceil(x - r) (the integer ceil(x - r) is a float >= the exact
// value, so rounding up never passes it); adding M + k with round-up (ulp of M = 1.5 * 2^23 is 1) gives
// M + k + ceil(y) exactly. Sign: + 8 iff v < 0, as in e2m1_rn_fma. Checked against e2m1_sr on the host for every
// fp32 |v| <= 6 with the draws either side of its threshold (tests/host/fast_sr_check.cu).
FP4_HD float e2m1_sr_fma(float v, uint32_t word) {
  const float m = e2m1_mag(v);
  const float q = static_cast<float>(word >> 8) * -5.9604644775390625e-08f;  // -r, exact
  const float c1 = fadd_ru(fma_ru(m, 2.0f, q), 12582912.0f);
  const float c2 = fadd_ru(fadd_ru(m, q), 12582914.0f);
  const float c3 = fadd_ru(fma_ru(m, 0.5f, q), 12582916.0f);
  return fma_rn(mul_sat(v, -INFINITY), 8.0f, fminf(fminf(c1, c2), c3));
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
    // the nibbles never carry; the bias is removed below
    w[i >> 3] += f2u(SR ? e2m1_sr_fma(v, word(i)) : e2m1_rn_fma(v)) << sh;
  }
  return make_uint2(w[0] - kRnPackBias, w[1] - kRnPackBias);
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

// 16-point RHT of a chunk, in place (fp4dist/rht.py): signs, butterfly h = 1, 2, 4, 8 ((a, b) -> (a + b, a - b)),
// then * 0.25 (fp32). With prescale (the chunk's max|c| >= 2^124, where a stage could overflow: |stage s| <=
// 2^s max|c|), the signed chunk is multiplied by 2^-4 first and the result by 4 instead of 0.25; its stages then
// stay finite and only the final product can reach +-inf (a true value beyond FLT_MAX). The caller rounds the
// result to the input dtype (rht_wide_value where that is not finite).
// d = [1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1]: bit i of the mask set where d[i] = -1.
constexpr uint32_t kRhtNegMask = 0xD7E8u;
constexpr uint32_t kInfBits = 0x7F800000u;           // fp32 bits of +inf; magnitude bits above it are NaN
constexpr uint32_t kRhtPrescaleBits = 0x7D800000u;   // fp32 bits of 2^124

FP4_HD void rht16(float (&a)[16], bool prescale) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    if ((kRhtNegMask >> i) & 1u) a[i] = -a[i];
  }
  if (prescale) {
#pragma unroll
    for (int i = 0; i < 16; ++i) a[i] = a[i] * 0.0625f;
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
  const float post = prescale ? 4.0f : 0.25f;
#pragma unroll
  for (int i = 0; i < 16; ++i) a[i] = a[i] * post;
}

// fp32 bits of max|a[i]| (NaN bits win).
FP4_HD uint32_t max_mag_bits(const float (&a)[16]) {
  uint32_t m = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) m = max_u32(m, f2u(a[i]) & 0x7fffffffu);
  return m;
}

// The RHT with the prescale decided from the chunk itself.
FP4_HD void rht16(float (&a)[16]) { rht16(a, max_mag_bits(a) >= kRhtPrescaleBits); }

// A value of the columnwise source on the overflow path (rht.columnwise_source): y the fp32 transform, r it rounded
// to the input dtype. r where finite, else y, saturated to +-FLT_MAX; NaN for every value of a chunk holding an
// infinity or a NaN (finite_chunk false).
FP4_HD float rht_wide_value(float y, float r, bool finite_chunk) {
  if (!finite_chunk) return u2f(0x7FC00000u);
  const float v = (f2u(r) & 0x7fffffffu) < kInfBits ? r : y;
  return v > kFltMax ? kFltMax : (v < -kFltMax ? -kFltMax : v);
}

// A chunk's part in the RHT'd columnwise amax (rht.columnwise_amax), as fp32 magnitude bits: NaN (in_bits itself)
// for a chunk holding a NaN, 0 for one holding an infinity (its block is NaN, the amax leaves it out), else the
// maximum of its source values. in_bits: max|input| of the chunk.
FP4_HD uint32_t rht_chunk_amax_bits(uint32_t in_bits, uint32_t source_bits) {
  return in_bits > kInfBits ? in_bits : (in_bits == kInfBits ? 0u : source_bits);
}

}  // namespace fp4dist_cuda
