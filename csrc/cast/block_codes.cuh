// Per-block work shared by the two cast kernels (cast_tile.cu, cast_wide.cu): block maxima, scale bytes and
// E2M1 codes of one columnwise task or one rowwise block, on the fast RN path or the general one.
//
// RN blocks of 16-bit inputs whose products stay below 7 take the fast path (quantize16_rn_fast: 3 FMA-pipe
// roundings + 2 min per element, sign bits from packed compares); the others (NaN / inf / saturating
// scales, fp32 inputs, SR) take the general path (quantize16_fn: e2m1_rn_fma or e2m1_sr_fma per element). Both
// give the same bits.
#pragma once

#include "../common/dtype_traits.cuh"
#include "../common/numerics.cuh"
#include "cast_params.h"
#include "rht_source.cuh"

namespace fp4dist_cuda {

// An SR kernel's parameters with their keys: p itself, or, when the keys come from the device offset
// (keys.rng_offset), p with the keys computed from it (each CTA reads the offset once, in its prologue).
__device__ __forceinline__ CastParams with_stream_keys(const CastParams& p, const SrKeySource<true>& keys) {
  CastParams q = p;
  if (keys.rng_offset != nullptr) {
    const uint64_t offset = static_cast<uint64_t>(*keys.rng_offset);
    q.key_row = stream_key(keys.seed, offset, keys.stream_row);
    q.key_col = stream_key(keys.seed, offset, keys.stream_col);
  }
  return q;
}
// The key source a kernel instantiation takes (nothing for RN).
template <bool SR>
SrKeySource<SR> key_source(const SrKeySource<true>& keys) {
  if constexpr (SR) {
    return keys;
  } else {
    return {};
  }
}

// A columnwise task holds columns ca, ca + 1 over 16 rows as 16 packed pairs raw[k] (row k); a rowwise block
// holds 16 consecutive elements of one row as 8 packed pairs v. Codes: element i in nibble i (columnwise:
// .x/.y column ca, .z/.w column ca + 1). grow: global row of the first element, before row_offset.

// Block maxima (fp32 magnitude bits) of a columnwise task (the input's; with RHT see column_rht below).
template <typename T>
__device__ __forceinline__ void column_maxima(const typename Tr<T>::P (&raw)[16], uint32_t& bits_a, uint32_t& bits_b) {
  const typename Tr<T>::Acc acc = acc_of<Tr<T>>(raw);
  bits_a = Tr<T>::first_bits(acc);
  bits_b = Tr<T>::second_bits(acc);
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
// The SR row hashes of a column task: hrow[k] = xorshift16(mix32(key ^ row k)), so that element (k, c) draws
// mix32_tail(hrow[k] ^ xorshift16(c)). RowHashes::own computes the 16 itself; RowHashes::warp takes them from the
// lanes of its warp (lane k % 16 hashes row k), for a warp whose 32 lanes all call it on the same 16 rows.
enum class RowHashes { own, warp };

template <RowHashes H>
__device__ __forceinline__ void row_hashes(uint32_t key, uint32_t row0, uint32_t (&hrow)[16]) {
  if constexpr (H == RowHashes::warp) {
    const uint32_t mine = xorshift16(mix32(key ^ (row0 + (threadIdx.x & 15u))));
#pragma unroll
    for (int k = 0; k < 16; ++k) hrow[k] = __shfl_sync(0xffffffffu, mine, k);
  } else {
#pragma unroll
    for (int k = 0; k < 16; ++k) hrow[k] = xorshift16(mix32(key ^ (row0 + k)));
  }
}

template <typename T, bool SR, RowHashes H = RowHashes::own>
__device__ __forceinline__ uint4 column_codes(const CastParams& p, const typename Tr<T>::P (&raw)[16], float ea,
                                              float eb, uint32_t grow, uint32_t ca, uint32_t key) {
  uint32_t hrow[16] = {};
  if constexpr (SR) row_hashes<H>(key, p.row_offset + grow, hrow);
  const uint32_t xa = xorshift16(ca), xb = xorshift16(ca + 1);
  const uint2 qa = quantize16_fn<SR>([&](int k) { return Tr<T>::first(raw[k]); }, ea,
                                     [&](int k) { return mix32_tail(hrow[k] ^ xa); });
  const uint2 qb = quantize16_fn<SR>([&](int k) { return Tr<T>::second(raw[k]); }, eb,
                                     [&](int k) { return mix32_tail(hrow[k] ^ xb); });
  return make_uint4(qa.x, qa.y, qb.x, qb.y);
}
// cbase is a multiple of 16, so xorshift16(cbase + i) = xorshift16(cbase) ^ i.
template <typename T, bool SR>
__device__ __forceinline__ uint2 row_codes(const CastParams& p, const typename Tr<T>::P (&v)[8], float e, uint32_t grow,
                                           uint32_t cbase) {
  uint32_t hx = 0;  // element i draws mix32_tail(hx ^ i)
  if constexpr (SR) hx = xorshift16(mix32(p.key_row ^ (p.row_offset + grow))) ^ xorshift16(cbase);
  return quantize16_fn<SR>([&](int i) { return (i & 1) ? Tr<T>::second(v[i >> 1]) : Tr<T>::first(v[i >> 1]); }, e,
                           [&](int i) { return mix32_tail(hx ^ static_cast<uint32_t>(i)); });
}

// Max over the 8 lanes (16 columns) of a 16x16 tile.
__device__ __forceinline__ uint32_t tile_max8(uint32_t t) {
  t = max_u32(t, __shfl_xor_sync(0xffffffffu, t, 1));
  t = max_u32(t, __shfl_xor_sync(0xffffffffu, t, 2));
  return max_u32(t, __shfl_xor_sync(0xffffffffu, t, 4));
}

// Codes of a columnwise task (columns a, b, encode scales ea, eb) or of a rowwise block (e): the fast path
// where every block passes rn_fast_ok, else the general path. bits: block maxima (fp32 magnitude bits).
template <typename T, bool SR, RowHashes H = RowHashes::own>
__device__ __forceinline__ uint4 column_block_codes(const CastParams& p, const typename Tr<T>::P (&raw)[16],
                                                    uint32_t bits_a, uint32_t bits_b, float ea, float eb,
                                                    uint32_t grow, uint32_t ca, uint32_t key) {
  if constexpr (!SR && sizeof(T) == 2) {
    if (rn_fast_ok(u2f(bits_a), ea) && rn_fast_ok(u2f(bits_b), eb)) return column_codes_fast<T>(raw, ea, eb);
  }
  return column_codes<T, SR, H>(p, raw, ea, eb, grow, ca, key);
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

// The overflow path of a columnwise task with RHT (rht_source.cuh), out of line so that the common path keeps its
// registers: the inputs again (16 rows of stride bytes from col0, in shared memory), their fp32 source, its maxima
// (tile: over the 16x16 tile; the whole warp must call then, which gives a task without overflow its spec values
// again), scale bytes (byte of ca | of ca + 1 << 8, each byte twice with tiles) and codes.
struct WideTask {
  uint4 codes;
  uint32_t scales;
};
template <typename T, bool SR>
__device__ __forceinline__ WideTask column_rht_wide(const uint8_t* col0, int stride, float k_col, const float* etab_c,
                                                 uint32_t key, uint32_t row0, uint32_t ca, bool tile) {
  typename Tr<T>::P inputs[16];
#pragma unroll
  for (int k = 0; k < 16; ++k) inputs[k] = *reinterpret_cast<const typename Tr<T>::P*>(col0 + k * stride);
  float a[16], b[16];
  uint32_t in_a, in_b, bits_a, bits_b;
  rht_column_wide<T>(inputs, a, b, in_a, in_b, bits_a, bits_b);
  if (tile) bits_a = bits_b = tile_max8(max_u32(bits_a, bits_b));
  WideTask r;
  r.scales = e4m3x2_satfinite(u2f(bits_a) * k_col, u2f(bits_b) * k_col);
  const uint2 qa = wide_column_codes<SR>(a, etab_c[r.scales & 127], key, row0, ca);
  const uint2 qb = wide_column_codes<SR>(b, etab_c[(r.scales >> 8) & 127], key, row0, ca + 1);
  r.codes = make_uint4(qa.x, qa.y, qb.x, qb.y);
  return r;
}

// A columnwise task. With 16x16 tiles the tile max of the input (before any RHT) goes to *tile_max (written
// by the first lane of each 8); with do_col the two blocks are quantized: codes, scales = byte of ca | of
// ca + 1 << 8. etab_c: encode scales by scale byte. col0, stride: where raw was loaded from (16 rows of stride
// bytes in shared memory), read again on RHT's overflow path.
template <typename T, bool RHT, bool SR>
__device__ __forceinline__ void column_pair(const CastParams& p, typename Tr<T>::P (&raw)[16], const uint8_t* col0,
                                            int stride, float k_col, const float* etab_c, uint32_t grow, uint32_t ca,
                                            int lane, uint32_t* tile_max, uint4& codes, uint16_t& scales) {
  uint32_t bits_a = 0, bits_b = 0, tile_in = 0;  // tile_in: 16x16 tile max of the input (before any RHT)
  if constexpr (RHT) {
    if (p.block_2d) {
      uint32_t a, b;
      column_maxima<T>(raw, a, b);
      tile_in = tile_max8(max_u32(a, b));
    }
  } else {
    column_maxima<T>(raw, bits_a, bits_b);
    if (p.block_2d) tile_in = tile_max8(max_u32(bits_a, bits_b));
  }
  if (p.block_2d && (lane & 7) == 0) *tile_max = tile_in;
  if (!p.do_col) return;
  if constexpr (RHT) {
    uint32_t in_a, in_b;
    bool wide = rht_column_rounded<T>(raw, in_a, in_b, bits_a, bits_b);
    if (p.block_2d) wide = __any_sync(0xffffffffu, wide);  // the tile max needs every lane
    if (wide) {
      const WideTask w = column_rht_wide<T, SR>(col0, stride, k_col, etab_c, p.key_col, p.row_offset + grow, ca,
                                                p.block_2d);
      codes = w.codes;
      scales = static_cast<uint16_t>(w.scales);
      return;
    }
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

}  // namespace fp4dist_cuda
