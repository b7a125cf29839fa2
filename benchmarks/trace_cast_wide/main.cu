// Experiment (not product code): per-CTA %globaltimer trace of the wide cast kernel.
//   cd benchmarks/trace_cast_wide && nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -I../../csrc/cast -I../../csrc \
//     [-DONE_READ] [-DPDL_WAIT] -o /tmp/trace main.cu && /tmp/trace
#include "cast_wide_traced.cu"
#include <cstdio>
#include <vector>
#include <algorithm>
using namespace fp4dist_cuda;

__global__ void __launch_bounds__(544, 1) empty_kernel(int x) {
  extern __shared__ uint8_t sm[];
  if (threadIdx.x == 0) { TR(0); if (x == 12345) sm[0] = 1; }
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(&g_trace[blockIdx.x * 32 + 21], gtime());
}
__global__ void fill(__nv_bfloat16* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    x[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f) * 4.0f);
  }
}
#define CK(e) do { cudaError_t r = (e); if (r != cudaSuccess) { printf("CUDA %s line %d\n", cudaGetErrorString(r), __LINE__); exit(1);} } while (0)

static double med(std::vector<double> v) { if (v.empty()) return -1; std::sort(v.begin(), v.end()); return v[v.size() / 2]; }
static double vmax(const std::vector<double>& v) { return v.empty() ? -1 : *std::max_element(v.begin(), v.end()); }

static cudaStream_t g_s;
template <class K, class... A>
void lk(K kern, int grid, int smem, A... args) {
#ifdef PDL_WAIT
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid); cfg.blockDim = dim3(wide::kThreads); cfg.dynamicSmemBytes = smem; cfg.stream = g_s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at; cfg.numAttrs = 1;
  cudaLaunchKernelEx(&cfg, kern, args...);
#else
  kern<<<grid, wide::kThreads, smem, g_s>>>(args...);
#endif
}
template <class F>
void run(const char* name, int grid, int nsub, F launch) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 10; ++i) launch();
  CK(cudaStreamSynchronize(g_s));
  cudaEventRecord(a, g_s);
  for (int i = 0; i < 40; ++i) launch();
  cudaEventRecord(b, g_s); CK(cudaEventSynchronize(b));
  float ms; cudaEventElapsedTime(&ms, a, b);
  void* tp; CK(cudaGetSymbolAddress(&tp, g_trace));
  CK(cudaStreamSynchronize(g_s)); CK(cudaMemset(tp, 0, sizeof(unsigned long long) * 1024 * 32)); CK(cudaDeviceSynchronize());
  cudaEventRecord(a, g_s); launch(); cudaEventRecord(b, g_s); CK(cudaEventSynchronize(b));
  float ms1; cudaEventElapsedTime(&ms1, a, b);
  std::vector<unsigned long long> t(1024 * 32);
  CK(cudaMemcpy(t.data(), tp, t.size() * 8, cudaMemcpyDeviceToHost));
  unsigned long long t0 = ~0ull, tend = 0;
  for (int c = 0; c < grid; ++c) { t0 = std::min(t0, t[c * 32]); tend = std::max(tend, t[c * 32 + 21]); }
  auto T = [&](int c, int s) { return (t[c * 32 + s] - (double)t0) / 1000.0; };
  std::vector<double> entry, prol, first, sub, tail, end, prod;
  for (int c = 0; c < grid; ++c) {
    entry.push_back(T(c, 0));
    if (t[c * 32 + 3]) prol.push_back(T(c, 3) - T(c, 0));
    if (t[c * 32 + 4]) first.push_back(T(c, 4) - T(c, 3));
    int last = 4;
    for (int k = 1; k < nsub && k < 16; ++k) if (t[c * 32 + 4 + k]) { sub.push_back(T(c, 4 + k) - T(c, 3 + k)); last = 4 + k; }
    if (t[c * 32 + 4]) tail.push_back(T(c, 21) - T(c, last));
    end.push_back(T(c, 21));
    if (t[c * 32 + 22]) prod.push_back(T(c, 22) - T(c, 0));
  }
  std::vector<double> es = entry; std::sort(es.begin(), es.end());
  printf("%-44s grid %3d: avg %7.2f us (single %7.2f) | span %6.2f | entry p25/50/75/max %5.2f %5.2f %5.2f %5.2f | "
         "to-first-data med/max %5.2f %5.2f | first sub %5.2f | later sub med %5.2f | tail med %5.2f | end min/med/max %6.2f %6.2f %6.2f | prod done med %6.2f\n",
         name, grid, ms * 1000 / 40, ms1 * 1000, (tend - t0) / 1000.0, es[grid / 4], es[grid / 2], es[3 * grid / 4], es.back(),
         med(prol), vmax(prol), med(first), med(sub), med(tail), *std::min_element(end.begin(), end.end()), med(end), vmax(end), med(prod));
  fflush(stdout);
}

int main() {
  int sms = sm_count();
  CK(cudaStreamCreateWithFlags(&g_s, cudaStreamNonBlocking));
  const int64_t M = 8192, NMAX = 4096;
  __nv_bfloat16 *x, *rop, *cop; float *amax, *partner, *alpha; int64_t* off; uint8_t *cd, *cs;
  CK(cudaMalloc(&x, M * NMAX * 2)); CK(cudaMalloc(&rop, M * NMAX * 2)); CK(cudaMalloc(&cop, M * NMAX * 2));
  CK(cudaMalloc(&cd, M * NMAX / 2)); CK(cudaMalloc(&cs, M * NMAX / 16));
  CK(cudaMalloc(&amax, 8)); CK(cudaMalloc(&partner, 4)); CK(cudaMalloc(&alpha, 8)); CK(cudaMalloc(&off, 8));
  fill<<<1024, 256>>>(x, M * NMAX); CK(cudaDeviceSynchronize());
  float h_am[2] = {2.0f, 8.0f}; CK(cudaMemcpy(amax, h_am, 8, cudaMemcpyHostToDevice));
  float h_p = 3.0f; CK(cudaMemcpy(partner, &h_p, 4, cudaMemcpyHostToDevice)); CK(cudaMemset(off, 0, 8));
  auto gk = cast_wide_kernel<__nv_bfloat16, true, true, true, true>;   // gradient cast
  auto ik = cast_wide_kernel<__nv_bfloat16, true, false, true, true>;  // input cast
  CK(cudaFuncSetAttribute(gk, cudaFuncAttributeMaxDynamicSharedMemorySize, wide::kSmemBytes));
  CK(cudaFuncSetAttribute(ik, cudaFuncAttributeMaxDynamicSharedMemorySize, wide::kSmemBytes));
  CK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, wide::kSmemBytes));
  printf("SMs %d, smem big %d small %d\n", sms, wide::kSmemBytes, wide::kSmemBytesNoColumnCodes);
  for (int64_t N : {1024, 2048, 4096}) {
    CastParams p{};
    p.x = x; p.m = M; p.n = N; p.amax = amax; p.do_row = 1; p.do_col = 1; p.vec_ok = 1; p.key_row = 7; p.key_col = 9;
    const int64_t units_x = (N + 511) / 512; int64_t units = 0, best = INT64_MAX;
    for (int rows = 512; rows >= 128; rows /= 2) {
      const int64_t u = units_x * ((M + rows - 1) / rows), cost = (u + sms - 1) / sms * rows;
      if (cost < best) best = cost, units = u, p.unit_rows = rows;
    }
    p.num_tiles = units;
    const int grid = units < sms ? units : sms;
    const int nsub = (int)((units + grid - 1) / grid * p.unit_rows / 32);
    SrKeySource<true> keys{off, 1234, 1, 2};
    OperandOut<true> ops{rop, cop, partner, partner, alpha};
    char nm[128];
    for (int smem : {wide::kSmemBytes, wide::kSmemBytesNoColumnCodes}) {
      snprintf(nm, sizeof nm, "grad %ldx%ld smem %d", (long)M, (long)N, smem);
      run(nm, grid, nsub, [&] { lk(gk, grid, smem, p, keys, ops); });
    }
    CastParams pi = p; pi.cd = cd; pi.cs = cs; pi.col_data_vec = 1; pi.col_scale_vec = 1;
    OperandOut<true> iops{rop, nullptr, partner, nullptr, alpha};
    snprintf(nm, sizeof nm, "input %ldx%ld", (long)M, (long)N);
    run(nm, grid, nsub, [&] { lk(ik, grid, wide::kSmemBytes, pi, SrKeySource<false>{}, iops); });
    snprintf(nm, sizeof nm, "empty 544 thr, 216KB, grid as grad");
    run(nm, grid, 0, [&] { empty_kernel<<<grid, 544, wide::kSmemBytes, g_s>>>(0); });
  }
  for (int g : {32, 64, 128, 132}) {
    run("empty 544 thr 216KB", g, 0, [&] { empty_kernel<<<g, 544, wide::kSmemBytes, g_s>>>(0); });
    run("empty 544 thr 0KB", g, 0, [&] { empty_kernel<<<g, 544, 0, g_s>>>(0); });
  }
  // grid sweep at 8192x1024 (unit 128 rows): how start-up scales with CTAs
  for (int g : {32, 64, 96, 128}) {
    CastParams p{};
    p.x = x; p.m = M; p.n = 1024; p.amax = amax; p.do_row = 1; p.do_col = 1; p.vec_ok = 1; p.unit_rows = 128; p.num_tiles = 128;
    SrKeySource<true> keys{off, 1234, 1, 2};
    OperandOut<true> ops{rop, cop, partner, partner, alpha};
    char nm[64]; snprintf(nm, sizeof nm, "grad 8192x1024 u128 capped");
    run(nm, g, 128 / g * 4, [&] { lk(gk, g, wide::kSmemBytes, p, keys, ops); });
  }
  CK(cudaDeviceSynchronize());
  printf("alpha ok\n");
  return 0;
}
