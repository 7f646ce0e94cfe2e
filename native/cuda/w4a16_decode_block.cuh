// One block's share of a decode-size w4a16 GEMM (M <= 4 rows), as device code
// shared by the decode kernel (w4a16_decode.cu: one GEMM a launch, K slices
// summed across a thread-block cluster) and the persistent layer kernel
// (w4a16_layer_tail.cu: several GEMMs a launch, K slices summed through global
// memory). Both cut the work the same way and sum in the same order, so they
// produce the same bits for the same plan (w4a16_decode_plan()).
//
// The work of a GEMM: column blocks of S strips of 64 columns, each cut into C
// K slices; a block takes (column block, slice) and its 8 warps split the
// slice again: warp w takes strip w % S and K sub-slice w / S, in whole units
// of U k16 steps. Each warp streams its weights and group records through its
// own ring of ST cp.async stages (WarpRing), multiplies the 4-bit codes on the
// tensor cores (w4a16_fragments.cuh), and the block sums its warps' results
// in sub-slice order into `part`: S strips x M rows x 64 columns of fp32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cpu/w4a16_pack.h"
#include "cuda/w4a16_fragments.cuh"

namespace vlm {
namespace w4a16 {

constexpr int kDecodeWarps = 8;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodeMaxStrips = 4;   // strips per block (S)
constexpr int kDecodeSmemPad = 8;     // halves per staged A row: ldmatrix rows in distinct banks
constexpr int kDecodeMaxCluster = 8;  // K slices of one GEMM (C): the portable cluster size

// Where block (column block bx, K slice `rank` of C) and its warp `warp` work, in k16 steps.
struct BlockSlice {
  int bs0, bs1;  // the block's K slice
  int ws0;       // the warp's first step
  int n_steps;   // the warp's steps (0 for a warp whose strip is past N)
  int strip;     // the warp's strip (global index)
  int sl;        // the warp's strip within the block
  int kw;        // K sub-slices a block (8 / S)
};

__device__ __forceinline__ BlockSlice block_slice(int bx, int rank, int C, int S, int N, int K, int U, int warp) {
  BlockSlice b;
  // 32-bit products (units < 2^27 and rank, sub <= 8): a 64-bit division is a ~76-instruction call, and
  // four of them in a row came before the warp's first weight request.
  const int ksteps = K / 16, units = ksteps / U;
  const int bu0 = rank * units / C, bu1 = (rank + 1) * units / C;
  b.kw = kDecodeWarps / S;
  b.sl = warp % S;
  const int sub = warp / S;
  const int wu0 = bu0 + sub * (bu1 - bu0) / b.kw;
  const int wu1 = bu0 + (sub + 1) * (bu1 - bu0) / b.kw;
  b.bs0 = bu0 * U;
  b.bs1 = bu1 * U;
  b.ws0 = wu0 * U;
  b.strip = bx * S + b.sl;
  b.n_steps = b.strip < N / kW4StripN ? (wu1 - wu0) * U : 0;
  return b;
}

// A warp's ring: ST stages of 512 bytes of weights (one k16 step of its strip) and, for a stage that starts a
// unit of U steps, its group's 256-byte record of scales and zeros.
template <int U, int ST>
struct WarpRing {
  uint4* ring;
  uint4* grp;
  const uint4* wsrc;  // the lane's 16 bytes of the warp's first step
  const uint4* gsrc;  // the lane's 16 bytes of the strip's first group record (lanes < 16)
  int n_steps, ws0, group_shift, lane;

  // Stage j of this warp (step ws0 + j) into ring slot `slot` (= j % ST, a constant where the loops are
  // unrolled), with its group's record where it starts a unit; always one commit group, empty past the last step.
  __device__ __forceinline__ void issue(int j, int slot) const {
    if (j < n_steps) {
      cp_async16_weights(ring + slot * 32 + lane, wsrc + (int64_t)j * 32);
      if (slot % U == 0 && lane < 16)
        cp_async16_weights(grp + slot * 16 + lane, gsrc + (int64_t)((ws0 + j) >> group_shift) * 16);
    }
    cp_async_commit();
  }
  // The first ST stages: weights depend on no activation, so this may run before the input exists.
  __device__ __forceinline__ void prime() const {
#pragma unroll
    for (int j = 0; j < ST; ++j) issue(j, j);
  }
};

// The ring of warp `warp` of a block at `slice`, over weights w / group records sz of a [N][K] layer; ring_base and
// grp_base are the block's rings (kDecodeWarps of ST stages each).
template <int U, int ST>
__device__ __forceinline__ WarpRing<U, ST> warp_ring(const BlockSlice& s, const uint4* w, const uint4* sz, int K,
                                                     int group_shift, uint4* ring_base, uint4* grp_base, int warp,
                                                     int lane) {
  const int ksteps = K / 16, groups = ksteps >> group_shift;
  WarpRing<U, ST> r;
  r.ring = ring_base + warp * ST * 32;
  r.grp = grp_base + warp * ST * 16;
  r.wsrc = w + ((int64_t)s.strip * ksteps + s.ws0) * 32 + lane;
  r.gsrc = sz + (int64_t)s.strip * groups * 16 + lane;
  r.n_steps = s.n_steps;
  r.ws0 = s.ws0;
  r.group_shift = group_shift;
  r.lane = lane;
  return r;
}

// The warp's sums over its primed ring for NT tiles of 8 activation rows: acc[n][i] is the n16m8 tile of strip
// columns 16 i.., rows 8 n .. 8 n + 7 (rows past M repeat row M - 1 and are never stored). b_rows[n]: this lane's
// ldmatrix row of the staged A for tile n at the warp's first step. Ends with every copy complete.
//
// The tensor cores multiply the codes q themselves (exact small integers, code_fragments), and each group's
// scale s and zero z are applied to the fp32 sums of a unit of its steps:
//   sum_k (q - z) s a = s (sum_k q a - z sum_k a),
// the activations' sum over the group coming from one more mma with an all-ones operand. This takes the
// per-weight dequantization from four instructions a pair of weights to two (the kernel is bound by instruction
// issue, not bandwidth: docs/benchmarks/gemm.md), and rounds no weight to 16 bits; with two tiles a weight's
// fragments serve 16 rows. Unrolled by the ring's length, so every slot address is a constant offset and where
// units start and end is known at compile time.
template <class T, int U, int ST, int NT>
__device__ __forceinline__ void ring_sums(const WarpRing<U, ST>& r, const T* const (&b_rows)[NT],
                                          float (&acc)[NT][4][4]) {
  static_assert(ST % U == 0, "a ring slot that starts a unit must start one on every pass");
  float gacc[NT][4][4], asum[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[n][i][q] = 0.f;
  uint4 sv = make_uint4(0, 0, 0, 0), zv = sv;  // the current unit's scales and zeros (columns 8 tile + lane / 4)
  const int lane = r.lane;
  for (int j0 = 0; j0 < r.n_steps; j0 += ST) {
#pragma unroll
    for (int slot = 0; slot < ST; ++slot) {
      const int j = j0 + slot;
      const bool starts = slot % U == 0;
      if (starts && j >= r.n_steps) break;  // n_steps is a whole number of units
      cp_async_wait<ST - 1>();
      __syncwarp();  // the group record was copied by lanes 0-15 for the whole warp
      const uint4 wv = r.ring[slot * 32 + lane];
      if (starts) {
        sv = r.grp[slot * 16 + lane / 4];
        zv = r.grp[slot * 16 + 8 + lane / 4];
      }
      uint32_t b[8][2];
      code_fragments<T>(wv, b);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        uint32_t bf[2];
        ldmatrix_x2(bf, b_rows[n] + j * 16);
        codes_mma<T>(gacc[n], asum[n], b, bf, starts);
        if (slot % U == U - 1) add_group_sums<T>(acc[n], gacc[n], asum[n], sv, zv);
      }
      __syncwarp();  // every lane has read this slot before it is refilled
      r.issue(j + ST, slot);
    }
  }
  cp_async_wait<0>();
  __syncwarp();
}

// t / M for t >= 0 and 1 <= M <= kMaxRows. Up to 4 rows (the decode kernel's) a shift or a multiply by a
// constant: the division routine is ~20 dependent instructions on the path of every output element, and its
// code, reached once a launch, is instruction-cache misses in the kernel's last microseconds.
template <int kMaxRows>
__device__ __forceinline__ int rows_quotient(int t, int M) {
  if constexpr (kMaxRows <= 4) return M == 3 ? (int)((unsigned)t / 3u) : t >> (M >> 1);  // M = 1, 2, 4: >> 0, 1, 2
  else return (int)((unsigned)t / (unsigned)M);
}

// The block's partial over the real outputs: part[e], e = (strip sl, row < M, column), the warps' K sub-slices
// summed in order; consecutive elements are consecutive output columns. red: kDecodeWarps regions of red_stride
// floats (>= NT x 512) where each warp leaves its acc. Ends with part written and visible to the block.
// M <= kMaxRows <= 8 NT.
template <int NT, int kMaxRows = 8 * NT>
__device__ __forceinline__ void block_partial(const float (&acc)[NT][4][4], float* red, int red_stride, float* part,
                                              int S, int M, int kw, int warp, int lane) {
  float* mine = red + warp * red_stride;
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) mine[((n * 4 + i) * 4 + q) * 32 + lane] = acc[n][i][q];
  __syncthreads();
  const int elems = S * M * kW4StripN;
  for (int e = threadIdx.x; e < elems; e += kDecodeThreads) {
    const int sr = e / kW4StripN, es = rows_quotient<kMaxRows>(sr, M), row = sr - es * M, col = e % kW4StripN;
    // Where the mma left (row, col) of tile n = row / 8: row % 8 = 2 t + (q & 1), col = 16 i + g + 8 (q >> 1),
    // lane = 4 g + t.
    const int n = row / 8, r8 = row % 8;
    const int t = r8 / 2, i = col / 16, g = col % 8;
    const int q = ((col % 16) / 8) * 2 + (r8 & 1);
    const int at = ((n * 4 + i) * 4 + q) * 32 + 4 * g + t;
    float v = 0.f;
    for (int k = 0; k < kw; ++k) v += red[(k * S + es) * red_stride + at];
    part[e] = v;
  }
  __syncthreads();
}

// Output element `e` of a block's partial (block_partial's order) as (row, column) of the [M][N] output, or
// false past N. M <= kMaxRows.
template <int kMaxRows>
__device__ __forceinline__ bool partial_element(int e, int bx, int S, int M, int N, int64_t* offset) {
  const int sr = e / kW4StripN, es = rows_quotient<kMaxRows>(sr, M), row = sr - es * M, col = e % kW4StripN;
  const int st = bx * S + es;
  if (st >= N / kW4StripN) return false;
  *offset = (int64_t)row * N + st * kW4StripN + col;
  return true;
}

}  // namespace w4a16
}  // namespace vlm
