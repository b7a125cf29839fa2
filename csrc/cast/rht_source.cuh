// The RHT'd columnwise source of one columnwise task (fp4dist/rht.py columnwise_source, columnwise_amax), shared by
// the cast kernels and the amax pass; __host__ __device__, so tests/host/ checks it on the CPU.
//
// A task is two columns a, b over 16 rows, held as 16 packed input pairs raw[k] (row k). The spec's path rounds the
// transform to the input dtype T and keeps it packed in raw. Where that is not finite (the fp32 transform or its
// rounding to T overflows, or the chunk holds an infinity or a NaN), the task takes the overflow path: the
// transform again, from the inputs, into fp32 values a[], b[] (rht_wide_value), which the codes are taken from. The
// kernels keep the common path's registers as they were: the overflow path's arrays live in its branch only.
#pragma once

#include "../common/dtype_traits.cuh"
#include "../common/numerics.cuh"

namespace fp4dist_cuda {

// The transform of both columns in fp32 (prescaled where a column's max|input| needs it), unrounded: a, b; in_a,
// in_b = max|input| of each column (fp32 magnitude bits).
template <typename T>
FP4_HD void rht_column_fp32(const typename Tr<T>::P (&inputs)[16], float (&a)[16], float (&b)[16], uint32_t& in_a,
                            uint32_t& in_b) {
  using TT = Tr<T>;
  const typename TT::Acc in = acc_of<TT>(inputs);
  in_a = TT::first_bits(in);
  in_b = TT::second_bits(in);
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    a[k] = TT::first(inputs[k]);
    b[k] = TT::second(inputs[k]);
  }
  rht16(a, in_a >= kRhtPrescaleBits);
  rht16(b, in_b >= kRhtPrescaleBits);
}

// The spec's path. In: raw = the inputs. Out: raw = the transform rounded to T; in_a, in_b = max|input| of each
// column and bits_a, bits_b the block maxima of raw (fp32 magnitude bits, NaN winning). Returns whether the task
// takes the overflow path (a value of raw is not finite); raw is its source otherwise.
template <typename T>
FP4_HD bool rht_column_rounded(typename Tr<T>::P (&raw)[16], uint32_t& in_a, uint32_t& in_b, uint32_t& bits_a,
                               uint32_t& bits_b) {
  using TT = Tr<T>;
  float a[16], b[16];
  rht_column_fp32<T>(raw, a, b, in_a, in_b);
#pragma unroll
  for (int k = 0; k < 16; ++k) raw[k] = TT::round_pair(a[k], b[k]);
  const typename TT::Acc out = acc_of<TT>(raw);
  bits_a = TT::first_bits(out);
  bits_b = TT::second_bits(out);
  return bits_a >= kInfBits || bits_b >= kInfBits;
}

// The overflow path, from the inputs (read again: the kernels keep them in shared memory, not in registers): the
// fp32 source values a, b (rht_wide_value of the same transform and of its rounding to T), their block maxima
// bits_a, bits_b, and in_a, in_b as rht_column_rounded gives them.
template <typename T>
FP4_HD void rht_column_wide(const typename Tr<T>::P (&inputs)[16], float (&a)[16], float (&b)[16], uint32_t& in_a,
                            uint32_t& in_b, uint32_t& bits_a, uint32_t& bits_b) {
  using TT = Tr<T>;
  rht_column_fp32<T>(inputs, a, b, in_a, in_b);
  const bool finite_a = in_a < kInfBits, finite_b = in_b < kInfBits;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const typename TT::P rounded = TT::round_pair(a[k], b[k]);
    a[k] = rht_wide_value(a[k], TT::first(rounded), finite_a);
    b[k] = rht_wide_value(b[k], TT::second(rounded), finite_b);
  }
  bits_a = max_mag_bits(a);
  bits_b = max_mag_bits(b);
}

// The task's part in the amax pass, rounding two values rather than 32: in_a, in_b = max|input| of each column,
// and each column's part in the RHT'd columnwise amax (rht_chunk_amax_bits of its source maximum), as fp32
// magnitude bits.
// The source value of a transformed value y, round-to-T(y) where finite, else y saturated (rht_wide_value), is odd
// and non-decreasing in y, so the source maximum is that rule applied once, to max|y| (NaN bits winning as before).
template <typename T>
FP4_HD void rht_column_amax(const typename Tr<T>::P (&inputs)[16], uint32_t& in_a, uint32_t& in_b, uint32_t& amax_a,
                            uint32_t& amax_b) {
  using TT = Tr<T>;
  float a[16], b[16];
  rht_column_fp32<T>(inputs, a, b, in_a, in_b);
  const float ya = u2f(max_mag_bits(a)), yb = u2f(max_mag_bits(b));
  const typename TT::P rounded = TT::round_pair(ya, yb);
  const float va = rht_wide_value(ya, TT::first(rounded), true), vb = rht_wide_value(yb, TT::second(rounded), true);
  amax_a = rht_chunk_amax_bits(in_a, f2u(va) & 0x7fffffffu);
  amax_b = rht_chunk_amax_bits(in_b, f2u(vb) & 0x7fffffffu);
}

// Codes of one column of an overflow-path task (element k in nibble k): values v, encode scale e; the SR word of row
// k is mix32(mix32(key ^ (row0 + k)) ^ col), row0 = row_offset + the task's first row (as column_codes draws).
template <bool SR>
FP4_HD uint2 wide_column_codes(const float (&v)[16], float e, uint32_t key, uint32_t row0, uint32_t col) {
  return quantize16_fn<SR>([&](int k) { return v[k]; }, e,
                           [&](int k) { return mix32(mix32(key ^ (row0 + static_cast<uint32_t>(k))) ^ col); });
}

}  // namespace fp4dist_cuda
