// Programmatic dependent launch (sm_90 and up): a kernel launched with launch_dependent() may start (its CTAs
// dispatched, its shared memory set up) while the kernel before it in the stream is finishing, instead of after it.
// Every such kernel calls grid_dependency_sync() first: it waits until the kernels before it have completed and
// their memory is visible, and it lets the kernel after it (if that was launched the same way) be dispatched onto
// SMs as this one's CTAs leave them. Nothing before it may touch global memory. Before sm_90 both are no-ops and
// the launch is an ordinary one. Stream capture (CUDA graphs) keeps the dependency as a programmatic edge.
#pragma once

#include <cstdlib>
#include <utility>
#include <cuda_runtime.h>

#include "launch.cuh"

namespace fp4dist_cuda {

__device__ __forceinline__ void grid_dependency_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether the current device launches dependently: compute capability 9.0 or newer, and FP4DIST_PDL is not "0".
inline bool dependent_launch_enabled() {
  static const bool env_ok = [] {
    const char* v = std::getenv("FP4DIST_PDL");
    return v == nullptr || v[0] != '0';
  }();
  static int major[kMaxDevices] = {};  // 0: not read yet
  int dev = 0;
  if (!env_ok || cudaGetDevice(&dev) != cudaSuccess || dev >= kMaxDevices) return false;
  if (major[dev] == 0) {
    int cc = 0;
    cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, dev);
    major[dev] = cc > 0 ? cc : 1;
  }
  return major[dev] >= 9;
}

// kern<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where enabled.
template <typename... KArgs, typename... Args>
cudaError_t launch_dependent(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = dependent_launch_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kern, std::forward<Args>(args)...);
}

}  // namespace fp4dist_cuda
