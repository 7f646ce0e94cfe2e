// The device side of common/l2_prefetch_plan.h: a kernel's blocks split its L2Prefetch ranges
// between them and ask the L2 for their shares in bulk (cp.async.bulk.prefetch.L2: a hint that
// nothing waits for, executed by the memory system after the instruction issues). Only weights,
// which no kernel writes, are prefetched, so it may run before griddepcontrol.wait.
#pragma once
#include <cstdint>

#include "common/l2_prefetch_plan.h"

namespace vlm {
namespace cuda {

// Called by every thread of the block; warp 0's lanes issue the block's pieces (up to 16 KiB each).
__device__ __forceinline__ void l2_prefetch_share(const L2Prefetch& pf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pf.count == 0 || threadIdx.x >= 32) return;
  constexpr uint32_t kPieceUnits = 1024;  // 16-byte units in one instruction's piece
  const uint32_t blocks = gridDim.x * gridDim.y * gridDim.z;
  const uint32_t block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  for (int r = 0; r < pf.count; ++r) {
    const uint32_t units = pf.bytes[r] / 16;
    const uint32_t u0 = (uint32_t)((uint64_t)units * block / blocks);
    const uint32_t u1 = (uint32_t)((uint64_t)units * (block + 1) / blocks);
    for (uint32_t u = u0 + threadIdx.x * kPieceUnits; u < u1; u += 32 * kPieceUnits) {
      const uint32_t n = min(kPieceUnits, u1 - u) * 16;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(pf.ptr[r] + (uint64_t)u * 16), "r"(n)
                   : "memory");
    }
  }
#endif
}

}  // namespace cuda
}  // namespace vlm
