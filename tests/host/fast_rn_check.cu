// Host-side check of the cast kernel's fast RN path (csrc/nvfp4_kernels.cu compiled for the CPU with
// FP4DIST_NO_KERNELS): built and run by tests/test_kernel_numerics_host.py wherever nvcc exists, no GPU.
//   1. e2m1_rn_mag_fast equals the general rounding (e2m1_rn) for every fp32 |a| < 7, both signs.
//   2. quantize16_rn_fast with the packed sign bits equals quantize16_fn on random 16-bit blocks that
//      pass rn_fast_ok (bf16 and fp16, zeros, -0, subnormals, wide exponent ranges, saturating scales);
//      sign_bits_columns equals the per-element flags; for bf16 the one-rounding variant
//      (quantize16_rn_fast<true>) too, where one_rounding_scale admits the block's scale.
//   3. bf16_products_avoid_ties(e) against all 128 bf16 significands X for every fp32 significand E: it must
//      be false wherever some product X * E rounds (to 24 bits) onto a value of at most 3 significant bits
//      that it is not (every E2M1 tie is such a value).
//   4. e2m1_rn_mag_one_rounding equals e2m1_rn(rn(x * e)) for every positive bf16 x with rn(x * e) < 7, for
//      random and structured scales e that one_rounding_scale admits.
// Prints one summary line per check; exit status 1 on any mismatch.
#define FP4DIST_NO_KERNELS
#include "../../csrc/nvfp4_kernels.cu"

#include <algorithm>
#include <type_traits>
#include <cstdio>
#include <random>

using namespace fp4dist_cuda;

static uint16_t random_half(std::mt19937_64& rng, int emax, bool bf16) {
  const uint64_t r = rng();
  const int mant_bits = bf16 ? 7 : 10, exp_max = bf16 ? 254 : 30;
  const uint16_t sign = static_cast<uint16_t>((r >> 63) << 15);
  switch (r % 16) {
    case 0: return 0;
    case 1: return 0x8000;
    case 2: return static_cast<uint16_t>(sign | ((r >> 8) & ((1u << mant_bits) - 1)));  // subnormal
    default: {
      int ex = std::min(emax, exp_max) - static_cast<int>((r >> 4) % 12);
      if (ex < 1) ex = 1;
      return static_cast<uint16_t>(sign | (ex << mant_bits) | ((r >> 24) & ((1u << mant_bits) - 1)));
    }
  }
}

template <typename T>
static uint64_t check_blocks(std::mt19937_64& rng, int n, uint64_t& fast, uint64_t& one_rounding) {
  using TT = Tr<T>;
  constexpr bool kBf16 = sizeof(T) == 2 && std::is_same<T, __nv_bfloat16>::value;
  uint64_t bad = 0;
  for (int it = 0; it < n; ++it) {
    uint32_t p[8];
    const int emax = static_cast<int>(rng() % (kBf16 ? 250 : 30)) + 1;
    for (int k = 0; k < 8; ++k) p[k] = random_half(rng, emax, kBf16) | (uint32_t(random_half(rng, emax, kBf16)) << 16);
    uint32_t acc = 0;
    for (int k = 0; k < 8; ++k) TT::acc_add(acc, p[k]);
    const float bmax = u2f(std::max(TT::first_bits(acc), TT::second_bits(acc)));
    float amax = bmax * (1.0f + static_cast<float>(rng() % 1000) * (rng() % 2 ? 1e-3f : 1.0f));
    if (rng() % 50 == 0) amax = bmax * 0.3f;  // a caller amax below the block max: saturating scales
    const float senc = global_encode_scale(amax);
    const float e = block_encode_scale(e4m3_satfinite(bmax * (senc * kInvSix)), 1.0f / senc);
    if (!rn_fast_ok(bmax, e)) continue;
    ++fast;
    const auto xf = [&](int i) { return (i & 1) ? TT::second(p[i >> 1]) : TT::first(p[i >> 1]); };
    const uint2 want = quantize16_fn<false>(xf, e, [](int) { return 0u; });
    const uint2 got = quantize16_rn_fast(xf, e, sign_bits_pairs(p[0], p[1], p[2], p[3]),
                                         sign_bits_pairs(p[4], p[5], p[6], p[7]));
    const uint2 cols = sign_bits_columns(p);
    uint32_t want_a = 0, want_b = 0;
    for (int k = 0; k < 8; ++k) {
      want_a |= ((neg_flags2(p[k]) & 0xffffu) ? 1u : 0u) << (4 * k + 3);
      want_b |= ((neg_flags2(p[k]) >> 16) ? 1u : 0u) << (4 * k + 3);
    }
    uint2 one = got;
    if constexpr (kBf16) {
      const float e1 = one_rounding_scale(e);
      if (rn_fast_ok(bmax, e1)) {
        ++one_rounding;
        one = quantize16_rn_fast<true>(xf, e1, sign_bits_pairs(p[0], p[1], p[2], p[3]),
                                       sign_bits_pairs(p[4], p[5], p[6], p[7]));
      }
    }
    if (got.x != want.x || got.y != want.y || cols.x != want_a || cols.y != want_b || one.x != want.x ||
        one.y != want.y) {
      if (bad < 5) std::printf("mismatch: fast %08x %08x general %08x %08x (e=%a bmax=%a)\n", got.x, got.y, want.x, want.y, e, bmax);
      ++bad;
    }
  }
  return bad;
}

// 3: the tie test against all X, for every significand E (e in [1, 2)).
static uint64_t check_tie_test(uint64_t& flagged) {
  uint64_t bad = 0;
  for (uint32_t E = 1u << 23; E < (1u << 24); ++E) {
    bool hits = false;
    for (uint32_t X = 128; X < 256 && !hits; ++X) {
      const uint64_t P = static_cast<uint64_t>(X) * E;
      const int d = P >= (1ull << 31) ? 8 : 7;
      const uint64_t q = P >> d, rem = P & ((1ull << d) - 1), half = 1ull << (d - 1);
      const uint64_t R = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
      uint64_t odd = R;
      while (!(odd & 1)) odd >>= 1;
      hits = rem != 0 && odd <= 7;
    }
    const bool avoids = bf16_products_avoid_ties(u2f((127u << 23) | (E & 0x7fffffu)));
    flagged += !avoids;
    if (hits && avoids) {
      if (bad < 5) std::printf("tie test misses E=%#x\n", E);
      ++bad;
    }
  }
  return bad;
}

// 4: one rounding against two, every positive bf16 x, for n scales.
static uint64_t check_one_rounding(std::mt19937_64& rng, int n, uint64_t& admitted, uint64_t& values) {
  uint64_t bad = 0;
  for (int it = 0; it < n; ++it) {
    float e;
    if (it % 4 == 0) {  // a block scale of a power-of-two amax: structured significands
      const float senc = global_encode_scale(u2f((100u + static_cast<uint32_t>(rng() % 60)) << 23));
      e = block_encode_scale(static_cast<uint8_t>(1 + rng() % 126), 1.0f / senc);
    } else {
      e = u2f(((112u + static_cast<uint32_t>(rng() % 40)) << 23) | static_cast<uint32_t>(rng() & 0x7fffffu));
    }
    const float e1 = one_rounding_scale(e);
    if (e1 != e1) continue;
    ++admitted;
    for (uint32_t h = 1; h < 0x7f80u; ++h) {
      const float x = u2f(h << 16);
      if (!(x * e < kFastMaxProduct)) continue;
      ++values;
      const uint32_t want = e2m1_rn(x * e) & 7u;
      if (e2m1_rn_mag_one_rounding(x, e + e, e, e * 0.5f) - kRnMagicBits != want) {
        if (bad < 5) std::printf("one rounding mismatch: x=%a e=%a\n", x, e);
        ++bad;
      }
    }
  }
  return bad;
}

int main() {
  uint64_t bad_mag = 0;
  const uint32_t limit = f2u(7.0f);
  for (uint32_t b = 0; b < limit; ++b) {
    const float a = u2f(b);
    const uint32_t want = e2m1_rn(a) & 7u;
    if (e2m1_rn_mag_fast(a) - kRnMagicBits != want || e2m1_rn_mag_fast(-a) - kRnMagicBits != want) {
      if (bad_mag < 5) std::printf("magnitude mismatch at %a\n", a);
      ++bad_mag;
    }
  }
  std::printf("magnitudes: %u values x 2 signs, %llu mismatches\n", limit, static_cast<unsigned long long>(bad_mag));
  std::mt19937_64 rng(std::random_device{}());
  uint64_t fast_bf16 = 0, fast_fp16 = 0, one_bf16 = 0, one_fp16 = 0;
  const uint64_t bad_bf16 = check_blocks<__nv_bfloat16>(rng, 1000000, fast_bf16, one_bf16);
  const uint64_t bad_fp16 = check_blocks<__half>(rng, 1000000, fast_fp16, one_fp16);
  std::printf("blocks: bf16 %llu on the fast path (%llu with one rounding), %llu mismatches; fp16 %llu on the fast "
              "path, %llu mismatches\n",
              static_cast<unsigned long long>(fast_bf16), static_cast<unsigned long long>(one_bf16),
              static_cast<unsigned long long>(bad_bf16), static_cast<unsigned long long>(fast_fp16),
              static_cast<unsigned long long>(bad_fp16));
  uint64_t flagged = 0;
  const uint64_t bad_ties = check_tie_test(flagged);
  std::printf("tie test: %u significands, %llu rejected, %llu mismatches\n", 1u << 23,
              static_cast<unsigned long long>(flagged), static_cast<unsigned long long>(bad_ties));
  uint64_t admitted = 0, values = 0;
  const uint64_t bad_one = check_one_rounding(rng, 4000, admitted, values);
  std::printf("one rounding: %llu scales admitted, %llu values, %llu mismatches\n",
              static_cast<unsigned long long>(admitted), static_cast<unsigned long long>(values),
              static_cast<unsigned long long>(bad_one));
  return (bad_mag || bad_bf16 || bad_fp16 || bad_ties || bad_one) ? 1 : 0;
}
