// Host build of csrc/common/numerics.cuh answering queries on stdin, one per line, for
// tests/test_kernel_numerics_host.py to compare with the Python definitions:
//   key SEED OFFSET STREAM   (decimal uint64, uint64, uint32) -> stream_key, decimal
//   alpha A B                (fp32 bit patterns of amax_a, amax_b, decimal) -> gemm_alpha's alpha and shift bits
// Unknown queries print "?". No GPU needed.
#include "../../csrc/common/numerics.cuh"

#include <cinttypes>
#include <cstdio>
#include <cstring>

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
    } else {
      std::printf("?\n");
    }
  }
  return 0;
}
