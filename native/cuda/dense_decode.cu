// Dense fp16/bf16 GEMM at decode sizes (M <= 4): C = A · Wᵀ, W [N][K] row-major.
//
// Why not cuBLAS here: at one to four rows the GEMM only streams W once, and the
// unquantized 2B model's decode step ran its cuBLAS GEMMs at 2.7-2.8 TB/s of the
// H200's 4.1 (bench/results/decode_h200.json), each after a norm or SiLU kernel of
// its own (48 + 24 launches a step). This kernel reads W at streaming width with
// the next rows' loads in flight, and takes those neighbours into its prologue:
//  - A (M rows, all of K) is staged once per block in shared memory, from A itself,
//    from silu(gate) * up (the down projection's input), or as the RMSNorm of the
//    residual stream (rms_norm_row.cuh, the same bits as the norm kernel);
//  - each warp owns whole output rows, strided over the grid: for each it reads the
//    row in chunks of 8 x 512 bytes (16 bytes a lane, 2048 weights), multiplies them
//    with every staged row in fp32, and sums its lanes with shuffles — no shared
//    partials, no second pass, the same order on every call (deterministic);
//  - the loads of a warp's next chunk are issued before the current one is
//    multiplied, and the first before waiting for the kernel that writes A
//    (dependent_launch.cuh);
//  - the grid is what the GPU holds at once (occupancy x SMs), so each block stages
//    A once and its warps walk the rows.
// The lm head at one row runs it too (dense_decode_logits): fp32 logits. Against cuBLAS (H100,
// 2026-12-07, w4a16 + int8 KV batch 1, two rounds): 2B 951 / 947 -> 962 / 961 tok/s, 7B 436 / 440
// -> 443 / 443. Its weights are read with an L2 evict_first policy, as the w4a16 kernels' are (a
// step's largest single stream: 92544 x 2048 fp16 = 379 MB on the 2B model, against 50 MB of L2);
// measured, the policy made no difference there (plain loads 963 / 966 and 442).
// Plain CUDA (no tensor cores: at these M a weight is used M times), sm_80 and later.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <type_traits>

#include "cuda/argmax_best.cuh"
#include "cuda/dense_decode.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/env_int.h"
#include "cuda/device_query.h"
#include "cuda/rms_norm_row.cuh"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;                   // 16-byte loads a lane per chunk
constexpr int kChunk = 32 * kVec;         // 16-byte vectors a warp per chunk (2048 weights)

// Two fp16/bf16 values as floats.
template <class T>
__device__ __forceinline__ float2 pair(uint32_t bits);
template <>
__device__ __forceinline__ float2 pair<__half>(uint32_t bits) {
  return __half22float2(*reinterpret_cast<const __half2*>(&bits));
}
template <>
__device__ __forceinline__ float2 pair<__nv_bfloat16>(uint32_t bits) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
}

// acc + sum of the eight products of w and a (8 elements each).
template <class T>
__device__ __forceinline__ float dot8(const uint4& w, const uint4& a, float acc) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = pair<T>(wv[i]), y = pair<T>(av[i]);
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
  }
  return acc;
}

// grid: blocks (at most what the GPU holds at once), kThreads threads, M * K elements of dynamic
// shared memory. Warp g of the grid computes output columns g, g + W, g + 2W, ... (W warps in all).
// A comes from `a` (silu_up: silu(gate) * up of its [gate | up] rows), or from the residual stream
// where norm.weight is set. C is in the act dtype T or in fp32 (OutT = float: logits); with
// kEvictFirst, W's loads carry an L2 evict_first policy. Logits of one row may also give the greedy
// token (argmax.index set): each warp keeps the best of its rows as it finishes them (in increasing
// order), the blocks' bests are reduced by the last block to finish (argmax_best.cuh).
template <class T, int M, class OutT, bool kEvictFirst>
__global__ void __launch_bounds__(kThreads) dense_decode_kernel(const T* __restrict__ a, const uint4* __restrict__ w,
                                                                 OutT* __restrict__ c, RmsNormInput norm, int N,
                                                                 int K, bool silu_up, LogitArgmax argmax) {
  constexpr bool kMayArgmax = std::is_same_v<OutT, float> && M == 1;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sa = reinterpret_cast<T*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int total_warps = gridDim.x * kWarps, gw = blockIdx.x * kWarps + warp;
  const int k8 = K / 8, chunks = (k8 + kChunk - 1) / kChunk;
  const int items = gw < N ? ((N - 1 - gw) / total_warps + 1) * chunks : 0;  // (row, chunk) pairs, in order

  // Item t: chunk t % chunks of output row gw + (t / chunks) W; vectors past the row's end read as 0.
  const uint64_t policy = kEvictFirst ? w4a16::l2_evict_first_policy() : 0;
  auto load = [&](int t, uint4 (&buf)[kVec]) {
    const int n = gw + (t / chunks) * total_warps, v0 = (t % chunks) * kChunk + lane;
    const uint4* src = w + (int64_t)n * k8 + v0;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (v0 + 32 * j >= k8)
        buf[j] = make_uint4(0, 0, 0, 0);
      else if constexpr (kEvictFirst)
        buf[j] = w4a16::load_streaming(src + 32 * j, policy);
      else
        buf[j] = w4a16::load_streaming(src + 32 * j);
    }
  };
  uint4 cur[kVec], next[kVec];
  // W and the norm's weights depend on no earlier kernel: W's first chunk is requested before waiting for A's
  // writer.
  if (items > 0) load(0, cur);
  if (norm.weight) cuda::prefetch_norm_weights(norm, 0, k8);
  cuda::pdl_wait();
  cuda::pdl_allow_next();

  if (norm.weight) {
    // Block 0 writes the updated residual (every block stages all of K).
    cuda::stage_rms_norm_rows<T, M>(norm, M, K, 0, k8, sa, K, norm.h_out && blockIdx.x == 0);
  } else {
    for (int i = threadIdx.x; i < M * k8; i += kThreads) {
      const int r = i / k8, v = i % k8;
      *reinterpret_cast<uint4*>(sa + (int64_t)r * K + v * 8) = w4a16::load_a8(a, r, v * 8, K, silu_up);
    }
  }
  __syncthreads();

  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  [[maybe_unused]] float best = -INFINITY;  // this warp's best logit so far and its row (kMayArgmax)
  [[maybe_unused]] int best_row = INT_MAX;
  for (int t = 0; t < items; ++t) {
    if (t + 1 < items) load(t + 1, next);
    const int v0 = (t % chunks) * kChunk + lane;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int v = v0 + 32 * j;
      if (v < k8) {
#pragma unroll
        for (int r = 0; r < M; ++r)
          acc[r] = dot8<T>(cur[j], *reinterpret_cast<const uint4*>(sa + (int64_t)r * K + v * 8), acc[r]);
      }
    }
    if (t % chunks == chunks - 1) {  // the row's last chunk: its sums are complete
      const int n = gw + (t / chunks) * total_warps;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const float s = cuda::warp_sum(acc[r]);
        if (lane == 0) {
          if constexpr (std::is_same_v<OutT, float>)
            c[(int64_t)r * N + n] = s;
          else
            c[(int64_t)r * N + n] = cuda::from_float<T>(s);
        }
        if constexpr (kMayArgmax) cuda::scan_best(s, n, best, best_row);  // every lane holds s (warp_sum)
        acc[r] = 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) cur[j] = next[j];
  }
  if constexpr (kMayArgmax) {
    if (argmax.index)
      cuda::slices_best<kThreads>(best, best_row, blockIdx.x, gridDim.x, static_cast<int2*>(argmax.partial),
                                  argmax.counter, argmax.index, argmax.value);
  }
}

template <class T, int M, class OutT, bool kEvictFirst>
void (*kernel_for())(const T*, const uint4*, OutT*, RmsNormInput, int, int, bool, LogitArgmax) {
  return dense_decode_kernel<T, M, OutT, kEvictFirst>;
}

// The most dynamic shared memory a block may take on this GPU (0 if the query fails).
int smem_limit() { return cuda::dynamic_smem_limit(); }

// Lets the kernel take any shared memory size the GPU allows (once per instantiation: an attribute
// sized for one call would refuse a later, larger one).
template <class T, int M, class OutT, bool kEvictFirst>
cudaError_t grant_smem() {
  static const cudaError_t e = cudaFuncSetAttribute(kernel_for<T, M, OutT, kEvictFirst>(),
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit());
  return e;
}

// Blocks the grid holds (occupancy x SMs) for this kernel with `smem` bytes; 0 if it cannot run.
// Cached per (dtype, M, smem).
template <class T, int M, class OutT, bool kEvictFirst>
int grid_blocks(int smem) {
  thread_local std::map<int, int> cache;
  if (auto it = cache.find(smem); it != cache.end()) return it->second;
  int per_sm = 0;
  if (grant_smem<T, M, OutT, kEvictFirst>() != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_for<T, M, OutT, kEvictFirst>(), kThreads,
                                                    smem) != cudaSuccess) {
    cudaGetLastError();
    per_sm = 0;
  }
  const int blocks = per_sm * cuda::sm_count();
  cache.emplace(smem, blocks);
  return blocks;
}

// Blocks a grid holds at most: resident blocks an SM are bounded by its 2048 threads.
int max_grid() { return 2048 / kThreads * cuda::sm_count(); }

template <class T, int M, class OutT, bool kEvictFirst>
cudaError_t launch_rows(const void* a, const void* w, void* c, const RmsNormInput& norm, int N, int K, bool silu_up,
                        const LogitArgmax& argmax, cudaStream_t stream) {
  const int smem = M * K * (int)sizeof(T);
  const int blocks = grid_blocks<T, M, OutT, kEvictFirst>(smem);
  if (blocks == 0) return cudaErrorInvalidValue;
  const int grid = std::min(blocks, (N + kWarps - 1) / kWarps);
  if (argmax.index && grid > max_grid()) return cudaErrorInvalidValue;  // more blocks than partials
  return cuda::launch_dependent(kernel_for<T, M, OutT, kEvictFirst>(), dim3(grid), dim3(kThreads), smem, stream,
                                static_cast<const T*>(a), static_cast<const uint4*>(w), static_cast<OutT*>(c), norm,
                                N, K, silu_up, argmax);
}

template <class T, class OutT = T, bool kEvictFirst = false>
cudaError_t launch(const void* a, const void* w, void* c, const RmsNormInput& norm, int M, int N, int K,
                   bool silu_up, cudaStream_t stream, const LogitArgmax& argmax = {}) {
  switch (M) {
    case 1: return launch_rows<T, 1, OutT, kEvictFirst>(a, w, c, norm, N, K, silu_up, argmax, stream);
    case 2: return launch_rows<T, 2, OutT, kEvictFirst>(a, w, c, norm, N, K, silu_up, argmax, stream);
    case 3: return launch_rows<T, 3, OutT, kEvictFirst>(a, w, c, norm, N, K, silu_up, argmax, stream);
    default: return launch_rows<T, 4, OutT, kEvictFirst>(a, w, c, norm, N, K, silu_up, argmax, stream);
  }
}

template <class T>
cudaError_t launch_logits(const void* a, const void* w, float* c, const RmsNormInput& norm, int M, int N, int K,
                          bool l2_evict_first, const LogitArgmax& argmax, cudaStream_t stream) {
  if (l2_evict_first) return launch<T, float, true>(a, w, c, norm, M, N, K, false, stream, argmax);
  return launch<T, float, false>(a, w, c, norm, M, N, K, false, stream, argmax);
}

// The residual stream as A: its row and the norm's weights given, and no residual written over the row every
// block reads.
bool norm_input_ok(const RmsNormInput& norm) { return norm.h && norm.weight && norm.h_out != norm.h; }

}  // namespace

bool dense_decode_applies(int M, int N, int K) {
  static const bool enabled = cuda::env_int("VLM_DENSE_DECODE", 1) != 0;
  return enabled && M >= 1 && M <= kDenseDecodeMaxRows && N >= 1 && K >= 8 && K % 8 == 0 &&
         (int64_t)M * K * 2 <= smem_limit();
}

cudaError_t dense_decode_gemm(const void* a, const void* w, void* c, int M, int N, int K, bool bf16,
                              bool a_is_gate_up, cudaStream_t stream) {
  if (!dense_decode_applies(M, N, K)) return cudaErrorInvalidValue;
  const RmsNormInput none{};
  if (bf16) return launch<__nv_bfloat16>(a, w, c, none, M, N, K, a_is_gate_up, stream);
  return launch<__half>(a, w, c, none, M, N, K, a_is_gate_up, stream);
}

int dense_decode_argmax_partials() { return max_grid(); }

cudaError_t dense_decode_logits(const void* a, const void* w, float* c, int M, int N, int K, bool bf16,
                                bool l2_evict_first, const LogitArgmax* argmax, cudaStream_t stream,
                                const RmsNormInput* norm) {
  if (!dense_decode_applies(M, N, K)) return cudaErrorInvalidValue;
  const LogitArgmax none{};
  if (argmax && (M != 1 || !argmax->index || !argmax->value || !argmax->counter || !argmax->partial))
    return cudaErrorInvalidValue;
  if (norm && !norm_input_ok(*norm)) return cudaErrorInvalidValue;
  const LogitArgmax& am = argmax ? *argmax : none;
  const RmsNormInput in = norm ? *norm : RmsNormInput{};
  if (bf16) return launch_logits<__nv_bfloat16>(a, w, c, in, M, N, K, l2_evict_first, am, stream);
  return launch_logits<__half>(a, w, c, in, M, N, K, l2_evict_first, am, stream);
}

cudaError_t dense_decode_gemm_rms_norm(const RmsNormInput& norm, const void* w, void* c, int M, int N, int K,
                                       bool bf16, cudaStream_t stream) {
  if (!dense_decode_applies(M, N, K) || !norm_input_ok(norm)) return cudaErrorInvalidValue;
  if (bf16) return launch<__nv_bfloat16>(nullptr, w, c, norm, M, N, K, false, stream);
  return launch<__half>(nullptr, w, c, norm, M, N, K, false, stream);
}

}  // namespace vlm
