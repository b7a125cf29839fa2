// Decode of NVFP4 layouts: out[i] = (e2m1(code_i) * float(scale)) * d (the product e2m1 * scale is exact),
// rounded once to O (bf16 / fp16 / fp32), with d per operand: a decode scale from device memory, S_dec(amax)
// computed here, 1, or (operand A of a GEMM pair) the power-of-two shift of gemm_alpha (numerics.cuh).
// One launch decodes one operand (dequantize) or a GEMM's two operands (decode_operands: alpha and the shift
// written by one thread). A thread handles G = 16 / sizeof(O) consecutive codes (8 for bf16/fp16, 4 for fp32)
// so that each thread writes one 16-byte vector and a warp writes 512 contiguous bytes. An operand's codes and
// scales may be G slices at any distance apart (rank-major pieces of one gathered buffer); its output is dense.

#include "common/decode.cuh"
#include "common/dtype_traits.cuh"
#include "common/launch.cuh"
#include "common/numerics.cuh"
#include "fp4dist.h"

namespace fp4dist_cuda {

// One operand of a decode launch, in groups of G codes (one output vector each). Group g of slice s reads code
// bytes data + s * data_stride + g * G / 2 and the scale byte scale + s * scale_stride + g * G / 16.
struct DecodeOperand {
  const uint8_t* data;
  const uint8_t* scale;
  uint4* out;
  int64_t groups;        // all slices
  int64_t slice_groups;  // per slice; == groups for one slice
  int64_t data_stride, scale_stride;
  const float* dec;      // d = *dec, or
  const float* amax;     // d = S_dec(*amax), or 1 where both are null
  int gemm_shift;        // d = gemm_alpha(*amax_a, *amax_b).shift (operand A of a pair)
};

struct DecodeParams {
  DecodeOperand op[2];
  int count;
  const float* amax_a;  // the GEMM pair's amaxes, alpha and shift (null for one operand)
  const float* amax_b;
  float* alpha_out;
  float* shift_out;
};

// A contiguous operand: group g at data + g * G / 2, scale + g * G / 16.
template <typename O>
__device__ __forceinline__ void decode_flat(const DecodeOperand& op, float dec, const float* lut) {
  using IO = DequantIO<O>;
  using In = typename IO::In;
  constexpr int kPerBlock = 16 / IO::kG;  // groups per 16-code block
  const In* din = reinterpret_cast<const In*>(op.data);
  const uint8_t* scale = op.scale;
  uint4* o = op.out;
  const int64_t ngroups = op.groups;
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

// An operand of several slices; I: the index type (32-bit where every group index and step fits).
template <typename O, typename I>
__device__ __forceinline__ void decode_sliced(const DecodeOperand& op, float dec, const float* lut) {
  using IO = DequantIO<O>;
  using In = typename IO::In;
  constexpr int kPerBlock = 16 / IO::kG;
  const I ngroups = static_cast<I>(op.groups), per_slice = static_cast<I>(op.slice_groups);
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  const auto load = [&](I g, In& d, uint8_t& s) {
    const I slice = g / per_slice, w = g - slice * per_slice;
    d = __ldg(reinterpret_cast<const In*>(op.data + static_cast<int64_t>(slice) * op.data_stride) + w);
    s = __ldg(op.scale + static_cast<int64_t>(slice) * op.scale_stride + w / kPerBlock);
  };
  I g = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; g + 3 * stride < ngroups; g += 4 * stride) {
    In d[4];
    uint8_t s[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) load(g + u * stride, d[u], s[u]);
#pragma unroll
    for (int u = 0; u < 4; ++u) op.out[g + u * stride] = dequant_group<O>(d[u], s[u], dec, lut);
  }
  for (; g < ngroups; g += stride) {
    In d;
    uint8_t s;
    load(g, d, s);
    op.out[g] = dequant_group<O>(d, s, dec, lut);
  }
}

template <typename O>
__device__ __forceinline__ void decode_operand(const DecodeParams& p, const DecodeOperand& op, const float* lut) {
  float dec = 1.0f;
  if (op.gemm_shift) {
    dec = gemm_alpha(*p.amax_a, *p.amax_b).shift;
  } else if (op.dec != nullptr) {
    dec = *op.dec;
  } else if (op.amax != nullptr) {
    dec = global_decode_scale(*op.amax);
  }
  if (op.slice_groups >= op.groups) {
    decode_flat<O>(op, dec, lut);
  } else if (op.groups < (int64_t(1) << 31)) {  // g + 4 * stride stays below 2^32
    decode_sliced<O, uint32_t>(op, dec, lut);
  } else {
    decode_sliced<O, uint64_t>(op, dec, lut);
  }
}

template <typename O>
__global__ void __launch_bounds__(256, 8) decode_kernel(const DecodeParams p) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = e2m1_value(threadIdx.x);
  __syncthreads();
  if (p.alpha_out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    const GemmAlpha ga = gemm_alpha(*p.amax_a, *p.amax_b);
    *p.alpha_out = ga.alpha;
    *p.shift_out = ga.shift;
  }
  if (p.count > 0) decode_operand<O>(p, p.op[0], lut);
  if (p.count > 1) decode_operand<O>(p, p.op[1], lut);
}

namespace {

// The geometry of op from a, in groups of codes_per_group codes.
void set_geometry(DecodeOperand& op, const PackedOperand& a, int codes_per_group) {
  op.data = a.data;
  op.scale = a.scale;
  op.out = static_cast<uint4*>(a.out);
  op.slice_groups = a.rows * a.row_bytes * 2 / codes_per_group;
  op.groups = a.slices * op.slice_groups;
  if (a.data_stride == a.rows * a.row_bytes && a.scale_stride == a.rows * (a.row_bytes / 8)) {
    op.slice_groups = op.groups;  // slices back to back: one slice
  }
  op.data_stride = a.data_stride;
  op.scale_stride = a.scale_stride;
}

// p: everything but the operands' geometry, which comes from ops[0 .. p.count).
template <typename O>
cudaError_t launch_decode_t(DecodeParams p, const PackedOperand* ops, cudaStream_t stream) {
  int64_t groups = 0;
  for (int k = 0; k < p.count; ++k) {
    set_geometry(p.op[k], ops[k], DequantIO<O>::kG);
    groups += p.op[k].groups;
  }
  decode_kernel<O><<<grid_for(groups, 256, 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_decode(int out_dtype, const DecodeParams& p, const PackedOperand* ops, cudaStream_t stream) {
  switch (out_dtype) {
    case 0: return launch_decode_t<__nv_bfloat16>(p, ops, stream);
    case 1: return launch_decode_t<__half>(p, ops, stream);
    case 2: return launch_decode_t<float>(p, ops, stream);
    default: return cudaErrorInvalidValue;
  }
}

bool empty(const PackedOperand& a) { return a.slices * a.rows * a.row_bytes == 0; }

}  // namespace

cudaError_t launch_dequantize(int out_dtype, const PackedOperand& a, const float* decode_scale, const float* amax,
                              cudaStream_t stream) {
  if (empty(a)) return cudaSuccess;
  DecodeParams p{};
  p.count = 1;
  p.op[0].dec = decode_scale;
  p.op[0].amax = amax;
  return launch_decode(out_dtype, p, &a, stream);
}

cudaError_t launch_decode_operand_b(int out_dtype, const PackedOperand& b, const float* amax_a, const float* amax_b,
                                    float* alpha_out, float* shift_out, cudaStream_t stream) {
  DecodeParams p{};
  if (!empty(b)) p.op[p.count++].gemm_shift = 1;  // alpha and the shift are written in any case
  p.amax_a = amax_a;
  p.amax_b = amax_b;
  p.alpha_out = alpha_out;
  p.shift_out = shift_out;
  return launch_decode(out_dtype, p, &b, stream);
}

cudaError_t launch_decode_operands(int out_dtype, const PackedOperand& a, const PackedOperand& b,
                                   const float* amax_a, const float* amax_b, float* alpha_out, float* shift_out,
                                   cudaStream_t stream) {
  DecodeParams p{};
  PackedOperand ops[2];
  // empty operands are left out; alpha and the shift are written in any case
  if (!empty(a)) {
    p.op[p.count].gemm_shift = 1;
    ops[p.count++] = a;
  }
  if (!empty(b)) ops[p.count++] = b;
  p.amax_a = amax_a;
  p.amax_b = amax_b;
  p.alpha_out = alpha_out;
  p.shift_out = shift_out;
  return launch_decode(out_dtype, p, ops, stream);
}

}  // namespace fp4dist_cuda
