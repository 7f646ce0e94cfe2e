// The step-streaming probe of step_stream_probe.h: a chain of dependent kernels, one a phase, against one
// persistent launch that goes through the phases with a counter wait between them.
#include "cuda/step_stream_probe.h"

#include <cuda_fp16.h>

#include <map>
#include <utility>

#include "cuda/dependent_launch.cuh"
#include "cuda/device_query.h"
#include "cuda/grid_counter.cuh"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {
namespace {

using w4a16::cp_async16;
using w4a16::cp_async_commit;
using w4a16::cp_async_wait;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kVecPerStep = kStepProbeStepBytes / 16;  // one 16-byte copy a lane
static_assert(kVecPerStep == 32, "a ring stage is one 16-byte copy per lane");

// Phase p is steps [begin[p], begin[p + 1]) of 512 bytes from the start of the buffer.
struct Phases {
  int64_t begin[kStepProbeMaxPhases + 1];
  int count;
};

// One warp's share [s0, s1) of a phase's steps, streamed through its ring of ST stages.
struct WarpSpan {
  int64_t s0, s1;
};
__device__ __forceinline__ WarpSpan warp_span(int64_t begin, int64_t end, int64_t warp, int64_t warps) {
  const int64_t n = end - begin;
  return WarpSpan{begin + n * warp / warps, begin + n * (warp + 1) / warps};
}

// Stage j of the span into ring slot `slot`; one commit group always (empty past the span's end), so the count of
// groups in flight stays ST and cp_async_wait<ST - 1> means "stage j is in".
__device__ __forceinline__ void issue(uint4* ring, const uint4* src, const WarpSpan& s, int64_t j, int slot,
                                      int lane) {
  if (s.s0 + j < s.s1) cp_async16(ring + slot * 32 + lane, src + (s.s0 + j) * kVecPerStep + lane);
  cp_async_commit();
}
template <int ST>
__device__ __forceinline__ void prime(uint4* ring, const uint4* src, const WarpSpan& s, int lane) {
#pragma unroll
  for (int j = 0; j < ST; ++j) issue(ring, src, s, j, j, lane);
}

// Every stage of the primed span, each lane folding its own 16 bytes into x (a lane reads only what it copied,
// so no warp sync is needed; the XOR uses the value before the slot is refilled). Ends with no copy in flight.
template <int ST>
__device__ __forceinline__ uint32_t consume(uint4* ring, const uint4* src, const WarpSpan& s, int lane) {
  uint32_t x = 0;
  const int64_t n = s.s1 - s.s0;
  for (int64_t j0 = 0; j0 < n; j0 += ST) {
#pragma unroll
    for (int slot = 0; slot < ST; ++slot) {
      const int64_t j = j0 + slot;
      if (j >= n) break;
      cp_async_wait<ST - 1>();
      const uint4 v = ring[slot * 32 + lane];
      x ^= v.x ^ v.y ^ v.z ^ v.w;
      issue(ring, src, s, j + ST, slot, lane);
    }
  }
  cp_async_wait<0>();
  return x;
}

// The block's XOR into its sink word (one atomic a warp: blocks of consecutive chain kernels share the word and
// may overlap under dependent launch).
__device__ __forceinline__ void fold_into_sink(uint32_t x, uint32_t* sink) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x ^= __shfl_xor_sync(0xffffffffu, x, o);
  if (threadIdx.x % 32 == 0) atomicXor(sink + blockIdx.x, x);
}

// Until `target` blocks have counted themselves in: thread 0 polls (grid_counter.cuh: it traps after seconds, when
// the grid was not all resident), the block follows it.
__device__ __forceinline__ void wait_for(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) cuda::wait_for_count(counter, target);
  __syncthreads();
}

// The work a decode GEMM does around its weights where the previous phase's output is its input, modelled: after
// the wait every block reads the whole row the previous phase wrote and reduces its sum of squares across the block
// (an RMSNorm's statistics: the fused norm's prologue), and after its weights each block writes its share of this
// phase's row (the GEMM's output columns): (p + 1) / rms of the row it read, so the dependency is real and a block
// that skipped its read would leave a value the tests see. rows: two rows of `row` halves, phase p writing row p % 2;
// nothing when row is 0.
__device__ __forceinline__ float row_rms_inverse(const __half* prev, int row) {
  __shared__ float warp_sums[kWarps];
  float sq = 0.f;
  for (int i = threadIdx.x * 8; i < row; i += kThreads * 8) {
    const uint4 v = __ldcg(reinterpret_cast<const uint4*>(prev + i));
    const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __half22float2(h[j]);
      sq += f.x * f.x + f.y * f.y;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sq;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums is reused by the next phase's prologue
  return rsqrtf(total / row + 1e-6f);
}
__device__ __forceinline__ void write_row_share(__half* out, int row, float value) {
  const int per_block = (row + gridDim.x - 1) / gridDim.x;
  const int i0 = blockIdx.x * per_block, i1 = min(row, i0 + per_block);
  for (int i = i0 + threadIdx.x; i < i1; i += kThreads) __stcg(out + i, __float2half(value));
}

template <int ST>
__global__ void __launch_bounds__(kThreads) persistent_kernel(const __grid_constant__ Phases ph,
                                                              const uint4* __restrict__ src, uint32_t* sink,
                                                              unsigned* counters, bool waits, __half* rows,
                                                              int row) {
  extern __shared__ __align__(16) uint4 smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint4* ring = smem + warp * ST * 32;
  const int64_t warps = (int64_t)gridDim.x * kWarps, me = (int64_t)blockIdx.x * kWarps + warp;
  uint32_t x = 0;
  WarpSpan s = warp_span(ph.begin[0], ph.begin[1], me, warps);
  prime<ST>(ring, src, s, lane);
  const bool rowed = waits && row > 0;
  float inv = 1.f;
  for (int p = 0; p < ph.count; ++p) {
    if (waits && p > 0) wait_for(counters + p - 1, gridDim.x);
    if (rowed && p > 0) inv = row_rms_inverse(rows + ((p - 1) & 1) * row, row);
    x ^= consume<ST>(ring, src, s, lane);
    if (rowed) write_row_share(rows + (p & 1) * row, row, inv * (p + 1));
    if (p + 1 == ph.count) break;
    if (waits) {  // this block's share of phase p is done: count it, then request the next phase's first stages
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counters + p, 1u);
      }
    }
    s = warp_span(ph.begin[p + 1], ph.begin[p + 2], me, warps);
    prime<ST>(ring, src, s, lane);
  }
  fold_into_sink(x, sink);
}

// One phase of the chain: the first stages before the wait for the kernel before it, as the engine's GEMMs do.
template <int ST>
__global__ void __launch_bounds__(kThreads) chain_kernel(const uint4* __restrict__ src, int64_t begin, int64_t end,
                                                         uint32_t* sink, __half* rows, int row, int phase) {
  extern __shared__ __align__(16) uint4 smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint4* ring = smem + warp * ST * 32;
  const WarpSpan s = warp_span(begin, end, (int64_t)blockIdx.x * kWarps + warp, (int64_t)gridDim.x * kWarps);
  prime<ST>(ring, src, s, lane);
  cuda::pdl_wait();
  cuda::pdl_allow_next();
  const float inv = row > 0 && phase > 0 ? row_rms_inverse(rows + ((phase - 1) & 1) * row, row) : 1.f;
  const uint32_t x = consume<ST>(ring, src, s, lane);
  if (row > 0) write_row_share(rows + (phase & 1) * row, row, inv * (phase + 1));
  fold_into_sink(x, sink);
}

int smem_bytes(int stages) { return kWarps * stages * kStepProbeStepBytes; }

// The most dynamic shared memory a block may ask on the current device (its opt-in limit), 0 if unknown.
int optin_smem() {
  int device = 0, n = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Room left a block for the kernel's own static shared memory (the row statistic's 32 bytes) within the limits below.
constexpr int kStaticSmemRoom = 256;

// Dynamic shared memory a block of the exclusive chain asks for: an SM's share for `blocks_per_sm` blocks, less the
// 1 KB the runtime reserves a block and room for the static part, so no further block fits beside them (one more
// would need the share again); within the opt-in limit a block; at least the ring.
int exclusive_smem(int blocks_per_sm, int stages) {
  int device = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess) {
    cudaGetLastError();
    return smem_bytes(stages);
  }
  const int share = per_sm / blocks_per_sm - 1024 - kStaticSmemRoom, most = optin_smem() - kStaticSmemRoom;
  const int bytes = share < most ? share : most;
  return bytes > smem_bytes(stages) ? bytes : smem_bytes(stages);
}

template <int ST>
cudaError_t grant() {
  static const cudaError_t e = [] {
    cudaError_t r = cudaFuncSetAttribute(persistent_kernel<ST>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         smem_bytes(ST));
    // The exclusive chain asks for up to the opt-in limit less the static part (dynamic + static may not exceed it).
    const int most = optin_smem() - kStaticSmemRoom;
    if (r == cudaSuccess)
      r = cudaFuncSetAttribute(chain_kernel<ST>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               most > smem_bytes(ST) ? most : smem_bytes(ST));
    return r;
  }();
  return e;
}

template <int ST>
int resident_per_sm() {
  if (grant<ST>() != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, persistent_kernel<ST>, kThreads, smem_bytes(ST)) !=
      cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int resident_per_sm(int stages) {
  thread_local std::map<std::pair<int, int>, int> cache;  // (device, stages)
  int device = 0;
  cudaGetDevice(&device);
  const auto key = std::make_pair(device, stages);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const int n = stages == 16 ? resident_per_sm<16>() : stages == 8 ? resident_per_sm<8>() : resident_per_sm<4>();
  return cache.emplace(key, n).first->second;
}

template <int ST>
cudaError_t launch(const uint4* src, const Phases& ph, StepProbeMode mode, int grid, uint32_t* sink,
                   unsigned* counters, __half* rows, int row, cudaStream_t stream) {
  if (const cudaError_t e = grant<ST>(); e != cudaSuccess) return e;
  if (mode == StepProbeMode::kChain || mode == StepProbeMode::kChainExclusive) {
    const int smem = mode == StepProbeMode::kChain ? smem_bytes(ST) : exclusive_smem(grid / cuda::sm_count(), ST);
    for (int p = 0; p < ph.count; ++p) {
      const cudaError_t e = cuda::launch_dependent(chain_kernel<ST>, dim3(grid), dim3(kThreads), smem, stream, src,
                                                   ph.begin[p], ph.begin[p + 1], sink, rows, row, p);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }
  if (const cudaError_t e = cudaMemsetAsync(counters, 0, sizeof(unsigned) * ph.count, stream); e != cudaSuccess)
    return e;
  persistent_kernel<ST><<<grid, kThreads, smem_bytes(ST), stream>>>(ph, src, sink, counters,
                                                                    mode == StepProbeMode::kPersistent, rows, row);
  return cudaGetLastError();
}

}  // namespace

int step_probe_grid(int blocks_per_sm, int ring_stages) {
  if (blocks_per_sm < 1 || (ring_stages != 4 && ring_stages != 8 && ring_stages != 16)) return 0;
  return blocks_per_sm <= resident_per_sm(ring_stages) ? blocks_per_sm * cuda::sm_count() : 0;
}

cudaError_t step_stream_probe(const void* p, const int64_t* phase_bytes, int phases, StepProbeMode mode,
                              int blocks_per_sm, int ring_stages, uint32_t* sink, unsigned* counters, void* rows,
                              int row_halves, cudaStream_t stream) {
  if (!p || !phase_bytes || !sink || phases < 1 || phases > kStepProbeMaxPhases) return cudaErrorInvalidValue;
  if (row_halves < 0 || row_halves % 8 != 0 || (row_halves > 0 && !rows)) return cudaErrorInvalidValue;
  Phases ph{};
  ph.count = phases;
  for (int i = 0; i < phases; ++i) {
    if (phase_bytes[i] <= 0 || phase_bytes[i] % kStepProbeStepBytes != 0) return cudaErrorInvalidValue;
    ph.begin[i + 1] = ph.begin[i] + phase_bytes[i] / kStepProbeStepBytes;
  }
  const bool chain = mode == StepProbeMode::kChain || mode == StepProbeMode::kChainExclusive;
  if (!chain && !counters) return cudaErrorInvalidValue;
  const int grid = step_probe_grid(blocks_per_sm, ring_stages);
  if (grid == 0) return cudaErrorInvalidConfiguration;
  const uint4* src = static_cast<const uint4*>(p);
  __half* h = static_cast<__half*>(rows);
  if (ring_stages == 16) return launch<16>(src, ph, mode, grid, sink, counters, h, row_halves, stream);
  if (ring_stages == 8) return launch<8>(src, ph, mode, grid, sink, counters, h, row_halves, stream);
  return launch<4>(src, ph, mode, grid, sink, counters, h, row_halves, stream);
}

}  // namespace vlm
