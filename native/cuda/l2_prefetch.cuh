// The device side of l2_prefetch.h: a grid's blocks share the ranges in pieces of 4 KiB, one bulk L2 prefetch
// (cp.async.bulk.prefetch.L2, sm_90) a lane of each block's first warp. Nothing waits for them.
#pragma once
#include <cstdint>

#include "cuda/l2_prefetch.h"

namespace vlm {
namespace cuda {

constexpr int64_t kL2PrefetchPiece = 4096;

// Block `block` of `blocks` issues its share; threads past the first warp return at once. Bytes past the last
// whole 16 of a range are left out (the instruction's size is a multiple of 16).
__device__ __forceinline__ void l2_prefetch_share(const L2Prefetch& p, int64_t block, int64_t blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x >= 32) return;
  const int64_t lanes = blocks * 32, me = block * 32 + threadIdx.x;
#pragma unroll
  for (int r = 0; r < L2Prefetch::kRanges; ++r) {
    const int64_t n = p.bytes[r];
    if (n <= 0) continue;
    const unsigned char* base = static_cast<const unsigned char*>(p.ptr[r]);
    for (int64_t i = me; i * kL2PrefetchPiece < n; i += lanes) {
      const int64_t left = n - i * kL2PrefetchPiece;
      const uint32_t size = (uint32_t)((left < kL2PrefetchPiece ? left : kL2PrefetchPiece) & ~int64_t(15));
      if (size)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(base + i * kL2PrefetchPiece), "r"(size)
                     : "memory");
    }
  }
#endif
}

}  // namespace cuda
}  // namespace vlm
