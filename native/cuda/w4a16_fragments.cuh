// Device pieces shared by the w4a16 kernels (w4a16_gemm.cu, w4a16_decode.cu, w4a16_wgmma.cu):
// the activation type's mma and dequantization, cp.async copies, the weights' streaming load,
// ldmatrix, and a lane's fragments of one k16 step of a 64-column strip in the
// layout of cpu/w4a16_pack.h. The general kernel dequantizes through
// dequant_fragments() (16-bit weights (q - z) s); the decode kernel multiplies
// the codes (code_fragments()) and scales each group's fp32 sums.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {
namespace w4a16 {

template <class T> struct Act;
template <> struct Act<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // half2(1024, 1024)
  static constexpr uint32_t kOne = 0x3C003C00u;    // half2(1, 1)
  static constexpr float kMagicValue = 1024.f;
  __device__ static void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // The same with a zero accumulator in: c = a · b.
  __device__ static void mma_zero(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
  }
  __device__ static uint32_t dequant(uint32_t bits, uint32_t zero2, uint32_t scale2) {
    __half2 h = __hsub2(*reinterpret_cast<__half2*>(&bits), *reinterpret_cast<__half2*>(&zero2));
    h = __hmul2(h, *reinterpret_cast<__half2*>(&scale2));
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ static float to_float(__half x) { return __half2float(x); }
};
template <> struct Act<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bfloat162(128, 128)
  static constexpr uint32_t kOne = 0x3F803F80u;    // bfloat162(1, 1)
  static constexpr float kMagicValue = 128.f;
  __device__ static void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // The same with a zero accumulator in: c = a · b.
  __device__ static void mma_zero(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
  }
  __device__ static uint32_t dequant(uint32_t bits, uint32_t zero2, uint32_t scale2) {
    __nv_bfloat162 h = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&bits), *reinterpret_cast<__nv_bfloat162*>(&zero2));
    h = __hmul2(h, *reinterpret_cast<__nv_bfloat162*>(&scale2));
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

// (a & mask) | bits in one instruction.
template <uint32_t kMask, uint32_t kBits>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "n"(kMask), "n"(kBits));
  return d;
}

// One lane's codes q (0..15) for one k16 step, as exact values of T, in the fragment order of
// dequant_fragments() below (b[tile][0]: k, k+1; b[tile][1]: k+8, k+9 of column 8 tile + lane/4).
// For kernels that multiply the codes and apply each group's scale and zero to the fp32 sums
// (w4a16_decode.cu): nine instructions a word of eight codes instead of nineteen.
//  fp16: (a & 0x000F000F) | 1024 is 1024 + q; (a & 0x00F000F0) | 1024 is 1024 + 16 q, taken to q
//        by one fused multiply-add (x / 16 - 64), so the upper nibbles need no shift of their own.
//  bf16: 128 + 16 q is not representable for q >= 8 (bit 7 is the exponent's), so every nibble is
//        shifted down first.
template <class T>
__device__ __forceinline__ void code_fragments(const uint4& wv, uint32_t (&b)[8][2]);
template <>
__device__ __forceinline__ void code_fragments<__half>(const uint4& wv, uint32_t (&b)[8][2]) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  constexpr uint32_t kMagic = Act<__half>::kMagic;
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) {
    const uint32_t w0 = words[wi], w8 = w0 >> 8;
    const uint32_t lo0 = and_or<0x000F000Fu, kMagic>(w0), hi0 = and_or<0x00F000F0u, kMagic>(w0);
    const uint32_t lo1 = and_or<0x000F000Fu, kMagic>(w8), hi1 = and_or<0x00F000F0u, kMagic>(w8);
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(b[2 * wi][0]) : "r"(lo0), "r"(kMagic));
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(b[2 * wi + 1][0]) : "r"(lo1), "r"(kMagic));
    // 0x2C00 = 1/16, 0xD400 = -64
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(b[2 * wi][1]) : "r"(hi0), "r"(0x2C002C00u), "r"(0xD400D400u));
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(b[2 * wi + 1][1]) : "r"(hi1), "r"(0x2C002C00u), "r"(0xD400D400u));
  }
}
template <>
__device__ __forceinline__ void code_fragments<__nv_bfloat16>(const uint4& wv, uint32_t (&b)[8][2]) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  constexpr uint32_t kMagic = Act<__nv_bfloat16>::kMagic;
#pragma unroll
  for (int wi = 0; wi < 4; ++wi)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint32_t lo = and_or<0x000F000Fu, kMagic>(words[wi] >> (8 * j));
      const uint32_t hi = and_or<0x000F000Fu, kMagic>(words[wi] >> (8 * j + 4));
      // x * 1 - 128 (0x3F80 = 1, 0xC300 = -128): exact
      asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(b[2 * wi + j][0]) : "r"(lo), "r"(0x3F803F80u), "r"(0xC300C300u));
      asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(b[2 * wi + j][1]) : "r"(hi), "r"(0x3F803F80u), "r"(0xC300C300u));
    }
}

// One 16-bit value of T (its bits in the low half of `bits16`) as a float.
template <class T>
__device__ __forceinline__ float bits_to_float(uint32_t bits16);
template <>
__device__ __forceinline__ float bits_to_float<__half>(uint32_t bits16) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
}
template <>
__device__ __forceinline__ float bits_to_float<__nv_bfloat16>(uint32_t bits16) {
  return __uint_as_float(bits16 << 16);
}

// The codes form's k16 step for one 8-row activation operand bf (ldmatrix of rows 0..7 at k and k + 8), in the
// swapped mma (weights as the 16-row operand): gacc[i], the n16m8 tile of strip columns 16 i.., adds the codes b
// (code_fragments) times the activations; asum, the activations' sums of rows 2 (lane % 4) and + 1 in [0] and [1]
// (the C layout), adds one more mma with an all-ones operand. A group's first step (`starts`) begins both at zero.
template <class T, class G>
__device__ __forceinline__ void codes_mma(G& gacc, float (&asum)[4], const uint32_t (&b)[8][2], const uint32_t (&bf)[2],
                                          bool starts) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t af[4] = {b[2 * i][0], b[2 * i + 1][0], b[2 * i][1], b[2 * i + 1][1]};
    if (starts) Act<T>::mma_zero(gacc[i], af, bf[0], bf[1]);
    else Act<T>::mma(gacc[i], af, bf[0], bf[1]);
  }
  const uint32_t ones[4] = {Act<T>::kOne, Act<T>::kOne, Act<T>::kOne, Act<T>::kOne};
  if (starts) Act<T>::mma_zero(asum, ones, bf[0], bf[1]);
  else Act<T>::mma(asum, ones, bf[0], bf[1]);
}

// At a group's end (or a unit of it): acc += s (gacc − z asum), with sv and zv the lane's 16 bytes of the group's
// scales and zeros (zeros stored as magic + z). The C fragment's rows g and g + 8 (q >> 1) are columns of tiles
// 2 i and 2 i + 1, whose scales and zeros are the low and high halves of word i.
// One n16m8 tile's share: acc += s (gacc − z asum) with sw and zw the tile's word of scales and of zeros (its
// columns g and g + 8 in the low and high halves).
template <class T, class A, class G>
__device__ __forceinline__ void add_tile_group_sums(A& acc, const G& gacc, const float (&asum)[4], uint32_t sw,
                                                    uint32_t zw) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float s = bits_to_float<T>(h ? sw >> 16 : sw & 0xFFFFu);
    const float z = bits_to_float<T>(h ? zw >> 16 : zw & 0xFFFFu) - Act<T>::kMagicValue;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = 2 * h + r;
      acc[q] = fmaf(s, fmaf(-z, asum[r], gacc[q]), acc[q]);
    }
  }
}
template <class T, class A, class G>
__device__ __forceinline__ void add_group_sums(A& acc, const G& gacc, const float (&asum)[4], const uint4& sv,
                                               const uint4& zv) {
  const uint32_t sw[4] = {sv.x, sv.y, sv.z, sv.w}, zw[4] = {zv.x, zv.y, zv.z, zv.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) add_tile_group_sums<T>(acc[i], gacc[i], asum, sw[i], zw[i]);
}

// 16 bytes global → shared without a register (cp.async, sm_80 up); the zfill form copies `bytes` of them
// (0 or 16) and zero-fills the rest. The "memory" clobbers keep the compiler from moving shared-memory reads of
// a stage above its wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
// A decode GEMM's weights and group records are read once a step. Built with VLM_W4A16_EVICT_FIRST (CMake option
// VLM_W4A16_EVICT_FIRST, on by default) their copies carry an L2 evict_first policy, so that a step's stream of
// them is replaced before the lines used again (the kernels' instructions, the activations, the KV cache); without
// it they are plain copies. Measured against plain copies (H100, 2026-12-06, same machine): 7B w4a16 + int8 KV
// batch 1 427-430 -> 436-439 tok/s, 2B 949-950 either way. A compile-time choice: chosen at run time, the policy
// added spills or registers (80 -> 96-102) to the decode kernel's forms (ptxas, sm_90a); built in, its 8-stage
// forms keep 80 registers and no spill (the plain build spills in seven forms, the fp16 group-128 one an address
// reloaded in every unit of its main loop).
// VLM_W4A16_WEIGHT_POLICY_NORMAL (comparisons only, bench/gpu_session.sh policy_ab): the same instructions with the
// evict_normal policy, what plain copies get, so that the policy's effect is measured apart from the register
// allocation its instructions bring. Measured so (H100, 2026-12-07, same machine): 7B batch 1 424 / 421 with
// evict_normal against 439 / 437 with evict_first, 2B 935 / 939 against 946 / 947: the gain is the policy's.
#if defined(VLM_W4A16_WEIGHT_POLICY_NORMAL) && VLM_W4A16_WEIGHT_POLICY_NORMAL
#define VLM_W4A16_WEIGHT_POLICY "evict_normal"
#else
#define VLM_W4A16_WEIGHT_POLICY "evict_first"
#endif
// The L2 policy a weight copy carries (built with VLM_W4A16_EVICT_FIRST).
__device__ __forceinline__ uint64_t weight_copy_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::" VLM_W4A16_WEIGHT_POLICY ".b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void cp_async16_weights(void* smem, const void* gmem) {
#if defined(VLM_W4A16_EVICT_FIRST) && VLM_W4A16_EVICT_FIRST
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "l"(weight_copy_policy())
               : "memory");
#else
  cp_async16(smem, gmem);
#endif
}
// 4 bytes global → shared with the same policy (cp.async.ca: the 4-byte form goes through L1): a column tile's
// scale or zero word.
__device__ __forceinline__ void cp_async4_weights(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
#if defined(VLM_W4A16_EVICT_FIRST) && VLM_W4A16_EVICT_FIRST
  asm volatile("cp.async.ca.shared.global.L2::cache_hint [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem),
               "l"(weight_copy_policy())
               : "memory");
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
#endif
}
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, int bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>  // at most N committed groups of this thread's copies still in flight
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The same load with an L2 cache policy (createpolicy, sm_80 up): for the lm head's weights, read once a
// step, with l2_evict_first_policy().
__device__ __forceinline__ uint4 load_streaming(const uint4* p, uint64_t policy) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(policy));
  return v;
}
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same with each 8x8 matrix transposed (for a B operand stored k-major).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A lane's scales and zeros for one group, each replicated into both halves of a 2-vector:
// s2[tile], z2[tile] belong to column 8 * tile + lane / 4 of the strip. Expanded once per group,
// not once per k16 step.
struct GroupParams {
  uint32_t s2[8], z2[8];
};

// p: the lane's 16 bytes of scales for one (strip, group); its zeros are 8 uint4 further.
__device__ __forceinline__ GroupParams load_group(const uint4* p) {
  const uint4 sv = p[0], zv = p[8];
  const uint32_t sc[4] = {sv.x, sv.y, sv.z, sv.w}, zr[4] = {zv.x, zv.y, zv.z, zv.w};
  GroupParams gp;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    gp.s2[2 * i] = __byte_perm(sc[i], 0, 0x1010);  // low 16 bits in both halves
    gp.s2[2 * i + 1] = __byte_perm(sc[i], 0, 0x3232);  // high 16 bits in both halves
    gp.z2[2 * i] = __byte_perm(zr[i], 0, 0x1010);
    gp.z2[2 * i + 1] = __byte_perm(zr[i], 0, 0x3232);
  }
  return gp;
}

// One lane's B fragments for one k16 step of a 64-column strip, from its 16 bytes of codes and its
// group's scales and zeros: b[tile][0] holds W[n][k], W[n][k+1] and b[tile][1] W[n][k+8], W[n][k+9],
// for n = 64 * strip + 8 * tile + lane / 4 and k = 16 * step + 2 * (lane % 4) (the mma m16n8k16 B layout).
template <class T>
__device__ __forceinline__ void dequant_fragments(const uint4& wv, const GroupParams& gp, uint32_t (&b)[8][2]) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int wi = 0; wi < 4; ++wi)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int tile = 2 * wi + j;
      const uint32_t lo = ((words[wi] >> (8 * j)) & 0x000F000Fu) | Act<T>::kMagic;
      const uint32_t hi = ((words[wi] >> (8 * j + 4)) & 0x000F000Fu) | Act<T>::kMagic;
      b[tile][0] = Act<T>::dequant(lo, gp.z2[tile], gp.s2[tile]);
      b[tile][1] = Act<T>::dequant(hi, gp.z2[tile], gp.s2[tile]);
    }
}

// silu(gate) * up of eight gate and eight up values, each product rounded to T.
template <class T>
__device__ __forceinline__ uint4 silu_mul8(const uint4& gv, const uint4& uv) {
  const T* gs = reinterpret_cast<const T*>(&gv);
  const T* us = reinterpret_cast<const T*>(&uv);
  uint4 val;
  T* out = reinterpret_cast<T*>(&val);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float g = Act<T>::to_float(gs[e]);
    out[e] = Act<T>::from_float(g / (1.0f + expf(-g)) * Act<T>::to_float(us[e]));
  }
  return val;
}

// Eight activations A[row][k .. k+8) as one 16-byte vector. With silu_up, A's rows are
// [gate (K) | up (K)] and the value is silu(gate) * up, rounded to T as a separate pass would.
// kFromL2: loads that bypass the SM's caches (for A written by other blocks of the same launch).
template <class T, bool kFromL2 = false>
__device__ __forceinline__ uint4 load_a8(const T* __restrict__ a, int64_t row, int k, int K, bool silu_up) {
  auto load = [](const T* q) {
    if constexpr (kFromL2) return __ldcg(reinterpret_cast<const uint4*>(q));
    else return *reinterpret_cast<const uint4*>(q);
  };
  if (!silu_up) return load(a + row * K + k);
  const T* p = a + row * 2 * K + k;
  return silu_mul8<T>(load(p), load(p + K));
}

}  // namespace w4a16
}  // namespace vlm
