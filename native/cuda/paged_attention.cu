// Causal paged attention over the (possibly quantized) KV cache, one query row
// per request (decode steps), matching cpu/attention.cpp: softmax(q·k / sqrt(d)) · v
// over positions [max(0, pos - window + 1), pos] of the row's request.
//
// Work split: a block takes one row, one KV head and one slice of the keys;
// the query heads of that KV group are handled together (up to 8 per pass) so
// each K/V row is read and dequantized once for all of them. Within a block,
// four warps stride over the slice's keys with an online softmax each and
// merge through shared memory. Decode steps have few rows, so the keys are
// split over several blocks (split-KV, attention_splits.cuh) to fill the GPU.
// This is the general kernel (any head_dim up to 256, fp32 caches, large query
// groups); the common shapes take the vectorised one in decode_attention.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/attention_splits.cuh"
#include "cuda/decoder_kernels.h"
#include "cuda/device_math.cuh"
#include "cuda/kv_rows.cuh"

namespace vlm {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kKeys = 4;             // keys a warp loads per iteration
template <class T, int E, int GT>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const T* q, T* out, float* partial, StepMeta meta, int num_heads, int sliding_window,
                     KvView c, Split sp) {
  __shared__ float s_m[kWarps][GT], s_l[kWarps][GT];
  __shared__ float s_acc[kWarps][GT][32 * E];
  const int r = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int hd = c.head_dim, group = num_heads / c.kv_heads;
  const int pos = meta.positions[r];
  const int lo = sliding_window > 0 ? max(0, pos - sliding_window + 1) : 0;
  const int first = lo + split * sp.chunk, last = min(pos, first + sp.chunk - 1);
  const int32_t* table = meta.block_tables + meta.table_offset[meta.row_segment[r]];
  const float scale = rsqrtf((float)hd);

  for (int h0 = 0; h0 < group; h0 += GT) {
    const int nh = min(GT, group - h0);
    float qr[GT][E], m[GT], l[GT], acc[GT][E];
#pragma unroll
    for (int i = 0; i < GT; ++i) {
      m[i] = -INFINITY;
      l[i] = 0.f;
      const T* qh = q + ((int64_t)r * num_heads + kvh * group + h0 + min(i, nh - 1)) * hd;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        qr[i][e] = d < hd ? to_float(qh[d]) * scale : 0.f;
        acc[i][e] = 0.f;
      }
    }
    // kKeys keys per warp and iteration: their table, K and V loads are all in flight
    // together (one key at a time leaves each warp waiting on a chain of loads).
    for (int j0 = first + warp * kKeys; j0 <= last; j0 += kWarps * kKeys) {
      float kf[kKeys][E], vf[kKeys][E];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        const int j = min(j0 + u, last);
        const int64_t row = key_row(c, table, j, kvh);
        load_kv_row<E>(c, c.k, c.k_sz, row, lane, kf[u]);
        load_kv_row<E>(c, c.v, c.v_sz, row, lane, vf[u]);
      }
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        if (j0 + u > last) break;
#pragma unroll
        for (int i = 0; i < GT; ++i) {
          if (i < nh) {
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < E; ++e) s += qr[i][e] * kf[u][e];
            s = warp_sum(s);
            const float m_new = fmaxf(m[i], s);
            const float corr = __expf(m[i] - m_new), p = __expf(s - m_new);
            l[i] = l[i] * corr + p;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[i][e] = acc[i][e] * corr + p * vf[u][e];
            m[i] = m_new;
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < GT; ++i) {
      if (lane == 0) s_m[warp][i] = m[i], s_l[warp][i] = l[i];
#pragma unroll
      for (int e = 0; e < E; ++e) s_acc[warp][i][lane + 32 * e] = acc[i][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nh * hd; idx += blockDim.x) {
      const int i = idx / hd, d = idx % hd;
      float mx = -INFINITY;
      for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][i]);
      float sum = 0.f, o = 0.f;
      if (mx != -INFINITY)
        for (int w = 0; w < kWarps; ++w) {
          const float f = s_m[w][i] == -INFINITY ? 0.f : __expf(s_m[w][i] - mx);
          sum += s_l[w][i] * f;
          o += s_acc[w][i][d] * f;
        }
      const int head = kvh * group + h0 + i;
      if (sp.splits == 1) {
        out[((int64_t)r * num_heads + head) * hd + d] = from_float<T>(o / sum);
      } else {
        float* p = partial + (((int64_t)r * num_heads + head) * sp.splits + split) * (hd + 2);
        if (d == 0) p[0] = mx, p[1] = sum;
        p[2 + d] = o;
      }
    }
    __syncthreads();
  }
}

template <class T, int E, int GT>
cudaError_t launch(const void* q, void* out, float* partial, const StepMeta& meta, int rows, int num_heads,
                   int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  attention_kernel<T, E, GT><<<dim3(rows, c.kv_heads, sp.splits), kWarps * 32, 0, stream>>>(
      static_cast<const T*>(q), static_cast<T*>(out), partial, meta, num_heads, sliding_window, c, sp);
  if (sp.splits > 1)
    merge_splits_kernel<T><<<dim3(rows, num_heads), 128, 0, stream>>>(partial, static_cast<T*>(out), num_heads,
                                                                       c.head_dim, sp.splits);
  return cudaGetLastError();
}

template <class T, int E>
cudaError_t by_group(int group, const void* q, void* out, float* partial, const StepMeta& meta, int rows,
                     int num_heads, int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  if (group <= 1) return launch<T, E, 1>(q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  if (group <= 2) return launch<T, E, 2>(q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  if (group <= 4) return launch<T, E, 4>(q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  return launch<T, E, 8>(q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
}

template <class T>
cudaError_t by_head_dim(const void* q, void* out, float* partial, const StepMeta& meta, int rows, int num_heads,
                        int sliding_window, const KvView& c, Split sp, cudaStream_t stream) {
  const int group = num_heads / c.kv_heads;
  const int e = (c.head_dim + 31) / 32;
  if (e <= 1) return by_group<T, 1>(group, q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  if (e <= 2) return by_group<T, 2>(group, q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  if (e <= 4) return by_group<T, 4>(group, q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  if (e <= 8) return by_group<T, 8>(group, q, out, partial, meta, rows, num_heads, sliding_window, c, sp, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

int64_t paged_attention_workspace_bytes(int rows, int num_heads, int head_dim, int kv_heads, int max_context,
                                        int num_sms) {
  const Split sp = plan_split(rows, kv_heads, max_context, num_sms, 1);
  return sp.splits == 1 ? 0 : split_partial_floats(rows, num_heads, head_dim, sp) * 4;
}

cudaError_t paged_attention(ActType act, const void* q, void* out, const StepMeta& meta, int rows, int num_heads,
                            int sliding_window, int max_context, int num_sms, const KvView& cache, void* workspace,
                            int* arrivals, cudaStream_t stream, const RopeSource* rope) {
  if (rows == 0) return cudaSuccess;
  if (decode_attention_supports(num_heads, cache))
    return decode_attention(act, q, out, meta, rows, num_heads, sliding_window, max_context, num_sms, cache,
                            workspace, arrivals, stream, rope);
  if (rope) return cudaErrorInvalidValue;  // only the tensor-core decode attention writes K/V itself
  const Split sp = plan_split(rows, cache.kv_heads, max_context, num_sms, kWarps * kKeys);
  float* partial = static_cast<float*>(workspace);
  if (sp.splits > 1 && partial == nullptr) return cudaErrorInvalidValue;
  return act == ActType::F16
             ? by_head_dim<__half>(q, out, partial, meta, rows, num_heads, sliding_window, cache, sp, stream)
             : by_head_dim<__nv_bfloat16>(q, out, partial, meta, rows, num_heads, sliding_window, cache, sp, stream);
}

}  // namespace cuda
}  // namespace vlm
