// w4a16 GEMM at decode sizes (M <= 4) on Hopper: C = A · dequant(W)ᵀ with the
// weights in the layout of cpu/w4a16_pack.h, in the swapped mma form of
// w4a16_gemm.cu (dequantized weights are the 16-row operand, the activation
// rows the 8-column one).
//
// Why a second kernel: at these sizes the GEMM streams a few MB of weights once
// and is bound by memory latency, not arithmetic. The general kernel's M = 1
// times in bench/gemm (H100, 2026-11-25) fit 6 us + bytes / 2.26 TB/s: a fixed
// cost per call that its split-K adds to (fp32 partials in global memory, a
// fence, an arrival counter, the last block's pass over the partials: each a
// round trip to L2), and it keeps its next weights in registers. Here:
//  - K is split inside a block (8 warps: S strips of 64 columns x 8/S K
//    sub-slices, summed through shared memory) and across the C blocks of a
//    thread-block cluster, which sum their partials through distributed shared
//    memory: no global workspace, no atomics, no second kernel, and the sums
//    are in a fixed order (deterministic).
//  - Each warp streams its weights (and each group's scales and zeros) through
//    its own ring of ST cp.async stages in shared memory: the loads of the
//    next ST - 1 steps are in flight while one step is dequantized and
//    multiplied, without registers to hold them. Each lane copies and reads its
//    own 16 bytes of a stage, so only the group records (copied by 16 lanes for
//    all 32) need the warp to meet.
//  - The tensor cores multiply the 4-bit codes themselves; each group's scale
//    and zero are applied to the fp32 sums of a few steps at a time (see the
//    kernel), which halves the instructions a weight costs.
//  - Only the M real rows of A are staged (rows past M repeat the last one: they
//    feed output columns of the mma that are never stored).
//  - The engine's norms run here too (w4a16_decode_gemm_rms_norm): a block reads
//    the fp32 residual rows, sums their squares and stages its K slice of the
//    normalized rows, so the norm is not a launch of its own (two per layer).
// The first stages are requested before waiting for the kernel that writes A
// (dependent_launch.cuh). sm_90 only (clusters); elsewhere w4a16_gemm.cu's
// general kernel runs.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <tuple>

#include "cpu/w4a16_pack.h"
#include "cuda/cluster_push.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/env_int.h"
#include "cuda/device_query.h"
#include "cuda/rms_norm_row.cuh"
#include "cuda/w4a16_decode.h"
#include "cuda/w4a16_decode_block.cuh"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {
namespace {

using w4a16::Act;

constexpr int kWarps = w4a16::kDecodeWarps;
constexpr int kThreads = w4a16::kDecodeThreads;
// Ring stages a warp (steps of 512 B of weights in flight; a multiple of 8, the longest unit): 8 by default;
// 16 holds twice the bytes in flight but fits 2 blocks an SM instead of 3 (shared memory). Measured as a build-
// wide setting (H200, 2026-12-04): 16 took the 7B qkv and down layers from 13.1 to 11.7 and 12.5 to 12.1 us at
// M = 1 and the 2B layers from 5.0 to 5.7 (qkv), 4.4 to 5.4 (o), 6.6 to 7.8 (down), so both are built and the
// plan takes 8 unless VLM_W4A16_DECODE_RING=16 (for bench/decode_plan_sweep.py, until a per-shape rule is
// measured).
constexpr int kDefaultRingStages = 8;  // the other depth built: 16
constexpr int kMaxCluster = w4a16::kDecodeMaxCluster;
constexpr int kMaxStrips = w4a16::kDecodeMaxStrips;
constexpr int kSmemPad = w4a16::kDecodeSmemPad;
constexpr int kMaxSmem = 200 * 1024;

// Shared memory of a block: rings (weights, group records), the block's partial sums, staged A.
struct Layout {
  int ring, grp, part, a;  // byte offsets
  int bytes;
};
__host__ __device__ inline Layout layout_of(int rows, int slice_steps, int stages) {
  Layout l;
  l.ring = 0;
  l.grp = l.ring + kWarps * stages * 512;
  l.part = l.grp + kWarps * stages * 256;
  // Sized for 8 rows although at most kMaxDecodeRows are used: the region sized for 4 rows leaves
  // room for a 4th block per SM (by this layout's arithmetic), which changes the plan's cluster sizes,
  // and with it M = 1 ran slower on 7 of the 8 layers of bench/gemm (H200, 2026-12-03, two calls:
  // e.g. 7B down 19.0 vs 15.9 us, 2B down 8.9 vs 7.8 us).
  l.a = l.part + kMaxStrips * 8 * kW4StripN * 4;
  l.bytes = l.a + rows * (slice_steps * 16 + kSmemPad) * 2;
  return l;
}

// grid (ceil(N / (64 S)), C) in clusters of (1, C); kThreads threads. Block y = its cluster
// rank = its K slice. U: k16 steps per unit of K the slices are cut in (2, 4 or 8, at most one
// group: 4 steps for groups of 64, 8 for 128; group_shift = log2 of the latter). A comes
// from `a`, or, where norm.weight is set, from the residual stream (stage_rms_norm). residual may be
// c itself (each element is read, then written, by one thread). The block's own work (its warps'
// rings, the codes on the tensor cores, its partial) is w4a16_decode_block.cuh's; the sum is
// linear, so each unit of U steps is scaled on its own and slices need only be whole units.
template <class T, int U, int ST>
__global__ void __launch_bounds__(kThreads) w4a16_decode_kernel(const T* __restrict__ a, const uint4* __restrict__ w,
                                                                 const uint4* __restrict__ sz, const T* residual, T* c,
                                                                 RmsNormInput norm, int M, int N, int K,
                                                                 int group_shift, int S, int slice_steps_max,
                                                                 bool silu_up, bool push) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(ST % U == 0, "a ring slot that starts a unit must start one on every pass");
  static_assert(ST >= 4, "the warp's sums take its ring's place (ST * 512 bytes >= 2 KiB)");
  static_assert(kThreads == cuda::kRmsNormThreads, "the shared norm arithmetic is defined for 256 threads");
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = M;  // <= kMaxDecodeRows
  const Layout L = layout_of(rows, slice_steps_max, ST);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int C = gridDim.y, rank = blockIdx.y;
  const w4a16::BlockSlice bsl = w4a16::block_slice(blockIdx.x, rank, C, S, N, K, U, warp);
  const w4a16::WarpRing<U, ST> ring = w4a16::warp_ring<U, ST>(bsl, w, sz, K, group_shift,
                                                              reinterpret_cast<uint4*>(smem + L.ring),
                                                              reinterpret_cast<uint4*>(smem + L.grp), warp, lane);
  const int bs0 = bsl.bs0, bs1 = bsl.bs1;
  // The block's partial is S strips x M rows x 64 columns (<= 1024 elements); block r's share of the cluster's
  // sum starts at share(r) (32-bit: a 64-bit division is a ~76-instruction call).
  const auto share = [&](int r) { return r * (S * M * kW4StripN) / C; };
  // The pushed cluster sum (push): each block counts the bytes the others will push to it, long before.
  __shared__ __align__(8) uint64_t push_bar;
  __shared__ int s_share[kMaxCluster + 1];  // share(0 .. C), for the pushes' owners
  if (push && C > 1) {
    if (threadIdx.x == 0) cuda::push_barrier_init(&push_bar, (uint32_t)((share(rank + 1) - share(rank)) * C * 4));
    __syncwarp();  // the arrival is .aligned: the warp together
    cuda::cluster_arrive_relaxed();
  }

  // Weights, scales and the norm's weights depend on no earlier kernel: request them before waiting for A's
  // writer.
  ring.prime();
  // The shares' divisions while the first weights are on their way (the __syncthreads() after staging A
  // publishes them), not between the block's partial and its pushes.
  if (push && C > 1 && threadIdx.x <= C) s_share[threadIdx.x] = share(threadIdx.x);
  const int vec_per_row = (bs1 - bs0) * 2;
  if (norm.weight) cuda::prefetch_norm_weights(norm, bs0 * 16, vec_per_row);
  cuda::pdl_wait();
  cuda::pdl_allow_next();

  // Stage A[0 : rows][16 bs0 : 16 bs1].
  T* sa = reinterpret_cast<T*>(smem + L.a);
  const int lda = slice_steps_max * 16 + kSmemPad;
  if (norm.weight) {
    // The blocks of the first column block, one per K slice, write the updated residual.
    cuda::stage_rms_norm_rows<T, kMaxDecodeRows>(norm, rows, K, bs0 * 16, vec_per_row, sa, lda,
                                                   norm.h_out && blockIdx.x == 0);
  } else {
    for (int i = threadIdx.x; i < rows * vec_per_row; i += kThreads) {
      const int r = i / vec_per_row, v = i % vec_per_row;
      *reinterpret_cast<uint4*>(sa + r * lda + v * 8) = w4a16::load_a8(a, r, bs0 * 16 + v * 8, K, silu_up);
    }
  }
  __syncthreads();

  // ldmatrix rows of the B operand: lanes 0-7 give rows 0..7 at k, lanes 8-15 the same rows at k + 8.
  const T* const b_rows[1] = {sa + min(lane % 8, rows - 1) * lda + ((lane / 8) % 2) * 8 + (bsl.ws0 - bs0) * 16};
  float acc[1][4][4];
  w4a16::ring_sums<T, U, ST, 1>(ring, b_rows, acc);

  // The warp's sums replace its own ring (ST * 512 bytes >= 2 KiB), then the block's partial.
  float* part = reinterpret_cast<float*>(smem + L.part);
  w4a16::block_partial<1, kMaxDecodeRows>(acc, reinterpret_cast<float*>(smem + L.ring), ST * 128, part, S, M,
                                          bsl.kw, warp, lane);
  const int elems = S * M * kW4StripN;

  auto store = [&](int e, float v) {
    int64_t o;
    if (!w4a16::partial_element<kMaxDecodeRows>(e, blockIdx.x, S, M, N, &o)) return;
    if (residual) v += Act<T>::to_float(residual[o]);
    c[o] = Act<T>::from_float(v);
  };
  if (C == 1) {
    for (int e = threadIdx.x; e < elems; e += kThreads) store(e, part[e]);
    return;
  }
  if (push) {
    // Every block pushes each element of its partial to the block that owns it (owner q of element i: the
    // last q with share(q) <= i), into q's rows [C][its share] in the unused half of q's partial region
    // (block_partial() writes at most 1024 of its 2048 floats); each owner then sums its share in rank order,
    // as the pulled sum below does, from its own shared memory.
    static_assert(2 * kMaxStrips * kMaxDecodeRows <= kMaxStrips * 8, "the pushed rows fit the partial region's half");
    float* recv = part + kMaxStrips * kMaxDecodeRows * kW4StripN;
    cuda::cluster_wait();  // every block's barrier is initialised
    for (int i = threadIdx.x; i < elems; i += kThreads) {
      // Straight-line code, no division: this and the sum below run once a launch, after the block's partial.
      int q = 0;
#pragma unroll
      for (int r = 1; r < kMaxCluster; ++r) q += r < C && s_share[r] <= i;
      const int q0 = s_share[q];
      cuda::push_float(recv + rank * (s_share[q + 1] - q0) + (i - q0), (uint32_t)q, part[i], &push_bar);
    }
    cuda::wait_pushes(&push_bar);
    const int e0 = s_share[rank], mine = s_share[rank + 1] - e0;
    for (int j = threadIdx.x; j < mine; j += kThreads) {
      float v = 0.f;
#pragma unroll
      for (int r = 0; r < kMaxCluster; ++r)
        if (r < C) v += recv[r * mine + j];
      store(e0 + j, v);
    }
    return;  // every push into this block has landed, and nothing here is read by another block
  }
  // Each block of the cluster sums its share of the elements over the cluster's slices, in rank order;
  // the remote reads of one element are all in flight together.
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int e0 = share(rank), e1 = share(rank + 1);
  for (int e = e0 + threadIdx.x; e < e1; e += kThreads) {
    float parts[kMaxCluster];
#pragma unroll
    for (int r = 0; r < kMaxCluster; ++r) parts[r] = r < C ? cluster.map_shared_rank(part, r)[e] : 0.f;
    float v = 0.f;
#pragma unroll
    for (int r = 0; r < kMaxCluster; ++r) v += parts[r];
    store(e, v);
  }
  // No block leaves while another still reads its shared memory. Relaxed: the reads are complete (their
  // values were stored above), and nothing written here is read by another block.
  cuda::cluster_arrive_relaxed();
  cuda::cluster_wait();
#endif
}

template <class T, int U, int ST>
void (*kernel_for())(const T*, const uint4*, const uint4*, const T*, T*, RmsNormInput, int, int, int, int, int, int,
                     bool, bool) {
  return w4a16_decode_kernel<T, U, ST>;
}

template <class T, int U, int ST>
cudaError_t grant_smem() {
  static const cudaError_t e =
      cudaFuncSetAttribute(kernel_for<T, U, ST>(), cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
  return e;
}

// The (fp16, 8-step unit) kernel with a ring of `stages`: what the plan asks the occupancy of.
using KernelPtr = decltype(kernel_for<__half, 8, 8>());
KernelPtr occupancy_kernel(int stages, cudaError_t* granted) {
  if (stages == 16) {
    *granted = grant_smem<__half, 8, 16>();
    return kernel_for<__half, 8, 16>();
  }
  *granted = grant_smem<__half, 8, 8>();
  return kernel_for<__half, 8, 8>();
}

// Blocks of that kernel that one SM holds with `smem` bytes each.
int resident_blocks(int smem, int stages) {
  thread_local std::map<std::pair<int, int>, int> cache;
  const auto key = std::make_pair(smem, stages);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int n = 0;
  cudaError_t granted;
  const KernelPtr kernel = occupancy_kernel(stages, &granted);
  if (granted != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  cache.emplace(key, n);
  return n;
}

// Clusters of C such blocks that the GPU holds at once (fewer than resident_blocks() * SMs / C: one GPC a
// cluster).
int resident_clusters(int smem, int C, int stages) {
  thread_local std::map<std::tuple<int, int, int>, int> cache;
  const auto key = std::make_tuple(smem, C, stages);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cudaError_t granted;
  const KernelPtr kernel = occupancy_kernel(stages, &granted);
  if (granted != cudaSuccess) cudaGetLastError();  // the plan goes on without clusters; later checks start clean
  const int n = granted == cudaSuccess ? cuda::max_active_clusters(kernel, dim3(kThreads), smem, C) : 0;
  cache.emplace(key, n);
  return n;
}

// Hopper code present (clusters; older PTX leaves the kernel's body empty) and VLM_W4A16_DECODE not 0.
bool decide_supported() { return cuda::env_int("VLM_W4A16_DECODE", 1) != 0 && cuda::hopper_code_runs(); }

struct Plan {
  bool ok;
  int S, C, U, slice_steps;
  int smem;
  int stages;  // ring stages a warp (8 or 16)
};

// Per-layer pins, VLM_W4A16_DECODE_PLANS="NxK:S,C,R;..." (e.g. "16384x2048:1,1,8"): the plan of one layer shape,
// for measuring a plan in the engine one layer at a time (pins for every shape at once slowed decode:
// docs/benchmarks/gemm.md, 2026-12-05). 0 leaves that part to the rule; malformed entries are ignored.
struct ShapePin {
  int S = 0, C = 0, R = 0;
};
ShapePin shape_pin(int N, int K) {
  static const std::map<std::pair<int, int>, ShapePin> pins = [] {
    std::map<std::pair<int, int>, ShapePin> m;
    const char* e = std::getenv("VLM_W4A16_DECODE_PLANS");
    for (const char* q = e; q && *q;) {
      int n = 0, k = 0, consumed = 0;
      ShapePin pin;
      if (std::sscanf(q, "%dx%d:%d,%d,%d%n", &n, &k, &pin.S, &pin.C, &pin.R, &consumed) == 5 && consumed > 0)
        m[{n, k}] = pin;
      const char* next = std::strchr(q, ';');
      q = next ? next + 1 : nullptr;
    }
    return m;
  }();
  const auto it = pins.find({N, K});
  return it == pins.end() ? ShapePin{} : it->second;
}

// S strips per block (the most that still give every SM a block: they share the staged A) and C
// slices of K (the most whose clusters all fit on the GPU at once, keeping at least one unit per warp
// and the staged A within shared memory), in units of U steps: the longest unit (at most a group)
// that leaves every warp one, as each unit ends in a pass that scales its sums.
// VLM_W4A16_DECODE_S / _C pin S and C, VLM_W4A16_DECODE_RING the ring stages (8 or 16), for tuning, for every
// shape; VLM_W4A16_DECODE_PLANS (shape_pin) for one.
Plan make_plan_uncached(int M, int N, int K, int group) {
  Plan p{};
  const int rows = M, strips = N / kW4StripN, ksteps = K / 16, gsteps = group / 16;
  const ShapePin pin = shape_pin(N, K);
  const int force_s = pin.S ? pin.S : cuda::env_int("VLM_W4A16_DECODE_S", 0);
  const int force_c = pin.C ? pin.C : cuda::env_int("VLM_W4A16_DECODE_C", 0);
  const int stages = (pin.R ? pin.R : cuda::env_int("VLM_W4A16_DECODE_RING", kDefaultRingStages)) == 16 ? 16 : 8;
  for (int S : {4, 2, 1}) {
    if (force_s && S != force_s) continue;
    const int blocks_n = (strips + S - 1) / S, kw = kWarps / S;
    int best_c = 0, best_u = 0, best_smem = 0;
    for (int C = kMaxCluster; C >= 1; --C) {
      if (force_c && C != force_c) continue;
      int U = gsteps;
      while (U > 2 && ksteps / U < C * kw) U /= 2;
      if (ksteps / U < C * kw && C > 1 && !force_c) continue;
      const int slice = (ksteps / U + C - 1) / C * U;
      const int smem = layout_of(rows, slice, stages).bytes;
      if (smem > kMaxSmem) break;  // fewer slices only make the staged A longer
      const int res = resident_blocks(smem, stages);
      if (res == 0) continue;
      const int64_t fits = C == 1 ? (int64_t)res * cuda::sm_count() : resident_clusters(smem, C, stages);
      if (blocks_n <= fits || C == 1 || force_c) {
        best_c = C;
        best_u = U;
        best_smem = smem;
        break;
      }
    }
    if (best_c == 0) continue;
    p = Plan{true, S, best_c, best_u, (ksteps / best_u + best_c - 1) / best_c * best_u, best_smem, stages};
    if ((int64_t)blocks_n * best_c >= cuda::sm_count() || S == 1 || force_s) break;
  }
  return p;
}

const Plan& plan_for(int M, int N, int K, int group) {
  thread_local std::map<std::tuple<int, int, int, int>, Plan> cache;
  const auto key = std::make_tuple(M, N, K, group);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_plan_uncached(M, N, K, group)).first;
  return it->second;
}

// The K slices summed by pushes into the owner block's shared memory (cluster_push.cuh) instead of a cluster
// barrier and remote reads: the same bits, and 2B batch-1 decode 5 % faster (H100, 2026-12-06, two rounds: 845 / 836
// -> 890 / 886 tok/s; 7B 425 / 426 -> 437 / 440). VLM_W4A16_DECODE_PUSH=0 takes the pulled sum.
bool pushed_cluster_sum() {
  static const bool on = cuda::env_int("VLM_W4A16_DECODE_PUSH", 1) != 0;
  return on;
}

template <class T, int U, int ST>
cudaError_t launch_unit(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                        const RmsNormInput& norm, int M, int N, int K, int group, bool silu_up, cudaStream_t stream) {
  if (const cudaError_t e = grant_smem<T, U, ST>(); e != cudaSuccess) return e;
  const dim3 grid((N / kW4StripN + p.S - 1) / p.S, p.C);
  const int group_shift = group == 128 ? 3 : 2;
  return cuda::launch_dependent_in_clusters(kernel_for<T, U, ST>(), grid, dim3(kThreads), dim3(1, p.C, 1), p.smem,
                                            stream, static_cast<const T*>(a), static_cast<const uint4*>(w),
                                            static_cast<const uint4*>(sz), static_cast<const T*>(residual),
                                            static_cast<T*>(c), norm, M, N, K, group_shift, p.S, p.slice_steps,
                                            silu_up, pushed_cluster_sum());
}

template <class T, int ST>
cudaError_t launch_ring(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                        const RmsNormInput& norm, int M, int N, int K, int group, bool silu_up, cudaStream_t stream) {
  switch (p.U) {
    case 8: return launch_unit<T, 8, ST>(p, a, w, sz, residual, c, norm, M, N, K, group, silu_up, stream);
    case 4: return launch_unit<T, 4, ST>(p, a, w, sz, residual, c, norm, M, N, K, group, silu_up, stream);
    default: return launch_unit<T, 2, ST>(p, a, w, sz, residual, c, norm, M, N, K, group, silu_up, stream);
  }
}

template <class T>
cudaError_t launch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                   const RmsNormInput& norm, int M, int N, int K, int group, bool silu_up, cudaStream_t stream) {
  if (p.stages == 16)
    return launch_ring<T, 16>(p, a, w, sz, residual, c, norm, M, N, K, group, silu_up, stream);
  return launch_ring<T, 8>(p, a, w, sz, residual, c, norm, M, N, K, group, silu_up, stream);
}

// The plan for this shape, or null where the kernel does not apply (one cached lookup per call).
const Plan* applicable_plan(int M, int N, int K, int group) {
  static const bool supported = decide_supported();
  if (!supported || M < 1 || M > kMaxDecodeRows || N % kW4StripN != 0 || (group != 64 && group != 128) ||
      K % group != 0)
    return nullptr;
  const Plan& p = plan_for(M, N, K, group);
  return p.ok ? &p : nullptr;
}

}  // namespace

bool w4a16_decode_applies(int M, int N, int K, int group) {
  return applicable_plan(M, N, K, group) != nullptr;
}

void w4a16_decode_plan(int M, int N, int K, int group, int* strips_per_block, int* k_slices, int* unit_steps,
                       int* ring_stages) {
  const Plan* p = applicable_plan(M, N, K, group);
  *strips_per_block = p ? p->S : 0;
  *k_slices = p ? p->C : 0;
  *unit_steps = p ? p->U : 0;
  *ring_stages = p ? p->stages : 0;
}

cudaError_t w4a16_decode_gemm(const void* a, const void* w, const void* sz, const void* residual, void* c, int M,
                              int N, int K, int group, bool bf16, cudaStream_t stream, bool a_is_gate_up) {
  const Plan* p = applicable_plan(M, N, K, group);
  if (!p) return cudaErrorInvalidValue;
  const RmsNormInput none{};
  if (bf16) return launch<__nv_bfloat16>(*p, a, w, sz, residual, c, none, M, N, K, group, a_is_gate_up, stream);
  return launch<__half>(*p, a, w, sz, residual, c, none, M, N, K, group, a_is_gate_up, stream);
}

cudaError_t w4a16_decode_gemm_rms_norm(const RmsNormInput& norm, const void* w, const void* sz, void* c, int M, int N,
                                       int K, int group, bool bf16, cudaStream_t stream) {
  const Plan* p = applicable_plan(M, N, K, group);
  if (!p || !norm.h || !norm.weight || norm.h_out == norm.h) return cudaErrorInvalidValue;
  if (bf16) return launch<__nv_bfloat16>(*p, nullptr, w, sz, nullptr, c, norm, M, N, K, group, false, stream);
  return launch<__half>(*p, nullptr, w, sz, nullptr, c, norm, M, N, K, group, false, stream);
}

}  // namespace vlm
