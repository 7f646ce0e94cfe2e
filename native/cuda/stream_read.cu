// The read-only kernel of stream_read.h: a grid of 4 blocks per SM, each thread walking the buffer in 16-byte
// streaming loads with 4 of them in flight before it combines any, the grid's stride apart so that every
// round reads one contiguous stretch.
#include "cuda/stream_read.h"

#include "cuda/device_query.h"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {
namespace {

constexpr int kThreads = 512;
constexpr int kBlocksPerSm = 4;
constexpr int kInFlight = 4;

__global__ void __launch_bounds__(kThreads) stream_read_kernel(const uint4* __restrict__ p, int64_t n,
                                                               uint32_t* __restrict__ sink) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  uint32_t x = 0;
  int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  for (; i + (kInFlight - 1) * stride < n; i += kInFlight * stride) {
    uint4 v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) v[u] = w4a16::load_streaming(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = w4a16::load_streaming(p + i);
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // One word a block: the warp's lanes combined, then the warps' through shared memory.
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x ^= __shfl_xor_sync(0xffffffffu, x, o);
  __shared__ uint32_t warps[kThreads / 32];
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t y = 0;
    for (int w = 0; w < kThreads / 32; ++w) y ^= warps[w];
    sink[blockIdx.x] = y;
  }
}

}  // namespace

int stream_read_sink_words() { return cuda::sm_count() * kBlocksPerSm; }

cudaError_t stream_read(const void* p, int64_t bytes, uint32_t* sink, cudaStream_t stream) {
  if (bytes <= 0 || bytes % 16 != 0 || reinterpret_cast<uintptr_t>(p) % 16 != 0) return cudaErrorInvalidValue;
  stream_read_kernel<<<stream_read_sink_words(), kThreads, 0, stream>>>(static_cast<const uint4*>(p), bytes / 16,
                                                                          sink);
  return cudaGetLastError();
}

}  // namespace vlm
