// Host-side check of the cast kernels' fast RN path (csrc/common/numerics.cuh and dtype_traits.cuh compiled
// for the CPU): built and run by tests/test_kernel_numerics_host.py wherever nvcc exists, no GPU.
//   1. e2m1_rn_mag_fast equals the general rounding (e2m1_rn) for every fp32 |a| < 7, both signs.
//   2. quantize16_rn_fast with the packed sign bits equals quantize16_fn on random 16-bit blocks that
//      pass rn_fast_ok (bf16 and fp16, zeros, -0, subnormals, wide exponent ranges, saturating scales);
//      sign_bits_columns equals the per-element flags.
// Prints one summary line per check; exit status 1 on any mismatch.
#include "../../csrc/common/dtype_traits.cuh"
#include "../../csrc/common/numerics.cuh"

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
static uint64_t check_blocks(std::mt19937_64& rng, int n, uint64_t& fast) {
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
    if (got.x != want.x || got.y != want.y || cols.x != want_a || cols.y != want_b) {
      if (bad < 5) std::printf("mismatch: fast %08x %08x general %08x %08x (e=%a bmax=%a)\n", got.x, got.y, want.x, want.y, e, bmax);
      ++bad;
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
  uint64_t fast_bf16 = 0, fast_fp16 = 0;
  const uint64_t bad_bf16 = check_blocks<__nv_bfloat16>(rng, 1000000, fast_bf16);
  const uint64_t bad_fp16 = check_blocks<__half>(rng, 1000000, fast_fp16);
  std::printf("blocks: bf16 %llu on the fast path, %llu mismatches; fp16 %llu on the fast path, %llu mismatches\n",
              static_cast<unsigned long long>(fast_bf16), static_cast<unsigned long long>(bad_bf16),
              static_cast<unsigned long long>(fast_fp16), static_cast<unsigned long long>(bad_fp16));
  return (bad_mag || bad_bf16 || bad_fp16) ? 1 : 0;
}
