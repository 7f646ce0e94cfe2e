// Waiting inside a kernel for other blocks of the same grid, through a counter in global memory: what the
// persistent kernels (the layer tail's grid barrier, the step-streaming probe's phase waits) need where a
// cooperative launch is not used, and the last-to-arrive merges of key slices.
#pragma once
#include <cstdint>

namespace vlm {
namespace cuda {

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// A wait of microseconds is normal; one of seconds means blocks of the grid cannot all be resident (e.g. another
// client's limit on SMs that this process could not see): trap, an error the caller reports, rather than hang.
constexpr uint64_t kCounterWaitTimeoutNs = 5'000'000'000ull;

// Called by one thread: until *counter has reached `target` (compared modulo 2^32, so a counter that runs on across
// launches works), with acquire loads, so that what the counting blocks wrote before their (fenced) additions is
// visible to this block after a following __syncthreads.
__device__ __forceinline__ void wait_for_count(const unsigned* counter, unsigned target) {
  const uint64_t start = global_ns();
  unsigned seen;
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
    if ((int)(seen - target) >= 0) break;
    __nanosleep(32);  // one L2 line polled by every block: a little backoff
    if (global_ns() - start > kCounterWaitTimeoutNs) __trap();
  }
}

// The last-to-arrive pattern (split-K sums, key slices merged): called by one thread of a block after a
// __syncthreads() that follows the block's global writes, adds 1 to *counter and returns its value before. The
// addition is a release and an acquire at GPU scope: the block's writes (ordered before this thread's by the
// barrier) are visible to a block that later acquires the counter, and what the blocks that added before wrote is
// visible to this block after a following __syncthreads(). In SASS one MEMBAR.ALL.GPU in one thread before the
// atomic and an L1 invalidation after it, where __threadfence() in every thread before a plain atomicAdd and again
// after it costs a sequentially consistent fence (MEMBAR.SC.GPU) in each warp, twice on the last block's path.
__device__ __forceinline__ int arrive_acq_rel(int* counter) {
  int before;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(before) : "l"(counter) : "memory");
  return before;
}

}  // namespace cuda
}  // namespace vlm
