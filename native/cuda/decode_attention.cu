// Decode attention, vectorised: one query row per request over its paged,
// possibly quantized KV cache, matching cpu/attention.cpp.
//
// Work split: a block takes one row, one KV head and one slice of the keys
// (split-KV, attention_splits.cuh: the plan fixes the number of slices, each
// row's own context is cut into that many equal ones) and all query heads of
// that KV group, so each K/V row is read once. A key row is spread over head_dim / 8 lanes, each
// loading its 8 elements with one vector load (16 bytes fp16, 8 int8, 4 int4),
// so a warp reads several keys at once and a dot product needs only a few
// shuffles among the lanes of one key. Each key slot (the lanes of one key in
// a round) keeps its own online softmax over the keys it reads, with K and V
// rows of several rounds loaded together; the slots meet in shared memory at
// the end. With several slices, the last block of a (row, KV head) to finish
// merges the slices (a counter per pair, decode_attention_merge.cuh), so no
// second kernel is launched. The int8, int4 and fp16 caches with fp16 activations
// and 128-dim heads take the tensor-core form instead (decode_attention_mma.cu;
// VLM_DECODE_ATTENTION_MMA*=0 keep this kernel).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "cuda/attention_splits.cuh"
#include "cuda/decode_attention_merge.cuh"
#include "cuda/decode_attention_mma.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/decoder_kernels.h"
#include "cuda/device_math.cuh"
#include "cuda/env_int.h"
#include "cuda/kv_rows.cuh"
#include "vlmcore.h"

namespace vlm {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;      // elements of a row per lane
constexpr int kMaxGroup = 8;

template <class T>
__device__ __forceinline__ void load_q8(const T* p, float scale, float (&x)[kVec]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same<T, __half>::value) halves_to_float(w[i], x[2 * i], x[2 * i + 1]);
    else bhalves_to_float(w[i], x[2 * i], x[2 * i + 1]);
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) x[i] *= scale;
}

// grid (rows, kv_heads, splits), kThreads threads.
template <class T, int CT, int HD, int G>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(const T* __restrict__ q, T* __restrict__ out,
                                                                     float* __restrict__ partial,
                                                                     int* __restrict__ arrivals, StepMeta meta,
                                                                     int num_heads, int sliding_window, KvView c,
                                                                     Split sp, bool release_merge) {
  constexpr int L = HD / kVec;       // lanes per key row
  constexpr int KPW = 32 / L;        // keys a warp reads per round
  constexpr int KPB = KPW * kWarps;  // key slots of the block
  constexpr int U = G <= 2 ? 4 : (G <= 4 ? 2 : 1);  // rounds an iteration computes (the next U load meanwhile)
  __shared__ float s_m[KPB][G], s_l[KPB][G];
  __shared__ float s_acc[KPB][G][HD];

  // The step's metadata (positions, block tables) was uploaded before its first kernel: it is read
  // before waiting for the kernel that writes q and this step's cache rows.
  const int r = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int key_slot = warp * KPW + lane / L;  // which key of a round this thread reads
  const int e0 = (lane % L) * kVec;            // which 8 elements of it
  const int pos = meta.positions[r];
  const int lo = sliding_window > 0 ? max(0, pos - sliding_window + 1) : 0;
  // The row's own keys in equal slices (rows of one step have different contexts; the plan
  // only fixes how many slices).
  const int chunk = (pos - lo + sp.splits) / sp.splits;
  const int first = lo + split * chunk, last = min(pos, first + chunk - 1);
  const int32_t* table = meta.block_tables + meta.table_offset[meta.row_segment[r]];
  // Block-table entries of a round's keys, fetched a round ahead: a round then waits on one
  // load (its K and V rows), not on two in a chain.
  const int shift = block_shift(c);
  int32_t blk[U];
  auto fetch_blocks = [&](int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) blk[u] = base <= last ? table[min(base + u * KPB + lane / L, last) >> shift] : 0;
  };
  fetch_blocks(first + warp * KPW);
  pdl_wait();  // q, the cache rows of this step and the counters come from earlier kernels
  pdl_allow_next();

  float qf[G][kVec], acc[G][kVec], m[G], l[G];
  const float scale = rsqrtf((float)HD);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    load_q8(q + ((int64_t)r * num_heads + kvh * G + g) * HD + e0, scale, qf[g]);
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[g][i] = 0.f;
  }

  // Every lane of a warp runs the same rounds (the shuffles need all 32); a key slot
  // keeps its own online softmax over the keys it reads. The K and V rows of the next U rounds
  // are requested (as loaded, unconverted) before the current ones are computed with, so two
  // iterations' loads are in flight at once.
  RawRow8<CT> kr[U], vr[U];
  auto load_rounds = [&](int base, RawRow8<CT> (&k)[U], RawRow8<CT> (&v)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t row = block_row(c, blk[u], min(base + u * KPB + lane / L, last), kvh);
      k[u] = load_raw8<CT>(c, c.k, c.k_sz, row, e0);
      v[u] = load_raw8<CT>(c, c.v, c.v_sz, row, e0);
    }
  };
  const int start = first + warp * KPW;
  if (start <= last) load_rounds(start, kr, vr);
  fetch_blocks(start + KPB * U);
  for (int base = start; base <= last; base += KPB * U) {
    RawRow8<CT> kn[U], vn[U];
    const int next = base + KPB * U;  // the same for every lane of the warp
    if (next <= last) load_rounds(next, kn, vn);
    fetch_blocks(next + KPB * U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool valid = base + u * KPB + lane / L <= last;
      float kx[kVec], vx[kVec];
      decode_raw8<CT>(kr[u], kx);
      decode_raw8<CT>(vr[u], vx);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) s += qf[g][e] * kx[e];
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid) {
          const float m_new = fmaxf(m[g], s);
          const float corr = __expf(m[g] - m_new), p = __expf(s - m_new);
          l[g] = l[g] * corr + p;
#pragma unroll
          for (int e = 0; e < kVec; ++e) acc[g][e] = acc[g][e] * corr + p * vx[e];
          m[g] = m_new;
        }
      }
    }
    if (next <= last) {
#pragma unroll
      for (int u = 0; u < U; ++u) kr[u] = kn[u], vr[u] = vn[u];
    }
  }

  // The key slots meet: rescale each to the block's maximum and add.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane % L == 0) s_m[key_slot][g] = m[g], s_l[key_slot][g] = l[g];
#pragma unroll
    for (int e = 0; e < kVec; ++e) s_acc[key_slot][g][e0 + e] = acc[g][e];
  }
  // 8 slices ahead: 16 spill in the int8 kernels of one head a group (ptxas, sm_90a)
  merge_decode_slots<T, HD, G, KPB, kThreads, 8>(s_m, s_l, s_acc, out, partial, arrivals, r, kvh, split, num_heads,
                                                 c.kv_heads, sp, release_merge);
}

template <class T, int CT, int HD, int G>
cudaError_t launch(const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                   int num_heads, int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  return launch_dependent(decode_attention_kernel<T, CT, HD, G>, dim3(rows, c.kv_heads, sp.splits), dim3(kThreads), 0,
                          stream, static_cast<const T*>(q), static_cast<T*>(out), partial, arrivals, meta, num_heads,
                          sliding_window, c, sp, release_merge_enabled());
}

template <class T, int CT, int HD>
cudaError_t by_group(int group, const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                     int num_heads, int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  switch (group) {
    case 1: return launch<T, CT, HD, 1>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 2: return launch<T, CT, HD, 2>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 4: return launch<T, CT, HD, 4>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 8: return launch<T, CT, HD, 8>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T, int CT>
cudaError_t by_head_dim(const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                        int num_heads,
                        int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  const int group = num_heads / c.kv_heads;
  switch (c.head_dim) {
    case 32: return by_group<T, CT, 32>(group, q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 64: return by_group<T, CT, 64>(group, q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 128: return by_group<T, CT, 128>(group, q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case 256: return by_group<T, CT, 256>(group, q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t by_cache(const void* q, void* out, float* partial, int* arrivals, const StepMeta& meta, int rows,
                     int num_heads,
                     int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  switch (c.dtype) {
    case VLM_DTYPE_F16: return by_head_dim<T, kF16>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case VLM_DTYPE_BF16: return by_head_dim<T, kBF16>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case VLM_DTYPE_I8: return by_head_dim<T, kI8>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
    case VLM_DTYPE_I4: return by_head_dim<T, kI4>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, c, sp, stream);
  }
  return cudaErrorInvalidValue;
}

// Keys of the context bucket per slice of the tensor-core kernel: 64 (a tile for each warp where the
// context fills its bucket), or VLM_ATTENTION_MIN_KEYS_PER_SPLIT (at least kMinKeysPerSplit: the
// workspace is sized for that).
// Batch 1 on the H200 (2026-12-04, one run each): 2B decode 950 / 946 / 904 tok/s at 64 / 128 / 256;
// the serving benchmark at concurrency 1 (context bucket 512) 804.8 out tok/s at 64, 782.2 at 128.
int mma_min_keys_per_split() {
  static const int v = [] {
    const char* e = std::getenv("VLM_ATTENTION_MIN_KEYS_PER_SPLIT");
    const int x = e ? std::atoi(e) : 0;
    return x > 0 ? std::max(x, kMinKeysPerSplit) : 64;
  }();
  return v;
}

// VLM_ATTENTION_ONE_WAVE=1 (see decode_attention()): off by default until measured on a GPU.
bool one_wave_of_slices() {
  static const bool on = env_int("VLM_ATTENTION_ONE_WAVE", 0) != 0;
  return on;
}

}  // namespace

bool decode_attention_supports(int num_heads, const KvView& c) {
  const int group = c.kv_heads > 0 ? num_heads / c.kv_heads : 0;
  const bool dims = c.head_dim == 32 || c.head_dim == 64 || c.head_dim == 128 || c.head_dim == 256;
  const bool dtype = c.dtype == VLM_DTYPE_F16 || c.dtype == VLM_DTYPE_BF16 || c.dtype == VLM_DTYPE_I8 ||
                     c.dtype == VLM_DTYPE_I4;
  return dims && dtype && (group == 1 || group == 2 || group == 4 || group == kMaxGroup) &&
         group * c.kv_heads == num_heads;
}

bool decode_attention_writes_kv(ActType act, int num_heads, const KvView& cache) {
  static const bool enabled = [] {
    const char* e = std::getenv("VLM_ROPE_IN_ATTENTION");
    return !(e && e[0] == '0');
  }();
  return enabled && decode_attention_supports(num_heads, cache) && decode_attention_mma_applies(act, num_heads, cache);
}

int decode_attention_form(ActType act, int num_heads, const KvView& cache) {
  if (!decode_attention_supports(num_heads, cache)) return 0;
  return decode_attention_mma_applies(act, num_heads, cache) ? 2 : 1;
}

cudaError_t decode_attention(ActType act, const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                             int sliding_window, int max_context, int num_sms, const KvView& cache, void* workspace,
                             int* arrivals, cudaStream_t stream, const RopeSource* rope) {
  if (rows == 0) return cudaSuccess;
  if (!decode_attention_supports(num_heads, cache)) return cudaErrorInvalidValue;
  if (rope && !decode_attention_writes_kv(act, num_heads, cache)) return cudaErrorInvalidValue;
  const Split sp = plan_split(rows, cache.kv_heads, max_context, num_sms, 64);
  float* partial = static_cast<float*>(workspace);
  if (sp.splits > 1 && (partial == nullptr || arrivals == nullptr)) return cudaErrorInvalidValue;
  if (decode_attention_mma_applies(act, num_heads, cache)) {
    // Its blocks are few per SM (registers) and each spends much of its time starting (a chain of
    // loads) and merging: split only until the grid fills the GPU's resident blocks once. At batch 64
    // on the H200 one slice per row (2 blocks per SM) gave 21,010 decode tok/s, 3 slices (8 per SM)
    // 18,414 (2026-12-04, bench/decode.py). And a slice has keys for its warps: at batch 1 the
    // default plan's slices (32 keys of the context bucket, ~16 of a context half its bucket) kept
    // 3 of 4 warps idle and made 32 slices to merge.
    // At most the default plan's blocks per SM, so the workspace holds its slices.
    const int resident = decode_attention_mma_blocks_per_sm(num_heads / cache.kv_heads, cache);
    const int per_sm = split_blocks_per_sm_override() ? split_blocks_per_sm_override()
                                                      : std::min(resident, split_blocks_per_sm());
    // The plan rounds the slices up, so a grid may pass the resident blocks by a few: the 7B at batch 1 (32 KV
    // heads, two blocks an SM of 132, a context bucket of 1,024) takes 9 slices, 288 blocks for 264 places, and
    // its last 24 blocks start when others end. VLM_ATTENTION_ONE_WAVE=1 rounds down instead (8 slices, 256
    // blocks); fewer slices, so the workspace holds them.
    const Split msp = plan_split_for(rows, cache.kv_heads, max_context, num_sms, 64, per_sm, mma_min_keys_per_split(),
                                     one_wave_of_slices());
    return decode_attention_mma(q, out, meta, rows, num_heads, sliding_window, cache, msp.splits, partial, arrivals,
                                rope, stream);
  }
  return act == ActType::F16
             ? by_cache<__half>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, cache, sp, stream)
             : by_cache<__nv_bfloat16>(q, out, partial, arrivals, meta, rows, num_heads, sliding_window, cache, sp, stream);
}

}  // namespace cuda
}  // namespace vlm
