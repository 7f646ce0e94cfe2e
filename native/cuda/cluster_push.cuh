// Pushing fp32 values into another block's shared memory within a thread-block cluster (sm_90), each
// destination counting the bytes it has received on an mbarrier of its own: the receiver waits for its
// bytes alone, and no block waits for the whole cluster at the end. A cluster barrier with release
// semantics (cooperative_groups' cluster.sync()) compiles to a GPU-wide memory fence (MEMBAR.ALL.GPU)
// before the barrier and an L1 invalidation after it; asynchronous stores with a byte count
// (st.async ... mbarrier::complete_tx) need neither.
//
// Use: every block's thread 0 calls push_barrier_init() with the bytes its block will receive, then
// every thread of every block cluster_arrive_relaxed(); later, before the first push, every thread
// cluster_wait() (the barriers are initialised and visible cluster-wide once it returns); push_float()
// sends values; each block's threads wait_pushes() before reading what was pushed to it. A block may
// leave once it has read its own values: every push into it has then landed.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {
namespace cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The same shared-memory variable in the block of cluster rank `rank`, as a shared::cluster address.
__device__ __forceinline__ uint32_t cluster_address(const void* p, uint32_t rank) {
  uint32_t a;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"(shared_address(p)), "r"(rank));
  return a;
}

// Thread 0 of each block: one arrival expected (its own, made here) and `bytes` of pushes.
__device__ __forceinline__ void push_barrier_init(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(bar)) : "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}

// Stores v at `dst` (a shared-memory variable of this kernel) in the block of cluster rank `rank`, counted on
// that block's barrier `bar`.
__device__ __forceinline__ void push_float(const float* dst, uint32_t rank, float v, const uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                   cluster_address(dst, rank)),
               "r"(__float_as_uint(v)), "r"(cluster_address(bar, rank))
               : "memory");
#endif
}

// Waits until every byte pushed into this block has landed (the barrier's first phase completes); acquire at
// cluster scope, as the pushes came from other blocks of the cluster.
__device__ __forceinline__ void wait_pushes(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], 0;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(shared_address(bar))
        : "memory");
#endif
}

}  // namespace cuda
}  // namespace vlm
