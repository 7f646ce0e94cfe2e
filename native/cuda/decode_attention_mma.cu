// Decode attention on the tensor cores for the int8, int4 and fp16 caches with fp16 activations and 128-dim
// heads: the same grid, results and end as decode_attention.cu,
// whose CUDA-core form is bound by instruction issue at batch 64 (Nsight Compute on the H200,
// 2026-12-04: 128 warp instructions per key row and head, 65 % of issue slots busy, DRAM at 28 % of
// its peak), converting and multiplying every element in fp32. Here 3x fewer instructions; with its
// split plan (decode_attention.cu) batch 64's attention on the 2B shapes went from 55.9 to 34.1 us a
// layer, 50 % of the copy bandwidth (docs/benchmarks/cuda_engine.md).
//
// A block takes one row, one KV head and one slice of the keys (split-KV, attention_splits.cuh), in
// tiles of 16 keys aligned to multiples of 16 (a tile lies in one cache block: the engine's blocks hold
// at least 16 slots, the dispatch checks it); each of its four warps takes every fourth tile and keeps
// its own online softmax. Per tile, S = Q·Kᵀ and O += P·V are m16n8k16 mma with the G query heads of the
// KV group as the A rows (rows G..15 are zero: wasted tensor-core work, which is cheap here):
//  - An int8 code c enters the mma as the fp16 1024 + c (exact for c < 256): one byte permute makes
//    two of them. The row's scale s and zero z, and the 1024, are applied to the fp32 results:
//      q·k = s (q·(1024 + c)) + (z − 1024 s) Σq
//      Σ p v = Σ (p s)(1024 + c) + Σ p z − 1024 Σ (p s),
//    where p s is rounded to fp16 (the mma's operand) and Σ (p s) is taken over the rounded values.
//  - A dot product may sum its dims in any order, so a lane loads contiguous bytes and the fragments
//    are defined over permuted dims: for Q·Kᵀ, lane (g = lane / 4, t = lane % 4) loads bytes
//    [32 t, 32 t + 32) of key g and of key 8 + g, and k-step c's fragment positions 2t, 2t+1, 2t+8, 2t+9
//    are its bytes 4c .. 4c + 3 (q is loaded in the same order). For P·V, B's column n of n-tile j is
//    dim 16 n + j, so the lane loads bytes [16 g, 16 g + 16) of its four keys (2t, 2t + 1, 2t + 8,
//    2t + 9: the keys whose probabilities the C fragment of Q·Kᵀ left in it) and its outputs are dims
//    [32 t, 32 t + 32) of head g.
//  - An int4 code c enters as 1024 + c too: a lane's words hold 8 codes (low nibble first, dims d .. d + 7),
//    and (w >> 4 s) & 0x000F000F, or'd with the fp16 1024, is the pair (dim d + s, dim d + 4 + s) in one
//    shift and one lop3. Q·Kᵀ takes its fragment positions in that order (q is permuted to match once); for
//    P·V, bytes of two keys are interleaved half-word by half-word first (one byte permute per four dims),
//    so n-tile j is still dim 16 n + j. Scale, zero and the 1024 are applied as for int8 (value = code ·
//    scale + zero in both). A lane's loads are half as long: 16 bytes of each K row, 8 of each V row.
//  - An fp16 cache's rows are the mma's operands as they are, in the same permuted dims: a lane loads 64 bytes
//    of each K row (dims [32 t, 32 t + 32)) and 32 of each V row (dims [16 g, 16 g + 16)); n-tile j of P·V
//    takes half j of those 16 from keys (2t, 2t + 1) and (2t + 8, 2t + 9), paired half by half. No scale or
//    zero: p enters the mma as it is (rounded to fp16, as p s is for the codes).
//  - Each lane's loads of the next tile are in flight while the current one is computed (197-204 registers
//    for int8: two blocks an SM; 164-168 for int4: three; 248-250 for fp16, whose tile is twice the bytes:
//    two, no spills (ptxas, sm_90a); the split plan asks the occupancy of each form).
//  - With RoPE inside (the engine's decode steps; rope_and_cache_write() does not run): q comes straight
//    from the stacked q/k/v GEMM's output and is rotated here, and the block whose slice holds the row's
//    own position writes that position's K (rotated) and V rows into the cache before it loads a tile.
//    One launch and one wait for a finished kernel fewer per layer; the rotation and the row's
//    quantization are the RoPE kernel's own functions (rope_kv_write.cuh), so the bits are the same.
//    That block's first tile is loaded before the wait too and the row it writes is patched into it from
//    shared memory (the same codes), rather than loaded back from the cache after the write.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>

#include "cuda/attention_splits.cuh"
#include "cuda/decode_attention_merge.cuh"
#include "cuda/decode_attention_mma.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/env_int.h"
#include "cuda/kv_rows.cuh"
#include "cuda/rope_kv_write.cuh"
#include "vlmcore.h"

namespace vlm {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kHeadDim = 128;
constexpr int kTile = 16;                  // keys a warp takes at a time
constexpr uint32_t kMagic = 0x64646464u;   // high byte of the fp16 1024 + code

// C[0:8][0:8] += A·B for m16n8k16 (fp16 in, fp32 sums) where A's rows 8..15 are zero: a0/a2 are
// A's rows 0..7, and C's rows 8..15 are neither read nor kept (w4a16::Act<T>::mma keeps all four C
// registers: here the 16 output tiles take 32 registers instead of 64).
__device__ __forceinline__ void mma_rows8(float (&c)[2], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm(
      "{\n.reg .f32 d2, d3;\n"
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,d2,d3}, {%2,%6,%3,%6}, {%4,%5}, {%0,%1,%7,%7};\n"
      "}\n"
      : "+f"(c[0]), "+f"(c[1])
      : "r"(a0), "r"(a2), "r"(b0), "r"(b1), "r"(0u), "f"(0.f));
}

// The fp16 pairs (1024 + byte b0 of w, 1024 + byte b1 of w) for selector 0x4140 (bytes 0, 1) or
// 0x4342 (bytes 2, 3).
__device__ __forceinline__ uint32_t code_pair(uint32_t w, uint32_t selector) { return __byte_perm(w, kMagic, selector); }

// The fp16 pair (1024 + nibble s of w's low half, 1024 + nibble s of its high half), s in 0..3.
__device__ __forceinline__ uint32_t nibble_pair(uint32_t w, int s) {
  return ((w >> (4 * s)) & 0x000F000Fu) | 0x64006400u;
}

__device__ __forceinline__ uint32_t word(const uint4& u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t w) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}

// The four keys of a tile whose scores, probabilities and V bytes lane t holds: 2t, 2t+1, 2t+8, 2t+9.
__device__ __forceinline__ int lane_key(int t, int i) { return 2 * t + (i & 1) + 8 * (i >> 1); }

// The cache's rows: 8-bit or 4-bit codes with a (scale, zero) pair each, or fp16 values.
enum class Rows { kInt8, kInt4, kHalf };

// One lane's loads of one tile, as loaded (int4: k[h][0] and v[i][0].x, .y only; fp16: no scale/zero pairs).
template <Rows F>
struct TileRegs {
  static constexpr bool kHalf = F == Rows::kHalf;
  uint4 k[2][kHalf ? 4 : 2];              // K of key 8 h + g (h = 0, 1): dims [32 t, 32 t + 32)
  uint4 v[4][kHalf ? 2 : 1];              // V of key lane_key(t, i): dims [16 g, 16 g + 16)
  uint32_t ksz[kHalf ? 1 : 4], vsz[kHalf ? 1 : 4];  // (scale, zero) of key lane_key(t, i)
};

// grid (rows, kv_heads, splits), kThreads threads; G query heads per KV head (1, 2, 4 or 8). ROPE: q is
// the q/k/v GEMM's output (rows of num_heads + 2 kv_heads heads), rotated here with inv_freq, and this
// step's K/V rows are written here (see the top of the file); otherwise q is rotated already. F: the
// cache's rows, int8 codes (128 bytes), int4 codes (64 bytes) or fp16 values (256 bytes).
template <int G, bool ROPE, Rows F>
__global__ void __launch_bounds__(kThreads) decode_attention_mma_kernel(const __half* __restrict__ q,
                                                                         __half* __restrict__ out,
                                                                         float* __restrict__ partial,
                                                                         int* __restrict__ arrivals, StepMeta meta,
                                                                         int num_heads, int sliding_window, KvView c,
                                                                         Split sp, const float* __restrict__ inv_freq,
                                                                         bool early_loads, bool q_first,
                                                                         bool release_merge) {
  constexpr bool I4 = F == Rows::kInt4, HALF = F == Rows::kHalf;
  __shared__ __align__(16) float s_acc[kWarps][G][kHeadDim];
  __shared__ float s_m[kWarps][G], s_l[kWarps][G];
  __shared__ float s_cos[ROPE ? kHeadDim / 2 : 1], s_sin[ROPE ? kHeadDim / 2 : 1];
  const int r = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // The row's keys [lo, pos] in tiles of 16, cut into sp.splits runs of whole tiles.
  const int pos = meta.positions[r];
  const int lo = sliding_window > 0 ? max(0, pos - sliding_window + 1) : 0;
  const int tile_lo = lo / kTile, tile_hi = pos / kTile;
  const int per = (tile_hi - tile_lo + sp.splits) / sp.splits;
  const int t0 = tile_lo + split * per, t1 = min(t0 + per, tile_hi + 1);
  const int first = max(lo, t0 * kTile), last = min(pos, t1 * kTile - 1);
  const int32_t* table = meta.block_tables + meta.table_offset[meta.row_segment[r]];
  const int shift = block_shift(c);
  const uint8_t* kbase = static_cast<const uint8_t*>(c.k);
  const uint8_t* vbase = static_cast<const uint8_t*>(c.v);
  const uint32_t* ksz = static_cast<const uint32_t*>(c.k_sz);
  const uint32_t* vsz = static_cast<const uint32_t*>(c.v_sz);

  // The step's metadata was uploaded before its first kernel (and inv_freq at load): read before waiting
  // for the kernels that write q and this step's cache rows.
  int tile = t0 + warp;
  int32_t blk = tile < t1 ? table[(tile * kTile) >> shift] : 0;
  const int64_t q_row = (int64_t)r * (ROPE ? num_heads + 2 * c.kv_heads : num_heads) * kHeadDim;
  // Keys outside [first, last] of a tile load the nearest key in it (the same cache block), so every
  // loaded value is finite; their scores are masked below.
  constexpr int kRowBytes = I4 ? kHeadDim / 2 : HALF ? 2 * kHeadDim : kHeadDim;
  constexpr int kKWords = I4 ? 1 : HALF ? 4 : 2;  // uint4s of a K row a lane loads
  constexpr int kVWords = HALF ? 2 : 1;           // of a V row (int4: half of one, loaded apart)
  auto copy_words = [](uint4* dst, const uint4* src, int n) {
#pragma unroll
    for (int j = 0; j < n; ++j) dst[j] = src[j];
  };
  auto load = [&](TileRegs<F>& x, int ti, int32_t block) {
    const int kb = ti * kTile;
    // Row indices in 32 bits: a cache of 2^32 rows of 128 bytes would be 512 GiB.
    const uint32_t row0 = ((uint32_t)block * c.kv_heads + kvh) * c.block_size + (kb & (c.block_size - 1));
    auto row = [&](int key) { return row0 + (uint32_t)(min(max(kb + key, first), last) - kb); };
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      copy_words(x.k[h],
                 reinterpret_cast<const uint4*>(kbase + (size_t)row(8 * h + g) * kRowBytes + kRowBytes / 4 * t),
                 kKWords);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t ri = row(lane_key(t, i));
      if constexpr (I4) {
        const uint2 u = *reinterpret_cast<const uint2*>(vbase + (size_t)ri * kRowBytes + 8 * g);
        x.v[i][0] = make_uint4(u.x, u.y, 0u, 0u);
      } else {
        copy_words(x.v[i], reinterpret_cast<const uint4*>(vbase + (size_t)ri * kRowBytes + kRowBytes / 8 * g),
                   kVWords);
      }
      if constexpr (!HALF) {
        x.ksz[i] = ksz[ri];
        x.vsz[i] = vsz[ri];
      }
    }
  };

  // This step's K and V rows as this kernel stores them (ROPE), for the tile holding the row's position.
  __shared__ __align__(16) uint8_t s_row[ROPE ? 2 : 1][kRowBytes];
  __shared__ __half2 s_row_sz[2];
  // The keys of tile ti that read the row's own position (the position, and the keys past it or before the
  // window's start, which load the nearest key) take that row from s_row: a tile loaded before the kernel
  // wrote the row holds what the cache held there before.
  auto patch = [&](TileRegs<F>& x, int ti) {
    const int kb = ti * kTile;
    auto reads_pos = [&](int key) { return min(max(kb + key, first), last) == pos; };
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (reads_pos(8 * h + g))
        copy_words(x.k[h], reinterpret_cast<const uint4*>(&s_row[0][kRowBytes / 4 * t]), kKWords);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (reads_pos(lane_key(t, i))) {
        if constexpr (I4) {
          const uint2 u = *reinterpret_cast<const uint2*>(&s_row[ROPE ? 1 : 0][8 * g]);
          x.v[i][0] = make_uint4(u.x, u.y, 0u, 0u);
        } else {
          copy_words(x.v[i], reinterpret_cast<const uint4*>(&s_row[ROPE ? 1 : 0][kRowBytes / 8 * g]), kVWords);
        }
        if constexpr (!HALF) {
          x.ksz[i] = *reinterpret_cast<const uint32_t*>(&s_row_sz[0]);
          x.vsz[i] = *reinterpret_cast<const uint32_t*>(&s_row_sz[1]);
        }
      }
  };

  // A first tile whose keys all precede the row's position holds only cache rows of earlier steps, whose
  // kernels completed before this step's metadata was uploaded: its loads go out before waiting, while the
  // kernel that writes q still runs. So do those of the tile holding the position where this kernel writes
  // its row (ROPE): that row is patched in from shared memory once written, so the block's slowest path (the
  // row's write) is not followed by a load of what it wrote. Without ROPE that tile waits (its row is written
  // by the RoPE kernel this one waits for). Either way the first tile's loads go out before q's.
  TileRegs<F> cur;
  const bool early = early_loads && tile < t1 && (tile < tile_hi || (ROPE && tile == tile_hi));
  if (early) load(cur, tile, blk);

  if constexpr (ROPE) {
    // The row's angles, as rope_cache_kernel takes them.
    if (threadIdx.x < kHeadDim / 2) sincosf((float)pos * inv_freq[threadIdx.x], &s_sin[threadIdx.x], &s_cos[threadIdx.x]);
    __syncthreads();
  }
  // q of head g, halves [32 t, 32 t + 32): word 2c is k-step c's a0, word 2c + 1 its a2. Heads past G
  // are zero rows.
  uint32_t qa[16];
  auto load_q = [&] {
    if (g < G) {
      const uint4* qp = reinterpret_cast<const uint4*>(q + q_row + (int64_t)(kvh * G + g) * kHeadDim + 32 * t);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint4 u = qp[i];
        qa[4 * i] = u.x, qa[4 * i + 1] = u.y, qa[4 * i + 2] = u.z, qa[4 * i + 3] = u.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) qa[i] = 0u;
    }
  };

  pdl_wait();
  pdl_allow_next();
  // q_first (q_loads_first()): q's loads go out as soon as the wait ends, beside the row's write and a late first
  // tile's loads, rather than after them: the slice holding the row's position, which has the most to do after the
  // wait, then makes one trip to L2 before its first tile's arithmetic rather than two.
  if (q_first) load_q();
  if constexpr (ROPE) {
    // The slice holding the row's own position writes its K and V rows (warps 0 and 1: lane holds
    // dims lane + 32 e, whose rotation partner is e ± 2 of the same lane) before any of its warps loads
    // that tile; the barrier makes the stores visible to the block's loads.
    if (t0 <= tile_hi && tile_hi < t1) {
      if (warp < 2) {
        const __half* src = q + q_row + (int64_t)(num_heads + warp * c.kv_heads + kvh) * kHeadDim;
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = __half2float(src[lane + 32 * e]);
        if (warp == 0) {
          float y[4];
#pragma unroll
          for (int e = 0; e < 4; ++e)
            y[e] = rope_rotate(x[e], x[e ^ 2], s_cos[lane + 32 * (e & 1)], s_sin[lane + 32 * (e & 1)], e < 2);
#pragma unroll
          for (int e = 0; e < 4; ++e) x[e] = y[e];
        }
        const int64_t row = cache_row(c, meta.slots[r], kvh);
        store_kv_row<4>(c, warp == 0 ? c.k : c.v, warp == 0 ? c.k_sz : c.v_sz, row, x, lane, s_row[warp],
                        &s_row_sz[warp]);
      }
      __syncthreads();
      if (early && tile == tile_hi) patch(cur, tile);
    }
  }

  if (tile < t1 && !early) load(cur, tile, blk);

  if (!q_first) load_q();
  float qsum = 0.f;
  if constexpr (ROPE) {
    // Dim d = 32 t + 2 i + h pairs with d ± 64: the same word of lane t ^ 2 (the same head g). Rounded to
    // fp16 as rope_cache_kernel stores q.
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const float2 x = half2_bits_to_float2(qa[i]);
      const float2 p = half2_bits_to_float2(__shfl_xor_sync(0xffffffffu, qa[i], 2));
      const int a = 32 * (t & 1) + 2 * i;  // the angle of dim d is that of d mod 64
      const __half2 y = __floats2half2_rn(rope_rotate(x.x, p.x, s_cos[a], s_sin[a], t < 2),
                                          rope_rotate(x.y, p.y, s_cos[a + 1], s_sin[a + 1], t < 2));
      if (g < G) qa[i] = *reinterpret_cast<const uint32_t*>(&y);
    }
  }
  if (g < G) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const float2 f = half2_bits_to_float2(qa[i]);
      qsum += f.x + f.y;
    }
  }
  qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);  // the four lanes of head g hold a quarter each
  qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
  if constexpr (I4) {
    // K's codes come as dim pairs (d + s, d + 4 + s) of each 8-dim word (nibble_pair): k-step 2w takes
    // word w's pairs s = 0 (a0) and 1 (a2), k-step 2w + 1 its pairs 2 and 3; q's halves in that order.
    uint32_t qp[16];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      qp[4 * w] = __byte_perm(qa[4 * w], qa[4 * w + 2], 0x5410);          // dims 8w, 8w + 4
      qp[4 * w + 1] = __byte_perm(qa[4 * w], qa[4 * w + 2], 0x7632);      // 8w + 1, 8w + 5
      qp[4 * w + 2] = __byte_perm(qa[4 * w + 1], qa[4 * w + 3], 0x5410);  // 8w + 2, 8w + 6
      qp[4 * w + 3] = __byte_perm(qa[4 * w + 1], qa[4 * w + 3], 0x7632);  // 8w + 3, 8w + 7
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) qa[i] = qp[i];
  }
  const float scale = rsqrtf((float)kHeadDim);

  float o[16][2];  // o[j][0], o[j][1]: head g, dims 32 t + j and 32 t + 16 + j (unnormalised)
#pragma unroll
  for (int j = 0; j < 16; ++j) o[j][0] = o[j][1] = 0.f;
  // Running maximum of head g's scores, and this lane's share of the sum of exponentials and of the
  // scalar part of the output (Σ p z − 1024 Σ (p s)), both at that maximum.
  float m = -INFINITY, l = 0.f, zacc = 0.f;

  auto compute = [&](const TileRegs<F>& x, int ti) {
    const int kb = ti * kTile;
    float s[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // s[h]: keys 8 h + 2t, 8 h + 2t + 1 of head g
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {
        if constexpr (I4) {
          const uint32_t w = word(x.k[h][0], ks / 2);
          mma_rows8(s[h], qa[2 * ks], qa[2 * ks + 1], nibble_pair(w, 2 * (ks & 1)), nibble_pair(w, 2 * (ks & 1) + 1));
        } else if constexpr (HALF) {
          // k-step ks takes dims 4 ks .. 4 ks + 3 of the lane's 32: words 2 ks and 2 ks + 1 of its K slice,
          // the operands as the cache holds them.
          const uint4& u = x.k[h][ks / 2];
          mma_rows8(s[h], qa[2 * ks], qa[2 * ks + 1], word(u, 2 * (ks & 1)), word(u, 2 * (ks & 1) + 1));
        } else {
          const uint32_t w = word(x.k[h][ks / 4], ks % 4);
          mma_rows8(s[h], qa[2 * ks], qa[2 * ks + 1], code_pair(w, 0x4140), code_pair(w, 0x4342));
        }
      }
    float sc[4], mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int key = kb + lane_key(t, i);
      const float dot = s[i >> 1][i & 1];
      if constexpr (HALF) {
        sc[i] = key >= first && key <= last ? scale * dot : -INFINITY;
      } else {
        const float2 sz = half2_bits_to_float2(x.ksz[i]);  // (scale, zero)
        sc[i] = key >= first && key <= last ? scale * fmaf(sz.x, dot, (sz.y - 1024.f * sz.x) * qsum) : -INFINITY;
      }
      mx = fmaxf(mx, sc[i]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: every tile holds a key of [first, last]
    const float corr = __expf(m - m_new);
    m = m_new;
    float psum = 0.f, pz = 0.f, phsum = 0.f;
    uint32_t pa[2];  // P·V's a0 (keys 2t, 2t + 1) and a2 (keys 2t + 8, 2t + 9): p s in fp16 (fp16 cache: p)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float p0 = __expf(sc[2 * j] - m_new), p1 = __expf(sc[2 * j + 1] - m_new);
      if constexpr (HALF) {
        const __half2 ph = __floats2half2_rn(p0, p1);
        pa[j] = *reinterpret_cast<const uint32_t*>(&ph);
      } else {
        const float2 v0 = half2_bits_to_float2(x.vsz[2 * j]), v1 = half2_bits_to_float2(x.vsz[2 * j + 1]);
        const __half2 ph = __floats2half2_rn(p0 * v0.x, p1 * v1.x);
        pa[j] = *reinterpret_cast<const uint32_t*>(&ph);
        const float2 phf = __half22float2(ph);
        phsum += phf.x + phf.y;
        pz = fmaf(p0, v0.y, fmaf(p1, v1.y, pz));
      }
      psum += p0 + p1;
    }
    l = fmaf(l, corr, psum);
    if constexpr (!HALF) zacc = fmaf(zacc, corr, fmaf(-1024.f, phsum, pz));
#pragma unroll
    for (int j = 0; j < 16; ++j) o[j][0] *= corr, o[j][1] *= corr;
    if constexpr (I4) {
      // Word wd (0, 1) of the four V rows holds dims 8 wd .. 8 wd + 7 of the lane's 16; half hh of it the four
      // from 8 wd + 4 hh, n-tiles 8 wd + 4 hh + s. Keys (2t, 2t + 1) and (2t + 8, 2t + 9) side by side in one
      // word each, then nibble s of both halves is the fp16 pair.
#pragma unroll
      for (int wd = 0; wd < 2; ++wd) {
        const uint32_t v0 = wd ? x.v[0][0].y : x.v[0][0].x, v1 = wd ? x.v[1][0].y : x.v[1][0].x;
        const uint32_t v2 = wd ? x.v[2][0].y : x.v[2][0].x, v3 = wd ? x.v[3][0].y : x.v[3][0].x;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const uint32_t sel = hh ? 0x7632u : 0x5410u;
          const uint32_t k01 = __byte_perm(v0, v1, sel), k23 = __byte_perm(v2, v3, sel);
#pragma unroll
          for (int sn = 0; sn < 4; ++sn)
            mma_rows8(o[8 * wd + 4 * hh + sn], pa[0], pa[1], nibble_pair(k01, sn), nibble_pair(k23, sn));
        }
      }
    } else if constexpr (HALF) {
      // Word wd of the four V rows holds n-tiles 2 wd (low half) and 2 wd + 1 (high half): keys (2t, 2t + 1)
      // and (2t + 8, 2t + 9) paired half by half.
#pragma unroll
      for (int wd = 0; wd < 8; ++wd) {
        const uint32_t v0 = word(x.v[0][wd / 4], wd % 4), v1 = word(x.v[1][wd / 4], wd % 4);
        const uint32_t v2 = word(x.v[2][wd / 4], wd % 4), v3 = word(x.v[3][wd / 4], wd % 4);
        mma_rows8(o[2 * wd], pa[0], pa[1], __byte_perm(v0, v1, 0x5410), __byte_perm(v2, v3, 0x5410));
        mma_rows8(o[2 * wd + 1], pa[0], pa[1], __byte_perm(v0, v1, 0x7632), __byte_perm(v2, v3, 0x7632));
      }
    } else {
      // Word wd of the four V rows: bytes 4 wd .. 4 wd + 3 are n-tiles 4 wd .. 4 wd + 3. Interleave keys
      // (2t, 2t + 1) and (2t + 8, 2t + 9) byte by byte, then widen each pair to fp16.
#pragma unroll
      for (int wd = 0; wd < 4; ++wd) {
        const uint32_t v0 = word(x.v[0][0], wd), v1 = word(x.v[1][0], wd), v2 = word(x.v[2][0], wd);
        const uint32_t v3 = word(x.v[3][0], wd);
        const uint32_t lo01 = __byte_perm(v0, v1, 0x5140), hi01 = __byte_perm(v0, v1, 0x7362);
        const uint32_t lo23 = __byte_perm(v2, v3, 0x5140), hi23 = __byte_perm(v2, v3, 0x7362);
        mma_rows8(o[4 * wd + 0], pa[0], pa[1], code_pair(lo01, 0x4140), code_pair(lo23, 0x4140));
        mma_rows8(o[4 * wd + 1], pa[0], pa[1], code_pair(lo01, 0x4342), code_pair(lo23, 0x4342));
        mma_rows8(o[4 * wd + 2], pa[0], pa[1], code_pair(hi01, 0x4140), code_pair(hi23, 0x4140));
        mma_rows8(o[4 * wd + 3], pa[0], pa[1], code_pair(hi01, 0x4342), code_pair(hi23, 0x4342));
      }
    }
  };

  int32_t blk_next = tile + kWarps < t1 ? table[((tile + kWarps) * kTile) >> shift] : 0;
  for (; tile < t1; tile += kWarps) {
    const int nt = tile + kWarps;
    TileRegs<F> nxt;
    if (nt < t1) load(nxt, nt, blk_next);
    if (nt + kWarps < t1) blk_next = table[((nt + kWarps) * kTile) >> shift];
    compute(cur, tile);
    if (nt < t1) cur = nxt;
  }

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  zacc += __shfl_xor_sync(0xffffffffu, zacc, 1);
  zacc += __shfl_xor_sync(0xffffffffu, zacc, 2);
  if (g < G) {
    if (t == 0) s_m[warp][g] = m, s_l[warp][g] = l;
    float4* dst = reinterpret_cast<float4*>(&s_acc[warp][g][32 * t]);
#pragma unroll
    for (int j4 = 0; j4 < 4; ++j4) {
      dst[j4] = make_float4(o[4 * j4][0] + zacc, o[4 * j4 + 1][0] + zacc, o[4 * j4 + 2][0] + zacc,
                            o[4 * j4 + 3][0] + zacc);
      dst[4 + j4] = make_float4(o[4 * j4][1] + zacc, o[4 * j4 + 1][1] + zacc, o[4 * j4 + 2][1] + zacc,
                                o[4 * j4 + 3][1] + zacc);
    }
  }
  // 16 slices ahead: a batch-1 step's plan at contexts up to 1,024 (64 keys a slice)
  merge_decode_slots<__half, kHeadDim, G, kWarps, kThreads, 16>(s_m, s_l, s_acc, out, partial, arrivals, r, kvh,
                                                                split, num_heads, c.kv_heads, sp, release_merge);
}

// A first tile of earlier steps' rows loads before the wait (H100, 2026-12-05: 2B w4a16 + int8 KV decode batch 1
// 918 -> 931 and batch 4 2,830 -> 2,861 tok/s, 7B batch 1 448 -> 457; the same bits, compute-sanitizer clean);
// VLM_ATTENTION_EARLY_LOADS=0 loads every first tile after it.
bool early_loads() {
  static const bool on = env_int("VLM_ATTENTION_EARLY_LOADS", 1) != 0;
  return on;
}

// VLM_ATTENTION_Q_FIRST=1: q loaded straight after the wait (see the kernel). The same bits; off by default until
// measured on a GPU.
bool q_loads_first() {
  static const bool on = env_int("VLM_ATTENTION_Q_FIRST", 0) != 0;
  return on;
}

template <int G, Rows F>
cudaError_t launch_rows(const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                         int num_heads, int sliding_window, const KvView& c, Split sp, const RopeSource* rope,
                         cudaStream_t stream) {
  const dim3 grid(rows, c.kv_heads, sp.splits);
  if (rope)
    return launch_dependent(decode_attention_mma_kernel<G, true, F>, grid, dim3(kThreads), 0, stream,
                            static_cast<const __half*>(rope->qkv), static_cast<__half*>(out), partial, arrivals, meta,
                            num_heads, sliding_window, c, sp, rope->inv_freq, early_loads(), q_loads_first(),
                            release_merge_enabled());
  return launch_dependent(decode_attention_mma_kernel<G, false, F>, grid, dim3(kThreads), 0, stream,
                          static_cast<const __half*>(q), static_cast<__half*>(out), partial, arrivals, meta, num_heads,
                          sliding_window, c, sp, static_cast<const float*>(nullptr), early_loads(), q_loads_first(),
                          release_merge_enabled());
}

template <int G>
cudaError_t launch(const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                   int num_heads, int sliding_window, const KvView& c, Split sp, const RopeSource* rope,
                   cudaStream_t stream) {
  if (c.dtype == VLM_DTYPE_I4)
    return launch_rows<G, Rows::kInt4>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope,
                                       stream);
  if (c.dtype == VLM_DTYPE_F16)
    return launch_rows<G, Rows::kHalf>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope,
                                       stream);
  return launch_rows<G, Rows::kInt8>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope,
                                     stream);
}

// Blocks an SM holds of the form (with or without RoPE inside) that holds fewer: the split plan counts with it.
// (ptxas, sm_90a: the two forms differ by a few registers, either way round, within one allocation step.)
template <int G, Rows F>
int resident() {
  int fewest = 0;
  for (auto kernel : {decode_attention_mma_kernel<G, true, F>, decode_attention_mma_kernel<G, false, F>}) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess) {
      cudaGetLastError();  // not sticky: leave no error for the next call to find
      n = 0;
    }
    fewest = fewest == 0 ? n : std::min(fewest, n);
  }
  return fewest > 0 ? fewest : 1;
}

// resident() for query groups of 1, 2, 4 and 8 heads (index 0-3), asked at a form's first use: each cache's
// forms' occupancy only where they run.
template <Rows F>
int resident_by_group(int index) {
  static const int blocks[4] = {resident<1, F>(), resident<2, F>(), resident<4, F>(), resident<8, F>()};
  return blocks[index];
}

}  // namespace

bool decode_attention_mma_applies(ActType act, int num_heads, const KvView& c) {
  static const bool enabled = [] {
    const char* e = std::getenv("VLM_DECODE_ATTENTION_MMA");
    return !(e && e[0] == '0');
  }();
  // The int4 cache too (H100, 2026-12-05: 2B w4a16 + int4 KV decode at batch 64 20,602 -> 26,288 tok/s; its kernel
  // tests against the reference and compute-sanitizer clean); VLM_DECODE_ATTENTION_MMA_INT4=0 keeps the CUDA-core
  // kernel for it.
  static const bool int4 = env_int("VLM_DECODE_ATTENTION_MMA_INT4", 1) != 0;
  // The fp16 cache too, its rows the mma's operands as they are (H100, 2026-12-07: 2B w4a16 + fp16 KV decode at
  // batch 1 / 16 / 64 891 / 8,416 / 18,007 -> 974 / 9,326 / 20,881 tok/s; its kernel tests against the reference
  // and compute-sanitizer clean); VLM_DECODE_ATTENTION_MMA_FP16=0 keeps the CUDA-core kernel for it.
  static const bool half = env_int("VLM_DECODE_ATTENTION_MMA_FP16", 1) != 0;
  const int group = c.kv_heads > 0 ? num_heads / c.kv_heads : 0;
  const bool rows = (c.dtype == VLM_DTYPE_I8 && c.row_bytes == kHeadDim) ||
                    (int4 && c.dtype == VLM_DTYPE_I4 && c.row_bytes == kHeadDim / 2) ||
                    (half && c.dtype == VLM_DTYPE_F16 && c.row_bytes == 2 * kHeadDim);
  return enabled && act == ActType::F16 && rows && c.head_dim == kHeadDim && c.block_size >= kTile &&
         group * c.kv_heads == num_heads && (group == 1 || group == 2 || group == 4 || group == 8);
}

int decode_attention_mma_blocks_per_sm(int group, const KvView& c) {
  const int index = group == 1 ? 0 : group == 2 ? 1 : group == 4 ? 2 : 3;
  if (c.dtype == VLM_DTYPE_I4) return resident_by_group<Rows::kInt4>(index);
  if (c.dtype == VLM_DTYPE_F16) return resident_by_group<Rows::kHalf>(index);
  return resident_by_group<Rows::kInt8>(index);
}

cudaError_t decode_attention_mma(const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                                 int sliding_window, const KvView& c, int splits, float* partial, int* arrivals,
                                 const RopeSource* rope, cudaStream_t stream) {
  const Split sp{splits, 0};  // the kernel cuts each row's own keys into tiles; a fixed chunk is not used
  switch (num_heads / c.kv_heads) {
    case 1: return launch<1>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope, stream);
    case 2: return launch<2>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope, stream);
    case 4: return launch<4>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope, stream);
    case 8: return launch<8>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, rope, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vlm
