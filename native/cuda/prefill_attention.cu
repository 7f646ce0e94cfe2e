// Causal paged attention for prefill steps, tiled so that the rows of one
// request share every K/V read: a block takes up to 32 (row, query head)
// pairs of one request and one KV head, walks the keys those rows can see in
// tiles of 32, dequantizes each tile once into shared memory and lets every
// pair consume it (flash-attention's online softmax, fp32). The decode
// kernel (paged_attention.cu) instead gives every row its own pass over its
// keys, which for a 2048-row prefill step re-reads each key thousands of times.
// Same result as cpu/attention.cpp up to summation order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/decoder_kernels.h"
#include "cuda/device_math.cuh"
#include "cuda/kv_rows.cuh"

namespace vlm {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kLanes = 32;    // (row, head) pairs per block
constexpr int kTileKeys = 32; // keys per shared-memory tile (one per lane when scoring)

// grid (tiles, kv_heads, head chunks); tiles[i] = (first row, rows) of one request.
template <class T, int E>
__global__ void __launch_bounds__(kWarps * 32)
    prefill_attention_kernel(const T* __restrict__ q, T* __restrict__ out, StepMeta meta, const int2* __restrict__ tiles,
                             int num_heads, int sliding_window, KvView c, int heads_per_block) {
  extern __shared__ float smem[];
  const int hd = c.head_dim, ldk = hd + 1;  // +1: lanes reading one column of K hit distinct banks
  float* ks = smem;                          // [kTileKeys][hd + 1]
  float* vs = ks + kTileKeys * ldk;          // [kTileKeys][hd]
  float* qs = vs + kTileKeys * hd;           // [kLanes][hd]
  const int2 tile = tiles[blockIdx.x];
  const int kvh = blockIdx.y, group = num_heads / c.kv_heads;
  const int h0 = blockIdx.z * heads_per_block;
  const int nh = min(heads_per_block, group - h0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = rsqrtf((float)hd);
  const int32_t* table = meta.block_tables + meta.table_offset[meta.row_segment[tile.x]];
  const int first_pos = meta.positions[tile.x], last_pos = meta.positions[tile.x + tile.y - 1];
  const int lo = sliding_window > 0 ? max(0, first_pos - sliding_window + 1) : 0;
  const int pairs = tile.y * nh;  // pair p: row tile.x + p / nh, head h0 + p % nh

  for (int i = threadIdx.x; i < kLanes * hd; i += blockDim.x) {
    const int p = i / hd, d = i % hd;
    float x = 0.f;
    if (p < pairs)
      x = to_float(q[((int64_t)(tile.x + p / nh) * num_heads + kvh * group + h0 + p % nh) * hd + d]) * scale;
    qs[i] = x;
  }

  constexpr int kPerWarp = kLanes / kWarps;
  float m[kPerWarp], l[kPerWarp], acc[kPerWarp][E];
#pragma unroll
  for (int i = 0; i < kPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[i][e] = 0.f;
  }

  for (int k0 = lo; k0 <= last_pos; k0 += kTileKeys) {
    __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
    for (int u = warp; u < kTileKeys; u += kWarps) {
      const int j = min(k0 + u, last_pos);
      const int64_t row = key_row(c, table, j, kvh);
      float kf[E], vf[E];
      load_kv_row<E>(c, c.k, c.k_sz, row, lane, kf);
      load_kv_row<E>(c, c.v, c.v_sz, row, lane, vf);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d < hd) ks[u * ldk + d] = kf[e], vs[u * hd + d] = vf[e];
      }
    }
    __syncthreads();
    const int key = k0 + lane;  // the key this lane scores
#pragma unroll
    for (int i = 0; i < kPerWarp; ++i) {
      const int p = warp * kPerWarp + i;
      if (p >= pairs) break;  // warp-uniform
      const int pos = meta.positions[tile.x + p / nh];
      const int key_lo = sliding_window > 0 ? max(0, pos - sliding_window + 1) : 0;
      float s = -INFINITY;
      if (key <= pos && key >= key_lo) {
        s = 0.f;
        const float* qp = qs + p * hd;
        const float* kp = ks + lane * ldk;
        for (int d = 0; d < hd; ++d) s += qp[d] * kp[d];
      }
      const float m_new = fmaxf(m[i], warp_max(s));
      if (m_new == -INFINITY) continue;  // no visible key yet for this pair
      const float corr = __expf(m[i] - m_new);
      const float pr = s == -INFINITY ? 0.f : __expf(s - m_new);
      l[i] = l[i] * corr + warp_sum(pr);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[i][e] *= corr;
      for (int j = 0; j < kTileKeys; ++j) {
        const float pj = __shfl_sync(0xffffffffu, pr, j);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = lane + 32 * e;
          if (d < hd) acc[i][e] += pj * vs[j * hd + d];
        }
      }
      m[i] = m_new;
    }
  }

#pragma unroll
  for (int i = 0; i < kPerWarp; ++i) {
    const int p = warp * kPerWarp + i;
    if (p >= pairs) break;
    T* o = out + ((int64_t)(tile.x + p / nh) * num_heads + kvh * group + h0 + p % nh) * hd;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      if (d < hd) o[d] = from_float<T>(acc[i][e] / l[i]);
    }
  }
}

template <class T, int E>
cudaError_t launch(const void* q, void* out, const StepMeta& meta, const int2* tiles, int num_tiles, int num_heads,
                   int sliding_window, const KvView& c, cudaStream_t stream) {
  const int group = num_heads / c.kv_heads, heads = std::min(group, 8);
  const size_t smem = (size_t)(kTileKeys * (c.head_dim + 1) + kTileKeys * c.head_dim + kLanes * c.head_dim) * 4;
  static bool granted = false;  // per instantiation; hd 256 needs more than the default 48 KiB
  if (!granted) {
    const cudaError_t e = cudaFuncSetAttribute(prefill_attention_kernel<T, E>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    if (e != cudaSuccess) return e;
    granted = true;
  }
  prefill_attention_kernel<T, E><<<dim3(num_tiles, c.kv_heads, (group + heads - 1) / heads), kWarps * 32, smem,
                                   stream>>>(static_cast<const T*>(q), static_cast<T*>(out), meta, tiles, num_heads,
                                             sliding_window, c, heads);
  return cudaGetLastError();
}

template <class T>
cudaError_t by_head_dim(const void* q, void* out, const StepMeta& meta, const int2* tiles, int num_tiles,
                        int num_heads, int sliding_window, const KvView& c, cudaStream_t stream) {
  const int e = (c.head_dim + 31) / 32;
  if (e <= 1) return launch<T, 1>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  if (e <= 2) return launch<T, 2>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  if (e <= 4) return launch<T, 4>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  if (e <= 8) return launch<T, 8>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

int prefill_tile_rows(int num_heads, int kv_heads) { return kLanes / std::min(num_heads / kv_heads, 8); }

cudaError_t prefill_attention(ActType act, const void* q, void* out, const StepMeta& meta, const int2* tiles,
                              int num_tiles, int num_heads, int sliding_window, const KvView& cache,
                              cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  return act == ActType::F16
             ? by_head_dim<__half>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream)
             : by_head_dim<__nv_bfloat16>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream);
}

}  // namespace cuda
}  // namespace vlm
