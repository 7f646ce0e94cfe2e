// Writing this step's K/V rows into the paged cache: RoPE's rotation and the row's quantization,
// shared by the RoPE + cache-write kernel (decoder_kernels.cu) and the decode attention that does
// the same itself (decode_attention_mma.cu), so the two write the same bits.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "cuda/decoder_kernels.h"
#include "cuda/device_math.cuh"
#include "vlmcore.h"

namespace vlm {
namespace cuda {

// One element of RoPE's rotate-half form with x's partner element p (x[i + half] below half, x[i - half]
// above) and the cosine and sine of its angle: x c - p s below half, x c + p s above. Each product is
// rounded before the sum, as the CPU backend (model/rope.cpp) computes it; no fused multiply-add,
// whose single rounding would differ from kernel to kernel wherever the compiler chose to contract.
__device__ __forceinline__ float rope_rotate(float x, float p, float c, float s, bool first_half) {
  const float xc = __fmul_rn(x, c), ps = __fmul_rn(p, s);
  return first_half ? __fsub_rn(xc, ps) : __fadd_rn(xc, ps);
}

// One warp writes one head's row; lane holds elements lane + 32 e (e < E). The row is also written to `mirror`
// (its row_bytes bytes: codes or fp16 values) and, quantized, `mirror_sz` (its (scale, zero) pair) where given:
// the decode attention's copy in shared memory of the row it writes, so that it need not load it back from the
// cache (it takes int8, int4 and fp16 rows).
template <int E>
__device__ void store_kv_row(const KvView& c, void* data, void* sz, int64_t row, const float (&x)[E], int lane,
                             uint8_t* mirror = nullptr, __half2* mirror_sz = nullptr) {
  uint8_t* base = static_cast<uint8_t*>(data) + row * c.row_bytes;
  const int hd = c.head_dim;
  if (c.dtype == VLM_DTYPE_F32 || c.dtype == VLM_DTYPE_F16 || c.dtype == VLM_DTYPE_BF16) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      if (d >= hd) continue;
      if (c.dtype == VLM_DTYPE_F32) reinterpret_cast<float*>(base)[d] = x[e];
      else if (c.dtype == VLM_DTYPE_F16) {
        const __half h = __float2half_rn(x[e]);
        reinterpret_cast<__half*>(base)[d] = h;
        if (mirror) reinterpret_cast<__half*>(mirror)[d] = h;
      }
      else reinterpret_cast<__nv_bfloat16*>(base)[d] = __float2bfloat16_rn(x[e]);
    }
    return;
  }
  // Asymmetric quantization, exactly as kv_quantize() on the CPU.
  const float qmax = c.dtype == VLM_DTYPE_I8 ? 255.f : 15.f;
  float mn = FLT_MAX, mx = -FLT_MAX;
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (lane + 32 * e < hd) mn = fminf(mn, x[e]), mx = fmaxf(mx, x[e]);
  mn = warp_min(mn);
  mx = warp_max(mx);
  __half sh = __float2half_rn(fminf((mx - mn) / qmax, 65504.f));
  if (__half2float(sh) == 0.f) sh = __float2half_rn(1.f);
  const __half zh = __float2half_rn(mn);
  const float s = __half2float(sh), z = __half2float(zh), inv = 1.0f / s;
  if (lane == 0) {
    static_cast<__half2*>(sz)[row] = __halves2half2(sh, zh);
    if (mirror_sz) *mirror_sz = __halves2half2(sh, zh);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    const int q = d < hd ? (int)fminf(fmaxf(rintf((x[e] - z) * inv), 0.f), qmax) : 0;
    if (c.dtype == VLM_DTYPE_I8) {
      if (d < hd) {
        base[d] = (uint8_t)q;
        if (mirror) mirror[d] = (uint8_t)q;
      }
    } else {
      const int odd = __shfl_down_sync(0xffffffffu, q, 1);  // element d + 1 sits on the next lane
      if (d < hd && (d & 1) == 0) {
        base[d >> 1] = (uint8_t)(q | (odd << 4));
        if (mirror) mirror[d >> 1] = (uint8_t)(q | (odd << 4));
      }
    }
  }
}

}  // namespace cuda
}  // namespace vlm
