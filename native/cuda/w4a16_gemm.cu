// w4a16 GEMM on tensor cores: C = A · dequant(W)ᵀ with 4-bit weights (AWQ,
// per-group fp16/bf16 scale and zero), fp16/bf16 activations, fp32
// accumulation, mma.sync m16n8k16.
//
// Work split: a warp owns a strip of 64 output columns and a K slice; a
// block holds 4 warps (256 columns) and up to 64 rows of A staged in shared
// memory. Weights stream from global memory exactly once per row tile in
// the layout of cpu/w4a16_pack.h (16-byte loads, 512 contiguous bytes per
// warp step). Dequantization happens in registers: the code bits are placed
// into the mantissa of (magic + q), the zero point (stored as magic + z) is
// subtracted exactly and the scale multiplied. Up to 8 rows the mma runs in
// a swapped form (weights as the 16-row operand, see w4a16_kernel); by
// default up to 16 rows do, multiplying the 4-bit codes themselves and
// scaling each group's fp32 sums (as the decode kernel;
// VLM_W4A16_GEMM_CODES=0 dequantizes up to 16 rows too). Small M
// fills the GPU with split-K, sized so that the slices' blocks fill one wave
// of resident blocks (asked of the occupancy API): each K slice writes fp32
// partials that a second kernel sums in a fixed order (deterministic), adding
// the optional residual; at decode sizes the GEMM's own last block per output
// tile does that sum instead (an arrival counter per tile in the workspace),
// saving a launch. The kernel requests its first weights before waiting for
// the kernel that writes A (dependent_launch.cuh). On sm_90, up to 4 rows go to
// the decode kernel instead (w4a16_decode.cu: split-K within a cluster, no
// workspace). This file never throws: errors return as cudaError_t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <tuple>

#include "cpu/w4a16_pack.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/device_query.h"
#include "cuda/env_int.h"
#include "cuda/w4a16_decode.h"
#include "cuda/w4a16_fragments.cuh"
#include "cuda/w4a16_gemm.h"
#include "cuda/w4a16_splitk.cuh"
#include "cuda/w4a16_wgmma.h"

namespace vlm {
namespace {

using w4a16::Act;
using w4a16::GroupParams;
using w4a16::code_fragments;
using w4a16::dequant_fragments;
using w4a16::ldmatrix_x2;
using w4a16::ldmatrix_x4;
using w4a16::load_a8;
using w4a16::load_group;
using w4a16::load_streaming;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockN = kWarps * kW4StripN;  // 256
constexpr int kSmemPad = 8;                   // halves per A row: keeps ldmatrix rows in distinct banks
constexpr int kUnroll = 4;                    // k16 steps whose weights are in flight together (8 for M <= 16)
constexpr int kMaxSmem = 160 * 1024;          // A slice staged per block (Hopper/Ampere allow more)

// W [N][K] row-major in T from the packed layout, with the GEMM's own fragment dequantization, so the
// values are bit for bit those its tensor cores multiply. One warp per (strip, kDequantSteps k16 steps):
// the fragments scatter 4-byte pieces over 8 rows, so the warp stages its 64 rows x 64 weights in
// shared memory and writes each row's 128 bytes whole (a full cache line per row instead of 16-byte
// pieces: the engine writes and re-reads the whole layer this way for every prefill-sized GEMM).
constexpr int kDequantSteps = 4;                       // K is a multiple of 64 (groups of 64 or 128)
constexpr int kDequantLd = kDequantSteps * 16 + 8;     // halves per staged row: rows 4 banks apart
template <class T>
__global__ void dequant_kernel(const uint4* __restrict__ w, const uint4* __restrict__ sz, T* __restrict__ out, int N,
                               int K, int group) {
  __shared__ __align__(16) T staged[kWarps][kW4StripN * kDequantLd];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ksteps = K / 16, chunks = ksteps / kDequantSteps;
  const int64_t item = (int64_t)blockIdx.x * kWarps + warp;
  if (item >= (int64_t)(N / kW4StripN) * chunks) return;  // no block-wide barrier below
  const int strip = (int)(item / chunks), step0 = (int)(item % chunks) * kDequantSteps;
  uint4 wv[kDequantSteps];
  GroupParams gp[kDequantSteps];
#pragma unroll
  for (int s = 0; s < kDequantSteps; ++s) {  // every load in flight before the first is used
    wv[s] = load_streaming(w + ((int64_t)strip * ksteps + step0 + s) * 32 + lane);
    gp[s] = load_group(sz + (int64_t)strip * (K / group) * 16 + (lane / 4) + (int64_t)((step0 + s) * 16 / group) * 16);
  }
  T* t = staged[warp];
#pragma unroll
  for (int s = 0; s < kDequantSteps; ++s) {
    uint32_t b[8][2];
    dequant_fragments<T>(wv[s], gp[s], b);
#pragma unroll
    for (int tile = 0; tile < 8; ++tile) {
      T* row = t + (tile * 8 + lane / 4) * kDequantLd + s * 16 + 2 * (lane % 4);
      *reinterpret_cast<uint32_t*>(row) = b[tile][0];
      *reinterpret_cast<uint32_t*>(row + 8) = b[tile][1];
    }
  }
  __syncwarp();
  // 8 lanes a row, 16 bytes each: four whole rows per store instruction.
  T* dst = out + (int64_t)strip * kW4StripN * K + step0 * 16 + (lane % 8) * 8;
#pragma unroll 4
  for (int r = lane / 8; r < kW4StripN; r += 4)
    *reinterpret_cast<uint4*>(dst + (int64_t)r * K) = *reinterpret_cast<const uint4*>(t + r * kDequantLd + (lane % 8) * 8);
}

// grid: (ceil(N / 256), splits, ceil(M / rows)) with rows = 8 * MT swapped, 16 * MT otherwise; block: 128
// threads. With splits > 1 every block writes fp32 partials; with `arrivals` the last block of
// an output tile to finish sums them (decode sizes), otherwise splitk_reduce_kernel does.
//
// SWAP (M <= 8 with MT = 1, or M <= 16 with MT = 2): the tensor cores compute Cᵀ = W · Aᵀ instead:
// the weights are the 16-row A operand (a lane's B fragments of two adjacent 8-column tiles are
// exactly its A fragment of that 16-column tile) and each 8 activation rows an 8-column B operand.
// At M <= 8 half the mma.sync of the 16-row tile (which wastes 15 of 16 rows at M = 1), half the
// accumulators and half the staged A: more resident warps for the decode sizes, which are bound by
// memory latency.
//
// CODES (swapped only): the mma multiplies the codes q themselves (exact small integers,
// w4a16::code_fragments: about half the instructions of dequantizing, which is what bounds this
// kernel at decode sizes) into sums of one group, and at the group's end s (Σ q·a − z Σ a) goes into
// the fp32 accumulators, Σ a from one more mma with an all-ones operand (the decode kernel's
// arithmetic, w4a16_decode.cu). No weight is rounded to 16 bits. CODES = SPG > 0, the k16 steps of a
// group: slices are whole groups and UNROLL a multiple of SPG, so where a group starts and ends is
// known at compile time (one scaling pass in the code per group, not one per step). Three blocks an
// SM (its register cap) keep 12 warps' weights in flight, as the 16-row dequantizing form has.
template <class T, int MT, int UNROLL, bool SWAP, int SPG>
__global__ void __launch_bounds__(kThreads, SPG > 0 ? 3 : 0)
    w4a16_kernel(const T* __restrict__ a, const uint4* __restrict__ w, const uint4* __restrict__ sz,
                 const T* __restrict__ residual, T* __restrict__ c, float* __restrict__ partial,
                 int* __restrict__ arrivals, int M, int N, int K, int group, int quantum, int max_slice, bool silu_up) {
  static_assert(!SWAP || MT <= (SPG > 0 ? 2 : 1), "the swapped form takes 8 rows, 16 with the codes");
  constexpr bool CODES = SPG > 0;
  constexpr int kSpg = CODES ? SPG : 1;  // (a modulus also where the dequantizing form compiles it)
  static_assert(!CODES || (SWAP && UNROLL % kSpg == 0), "codes: the swapped form, whole groups an unrolled batch");
  constexpr int kRows = SWAP ? 8 * MT : 16 * MT;  // rows of A staged per block
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sa = reinterpret_cast<T*>(smem_raw);
  const int lda_s = max_slice + kSmemPad;
  const int m0 = blockIdx.z * kRows;
  // K is cut into K / quantum units (whole groups and whole unrolled steps), spread as evenly as
  // possible over the gridDim.y slices: slices differ by at most one unit.
  const int units = K / quantum;
  const int u0 = splitk_slice_start(blockIdx.y, units, gridDim.y);
  const int u1 = splitk_slice_start(blockIdx.y + 1, units, gridDim.y);
  const int k0 = u0 * quantum, k_slice = (u1 - u0) * quantum;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int strip = blockIdx.x * kWarps + warp;
  // N is a multiple of 64, not always of 256: the last block may hold strips past N,
  // whose warps help stage A and then leave.
  const bool active = strip < N / kW4StripN;
  const int ksteps_total = K / 16;
  const uint4* wp = w + ((int64_t)strip * ksteps_total + k0 / 16) * 32 + lane;

  // Weights depend on no earlier kernel: the first UNROLL steps are requested before waiting
  // for the kernel that writes A (dependent_launch.cuh), so their latency overlaps its tail.
  uint4 wv[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) wv[u] = active ? load_streaming(wp + (int64_t)u * 32) : make_uint4(0, 0, 0, 0);
  cuda::pdl_wait();
  cuda::pdl_allow_next();

  // Stage A[m0 : m0+kRows][k0 : k0+k_slice] (rows past M are zero).
  const int vec_per_row = k_slice / 8;
  for (int i = threadIdx.x; i < kRows * vec_per_row; i += kThreads) {
    const int r = i / vec_per_row, v = i % vec_per_row;
    const uint4 val = m0 + r < M ? load_a8(a, m0 + r, k0 + v * 8, K, silu_up) : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(sa + r * lda_s + v * 8) = val;
  }
  __syncthreads();

  // Not swapped: acc[mt][tile] is the m16n8 tile of rows mt*16.., columns 8*tile... Swapped: acc[mt][i]
  // (i < 4) is the n16m8 tile of columns 16*i.. and rows 8*mt..8*mt+7. With CODES, gacc[mt][i] is the
  // same tile over the current group of codes (no scale, no zero) and asum[mt] the group's activation
  // sums of rows 8*mt + 2*(lane % 4) (+1) in [0] ([1]), the mma's layout.
  float acc[MT][8][4];
  float gacc[MT][4][4], asum[MT][4];  // registers only with CODES
  uint4 sv = make_uint4(0, 0, 0, 0), zv = sv;  // CODES: the group's scales and zeros, as stored
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][j][q] = 0.f;

  const int groups = K / group;
  const uint4* szp = sz + (int64_t)strip * groups * 16 + (lane / 4);  // 16 uint4 per (strip, group)
  const int steps = k_slice / 16;
  const int steps_per_group = group / 16;
  GroupParams gp;

  // Strips past N only helped stage A (they still reach the barrier of the reduction below).
  // The next UNROLL steps' weights are requested before this batch is dequantized and
  // multiplied, so every warp keeps loads in flight while it computes.
  for (int s0 = 0; active && s0 < steps; s0 += UNROLL) {
    uint4 next[UNROLL];
    const bool more = s0 + UNROLL < steps;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) next[u] = more ? load_streaming(wp + (int64_t)(s0 + UNROLL + u) * 32) : wv[u];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int s = s0 + u;
      uint32_t b[8][2];
      if constexpr (CODES) {
        // Rows 8*mt..8*mt+7 of A at k 16s.. and 16s+8.. as B operands (ldmatrix lanes 0-7 and 8-15 for
        // rows 0..7, 16-23 and 24-31 for rows 8..15).
        uint32_t bf[MT][2];
        if (MT == 1)
          ldmatrix_x2(bf[0], sa + (lane % 8) * lda_s + s * 16 + ((lane / 8) % 2) * 8);
        else
          ldmatrix_x4(&bf[0][0], sa + (lane % 8 + 8 * (lane / 16)) * lda_s + s * 16 + ((lane / 8) % 2) * 8);
        const bool starts = u % kSpg == 0;
        if (starts) {  // needed only at the group's end: the loads' latency hides behind its steps
          const uint4* p = szp + (int64_t)((k0 + s * 16) / group) * 16;
          sv = p[0];
          zv = p[8];
        }
        code_fragments<T>(wv[u], b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) w4a16::codes_mma<T>(gacc[mt], asum[mt], b, bf[mt], starts);
        if (u % kSpg == kSpg - 1) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) w4a16::add_group_sums<T>(acc[mt], gacc[mt], asum[mt], sv, zv);
        }
        continue;
      }
      if (s % steps_per_group == 0) gp = load_group(szp + (int64_t)((k0 + s * 16) / group) * 16);
      dequant_fragments<T>(wv[u], gp, b);
      if (SWAP) {
        // B operand: rows 0..7 of A at k 16s.. (lanes 0-7) and 16s+8.. (lanes 8-15).
        uint32_t bf[2];
        ldmatrix_x2(bf, sa + (lane % 8) * lda_s + s * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t af[4] = {b[2 * i][0], b[2 * i + 1][0], b[2 * i][1], b[2 * i + 1][1]};
          Act<T>::mma(acc[0][i], af, bf[0], bf[1]);
        }
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          uint32_t af[4];
          ldmatrix_x4(af, sa + (mt * 16 + (lane % 16)) * lda_s + s * 16 + (lane / 16) * 8);
#pragma unroll
          for (int j = 0; j < 8; ++j) Act<T>::mma(acc[mt][j], af, b[j][0], b[j][1]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) wv[u] = next[u];
  }

  // Epilogue. Not swapped: fragment c0,c1 -> row g, cols 2t,2t+1; c2,c3 -> row g+8.
  // Swapped: c0,c1 -> column g, rows 2t,2t+1; c2,c3 -> column g+8.
  const int g = lane / 4, t = lane % 4;
  auto store = [&](int row, int col, float v) {
    if (row >= M || !active) return;
    if (partial) {
      partial[((int64_t)blockIdx.y * M + row) * N + col] = v;
    } else {
      if (residual) v += Act<T>::to_float(residual[(int64_t)row * N + col]);
      c[(int64_t)row * N + col] = Act<T>::from_float(v);
    }
  };
  if (SWAP) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q)
          store(m0 + 8 * mt + 2 * t + (q & 1), strip * kW4StripN + 16 * i + g + (q >> 1) * 8, acc[mt][i][q]);
  } else {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = m0 + mt * 16 + g + half * 8;
          if (row >= M || !active) continue;
          const int col = strip * kW4StripN + j * 8 + 2 * t;
          float v0 = acc[mt][j][half * 2], v1 = acc[mt][j][half * 2 + 1];
          if (partial) {
            *reinterpret_cast<float2*>(partial + ((int64_t)blockIdx.y * M + row) * N + col) = make_float2(v0, v1);
          } else {
            store(row, col, v0);
            store(row, col + 1, v1);
          }
        }
  }
  if (!partial || !arrivals) return;

  // The last K slice of this output tile to finish adds the slices in slice order (the
  // same sums as splitk_reduce_kernel) and leaves the tile's counter at zero again.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  int* counter = arrivals + blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == (int)gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int col0 = blockIdx.x * kBlockN, cols = min(kBlockN, N - col0), rows = min(kRows, M - m0);
  const int64_t mn = (int64_t)M * N;
  for (int i = threadIdx.x; i < rows * cols; i += kThreads) {
    const int64_t o = (int64_t)(m0 + i / cols) * N + col0 + i % cols;
    float acc_sum = 0.f;
#pragma unroll 8  // the loads of 8 slices in flight together; the sum stays in slice order
    for (int k = 0; k < (int)gridDim.y; ++k) acc_sum += __ldcg(partial + k * mn + o);
    if (residual) acc_sum += Act<T>::to_float(residual[o]);
    c[o] = Act<T>::from_float(acc_sum);
  }
  if (threadIdx.x == 0) *counter = 0;
}

struct Plan {
  bool swap;     // the swapped mma form (see w4a16_kernel): M <= 8, or M <= 16 with codes
  int spg;       // 0, or with the codes multiplied (VLM_W4A16_GEMM_CODES=1, M <= 16): k16 steps per group (4 or 8)
  int mt;        // 16-row tiles per block (not swapped), 8-row operands (swapped)
  int rows;      // rows of A a block stages
  int m_tiles, splits, unroll;
  int quantum;   // K is split in whole units of this many columns
  int max_slice; // the longest slice (columns of K), which sizes the staged A
  size_t smem;
  bool ok;
  bool fold;  // splits > 1 summed by the GEMM's last block per tile (no second kernel)
  bool codes() const { return spg > 0; }
};

// The workspace starts with one arrival counter per output tile (zeroed by the caller
// once; every call leaves them at zero), then the fp32 partials.
constexpr int kArrivalInts = 4096;
constexpr int kFoldMaxM = 4;  // above this, a tile's reduction is too long for one block (measured at 16 rows)

// Split-K never cuts K into slices shorter than this (VLM_W4A16_MIN_SLICE_K overrides it, for
// tuning): a short slice's fixed costs (staging A, writing partials, the sum over slices) outweigh
// the parallelism it adds.
int min_slice_k() {
  static int v = [] {
    const char* e = std::getenv("VLM_W4A16_MIN_SLICE_K");
    const int x = e ? std::atoi(e) : 0;
    return x > 0 ? x : 256;
  }();
  return v;
}

// Whether up to 16 rows take the swapped form with the codes multiplied (the default; VLM_W4A16_GEMM_CODES=0
// dequantizes every weight as above 16 rows), read once. H200, 2026-12-05: 1.17-1.57x faster at 5-16 rows on
// every 2B and 7B layer (docs/benchmarks/gemm.md).
bool gemm_codes() {
  static const bool on = cuda::env_int("VLM_W4A16_GEMM_CODES", 1) != 0;
  return on;
}
constexpr int kCodesMaxM = 16;

template <class T, int MT, int UNROLL, bool SWAP, int SPG>
void (*kernel_for())(const T*, const uint4*, const uint4*, const T*, T*, float*, int*, int, int, int, int, int, int,
                     bool) {
  return w4a16_kernel<T, MT, UNROLL, SWAP, SPG>;
}

// Raises the kernel's dynamic shared memory limit once per instantiation (not on every, possibly
// graph-captured, call); the occupancy query below needs it too.
template <class T, int MT, int UNROLL, bool SWAP, int SPG>
cudaError_t grant_smem() {
  static const cudaError_t e =
      cudaFuncSetAttribute(kernel_for<T, MT, UNROLL, SWAP, SPG>(), cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
  return e;
}

template <class T, int MT, int UNROLL, bool SWAP, int SPG>
int resident_blocks_of(size_t smem) {
  auto kernel = kernel_for<T, MT, UNROLL, SWAP, SPG>();
  int n = 0;
  if (grant_smem<T, MT, UNROLL, SWAP, SPG>() != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return std::max(n, 1);
}

// Blocks of this plan's kernel that fit on one SM with `smem` bytes each (registers and shared
// memory), asked once per (kernel, size) and thread. Always of the fp16 instantiation: the plan,
// and with it the workspace size the caller allocates (w4a16_workspace_bytes takes no dtype),
// must not depend on the activation type.
int resident_blocks(const Plan& p, size_t smem) {
  thread_local std::map<std::tuple<bool, int, int, int, size_t>, int> cache;
  const auto key = std::make_tuple(p.swap, p.spg, p.mt, p.unroll, smem);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const bool u8 = p.unroll == 8;
  int n;
  if (p.codes() && p.mt == 2)
    n = p.spg == 8 ? resident_blocks_of<__half, 2, 8, true, 8>(smem) : resident_blocks_of<__half, 2, kUnroll, true, 4>(smem);
  else if (p.codes())
    n = !u8 ? resident_blocks_of<__half, 1, kUnroll, true, 4>(smem)
            : p.spg == 8 ? resident_blocks_of<__half, 1, 8, true, 8>(smem) : resident_blocks_of<__half, 1, 8, true, 4>(smem);
  else if (p.swap)
    n = u8 ? resident_blocks_of<__half, 1, 8, true, 0>(smem) : resident_blocks_of<__half, 1, kUnroll, true, 0>(smem);
  else if (p.mt == 1)
    n = u8 ? resident_blocks_of<__half, 1, 8, false, 0>(smem) : resident_blocks_of<__half, 1, kUnroll, false, 0>(smem);
  else if (p.mt == 2) n = resident_blocks_of<__half, 2, kUnroll, false, 0>(smem);
  else n = resident_blocks_of<__half, 4, kUnroll, false, 0>(smem);
  cache.emplace(key, n);
  return n;
}

Plan make_plan(int M, int N, int K, int group) {
  Plan p{};
  // Codes: an unrolled batch of steps must hold whole groups (8 steps: a group of 128 always, as K is
  // a multiple of the group; 4 steps: a group of 64).
  const bool codes = gemm_codes() && M <= kCodesMaxM && (group == 64 || group == 128);
  p.spg = codes ? group / 16 : 0;
  p.swap = M <= 8 || codes;
  p.mt = p.swap ? (M <= 8 ? 1 : 2) : (M <= 16 ? 1 : (M <= 32 ? 2 : 4));
  p.rows = p.swap ? 8 * p.mt : 16 * p.mt;
  // At most 16 rows: more weight bytes in flight per warp, where K allows.
  p.unroll = (p.swap || p.mt == 1) && K % std::max(group, 16 * 8) == 0 ? 8 : kUnroll;
  // 16 rows' sums of two groups of 64 in one batch of 8 steps would not fit the register cap.
  if (p.mt == 2 && p.spg == 4) p.unroll = kUnroll;
  p.quantum = std::max(group, 16 * p.unroll);
  p.m_tiles = (M + p.rows - 1) / p.rows;
  p.ok = K % p.quantum == 0;
  if (!p.ok) return p;
  const int units = K / p.quantum;
  const int blocks = ((N + kBlockN - 1) / kBlockN) * p.m_tiles;
  auto slice_of = [&](int sp) { return (units + sp - 1) / sp * p.quantum; };
  auto smem_of = [&](int sp) { return (size_t)p.rows * (slice_of(sp) + kSmemPad) * 2; };
  // The fewest slices whose A fits shared memory...
  int splits = 1;
  while (splits <= units && smem_of(splits) > kMaxSmem) ++splits;
  if (splits > units) {
    p.ok = false;
    return p;
  }
  // ...then the most that still run in one wave of resident blocks (each count with its own slice's
  // shared memory, which sets how many blocks an SM holds), without slices shorter than min_slice_k().
  const int most = std::max(splits, std::min(units, K / std::max(min_slice_k(), p.quantum)));
  for (int sp = most; sp > splits; --sp)
    if ((int64_t)blocks * sp <= (int64_t)resident_blocks(p, smem_of(sp)) * cuda::sm_count()) {
      splits = sp;
      break;
    }
  p.splits = splits;
  p.max_slice = slice_of(splits);
  p.smem = smem_of(splits);
  p.fold = splits > 1 && M <= kFoldMaxM && p.m_tiles * ((N + kBlockN - 1) / kBlockN) <= kArrivalInts;
  return p;
}

template <class T, int MT, int UNROLL, bool SWAP, int SPG = 0>
cudaError_t launch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                   int M, int N, int K, int group, void* workspace, bool silu_up, cudaStream_t stream) {
  auto kernel = kernel_for<T, MT, UNROLL, SWAP, SPG>();
  if (const cudaError_t e = grant_smem<T, MT, UNROLL, SWAP, SPG>(); e != cudaSuccess) return e;
  int* arrivals = static_cast<int*>(workspace);
  float* partial = reinterpret_cast<float*>(arrivals + kArrivalInts);
  dim3 grid((N + kBlockN - 1) / kBlockN, p.splits, p.m_tiles);
  cudaError_t e = cuda::launch_dependent(kernel, grid, dim3(kThreads), p.smem, stream, static_cast<const T*>(a),
                                         static_cast<const uint4*>(w), static_cast<const uint4*>(sz),
                                         static_cast<const T*>(residual), static_cast<T*>(c),
                                         p.splits > 1 ? partial : nullptr, p.fold ? arrivals : nullptr, M, N, K,
                                         group, p.quantum, p.max_slice, silu_up);
  if (e != cudaSuccess || p.splits == 1 || p.fold) return e;
  return w4a16_splitk_reduce<T>(partial, static_cast<const T*>(residual), static_cast<T*>(c), (int64_t)M * N,
                                p.splits, stream);
}

// The codes form: MT 8-row operands; an unrolled batch of 8 steps (one group of 128, or at 8 rows two
// of 64) or of 4 (one group of 64).
template <class T, int MT>
cudaError_t launch_codes(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                         int M, int N, int K, int group, void* workspace, bool silu_up, cudaStream_t stream) {
  if (p.spg == 8) return launch<T, MT, 8, true, 8>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if constexpr (MT == 1) {
    if (p.unroll == 8)
      return launch<T, 1, 8, true, 4>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  }
  return launch<T, MT, kUnroll, true, 4>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
}

template <class T>
cudaError_t dispatch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                     int M, int N, int K, int group, void* workspace, bool silu_up, cudaStream_t stream) {
  if (p.codes() && p.mt == 2)
    return launch_codes<T, 2>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.codes()) return launch_codes<T, 1>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.swap && p.unroll == 8)
    return launch<T, 1, 8, true>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.swap) return launch<T, 1, kUnroll, true>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.mt == 1 && p.unroll == 8)
    return launch<T, 1, 8, false>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.mt == 1)
    return launch<T, 1, kUnroll, false>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.mt == 2) return launch<T, 2, kUnroll, false>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  return launch<T, 4, kUnroll, false>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
}

}  // namespace

int64_t w4a16_workspace_bytes(int M, int N, int K, int group) {
  if (w4a16_decode_applies(M, N, K, group)) return 0;
  const Plan p = make_plan(M, N, K, group);
  if (!p.ok) return -1;
  const int64_t general = p.splits == 1 ? 0 : (int64_t)kArrivalInts * 4 + (int64_t)p.splits * M * N * 4;
  // With the wgmma kernel on, a call with A = the stacked gate/up output still takes this kernel: room for either.
  // The wgmma partials go after the arrival counters, which must stay zero between calls.
  if (w4a16_wgmma_applies(M, N, K, group))
    return std::max(general, (int64_t)kArrivalInts * 4 + w4a16_wgmma_workspace_bytes(M, N, K, group));
  return general;
}

cudaError_t w4a16_gemm(const void* a, const void* w, const void* sz, const void* residual, void* c, int M, int N,
                       int K, int group, bool bf16, void* workspace, cudaStream_t stream, bool a_is_gate_up) {
  if (w4a16_decode_applies(M, N, K, group))
    return w4a16_decode_gemm(a, w, sz, residual, c, M, N, K, group, bf16, stream, a_is_gate_up);
  if (!a_is_gate_up && w4a16_wgmma_applies(M, N, K, group))
    return w4a16_wgmma_gemm(a, w, sz, residual, c, M, N, K, group, bf16,
                            workspace ? static_cast<int*>(workspace) + kArrivalInts : nullptr, stream);
  const Plan p = make_plan(M, N, K, group);
  if (!p.ok || (p.splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  if (bf16) return dispatch<__nv_bfloat16>(p, a, w, sz, residual, c, M, N, K, group, workspace, a_is_gate_up, stream);
  return dispatch<__half>(p, a, w, sz, residual, c, M, N, K, group, workspace, a_is_gate_up, stream);
}

cudaError_t w4a16_dequantize(const void* w, const void* sz, void* out, int N, int K, int group, bool bf16,
                             cudaStream_t stream) {
  const int64_t warps = (int64_t)(N / kW4StripN) * (K / 16 / kDequantSteps);
  const unsigned blocks = (unsigned)((warps + kWarps - 1) / kWarps);
  if (bf16)
    dequant_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
        static_cast<const uint4*>(w), static_cast<const uint4*>(sz), static_cast<__nv_bfloat16*>(out), N, K, group);
  else
    dequant_kernel<__half><<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(w), static_cast<const uint4*>(sz),
                                                           static_cast<__half*>(out), N, K, group);
  return cudaGetLastError();
}

}  // namespace vlm
