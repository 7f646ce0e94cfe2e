// Causal paged attention for prefill steps, tiled so that the rows of one
// request share every K/V read: a block takes up to 32 (row, query head)
// pairs of one request and one KV head, walks the keys those rows can see in
// tiles of 32, dequantizes each tile once into shared memory and lets every
// pair consume it (flash-attention's online softmax, fp32). The decode
// kernel (paged_attention.cu) instead gives every row its own pass over its
// keys, which for a 2048-row prefill step re-reads each key thousands of times.
// Same result as cpu/attention.cpp up to summation order.
//
// The tensor-core form (sm_80 and later; head_dim 64 or 128; fp16, bf16, int8
// or int4 caches) takes 64 pairs a block, 16 a warp (the mma's M), copies each
// 64-key tile of K and V once into shared memory in the activation type, and
// runs S = Q Kᵀ and O += P V as mma.sync m16n8k16 with fp32 accumulation, the
// online softmax on the accumulator fragments (flash-attention 2's
// arrangement). A quantized tile goes in as its codes, which fp16 and bf16 hold
// exactly, and each key's scale and zero are applied in fp32 around the
// products: s = scale_k (q · codes_k) + zero_k Σq, and the value rows' scale
// folds into P, their zero into a per-row sum. Rounded to the activation type:
// P, and an fp16/bf16 cache of the other type. VLM_PREFILL_ATTENTION=simt
// sends every call to the CUDA-core form.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/decoder_kernels.h"
#include "cuda/device_math.cuh"
#include "cuda/kv_rows.cuh"
#include "cuda/w4a16_fragments.cuh"

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

// ---- The tensor-core form ----

constexpr int kTcWarps = 4;
constexpr int kTcPairs = 16 * kTcWarps;  // (row, query head) pairs of a block: 16 a warp, the mma's M
constexpr int kTcKeys = 64;              // keys of a shared-memory tile
constexpr int kTcPad = 8;                // halves after each shared row: ldmatrix's 8 rows hit distinct banks

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  T v[2] = {from_float<T>(lo), from_float<T>(hi)};
  return *reinterpret_cast<const uint32_t*>(v);
}

// grid (tiles, kv_heads, head chunks), kTcWarps * 32 threads; dynamic shared memory: the Q, K and V tiles.
template <class T, int CT, int HD>
__global__ void __launch_bounds__(kTcWarps * 32)
    prefill_attention_tc_kernel(const T* __restrict__ q, T* __restrict__ out, StepMeta meta,
                                const int2* __restrict__ tiles, int num_heads, int sliding_window, KvView c,
                                int heads_per_block) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using A = w4a16::Act<T>;
  constexpr int LD = HD + kTcPad;
  constexpr int NT = kTcKeys / 8;  // n8 tiles of scores
  constexpr int DT = HD / 8;       // n8 tiles of the output
  constexpr bool kQuant = CT == kI8 || CT == kI4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);  // [kTcPairs][LD]
  T* ks = qs + kTcPairs * LD;              // [kTcKeys][LD]: values, or codes
  T* vs = ks + kTcKeys * LD;               // [kTcKeys][LD]
  __shared__ float k_scale[kTcKeys], k_zero[kTcKeys], v_scale[kTcKeys], v_zero[kTcKeys];
  __shared__ float q_sum[kTcPairs];  // Σ_d q of each pair, for the keys' zeros
  const int2 tile = tiles[blockIdx.x];
  const int kvh = blockIdx.y, group = num_heads / c.kv_heads;
  const int h0 = blockIdx.z * heads_per_block;
  const int nh = min(heads_per_block, group - h0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r8 = lane % 8, mat = lane / 8;  // ldmatrix: the row this lane addresses, of which matrix
  const int32_t* table = meta.block_tables + meta.table_offset[meta.row_segment[tile.x]];
  const int first_pos = meta.positions[tile.x], last_pos = meta.positions[tile.x + tile.y - 1];
  const int lo = sliding_window > 0 ? max(0, first_pos - sliding_window + 1) : 0;
  const int pairs = tile.y * nh;  // pair p: row tile.x + p / nh, head h0 + p % nh
  auto q_offset = [&](int p) { return ((int64_t)(tile.x + p / nh) * num_heads + kvh * group + h0 + p % nh) * HD; };

  for (int i = threadIdx.x; i < kTcPairs * HD / 8; i += blockDim.x) {
    const int p = i / (HD / 8), d = (i % (HD / 8)) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (p < pairs) v = *reinterpret_cast<const uint4*>(q + q_offset(p) + d);
    *reinterpret_cast<uint4*>(qs + p * LD + d) = v;
  }
  // The two pairs whose scores and outputs this lane holds: rows g and g + 8 of the warp's 16.
  int pos[2], key_lo[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int p = warp * 16 + g + 8 * i;
    pos[i] = p < pairs ? meta.positions[tile.x + p / nh] : -1;  // -1: a padding pair sees no key
    key_lo[i] = sliding_window > 0 ? max(0, pos[i] - sliding_window + 1) : 0;
  }
  const int warp_last = __reduce_max_sync(0xffffffffu, max(pos[0], pos[1]));
  __syncthreads();
  if constexpr (kQuant) {
    for (int p = threadIdx.x; p < kTcPairs; p += blockDim.x) {
      float sum = 0.f;
      for (int d = 0; d < HD; ++d) sum += to_float(qs[p * LD + d]);
      q_sum[p] = sum;
    }
  }
  uint32_t qa[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
    w4a16::ldmatrix_x4(qa[kk], qs + (warp * 16 + (mat % 2) * 8 + r8) * LD + kk * 16 + (mat / 2) * 8);

  const float scale = rsqrtf((float)HD);
  // o: the warp's 16 x HD outputs (unnormalised, before the value zeros); zsum: Σ p zero_v per row.
  float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, zsum[2] = {0.f, 0.f};
#pragma unroll
  for (int dn = 0; dn < DT; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dn][e] = 0.f;

  for (int k0 = lo; k0 <= last_pos; k0 += kTcKeys) {
    __syncthreads();  // every warp is done with the previous tile
    for (int i = threadIdx.x; i < kTcKeys * HD / 8; i += blockDim.x) {
      const int u = i / (HD / 8), d = (i % (HD / 8)) * 8;
      const int64_t row = key_row(c, table, min(k0 + u, last_pos), kvh);
      float x[8], sc, zr;
      load_codes8<CT>(c, c.k, c.k_sz, row, d, x, sc, zr);
      *reinterpret_cast<uint4*>(ks + u * LD + d) =
          make_uint4(pack2<T>(x[0], x[1]), pack2<T>(x[2], x[3]), pack2<T>(x[4], x[5]), pack2<T>(x[6], x[7]));
      if (d == 0) k_scale[u] = sc, k_zero[u] = zr;
      load_codes8<CT>(c, c.v, c.v_sz, row, d, x, sc, zr);
      *reinterpret_cast<uint4*>(vs + u * LD + d) =
          make_uint4(pack2<T>(x[0], x[1]), pack2<T>(x[2], x[3]), pack2<T>(x[4], x[5]), pack2<T>(x[6], x[7]));
      if (d == 0) v_scale[u] = sc, v_zero[u] = zr;
    }
    __syncthreads();
    if (warp_last < k0) continue;  // every pair of this warp is before the tile (warp-uniform)

    // S = Q Kᵀ for the warp's 16 pairs and the tile's 64 keys.
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
      for (int n = 0; n < NT; n += 2) {
        uint32_t b[4];  // key tiles n and n + 1, head dims 16 kk.. (two 8x8 halves each)
        w4a16::ldmatrix_x4(b, ks + ((n + mat / 2) * 8 + r8) * LD + kk * 16 + (mat % 2) * 8);
        A::mma(s[n], qa[kk], b[0], b[1]);
        A::mma(s[n + 1], qa[kk], b[2], b[3]);
      }

    // Causal (and window) mask, then the online softmax: a row's 64 scores are spread over the 4
    // lanes of a quad, 16 each.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2, u = n * 8 + 2 * t + (e & 1), key = k0 + u;
        float dot = s[n][e];
        if constexpr (kQuant) dot = dot * k_scale[u] + k_zero[u] * q_sum[warp * 16 + g + 8 * i];
        const float v = key <= pos[i] && key >= key_lo[i] ? dot * scale : -INFINITY;
        s[n][e] = v;
        mx[i] = fmaxf(mx[i], v);
      }
    float corr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      const float m_new = fmaxf(m[i], mx[i]);
      corr[i] = m_new == -INFINITY ? 1.f : __expf(m[i] - m_new);  // 0 while nothing was seen
      m[i] = m_new;
      l[i] *= corr[i];
      zsum[i] *= corr[i];
    }
#pragma unroll
    for (int dn = 0; dn < DT; ++dn) {
      o[dn][0] *= corr[0], o[dn][1] *= corr[0];
      o[dn][2] *= corr[1], o[dn][3] *= corr[1];
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2, u = n * 8 + 2 * t + (e & 1);
        const float p = s[n][e] == -INFINITY ? 0.f : __expf(s[n][e] - m[i]);
        l[i] += p;  // this lane's share of the row sums; the quad adds them at the end
        if constexpr (kQuant) {
          zsum[i] += p * v_zero[u];
          s[n][e] = p * v_scale[u];  // the value row's scale, applied before P is rounded
        } else {
          s[n][e] = p;
        }
      }

    // O += P V: the score fragments of key tiles 2j and 2j + 1 are the A fragment of k16 step j.
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      const uint32_t pa[4] = {pack2<T>(s[2 * j][0], s[2 * j][1]), pack2<T>(s[2 * j][2], s[2 * j][3]),
                              pack2<T>(s[2 * j + 1][0], s[2 * j + 1][1]), pack2<T>(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int dn = 0; dn < DT; dn += 2) {
        uint32_t b[4];  // keys 16 j.. (two halves), head-dim tiles dn and dn + 1, transposed
        w4a16::ldmatrix_x4_trans(b, vs + (j * 16 + (mat % 2) * 8 + r8) * LD + (dn + mat / 2) * 8);
        A::mma(o[dn], pa, b[0], b[1]);
        A::mma(o[dn + 1], pa, b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    zsum[i] += __shfl_xor_sync(0xffffffffu, zsum[i], 1);
    zsum[i] += __shfl_xor_sync(0xffffffffu, zsum[i], 2);
    const int p = warp * 16 + g + 8 * i;
    if (p >= pairs) continue;
    const float inv = 1.f / l[i];  // > 0: a row always sees its own key
    uint32_t* orow = reinterpret_cast<uint32_t*>(out + q_offset(p));
#pragma unroll
    for (int dn = 0; dn < DT; ++dn)
      orow[dn * 4 + t] = pack2<T>((o[dn][2 * i] + zsum[i]) * inv, (o[dn][2 * i + 1] + zsum[i]) * inv);
  }
#endif
}

// Whether the tensor-core form takes this cache (and the GPU has mma.sync for the activation types).
bool tc_applies(const KvView& c) {
  static const bool enabled = [] {
    const char* v = std::getenv("VLM_PREFILL_ATTENTION");
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                   cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 8 && !(v && std::strcmp(v, "simt") == 0);
  }();
  const bool dtype = c.dtype == VLM_DTYPE_F16 || c.dtype == VLM_DTYPE_BF16 || c.dtype == VLM_DTYPE_I8 ||
                     c.dtype == VLM_DTYPE_I4;
  return enabled && dtype && (c.head_dim == 64 || c.head_dim == 128);
}

template <class T, int CT, int HD>
cudaError_t launch_tc(const void* q, void* out, const StepMeta& meta, const int2* tiles, int num_tiles, int num_heads,
                      int sliding_window, const KvView& c, cudaStream_t stream) {
  const int group = num_heads / c.kv_heads, heads = std::min(group, 8);
  constexpr size_t smem = (size_t)(kTcPairs + 2 * kTcKeys) * (HD + kTcPad) * sizeof(T);
  static const cudaError_t granted = cudaFuncSetAttribute(prefill_attention_tc_kernel<T, CT, HD>,
                                                          cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (granted != cudaSuccess) return granted;
  prefill_attention_tc_kernel<T, CT, HD><<<dim3(num_tiles, c.kv_heads, (group + heads - 1) / heads), kTcWarps * 32,
                                           smem, stream>>>(static_cast<const T*>(q), static_cast<T*>(out), meta,
                                                           tiles, num_heads, sliding_window, c, heads);
  return cudaGetLastError();
}

template <class T, int HD>
cudaError_t tc_by_cache(const void* q, void* out, const StepMeta& meta, const int2* tiles, int num_tiles,
                        int num_heads, int sliding_window, const KvView& c, cudaStream_t stream) {
  switch (c.dtype) {
    case VLM_DTYPE_F16: return launch_tc<T, kF16, HD>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
    case VLM_DTYPE_BF16: return launch_tc<T, kBF16, HD>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
    case VLM_DTYPE_I8: return launch_tc<T, kI8, HD>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
    case VLM_DTYPE_I4: return launch_tc<T, kI4, HD>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t tc_by_head_dim(const void* q, void* out, const StepMeta& meta, const int2* tiles, int num_tiles,
                           int num_heads, int sliding_window, const KvView& c, cudaStream_t stream) {
  if (c.head_dim == 64) return tc_by_cache<T, 64>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  if (c.head_dim == 128) return tc_by_cache<T, 128>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, c, stream);
  return cudaErrorInvalidValue;
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

int prefill_tile_rows(int num_heads, const KvView& cache) {
  return (tc_applies(cache) ? kTcPairs : kLanes) / std::min(num_heads / cache.kv_heads, 8);
}

cudaError_t prefill_attention(ActType act, const void* q, void* out, const StepMeta& meta, const int2* tiles,
                              int num_tiles, int num_heads, int sliding_window, const KvView& cache,
                              cudaStream_t stream) {
  if (num_tiles == 0) return cudaSuccess;
  if (tc_applies(cache))
    return act == ActType::F16
               ? tc_by_head_dim<__half>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream)
               : tc_by_head_dim<__nv_bfloat16>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream);
  return act == ActType::F16
             ? by_head_dim<__half>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream)
             : by_head_dim<__nv_bfloat16>(q, out, meta, tiles, num_tiles, num_heads, sliding_window, cache, stream);
}

}  // namespace cuda
}  // namespace vlm
