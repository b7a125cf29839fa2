// Host-side helpers the launchers share: the device's SM count and a capped grid size.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace fp4dist_cuda {

constexpr int kMaxDevices = 64;  // per-device launch state (shared-memory attributes, occupancy) is kept for these

inline int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n > 0 ? n : 1;
}

// ceil(work_items / threads) CTAs, at most ctas_per_sm per SM, at least 1.
inline int grid_for(int64_t work_items, int threads, int ctas_per_sm) {
  int64_t g = (work_items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sm_count()) * ctas_per_sm;
  if (g > cap) g = cap;
  if (g < 1) g = 1;
  return static_cast<int>(g);
}

}  // namespace fp4dist_cuda
