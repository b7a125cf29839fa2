// Host build of csrc/common/numerics.cuh answering queries on stdin, one per line, for
// tests/test_kernel_numerics_host.py to compare with the Python definitions:
//   key SEED OFFSET STREAM   (decimal uint64, uint64, uint32) -> stream_key, decimal
//   alpha A B                (fp32 bit patterns of amax_a, amax_b, decimal) -> gemm_alpha's alpha and shift bits
//   rht D AMAX SR KEY ROW0 COL V0..V15   one columnwise RHT chunk (csrc/cast/rht_source.cuh) of dtype D (0 bf16,
//                            1 fp16, 2 fp32), inputs V (fp32 bits of values exact in D), quantized with the fp32
//                            amax bits AMAX, RN (SR 0) or SR with stream key KEY at rows ROW0.., column COL ->
//                            overflow path (0/1), its part in the amax, scale byte, codes (2 words), the 16 source
//                            values (fp32 bits), then the amax pass's parts (rht_column_amax) of the chunk and of
//                            the chunk in reverse row order, taken as one task, decimal
// Unknown queries print "?". No GPU needed.
#include "../../csrc/cast/rht_source.cuh"
#include "../../csrc/common/numerics.cuh"

#include <cinttypes>
#include <cstdio>
#include <cstring>

// One chunk as the cast kernels' columnwise task takes it (the chunk in both columns of the pair): the spec's path
// (rht_column_rounded, codes by quantize16_fn from the rounded values) or the overflow path (rht_column_wide,
// wide_column_codes), and the amax pass's part (rht_chunk_amax_bits); then the amax pass's own rule
// (rht_column_amax) on a task of two different columns.
template <typename T>
bool rht_query(const uint32_t (&v)[16], uint32_t amax_bits, bool sr, uint32_t key, uint32_t row0, uint32_t col) {
  using namespace fp4dist_cuda;
  using TT = Tr<T>;
  typename TT::P raw[16], inputs[16];
  for (int k = 0; k < 16; ++k) inputs[k] = raw[k] = TT::round_pair(u2f(v[k]), u2f(v[k]));
  uint32_t in_a, in_b, bits_a, bits_b;
  const bool wide = rht_column_rounded<T>(raw, in_a, in_b, bits_a, bits_b);
  float a[16], b[16];
  if (wide) {
    rht_column_wide<T>(inputs, a, b, in_a, in_b, bits_a, bits_b);
  } else {
    for (int k = 0; k < 16; ++k) a[k] = TT::first(raw[k]);
  }
  const float senc = global_encode_scale(u2f(amax_bits));
  const uint8_t s = e4m3_satfinite(u2f(bits_a) * (senc * kInvSix));
  const float e = block_encode_scale(static_cast<uint8_t>(s & 127), 1.0f / senc);
  uint2 q;
  if (sr) {
    q = wide_column_codes<true>(a, e, key, row0, col);
  } else {
    q = wide_column_codes<false>(a, e, key, row0, col);
  }
  std::printf("%d %" PRIu32 " %u %" PRIu32 " %" PRIu32, wide ? 1 : 0, rht_chunk_amax_bits(in_a, bits_a),
              static_cast<unsigned>(s), q.x, q.y);
  for (int k = 0; k < 16; ++k) std::printf(" %" PRIu32, f2u(a[k]));
  typename TT::P task[16];
  for (int k = 0; k < 16; ++k) task[k] = TT::round_pair(u2f(v[k]), u2f(v[15 - k]));
  uint32_t pass_in_a, pass_in_b, pass_a, pass_b;
  rht_column_amax<T>(task, pass_in_a, pass_in_b, pass_a, pass_b);
  std::printf(" %" PRIu32 " %" PRIu32 "\n", pass_a, pass_b);
  return true;
}

int main() {
  char op[16];
  while (std::scanf("%15s", op) == 1) {
    if (std::strcmp(op, "key") == 0) {
      uint64_t seed = 0, offset = 0;
      uint32_t stream = 0;
      if (std::scanf("%" SCNu64 " %" SCNu64 " %" SCNu32, &seed, &offset, &stream) != 3) return 2;
      std::printf("%" PRIu32 "\n", fp4dist_cuda::stream_key(seed, offset, stream));
    } else if (std::strcmp(op, "alpha") == 0) {
      uint32_t a = 0, b = 0;
      if (std::scanf("%" SCNu32 " %" SCNu32, &a, &b) != 2) return 2;
      const fp4dist_cuda::GemmAlpha g = fp4dist_cuda::gemm_alpha(fp4dist_cuda::u2f(a), fp4dist_cuda::u2f(b));
      std::printf("%" PRIu32 " %" PRIu32 "\n", fp4dist_cuda::f2u(g.alpha), fp4dist_cuda::f2u(g.shift));
    } else if (std::strcmp(op, "rht") == 0) {
      int dtype = 0, sr = 0;
      uint32_t amax = 0, key = 0, row0 = 0, col = 0, v[16];
      if (std::scanf("%d %" SCNu32 " %d %" SCNu32 " %" SCNu32 " %" SCNu32, &dtype, &amax, &sr, &key, &row0, &col) != 6)
        return 2;
      for (uint32_t& x : v)
        if (std::scanf("%" SCNu32, &x) != 1) return 2;
      bool ok = false;
      if (dtype == 0) ok = rht_query<__nv_bfloat16>(v, amax, sr != 0, key, row0, col);
      if (dtype == 1) ok = rht_query<__half>(v, amax, sr != 0, key, row0, col);
      if (dtype == 2) ok = rht_query<float>(v, amax, sr != 0, key, row0, col);
      if (!ok) return 2;
    } else {
      std::printf("?\n");
    }
  }
  return 0;
}
