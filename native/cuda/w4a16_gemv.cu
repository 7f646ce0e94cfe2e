// w4a16 GEMM at decode sizes (M <= 4) with whole output columns a block: C = A · dequant(W)ᵀ.
//
// Why a second decode kernel: the strip kernel (w4a16_decode.cu) cuts a layer into strips of 64 columns,
// so a layer of 2,048 columns has only 32 of them, and fills the GPU by cutting K into slices summed
// across a thread-block cluster. At one row each GEMM then pays, after its input is ready, a block sum
// through shared memory, the cluster's pushes and barrier, and the prologue of a ring of cp.async stages
// (docs/benchmarks/cuda_engine.md: ~3.5-4.5 us a GEMM above its bytes' time at M = 1, whatever its size),
// while the dense decode kernel, whose warps own whole rows, streams 8 MB in 3.8 us. Here:
//  - a tile is 16 output columns (the swapped mma's 16-row operand: the weights; the activation rows are
//    its 8-column operand), 4x more tiles than strips, and a block's 8 warps take 8 / P tiles with P warps
//    a tile, each over a contiguous part of K: P is the most (8, 4, 2, 1) that keeps the grid within one
//    wave of resident blocks, so no part of K is summed outside its block;
//  - the weights are in their own layout (w4a16_gemv_repack: the packed words permuted so that a lane's 16
//    bytes are one tile's codes for 4 consecutive k16 steps, a "chunk" of 64 inputs; a warp's 32 lanes read
//    512 contiguous bytes), loaded straight into registers, kInFlight chunks ahead (or, with
//    VLM_W4A16_GEMV_SHARED_RING, copied into a ring in shared memory: fewer registers, see kDefaultInFlight);
//    the scales and zeros are read in their packed layout, 4 bytes each a lane and chunk;
//  - the first chunks are requested before waiting for the kernel that writes A (dependent_launch.cuh); A
//    (all of K: every block needs it) is then staged once in shared memory, as is, as silu(gate) * up, or as
//    the RMSNorm of the residual stream (rms_norm_row.cuh, the norm kernel's bits);
//  - the codes are multiplied on the tensor cores and each chunk's group scale and zero applied to its fp32
//    sums (w4a16_fragments.cuh, as the strip kernel does), and the P parts of a tile are summed in part
//    order through shared memory after one barrier: deterministic, no atomics, no workspace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "cpu/w4a16_pack.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/device_query.h"
#include "cuda/env_int.h"
#include "cuda/rms_norm_row.cuh"
#include "cuda/w4a16_fragments.cuh"
#include "cuda/w4a16_gemv.h"

namespace vlm {
namespace {

using w4a16::Act;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 16;       // output columns a tile
constexpr int kChunkK = 64;      // inputs a chunk: 4 k16 steps, one 16-byte load a lane
// Chunks a warp has requested ahead of the one it multiplies: 8 by default, in registers (128 registers, 2 blocks
// an SM); 4 fits 3 blocks an SM (80 registers; with the batched staging ptxas spills 8-16 bytes in some of its
// forms, none in the 8-chunk ones), fewer bytes in flight a warp but more warps (VLM_W4A16_GEMV_RING=4, for
// measuring). VLM_W4A16_GEMV_SHARED_RING=8 (or 1) keeps the 8 chunks in shared memory instead (cp.async, as the
// strip kernel's ring): the same bytes in flight at 2 blocks an SM, with registers left for the next kernel's
// blocks; =16 keeps 16 there, twice the bytes in flight a warp at the same registers (for the layers whose warps
// stream 32-64 chunks each, 7B q/k/v and gate_up, where 8 in registers lost to the strip kernel).
// Why: under dependent launch a kernel's blocks request their first weights before their wait only once they
// are resident, and the register ring's 2 blocks take an SM's whole register file until they exit
// (docs/benchmarks/cuda_engine.md, 2026-12-07: a strip GEMM after a column-tile one started 2 us early instead
// of 6).
constexpr int kDefaultInFlight = 8;
constexpr int kDeepInFlight = 16;  // the shared ring's other depth
constexpr int kPad = 8;          // halves after each staged row: ldmatrix rows of different A rows in other banks
enum class Ring { kRegisters, kShared };
// The shared ring's 8-chunk forms fit 64 registers up to 2 rows; at 3 and 4 rows, and with 16 chunks (its loop
// unrolled twice as long), they spill 4-20 bytes there (ptxas, sm_90a), so those take 80.
template <int M, int NF, Ring R>
constexpr int min_blocks_per_sm() {
  return R == Ring::kShared ? (M <= 2 && NF == kDefaultInFlight ? 4 : 3) : NF == kDefaultInFlight ? 2 : 3;
}
// Blocks an SM the shared ring's grid counts on (its occupancy by registers is 3-4): 2, the register ring's, so
// that the two differ only in where the chunks wait and the registers they hold.
constexpr int kSharedRingBlocksPerSm = 2;
// A warp's slot of the shared ring: 32 lanes' 16 bytes of codes, then the tile's 16 words of its group's record:
// the scales of its columns (g, g + 8) for g = 0..7, then the zeros (copied by lanes 0-15, a word each).
constexpr int kSlotBytes = 512 + 64;

// Shared memory: the staged rows, then the warps' sums (kWarps x 4 x 32 floats), then the shared ring if any.
__host__ __device__ inline int staged_bytes(int rows, int K) { return rows * (K + kPad) * 2; }
__host__ __device__ inline int ring_offset(int rows, int K) { return staged_bytes(rows, K) + kWarps * 4 * 32 * 4; }
__host__ __device__ inline int smem_bytes(int rows, int K, Ring R, int chunks) {
  return ring_offset(rows, K) + (R == Ring::kShared ? kWarps * chunks * kSlotBytes : 0);
}

// Stages A's M rows, all of K, into sa (row stride lda), as is or as silu(gate) * up. Every block stages all of
// K right after its wait, so the loads of kStageBatch vectors a thread are all issued before any is used: one L2
// round trip a batch instead of one a vector (a 2B down row of silu(gate) * up is 8,192 inputs: 4 vectors of gate
// and 4 of up a thread). The batch's registers come beside the ring's: 4 with the 8- and 16-chunk rings, 2 with
// the 4-chunk one (its 80 registers).
template <class T, int M, int kStageBatch>
__device__ __forceinline__ void stage_rows(const T* __restrict__ a, int K, bool silu_up, T* sa, int lda) {
  const int vecs = K / 8;
  const int64_t row_len = silu_up ? 2 * (int64_t)K : K;
#pragma unroll
  for (int r = 0; r < M; ++r)
    for (int v0 = threadIdx.x; v0 < vecs; v0 += kStageBatch * kThreads) {
      uint4 gv[kStageBatch], uv[kStageBatch];
#pragma unroll
      for (int i = 0; i < kStageBatch; ++i) {
        const int v = v0 + i * kThreads;
        if (v < vecs) {
          const T* p = a + r * row_len + v * 8;
          gv[i] = *reinterpret_cast<const uint4*>(p);
          if (silu_up) uv[i] = *reinterpret_cast<const uint4*>(p + K);
        }
      }
#pragma unroll
      for (int i = 0; i < kStageBatch; ++i) {
        const int v = v0 + i * kThreads;
        if (v < vecs)
          *reinterpret_cast<uint4*>(sa + r * lda + v * 8) = silu_up ? w4a16::silu_mul8<T>(gv[i], uv[i]) : gv[i];
      }
    }
}

// A warp's chunks in flight, one of two forms with the same three calls: issue(j, slot) requests chunk j of the
// warp's part into slot `slot` (j % kInFlight, a constant where the loops are unrolled); take(slot, ...) gives the
// slot's 16 bytes of codes and the lane's two columns' scales and zeros for its group; release() follows the
// reads of a slot, before it is refilled.
//
// The lane's 16 bytes of chunk c of tile t are vector (t chunks + c) 32 + lane of w; the group record of scales and
// zeros for c's group is 64 words of t's 64-column strip (cpu/w4a16_pack.h), the lane's two columns' words being
// word t % 4 of its vector g of the scales (words 0-31) and of the zeros (32-63).
template <int NF>
struct RegisterRing {
  const uint4* wsrc;      // the lane's 16 bytes of the part's first chunk
  const uint32_t* ssrc;   // the lane's scale word of the strip's first group record
  int n_chunks, c0, group_shift;
#if defined(VLM_W4A16_EVICT_FIRST) && VLM_W4A16_EVICT_FIRST
  uint64_t policy;
#endif
  uint4 wv[NF];
  uint32_t sv[NF], zv[NF];

  __device__ __forceinline__ void issue(int j, int slot) {
    if (j < n_chunks) {
#if defined(VLM_W4A16_EVICT_FIRST) && VLM_W4A16_EVICT_FIRST
      wv[slot] = w4a16::load_streaming(wsrc + (int64_t)j * 32, policy);
#else
      wv[slot] = w4a16::load_streaming(wsrc + (int64_t)j * 32);
#endif
      const uint32_t* rec = ssrc + (int64_t)((c0 + j) >> group_shift) * 64;
      sv[slot] = __ldg(rec);
      zv[slot] = __ldg(rec + 32);
    }
  }
  __device__ __forceinline__ void take(int slot, uint4& w, uint32_t& sw, uint32_t& zw) const {
    w = wv[slot], sw = sv[slot], zw = zv[slot];
  }
  __device__ __forceinline__ void release() const {}
  __device__ __forceinline__ void drain() const {}
};

template <int NF>
struct SharedRing {
  const uint4* wsrc;      // the lane's 16 bytes of the part's first chunk
  const uint32_t* rsrc;   // lanes 0-15: the lane's word of the strip's first group record
  uint4* slots;           // the warp's NF slots of kSlotBytes
  int n_chunks, c0, group_shift, lane, g;

  // Always one commit group, empty past the part's last chunk, so that a wait counts slots.
  __device__ __forceinline__ void issue(int j, int slot) const {
    if (j < n_chunks) {
      uint4* s = slots + slot * (kSlotBytes / 16);
      w4a16::cp_async16_weights(s + lane, wsrc + (int64_t)j * 32);
      if (lane < 16)
        w4a16::cp_async4_weights(reinterpret_cast<uint32_t*>(s + 32) + lane,
                                 rsrc + (int64_t)((c0 + j) >> group_shift) * 64);
    }
    w4a16::cp_async_commit();
  }
  __device__ __forceinline__ void take(int slot, uint4& w, uint32_t& sw, uint32_t& zw) const {
    w4a16::cp_async_wait<NF - 1>();
    __syncwarp();  // the record was copied by lanes 0-15 for the whole warp
    const uint4* s = slots + slot * (kSlotBytes / 16);
    w = s[lane];
    const uint32_t* rec = reinterpret_cast<const uint32_t*>(s + 32);
    sw = rec[g];
    zw = rec[8 + g];
  }
  __device__ __forceinline__ void release() const { __syncwarp(); }  // every lane has read the slot's record
  __device__ __forceinline__ void drain() const { w4a16::cp_async_wait<0>(); }
};

template <int NF, Ring R>
struct RingOf {
  using type = RegisterRing<NF>;
};
template <int NF>
struct RingOf<NF, Ring::kShared> {
  using type = SharedRing<NF>;
};

// grid: ceil(tiles / (kWarps / P)) blocks of kThreads. Warp w of block b takes tile b (kWarps / P) + w / P and
// part w % P of its chunks. A comes from `a` (silu_up: silu(gate) * up of [gate | up] rows) or, where norm.weight
// is set, from the residual stream. group_shift: log2 of a group's chunks (0 for groups of 64, 1 for 128).
template <class T, int M, int kInFlight, Ring R>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm<M, kInFlight, R>())
    w4a16_gemv_kernel(const T* __restrict__ a, const uint4* __restrict__ w, const uint32_t* __restrict__ sz,
                      const T* residual, T* c, RmsNormInput norm, int N, int K, int group_shift, int P,
                      bool silu_up) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  T* sa = reinterpret_cast<T*>(smem);
  float* red = reinterpret_cast<float*>(smem + staged_bytes(M, K));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int tiles_per_block = kWarps / P;
  const int tile = blockIdx.x * tiles_per_block + warp / P, part = warp % P;
  const int chunks = K / kChunkK, groups = chunks >> group_shift;
  const int c0 = part * chunks / P, c1 = (part + 1) * chunks / P;
  const int n_chunks = tile < N / kTileN ? c1 - c0 : 0;

  typename RingOf<kInFlight, R>::type ring;
  ring.wsrc = w + ((int64_t)tile * chunks + c0) * 32 + lane;
  ring.n_chunks = n_chunks;
  ring.c0 = c0;
  ring.group_shift = group_shift;
  if constexpr (R == Ring::kShared) {
    // Lane l < 16 copies word (l / 8) 32 + (l % 8) 4 + tile % 4: the scale (l < 8) or zero of columns l % 8, + 8.
    ring.rsrc = sz + (int64_t)(tile / 4) * groups * 64 + (lane / 8) * 32 + (lane % 8) * 4 + tile % 4;
    ring.slots = reinterpret_cast<uint4*>(smem + ring_offset(M, K)) + warp * kInFlight * (kSlotBytes / 16);
    ring.lane = lane;
    ring.g = g;
  } else {
    ring.ssrc = sz + (int64_t)(tile / 4) * groups * 64 + g * 4 + tile % 4;
#if defined(VLM_W4A16_EVICT_FIRST) && VLM_W4A16_EVICT_FIRST
    ring.policy = w4a16::l2_evict_first_policy();
#endif
  }
  // Weights, scales and the norm's weights depend on no earlier kernel: requested before waiting for A's writer.
#pragma unroll
  for (int j = 0; j < kInFlight; ++j) ring.issue(j, j);
  if (norm.weight) cuda::prefetch_norm_weights(norm, 0, K / 8);
  cuda::pdl_wait();
  cuda::pdl_allow_next();

  const int lda = K + kPad;
  if (norm.weight) {
    // Block 0 writes the updated residual (every block stages all of K).
    cuda::stage_rms_norm_rows<T, M>(norm, M, K, 0, K / 8, sa, lda, norm.h_out && blockIdx.x == 0);
  } else {
    stage_rows<T, M, (kInFlight / 2 < 4 ? kInFlight / 2 : 4)>(a, K, silu_up, sa, lda);
  }
  __syncthreads();

  // ldmatrix rows of the 8-column operand: lanes 0-7 give rows 0..7 at k, lanes 8-15 the same rows at k + 8
  // (rows past M repeat row M - 1: they feed outputs that are never stored).
  const T* b_row = sa + min(lane % 8, M - 1) * lda + ((lane / 8) % 2) * 8 + c0 * kChunkK;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0; j0 < n_chunks; j0 += kInFlight) {
#pragma unroll
    for (int slot = 0; slot < kInFlight; ++slot) {
      const int j = j0 + slot;
      if (j >= n_chunks) break;
      uint4 wv;
      uint32_t sw, zw;
      ring.take(slot, wv, sw, zw);
      uint32_t b[8][2];
      w4a16::code_fragments<T>(wv, b);  // b[2 s], b[2 s + 1]: step s's columns g and g + 8
      ring.release();
      ring.issue(j + kInFlight, slot);
      float gacc[4], asum[4];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t bf[2];
        w4a16::ldmatrix_x2(bf, b_row + j * kChunkK + s * 16);
        const uint32_t af[4] = {b[2 * s][0], b[2 * s + 1][0], b[2 * s][1], b[2 * s + 1][1]};
        const uint32_t ones[4] = {Act<T>::kOne, Act<T>::kOne, Act<T>::kOne, Act<T>::kOne};
        if (s == 0) {
          Act<T>::mma_zero(gacc, af, bf[0], bf[1]);
          Act<T>::mma_zero(asum, ones, bf[0], bf[1]);
        } else {
          Act<T>::mma(gacc, af, bf[0], bf[1]);
          Act<T>::mma(asum, ones, bf[0], bf[1]);
        }
      }
      w4a16::add_tile_group_sums<T>(acc, gacc, asum, sw, zw);
    }
  }
  ring.drain();  // no copy may still be writing this block's shared memory when it exits

  // acc[q]: output column g + 8 (q >> 1) of the tile, activation row 2 (lane % 4) + (q & 1).
  auto store = [&](int row, int col, float v) {
    const int64_t o = (int64_t)row * N + col;
    if (residual) v += Act<T>::to_float(residual[o]);
    c[o] = Act<T>::from_float(v);
  };
  if (P == 1) {
    if (n_chunks == 0) return;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int row = 2 * (lane % 4) + (q & 1);
      if (row < M) store(row, tile * kTileN + g + 8 * (q >> 1), acc[q]);
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) red[(warp * 4 + q) * 32 + lane] = acc[q];
  __syncthreads();
  // Element e = (tile in block, row, column): consecutive threads store consecutive columns.
  for (int e = threadIdx.x; e < tiles_per_block * M * kTileN; e += kThreads) {
    const int tb = e / (M * kTileN), row = (e / kTileN) % M, col = e % kTileN;
    const int t = blockIdx.x * tiles_per_block + tb;
    if (t >= N / kTileN) break;
    const int q = 2 * (col / 8) + (row & 1), src_lane = 4 * (col % 8) + row / 2;
    float v = 0.f;
    for (int p = 0; p < P; ++p) v += red[((tb * P + p) * 4 + q) * 32 + src_lane];
    store(row, t * kTileN + col, v);
  }
#endif
}

__global__ void repack_kernel(const uint32_t* __restrict__ packed, uint4* __restrict__ out, int N, int K) {
  // out vector ((tile * chunks + chunk) * 32 + lane): words s = 0..3 are word tile % 4 of the lane's packed 16
  // bytes at step 4 chunk + s of strip tile / 4.
  const int ksteps = K / 16, chunks = K / kChunkK;
  const int64_t total = (int64_t)(N / kTileN) * chunks * 32;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int lane = (int)(i % 32);
    const int64_t tc = i / 32;
    const int chunk = (int)(tc % chunks), tile = (int)(tc / chunks);
    const int strip = tile / 4, word = tile % 4;
    uint32_t v[4];
#pragma unroll
    for (int s = 0; s < 4; ++s)
      v[s] = packed[(((int64_t)strip * ksteps + 4 * chunk + s) * 32 + lane) * 4 + word];
    out[i] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

using KernelPtr = void (*)(const __half*, const uint4*, const uint32_t*, const __half*, __half*, RmsNormInput, int,
                           int, int, int, bool);

template <class T, int M, int NF, Ring R>
void (*kernel_for())(const T*, const uint4*, const uint32_t*, const T*, T*, RmsNormInput, int, int, int, int, bool) {
  return w4a16_gemv_kernel<T, M, NF, R>;
}

// The ring a launch takes: kGemvRingSetting the process's (read once: 8 chunks in registers unless
// VLM_W4A16_GEMV_SHARED_RING is set, 16 in shared memory for 16, else 8, or VLM_W4A16_GEMV_RING=4, 4 in
// registers); kGemvRingShared the 8-chunk shared ring whatever the setting.
struct RingChoice {
  Ring kind;
  int chunks;
};
RingChoice ring_choice(int ring) {
  if (ring == kGemvRingShared) return RingChoice{Ring::kShared, kDefaultInFlight};
  static const RingChoice r = [] {
    const int shared = cuda::env_int("VLM_W4A16_GEMV_SHARED_RING", 0);
    if (shared) return RingChoice{Ring::kShared, shared == kDeepInFlight ? kDeepInFlight : kDefaultInFlight};
    const int registers = cuda::env_int("VLM_W4A16_GEMV_RING", kDefaultInFlight);
    return RingChoice{Ring::kRegisters, registers == 4 ? 4 : kDefaultInFlight};
  }();
  return r;
}
int ring_smem_bytes(int M, int K, int ring) {
  return smem_bytes(M, K, ring_choice(ring).kind, ring_choice(ring).chunks);
}

// The most dynamic shared memory a block may take on this GPU (0 if the query fails).
int smem_limit() { return cuda::dynamic_smem_limit(); }

template <class T, int M, int NF, Ring R>
cudaError_t grant_smem() {
  static const cudaError_t e =
      cudaFuncSetAttribute(kernel_for<T, M, NF, R>(), cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit());
  return e;
}

// The fp16 kernel of M rows with this ring, its shared memory granted (the bf16 one has the same resources).
template <int NF, Ring R>
KernelPtr occupancy_kernel(int M, cudaError_t* e) {
  switch (M) {
    case 1: *e = grant_smem<__half, 1, NF, R>(); return kernel_for<__half, 1, NF, R>();
    case 2: *e = grant_smem<__half, 2, NF, R>(); return kernel_for<__half, 2, NF, R>();
    case 3: *e = grant_smem<__half, 3, NF, R>(); return kernel_for<__half, 3, NF, R>();
    default: *e = grant_smem<__half, 4, NF, R>(); return kernel_for<__half, 4, NF, R>();
  }
}
// Blocks an SM holds of the kernel of M rows with this K and ring.
int resident_blocks(int M, int K, int ring_arg) {
  thread_local std::map<std::tuple<int, int, Ring, int>, int> cache;
  const RingChoice ring = ring_choice(ring_arg);
  const auto key = std::make_tuple(M, K, ring.kind, ring.chunks);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int n = 0;
  cudaError_t e = cudaErrorInvalidValue;
  KernelPtr k = nullptr;
  if (ring.kind == Ring::kShared)
    k = ring.chunks == kDeepInFlight ? occupancy_kernel<kDeepInFlight, Ring::kShared>(M, &e)
                                     : occupancy_kernel<kDefaultInFlight, Ring::kShared>(M, &e);
  else
    k = ring.chunks == 4 ? occupancy_kernel<4, Ring::kRegisters>(M, &e)
                         : occupancy_kernel<kDefaultInFlight, Ring::kRegisters>(M, &e);
  if (e != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kThreads, ring_smem_bytes(M, K, ring_arg)) !=
          cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  if (ring.kind == Ring::kShared) n = std::min(n, kSharedRingBlocksPerSm);
  cache.emplace(key, n);
  return n;
}

bool supported() {
  static const bool on = cuda::hopper_code_runs();
  return on;
}

// Warps a tile: the most of 8, 4, 2, 1 whose grid is one wave of resident blocks (a part keeps at least one
// chunk); VLM_W4A16_GEMV_PARTS pins it (benchmarks). VLM_W4A16_GEMV_WAVE caps the blocks an SM the wave counts
// (measuring: a grid that leaves registers free lets the next kernel's blocks start under dependent launch).
int parts_for(int M, int N, int K, int ring) {
  static const int wave_cap = cuda::env_int("VLM_W4A16_GEMV_WAVE", 0);
  int res = resident_blocks(M, K, ring);
  if (res == 0) return 0;
  if (wave_cap > 0) res = std::min(res, wave_cap);
  static const int pinned = cuda::env_int("VLM_W4A16_GEMV_PARTS", 0);
  const int64_t slots = (int64_t)res * cuda::sm_count() * kWarps, tiles = N / kTileN;
  for (int P : {8, 4, 2, 1}) {
    if (pinned) {
      if (P == pinned) return K / kChunkK >= P ? P : 0;
      continue;
    }
    if (K / kChunkK >= P && tiles * P <= slots) return P;
  }
  return 1;
}

template <class T, int M, int NF, Ring R>
cudaError_t launch_rows(const void* a, const void* w, const void* sz, const void* residual, void* c,
                        const RmsNormInput& norm, int N, int K, int group, int P, bool silu_up,
                        cudaStream_t stream) {
  if (const cudaError_t e = grant_smem<T, M, NF, R>(); e != cudaSuccess) return e;
  const int tiles_per_block = kWarps / P, tiles = N / kTileN;
  const dim3 grid((tiles + tiles_per_block - 1) / tiles_per_block);
  return cuda::launch_dependent(kernel_for<T, M, NF, R>(), grid, dim3(kThreads), smem_bytes(M, K, R, NF), stream,
                                static_cast<const T*>(a), static_cast<const uint4*>(w),
                                static_cast<const uint32_t*>(sz), static_cast<const T*>(residual),
                                static_cast<T*>(c), norm, N, K, group == 128 ? 1 : 0, P, silu_up);
}

template <class T, int NF, Ring R>
cudaError_t launch_ring(const void* a, const void* w, const void* sz, const void* residual, void* c,
                        const RmsNormInput& norm, int M, int N, int K, int group, int P, bool silu_up,
                        cudaStream_t stream) {
  switch (M) {
    case 1: return launch_rows<T, 1, NF, R>(a, w, sz, residual, c, norm, N, K, group, P, silu_up, stream);
    case 2: return launch_rows<T, 2, NF, R>(a, w, sz, residual, c, norm, N, K, group, P, silu_up, stream);
    case 3: return launch_rows<T, 3, NF, R>(a, w, sz, residual, c, norm, N, K, group, P, silu_up, stream);
    default: return launch_rows<T, 4, NF, R>(a, w, sz, residual, c, norm, N, K, group, P, silu_up, stream);
  }
}

template <class T>
cudaError_t launch(const void* a, const void* w, const void* sz, const void* residual, void* c,
                   const RmsNormInput& norm, int M, int N, int K, int group, bool silu_up, cudaStream_t stream,
                   int parts, int ring_arg) {
  const int P = parts ? parts : parts_for(M, N, K, ring_arg);
  if (P == 0) return cudaErrorInvalidValue;
  const RingChoice ring = ring_choice(ring_arg);
  if (ring.kind == Ring::kShared) {
    if (ring.chunks == kDeepInFlight)
      return launch_ring<T, kDeepInFlight, Ring::kShared>(a, w, sz, residual, c, norm, M, N, K, group, P, silu_up,
                                                          stream);
    return launch_ring<T, kDefaultInFlight, Ring::kShared>(a, w, sz, residual, c, norm, M, N, K, group, P, silu_up,
                                                           stream);
  }
  if (ring.chunks == 4)
    return launch_ring<T, 4, Ring::kRegisters>(a, w, sz, residual, c, norm, M, N, K, group, P, silu_up, stream);
  return launch_ring<T, kDefaultInFlight, Ring::kRegisters>(a, w, sz, residual, c, norm, M, N, K, group, P, silu_up,
                                                            stream);
}

}  // namespace

bool w4a16_gemv_applies(int M, int N, int K, int group, int ring) {
  return supported() && (ring == kGemvRingSetting || ring == kGemvRingShared) && M >= 1 && M <= kGemvMaxRows &&
         N > 0 && N % kW4StripN == 0 && K > 0 && K % kChunkK == 0 && (group == 64 || group == 128) &&
         K % group == 0 && ring_smem_bytes(M, K, ring) <= smem_limit() && parts_for(M, N, K, ring) > 0;
}

bool w4a16_gemv_pays(int M, int N, int K, int group, int ring) {
  if (!w4a16_gemv_applies(M, N, K, group, ring)) return false;
  const int P = parts_for(M, N, K, ring);
  return P == kWarps || (K / kChunkK) / P <= 16;
}

int w4a16_gemv_k_parts(int M, int N, int K, int group, int ring) {
  return w4a16_gemv_applies(M, N, K, group, ring) ? parts_for(M, N, K, ring) : 0;
}

bool w4a16_gemv_parts_valid(int K, int parts) {
  return parts == 0 || ((parts == 1 || parts == 2 || parts == 4 || parts == 8) && K / kChunkK >= parts);
}

cudaError_t w4a16_gemv_repack(const void* packed, void* out, int N, int K, cudaStream_t stream) {
  if (N <= 0 || N % kW4StripN != 0 || K <= 0 || K % kChunkK != 0) return cudaErrorInvalidValue;
  const int64_t total = (int64_t)(N / kTileN) * (K / kChunkK) * 32;
  const int blocks = (int)std::min<int64_t>((total + 255) / 256, 65535);
  repack_kernel<<<blocks, 256, 0, stream>>>(static_cast<const uint32_t*>(packed), static_cast<uint4*>(out), N, K);
  return cudaGetLastError();
}

cudaError_t w4a16_gemv(const void* a, const void* w, const void* sz, const void* residual, void* c, int M, int N,
                       int K, int group, bool bf16, bool a_is_gate_up, cudaStream_t stream, int parts, int ring) {
  if (!w4a16_gemv_applies(M, N, K, group, ring) || !w4a16_gemv_parts_valid(K, parts)) return cudaErrorInvalidValue;
  const RmsNormInput none{};
  if (bf16)
    return launch<__nv_bfloat16>(a, w, sz, residual, c, none, M, N, K, group, a_is_gate_up, stream, parts, ring);
  return launch<__half>(a, w, sz, residual, c, none, M, N, K, group, a_is_gate_up, stream, parts, ring);
}

cudaError_t w4a16_gemv_rms_norm(const RmsNormInput& norm, const void* w, const void* sz, void* c, int M, int N,
                                int K, int group, bool bf16, cudaStream_t stream, int parts, int ring) {
  if (!w4a16_gemv_applies(M, N, K, group, ring) || !w4a16_gemv_parts_valid(K, parts) || !norm.h || !norm.weight ||
      norm.h_out == norm.h)
    return cudaErrorInvalidValue;
  if (bf16)
    return launch<__nv_bfloat16>(nullptr, w, sz, nullptr, c, norm, M, N, K, group, false, stream, parts, ring);
  return launch<__half>(nullptr, w, sz, nullptr, c, norm, M, N, K, group, false, stream, parts, ring);
}

}  // namespace vlm
