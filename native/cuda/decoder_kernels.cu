// The decoder's elementwise, normalisation and RoPE/KV-write kernels (see decoder_kernels.h). Arithmetic follows the CPU backend
// (engine/model_runner.cpp, engine/kv_cache.cpp, cpu/attention.cpp) in fp32,
// so the two backends differ only by the half-precision activations.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/decoder_kernels.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/device_math.cuh"
#include "cuda/kv_rows.cuh"
#include "cuda/rms_norm_row.cuh"
#include "cuda/rope_kv_write.cuh"
#include "vlmcore.h"

namespace vlm {
namespace cuda {
namespace {

constexpr int kNormThreads = 256;

template <class T>
__global__ void embed_kernel(const T* table, const int32_t* tokens, const int32_t* earlier, int hidden, float* h) {
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  const int r = blockIdx.x;
  int32_t token = tokens[r];
  if (token < 0) token = earlier[-token - 1];  // the token the previous step chose for that logit row
  const T* src = table + (int64_t)token * hidden;
  float* dst = h + (int64_t)r * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_float(src[i]);
}

__global__ void scatter_kernel(const float* src, const int32_t* rows, int hidden, float* h) {
  const int i = blockIdx.x;
  const float* s = src + (int64_t)i * hidden;
  float* d = h + (int64_t)rows[i] * hidden;
  for (int k = threadIdx.x; k < hidden; k += blockDim.x) d[k] = s[k];
}

template <class T>
__global__ void add_rms_norm_kernel(float* h, const T* delta, const float* weight, const int32_t* select,
                                    int hidden, float eps, T* out) {
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  __shared__ float partial[kNormThreads / 32];
  const int r = blockIdx.x;
  const int64_t i = select ? select[r] : r;
  float* hr = h + i * hidden;
  float ss = 0.f;
  for (int k = threadIdx.x; k < hidden; k += blockDim.x) {
    float x = hr[k];
    if (delta) {
      x += to_float(delta[i * hidden + k]);
      hr[k] = x;
    }
    ss += x * x;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(partial[0] / hidden + eps);
  T* o = out + (int64_t)r * hidden;
  for (int k = threadIdx.x; k < hidden; k += blockDim.x) o[k] = from_float<T>(weight[k] * (hr[k] * inv));
}

// The same with the row in registers: C chunks of 4 elements per thread (hidden <= 4 * C *
// kNormThreads), 16-byte loads of h, one pass over memory for the add and one for the output.
// Its arithmetic is rms_norm_row.cuh's, which the w4a16 decode kernel's fused norm shares.
template <class T, int C>
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_vec_kernel(float* h, const T* delta, const float* weight,
                                                                         const int32_t* select, int hidden, float eps,
                                                                         T* out) {
  static_assert(kNormThreads == kRmsNormThreads, "the shared norm arithmetic is defined for 256 threads");
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  __shared__ float partial[kNormThreads / 32];
  const int r = blockIdx.x;
  const int64_t i = select ? select[r] : r;
  float* hr = h + i * hidden;
  const T* dr = delta ? delta + i * hidden : nullptr;
  const int n4 = hidden / 4;
  float4 x[C];
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int k = threadIdx.x + c * kNormThreads;
    if (k >= n4) continue;
    x[c] = residual4(hr, dr, k);
    if (delta) reinterpret_cast<float4*>(hr)[k] = x[c];
    ss += sum_sq4(x[c]);
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
  const float inv = rms_inverse(total, hidden, eps);
  const float4* w4 = reinterpret_cast<const float4*>(weight);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int k = threadIdx.x + c * kNormThreads;
    if (k >= n4) continue;
    reinterpret_cast<uint2*>(out + (int64_t)r * hidden)[k] = rms_scaled4<T>(x[c], w4[k], inv);
  }
}

template <class T>
cudaError_t launch_add_rms_norm(float* h, const void* delta, const float* weight, const int32_t* select, int rows,
                                int hidden, float eps, void* out, cudaStream_t stream) {
  const T* d = static_cast<const T*>(delta);
  T* o = static_cast<T*>(out);
  const int chunks = (hidden / 4 + kNormThreads - 1) / kNormThreads;
  void (*kernel)(float*, const T*, const float*, const int32_t*, int, float, T*) = add_rms_norm_kernel<T>;
  if (hidden % 4 == 0 && chunks <= 8)
    kernel = chunks <= 1   ? add_rms_norm_vec_kernel<T, 1>
             : chunks <= 2 ? add_rms_norm_vec_kernel<T, 2>
             : chunks <= 4 ? add_rms_norm_vec_kernel<T, 4>
                           : add_rms_norm_vec_kernel<T, 8>;
  return launch_dependent(kernel, dim3(rows), dim3(kNormThreads), 0, stream, h, d, weight, select, hidden, eps, o);
}

// Element i of rows of n as (row, column): in 32 bits where every index of the launch fits (the same values; a
// 64-bit division is a ~76-instruction call, here once an element).
__device__ __forceinline__ longlong2 row_and_column(int64_t i, int n, int64_t total) {
  if (total <= 0xFFFFFFFFll) {
    const uint32_t u = (uint32_t)i, un = (uint32_t)n;
    return make_longlong2(u / un, u % un);
  }
  return make_longlong2(i / n, i % n);
}

template <class T>
__global__ void add_bias_kernel(T* y, const float* bias, int n, int64_t total) {
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = from_float<T>(to_float(y[i]) + bias[row_and_column(i, n, total).y]);
}

template <class T>
__global__ void silu_mul_kernel(const T* gate_up, T* out, int n, int64_t total) {
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const longlong2 rc = row_and_column(i, n, total);
    const int64_t r = rc.x, c = rc.y;
    const float g = to_float(gate_up[r * 2 * n + c]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(gate_up[r * 2 * n + n + c]));
  }
}

// ---- RoPE + cache write ------------------------------------------------------

constexpr int kRopeWarps = 4;

// grid: (rows, head units / kRopeWarps); each warp takes one head unit of its row:
// a q head (rotated into q_out), a k head (rotated, written) or a v head (written).
template <class T, int E>
__global__ void rope_cache_kernel(const T* qkv, T* q_out, StepMeta meta, const float* inv_freq, int num_heads,
                                  KvView c) {
  pdl_wait();  // every input below comes from earlier kernels
  pdl_allow_next();
  __shared__ float buf[kRopeWarps][32 * E];
  const int r = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int hd = c.head_dim, half = hd / 2, nkv = c.kv_heads;
  const float pos = (float)meta.positions[r];
  const int slot = meta.slots[r];
  const int u = blockIdx.y * kRopeWarps + warp;  // units: q heads, then k heads, then v heads
  if (u < num_heads + 2 * nkv) {
    const bool is_q = u < num_heads, is_k = !is_q && u < num_heads + nkv;
    const T* src = qkv + (int64_t)r * (num_heads + 2 * nkv) * hd + (int64_t)u * hd;
    float x[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      x[e] = d < hd ? to_float(src[d]) : 0.f;
      if (d < hd) buf[warp][d] = x[e];
    }
    __syncwarp();
    if (is_q || is_k) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d >= hd) continue;
        const int i = d < half ? d : d - half;
        float sn, cs;
        sincosf(pos * inv_freq[i], &sn, &cs);
        x[e] = rope_rotate(buf[warp][d], buf[warp][d < half ? d + half : d - half], cs, sn, d < half);
      }
    }
    __syncwarp();
    if (is_q) {
      T* dst = q_out + ((int64_t)r * num_heads + u) * hd;
#pragma unroll
      for (int e = 0; e < E; ++e)
        if (lane + 32 * e < hd) dst[lane + 32 * e] = from_float<T>(x[e]);
    } else {
      const int h = is_k ? u - num_heads : u - num_heads - nkv;
      const int64_t row = cache_row(c, slot, h);
      store_kv_row<E>(c, is_k ? c.k : c.v, is_k ? c.k_sz : c.v_sz, row, x, lane);
    }
  }
}

template <class T>
cudaError_t rope_dispatch(const void* qkv, void* q_out, const StepMeta& meta, const float* inv_freq, int rows,
                          int num_heads, const KvView& c, cudaStream_t stream) {
  const dim3 grid(rows, (num_heads + 2 * c.kv_heads + kRopeWarps - 1) / kRopeWarps), block(32 * kRopeWarps);
#define VLM_ROPE_CASE(E)                                                                                         \
  case E:                                                                                                        \
    return launch_dependent(rope_cache_kernel<T, E>, grid, block, 0, stream, static_cast<const T*>(qkv),      \
                            static_cast<T*>(q_out), meta, inv_freq, num_heads, c);
  switch ((c.head_dim + 31) / 32) {
    VLM_ROPE_CASE(1) VLM_ROPE_CASE(2) VLM_ROPE_CASE(3) VLM_ROPE_CASE(4)
    VLM_ROPE_CASE(5) VLM_ROPE_CASE(6) VLM_ROPE_CASE(7) VLM_ROPE_CASE(8)
    default: return cudaErrorInvalidValue;
  }
#undef VLM_ROPE_CASE
}

int grid_for(int64_t n) { return (int)((n + 255) / 256 < 65535 ? (n + 255) / 256 : 65535); }

}  // namespace

cudaError_t embed_rows(ActType act, const void* table, const int32_t* tokens, const int32_t* earlier, int rows,
                       int hidden, float* h, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (act == ActType::F16)
    return launch_dependent(embed_kernel<__half>, dim3(rows), dim3(256), 0, stream,
                            static_cast<const __half*>(table), tokens, earlier, hidden, h);
  return launch_dependent(embed_kernel<__nv_bfloat16>, dim3(rows), dim3(256), 0, stream,
                          static_cast<const __nv_bfloat16*>(table), tokens, earlier, hidden, h);
}

cudaError_t scatter_rows(const float* src, const int32_t* rows, int n, int hidden, float* h, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  scatter_kernel<<<n, 256, 0, stream>>>(src, rows, hidden, h);
  return cudaGetLastError();
}

cudaError_t add_rms_norm(ActType act, float* h, const void* delta, const float* weight, const int32_t* select,
                         int rows, int hidden, float eps, void* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return act == ActType::F16
             ? launch_add_rms_norm<__half>(h, delta, weight, select, rows, hidden, eps, out, stream)
             : launch_add_rms_norm<__nv_bfloat16>(h, delta, weight, select, rows, hidden, eps, out, stream);
}

cudaError_t add_bias(ActType act, void* y, const float* bias, int rows, int n, cudaStream_t stream) {
  const int64_t total = (int64_t)rows * n;
  if (total == 0) return cudaSuccess;
  if (act == ActType::F16)
    return launch_dependent(add_bias_kernel<__half>, dim3(grid_for(total)), dim3(256), 0, stream,
                            static_cast<__half*>(y), bias, n, total);
  return launch_dependent(add_bias_kernel<__nv_bfloat16>, dim3(grid_for(total)), dim3(256), 0, stream,
                          static_cast<__nv_bfloat16*>(y), bias, n, total);
}

cudaError_t silu_mul(ActType act, const void* gate_up, void* out, int rows, int n, cudaStream_t stream) {
  const int64_t total = (int64_t)rows * n;
  if (total == 0) return cudaSuccess;
  if (act == ActType::F16)
    return launch_dependent(silu_mul_kernel<__half>, dim3(grid_for(total)), dim3(256), 0, stream,
                            static_cast<const __half*>(gate_up), static_cast<__half*>(out), n, total);
  return launch_dependent(silu_mul_kernel<__nv_bfloat16>, dim3(grid_for(total)), dim3(256), 0, stream,
                          static_cast<const __nv_bfloat16*>(gate_up), static_cast<__nv_bfloat16*>(out), n, total);
}

cudaError_t rope_and_cache_write(ActType act, const void* qkv, void* q_out, const StepMeta& meta,
                                 const float* inv_freq, int rows, int num_heads, const KvView& cache,
                                 cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return act == ActType::F16
             ? rope_dispatch<__half>(qkv, q_out, meta, inv_freq, rows, num_heads, cache, stream)
             : rope_dispatch<__nv_bfloat16>(qkv, q_out, meta, inv_freq, rows, num_heads, cache, stream);
}

}  // namespace cuda
}  // namespace vlm
