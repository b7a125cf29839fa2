// Host-side check of the cast kernels' SR rounding (csrc/common/numerics.cuh compiled for the CPU): built and run by
// tests/test_kernel_numerics_host.py wherever nvcc exists, no GPU.
//   1. e2m1_sr_fma equals the step-by-step rounding (e2m1_sr) for every fp32 m in [0, 6], each with the two draws
//      either side of its threshold (the largest 24-bit draw that rounds up and the smallest that rounds down),
//      and for -m with a random draw.
//   2. The same on NaN, +-inf, -0 and values beyond 6 with random draws.
//   3. mix32(h ^ c) == mix32_tail(xorshift16(h) ^ xorshift16(c)) and, for c a multiple of 16,
//      xorshift16(c + i) == xorshift16(c) ^ i (the forms the cast kernels draw their words in).
//   4. quantize16_fn<true> (the kernels' packed SR codes) equals e2m1_sr element by element on random blocks.
// Prints one summary line per check; exit status 1 on any mismatch.
#include "../../csrc/common/numerics.cuh"

#include <cmath>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

using namespace fp4dist_cuda;

// The draw (word >> 8) below which e2m1_sr rounds m up: ceil(frac * 2^24), frac = (m - lo) / (hi - lo) exactly.
static uint32_t threshold(float m) {
  static const double grid[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  int i = 0;
  while (i < 7 && grid[i + 1] <= m) ++i;
  if (i == 7) return 0;  // m == 6: never up
  const double frac = (static_cast<double>(m) - grid[i]) / (grid[i + 1] - grid[i]);
  return static_cast<uint32_t>(std::ceil(std::ldexp(frac, 24)));
}

static bool same(float v, uint32_t word) { return f2u(e2m1_sr_fma(v, word)) - kRnMagicBits == e2m1_sr(v, word); }

struct Counts {
  uint64_t values = 0, bad = 0;
};

static void check_range(uint32_t begin, uint32_t end, uint64_t seed, Counts& out) {
  std::mt19937_64 rng(seed);
  for (uint32_t b = begin; b < end; ++b) {
    const float m = u2f(b);
    const uint32_t t = threshold(m), low = static_cast<uint32_t>(rng()) & 0xffu;
    bool ok = same(-m, static_cast<uint32_t>(rng()));
    if (t > 0) ok &= same(m, ((t - 1) << 8) | low);
    if (t < (1u << 24)) ok &= same(m, (t << 8) | low);
    ++out.values;
    if (!ok) {
      if (out.bad < 5) std::printf("magnitude mismatch at %a (threshold %u)\n", m, t);
      ++out.bad;
    }
  }
}

int main() {
  const uint32_t limit = f2u(6.0f) + 1;
  const unsigned nthreads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<Counts> counts(nthreads);
  std::vector<std::thread> threads;
  const uint64_t seed = std::random_device{}();
  for (unsigned t = 0; t < nthreads; ++t) {
    const uint32_t begin = static_cast<uint32_t>(uint64_t(limit) * t / nthreads);
    const uint32_t end = static_cast<uint32_t>(uint64_t(limit) * (t + 1) / nthreads);
    threads.emplace_back(check_range, begin, end, seed + t, std::ref(counts[t]));
  }
  for (auto& th : threads) th.join();
  uint64_t values = 0, bad_mag = 0;
  for (const Counts& c : counts) values += c.values, bad_mag += c.bad;
  std::printf("magnitudes: %llu values x 3 draws, %llu mismatches\n", static_cast<unsigned long long>(values),
              static_cast<unsigned long long>(bad_mag));

  std::mt19937_64 rng(seed ^ 0x5eedu);
  const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, -0.0f, 6.0f, -6.0f, 6.000001f, 7.0f, -7.5f, 1e30f,
                            -3.4e38f, 1e-45f, -1e-45f};
  uint64_t bad_special = 0, specials_done = 0;
  for (const float v : specials) {
    for (int k = 0; k < 4096; ++k, ++specials_done) bad_special += same(v, static_cast<uint32_t>(rng())) ? 0 : 1;
  }
  for (int k = 0; k < 1000000; ++k, ++specials_done) {  // random bit patterns, any exponent
    bad_special += same(u2f(static_cast<uint32_t>(rng())), static_cast<uint32_t>(rng())) ? 0 : 1;
  }
  std::printf("specials: %llu values, %llu mismatches\n", static_cast<unsigned long long>(specials_done),
              static_cast<unsigned long long>(bad_special));

  uint64_t bad_hash = 0;
  for (int k = 0; k < 1000000; ++k) {
    const uint32_t h = static_cast<uint32_t>(rng()), c = static_cast<uint32_t>(rng());
    const uint32_t c16 = c & ~15u, i = static_cast<uint32_t>(k) & 15u;
    if (mix32(h ^ c) != mix32_tail(xorshift16(h) ^ xorshift16(c))) ++bad_hash;
    if (xorshift16(c16 + i) != (xorshift16(c16) ^ i)) ++bad_hash;
  }
  std::printf("hash forms: 1000000 pairs, %llu mismatches\n", static_cast<unsigned long long>(bad_hash));

  uint64_t bad_blocks = 0;
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int it = 0; it < 200000; ++it) {
    float x[16];
    uint32_t words[16];
    const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
    for (int i = 0; i < 16; ++i) {
      x[i] = rng() % 64 == 0 ? u2f(static_cast<uint32_t>(rng())) : unit(rng) * scale;
      words[i] = static_cast<uint32_t>(rng());
    }
    const float e = std::ldexp(1.0f, static_cast<int>(rng() % 30) - 15) * (1.0f + unit(rng) * 0.5f);
    const uint2 got = quantize16_fn<true>([&](int i) { return x[i]; }, e, [&](int i) { return words[i]; });
    uint32_t want[2] = {0u, 0u};
    for (int i = 0; i < 16; ++i) want[i >> 3] |= e2m1_sr(x[i] * e, words[i]) << (4 * (i & 7));
    if (got.x != want[0] || got.y != want[1]) {
      if (bad_blocks < 5) std::printf("block mismatch: %08x %08x want %08x %08x\n", got.x, got.y, want[0], want[1]);
      ++bad_blocks;
    }
  }
  std::printf("blocks: 200000 random blocks, %llu mismatches\n", static_cast<unsigned long long>(bad_blocks));
  return (bad_mag || bad_special || bad_hash || bad_blocks) ? 1 : 0;
}
