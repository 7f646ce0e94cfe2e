// w4a16 GEMM on Hopper's warpgroup MMA (wgmma), for the row counts between the decode kernel and
// prefill (17 rows up): C = A · dequant(W)ᵀ (+ residual), A [M][K] fp16/bf16, W packed as in
// cpu/w4a16_pack.h, fp32 accumulation. Needs a library built for sm_90a (wgmma exists only there; elsewhere the
// kernel traps, and nothing routes to it) on a compute capability 9.0 GPU. By default the strip form takes 17 to
// kStripDefaultMaxRows rows; VLM_W4A16_WGMMA=0 turns it off, 1 (the block form) or 2 (the strip form) runs that
// form from 17 rows at every M, for measuring.
//
// The weights are wgmma's A operand, taken from registers, and the rows of A (tokens) its N
// dimension, from shared memory: C is computed transposed, 64 output columns by NT tokens an
// instruction. No dequantized copy of W exists anywhere: codes are dequantized in registers with the
// general kernel's arithmetic (dequant_fragments()), and those registers are the operand. The packed layout
// fits this without a shuffle: a lane's word m of a strip's k16 step (16 bytes a lane, 512 contiguous bytes a
// strip) holds the codes of columns 16m + g and 16m + 8 + g at k = 2t.., 2t+8.. — exactly its fragment of a
// 16-row slice of an m64 operand (rows g, g + 8). A block covers 4 strips (256 output columns):
//  - block form, one warpgroup: warp w takes strip w and all 4 words; instruction m of a k16 step takes each
//    warp's word m, its 64 "rows" being columns 16m.. of the 4 strips. 4 wgmma a step, NT = 32 or 64 tokens.
//  - strip form, four warpgroups: warpgroup s takes strip s and warp w of it only word w, so one instruction a
//    step is the strip's 64 columns; NT = 64 or 128 tokens. A quarter of the dequantization a warp.
//
// Everything a stage of K = 64 needs streams through a kStages-deep shared-memory ring with cp.async,
// requested kStages - 2 stages ahead of use: the tokens' K slice as wgmma's no-swizzle K-major core
// matrices (8 tokens × 8 k, 128 bytes each, the 8 k-chunks of an 8-token group contiguous: LBO = 128
// bytes between k-chunks, SBO = 1024 between token groups; rows past M zero-filled), the 4 strips' codes
// for the stage's 4 k16 steps, and the scales and zeros of the group holding it. A k16 step issues its
// wgmma, waits for the previous step's, and dequantizes the next step's operands from the ring while its
// own run.
// Grid: (ceil(N / 256), splits, ceil(M / NT)); with splits > 1 each K slice writes fp32 partials that
// w4a16_splitk_reduce sums in slice order (deterministic), or the K slices of a tile run as one thread-block
// cluster and add their accumulators through distributed shared memory, in slice order too: no partials in
// global memory, no second kernel. make_plan chooses between the two (VLM_W4A16_WGMMA_CLUSTER=0: always
// partials, 1: always clusters).
#include "cuda/w4a16_wgmma.h"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>

#include "cpu/w4a16_pack.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/device_query.h"
#include "cuda/env_int.h"
#include "cuda/w4a16_fragments.cuh"
#include "cuda/w4a16_splitk.cuh"

namespace vlm {
namespace {

using w4a16::Act;
using w4a16::cp_async16_zfill;
using w4a16::cp_async_commit;
using w4a16::cp_async_wait;

constexpr int kBlockN = 4 * kW4StripN;      // 256 output columns: 4 strips a block in either form
constexpr int kStageK = 64;                 // K per pipeline stage
constexpr int kStepsPerStage = kStageK / 16;
constexpr int kStages = 5;                  // ring slots; stages are requested kStages - 2 ahead of use
constexpr int kMinSliceK = 256;             // no K slice shorter than this (4 stages)
constexpr int kMaxCluster = 8;              // K slices summed in a cluster: at most the portable cluster size
constexpr int kWeightsStageBytes = 4 * kStepsPerStage * 512;  // the block's 4 strips, 4 k16 steps each
constexpr int kScalesStageBytes = 4 * 256;                    // each strip's 64 scales and 64 zeros

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// cp.async writes shared memory through the generic proxy, wgmma reads it through the async proxy.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>  // at most N committed wgmma groups still running
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps a register's value where it is until this point: wgmma reads its register operands (and
// writes its accumulators) asynchronously, after the instruction that names them has issued.
__device__ __forceinline__ void hold(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void hold(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// (x & 0x000F000F) | magic: two codes as 16-bit floats magic + q.
__device__ __forceinline__ uint32_t mask_or(uint32_t x, uint32_t magic) {
  uint32_t d;
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;\n" : "=r"(d) : "r"(x), "r"(magic));
  return d;
}

// Shared-memory descriptor of an NT × 16 block of the staged tokens (no swizzle, K-major).
__device__ __forceinline__ uint64_t tokens_descriptor(uint32_t smem_addr) {
  uint64_t d = (uint64_t)((smem_addr & 0x3FFFF) >> 4);  // start address, bits 0-13
  d |= (uint64_t)(128 >> 4) << 16;                      // LBO: the next 8 k of the same tokens
  d |= (uint64_t)(1024 >> 4) << 32;                     // SBO: the next 8 tokens
  return d;                                             // layout type 0 (bits 62-63): no swizzle
}

// d[NT/2] += A(af: this warp's 16 rows of the m64 operand) · B(desc: NT tokens × k16).
template <class T, int NT>
struct Wgmma;

#define VLM_WGMMA_ACC16                                                                                        \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define VLM_WGMMA_ACC32                                                                                         \
  VLM_WGMMA_ACC16, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), \
      "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), \
      "+f"(d[31])
#define VLM_WGMMA_N32(TYPE)                                                                                   \
  asm volatile(                                                                                               \
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                              \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                                             \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"    \
      : VLM_WGMMA_ACC16                                                                                       \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))
#define VLM_WGMMA_N64(TYPE)                                                                                    \
  asm volatile(                                                                                                \
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                               \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                              \
      " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27," \
      "%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"                                             \
      : VLM_WGMMA_ACC32                                                                                        \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))

#define VLM_WGMMA_ACC64                                                                                       \
  VLM_WGMMA_ACC32,                                                                                            \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define VLM_WGMMA_N128(TYPE)                                                                                  \
  asm volatile(                                                                                               \
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                              \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {"                                       \
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                                \
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                                      \
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                                      \
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"                                       \
      "}, {%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"                                                           \
      : VLM_WGMMA_ACC64                                                                                       \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))

#define VLM_WGMMA_FOR(CTYPE, TYPE)                                                             \
  template <>                                                                                  \
  struct Wgmma<CTYPE, 32> {                                                                    \
    __device__ static void mma(float* d, const uint32_t* a, uint64_t desc) { VLM_WGMMA_N32(TYPE); } \
  };                                                                                           \
  template <>                                                                                  \
  struct Wgmma<CTYPE, 64> {                                                                    \
    __device__ static void mma(float* d, const uint32_t* a, uint64_t desc) { VLM_WGMMA_N64(TYPE); } \
  };                                                                                           \
  template <>                                                                                  \
  struct Wgmma<CTYPE, 128> {                                                                   \
    __device__ static void mma(float* d, const uint32_t* a, uint64_t desc) { VLM_WGMMA_N128(TYPE); } \
  };
VLM_WGMMA_FOR(__half, "f16")
VLM_WGMMA_FOR(__nv_bfloat16, "bf16")
#undef VLM_WGMMA_FOR
#undef VLM_WGMMA_N32
#undef VLM_WGMMA_N64
#undef VLM_WGMMA_N128
#undef VLM_WGMMA_ACC16
#undef VLM_WGMMA_ACC32
#undef VLM_WGMMA_ACC64
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <int NT>
__host__ __device__ constexpr int tokens_stage_bytes() { return NT * kStageK * 2; }
template <int NT>
__host__ __device__ constexpr int stage_bytes() {
  return tokens_stage_bytes<NT>() + kWeightsStageBytes + kScalesStageBytes;
}

// The two forms of the kernel, both 4 strips (256 output columns) by NT tokens a block:
//  WGS = 1 ("block form"): one warpgroup; warp w owns strip w and dequantizes all 4 words of its lane's 16 bytes,
//    and the warpgroup issues 4 wgmma a k16 step (instruction m: word m of every warp, columns 16m.. of the 4
//    strips).
//  WGS = 4 ("strip form"): a warpgroup a strip; warp w of it dequantizes only word w (8 weights a lane and step:
//    exactly its 4 A registers of the strip's m64 operand, columns 16w..), one wgmma a step, NT up to 128 tokens.
//    A quarter of the dequantization per warp and four times the warps to hide its latency.
// kSlices = the words (m64 operands) a warp holds: 4 / WGS. CLUSTER: launched in clusters of the K slices, which
// sum in distributed shared memory (a template argument, so the other instantiations are the code measured alone).
template <class T, int NT, int WGS, bool CLUSTER>
__global__ void __launch_bounds__(128 * WGS) w4a16_wgmma_kernel(const T* __restrict__ a, const uint4* __restrict__ w,
                                                                const uint4* __restrict__ sz,
                                                                const T* __restrict__ residual, T* __restrict__ c,
                                                                float* __restrict__ partial, int M, int N, int K,
                                                                int group, int quantum) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kThreads = 128 * WGS, kSlices = 4 / WGS;
  constexpr int kTokens = tokens_stage_bytes<NT>(), kStage = stage_bytes<NT>();
  static_assert(NT * 8 % kThreads == 0, "whole passes of token copies");
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int strips = N / kW4StripN;
  // This warp's strip within the block and the word of its lane's 16 bytes that slice m is.
  const int block_strip = WGS == 1 ? warp : warp / 4;
  auto word_of = [&](int m) { return WGS == 1 ? m : warp % 4; };
  const int strip = blockIdx.x * 4 + block_strip;
  // N is a multiple of 64, not always of 256: a strip past N still takes part in every wgmma (they
  // are warpgroup-wide) with zero weights, and stores nothing.
  const bool active = strip < strips;
  const int m0 = blockIdx.z * NT;
  const int units = K / quantum;  // whole groups and whole stages
  const int u0 = splitk_slice_start(blockIdx.y, units, gridDim.y);
  const int u1 = splitk_slice_start(blockIdx.y + 1, units, gridDim.y);
  const int k0 = u0 * quantum, stages = (u1 - u0) * quantum / kStageK;

  cuda::pdl_wait();
  cuda::pdl_allow_next();

  // Stage st of this slice into ring slot st % kStages: the tokens m0.. × k 64 as core matrices, the 4 strips'
  // codes for the stage's 4 k16 steps (512 bytes a strip and step, a lane's 16 at lane * 16) and the scales and
  // zeros of the group holding the stage (256 bytes a strip). Everything but the stage's k is fixed per thread
  // and worked out once here. Token copy `it` of thread i: row i % 8 + 8 (i / 64) + (kThreads / 8) it, k-chunk
  // (i / 8) % 8: eight threads fill one 128-byte core matrix.
  constexpr int kTokenCopies = NT * 8 / kThreads, kRowsPerPass = kThreads / 8;
  const int chunk = (tid / 8) % 8, r0 = tid % 8 + 8 * (tid / 64);
  const T* token_src[kTokenCopies];
  int token_bytes[kTokenCopies];
#pragma unroll
  for (int it = 0; it < kTokenCopies; ++it) {
    const int row = m0 + r0 + kRowsPerPass * it;
    token_src[it] = a + (int64_t)min(row, M - 1) * K + k0 + chunk * 8;
    token_bytes[it] = row < M ? 16 : 0;
  }
  const int token_dst = (tid / 64) * 1024 + chunk * 128 + (tid % 8) * 16;  // + (kRowsPerPass / 8) * 1024 it
  // Code copy `it` of thread i: 16-byte chunk c = i + kThreads it of the stage's 512: strip c / 128, step
  // (c / 32) % 4, lane c % 32.
  constexpr int kCodeCopies = 4 * kStepsPerStage * 32 / kThreads;
  const uint4* code_src[kCodeCopies];
  int code_bytes[kCodeCopies];
#pragma unroll
  for (int it = 0; it < kCodeCopies; ++it) {
    const int cc = tid + kThreads * it, s = blockIdx.x * 4 + cc / 128;
    code_src[it] = w + ((int64_t)min(s, strips - 1) * (K / 16) + k0 / 16 + (cc / 32) % 4) * 32 + cc % 32;
    code_bytes[it] = s < strips ? 16 : 0;
  }
  // Scale copy (threads 0-63): strip i / 16, 16-byte piece i % 16.
  const int scale_strip = blockIdx.x * 4 + tid / 16;
  const uint4* scale_src = sz + (int64_t)min(scale_strip, strips - 1) * (K / group) * 16 + tid % 16;
  const int scale_bytes = scale_strip < strips ? 16 : 0;
  auto load_stage = [&](int st) {
    unsigned char* base = smem + (st % kStages) * kStage;
    const int dk = st * kStageK;
#pragma unroll
    for (int it = 0; it < kTokenCopies; ++it)
      cp_async16_zfill(base + token_dst + it * (kRowsPerPass / 8) * 1024, token_src[it] + dk, token_bytes[it]);
#pragma unroll
    for (int it = 0; it < kCodeCopies; ++it)
      cp_async16_zfill(base + kTokens + (tid + kThreads * it) * 16, code_src[it] + (int64_t)(dk / 16) * 32,
                       code_bytes[it]);
    if (tid < 64)
      cp_async16_zfill(base + kTokens + kWeightsStageBytes + tid * 16,
                       scale_src + (int64_t)((k0 + dk) / group) * 16, scale_bytes);
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < stages) load_stage(st);
    cp_async_commit();
  }

  float acc[kSlices][NT / 2];
#pragma unroll
  for (int m = 0; m < kSlices; ++m)
#pragma unroll
    for (int i = 0; i < NT / 2; ++i) acc[m][i] = 0.f;

  // This warp's A operands of k16 step j of stage st, dequantized from the ring: word m of a lane's 16 bytes is
  // its fragment of rows 16m.. of an m64 operand (a[0]: rows g at k 2t.., a[1]: rows g + 8, a[2], a[3]: the same
  // at k 2t + 8..). Each word's two tiles' scales and zeros are expanded once a stage.
  uint32_t s2[kSlices][2], z2[kSlices][2];
  // The code-to-float constant in a register the compiler cannot see through, so mask and or are one
  // lop3 (an instruction takes a single immediate).
  uint32_t magic;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(magic) : "n"(Act<T>::kMagic));
  const int codes_at = kTokens + block_strip * kStepsPerStage * 512 + lane * 16;
  const int scales_at = kTokens + kWeightsStageBytes + block_strip * 256 + (lane / 4) * 16;
  auto dequant_step = [&](int st, int j, uint32_t(&af)[kSlices][4]) {
    const unsigned char* base = smem + (st % kStages) * kStage;
    if (j == 0) {
#pragma unroll
      for (int m = 0; m < kSlices; ++m) {
        const uint32_t sc = *reinterpret_cast<const uint32_t*>(base + scales_at + word_of(m) * 4);
        const uint32_t zr = *reinterpret_cast<const uint32_t*>(base + scales_at + 128 + word_of(m) * 4);
        s2[m][0] = __byte_perm(sc, 0, 0x1010), s2[m][1] = __byte_perm(sc, 0, 0x3232);
        z2[m][0] = __byte_perm(zr, 0, 0x1010), z2[m][1] = __byte_perm(zr, 0, 0x3232);
      }
    }
    uint32_t words[kSlices];
    if constexpr (kSlices == 4) {
      const uint4 wv = *reinterpret_cast<const uint4*>(base + codes_at + j * 512);
      words[0] = wv.x, words[1] = wv.y, words[2] = wv.z, words[3] = wv.w;
    } else {
      words[0] = *reinterpret_cast<const uint32_t*>(base + codes_at + j * 512 + word_of(0) * 4);
    }
#pragma unroll
    for (int m = 0; m < kSlices; ++m)  // word m: tiles 2 word (rows g) and 2 word + 1 (rows g + 8)
#pragma unroll
      for (int jt = 0; jt < 2; ++jt) {
        const uint32_t lo = mask_or(words[m] >> (8 * jt), magic), hi = mask_or(words[m] >> (8 * jt + 4), magic);
        af[m][jt] = Act<T>::dequant(lo, z2[m][jt], s2[m][jt]);      // k 2t, 2t + 1
        af[m][2 + jt] = Act<T>::dequant(hi, z2[m][jt], s2[m][jt]);  // k 2t + 8, 2t + 9
      }
  };

  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  cp_async_wait<kStages - 2>();  // stage 0 has landed (this thread's copies)...
  fence_async_shared();          // ...is visible to wgmma...
  __syncthreads();               // ...for every thread's copies
  // Two sets of operands: a k16 step issues its wgmma on one, waits only for the previous step's (whose
  // operands are the other set), and dequantizes the next step into that set while its own run, so the
  // tensor cores always have a step queued. Successive steps accumulate into the same registers, which
  // wgmma orders by itself. At the last step of a stage the next stage is waited for and the stage
  // kStages - 1 ahead requested into the slot the previous stage used (every wgmma that read it has been
  // waited for by every warp before the barrier).
  static_assert(kStepsPerStage % 2 == 0, "operand sets alternate by step parity across stages");
  uint32_t af[2][kSlices][4];
  dequant_step(0, 0, af[0]);
  for (int st = 0; st < stages; ++st) {
    const uint32_t tokens = smem_base + (st % kStages) * kStage;
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
      const int cur = j % 2;
      const uint64_t desc = tokens_descriptor(tokens + j * 256);  // k16 step j: k-chunks 2j, 2j + 1
#pragma unroll
      for (int m = 0; m < kSlices; ++m)
#pragma unroll
        for (int i = 0; i < NT / 2; ++i) hold(acc[m][i]);
      wgmma_fence();
#pragma unroll
      for (int m = 0; m < kSlices; ++m) Wgmma<T, NT>::mma(acc[m], af[cur][m], desc);
      wgmma_commit();
      wgmma_wait<1>();  // the previous step's wgmma are done: the other operand set is free
#pragma unroll
      for (int m = 0; m < kSlices; ++m)
#pragma unroll
        for (int q = 0; q < 4; ++q) hold(af[cur ^ 1][m][q]);
      if (j + 1 < kStepsPerStage) {
        dequant_step(st, j + 1, af[cur ^ 1]);
      } else if (st + 1 < stages) {
        cp_async_wait<kStages - 3>();
        fence_async_shared();
        __syncthreads();
        if (st + kStages - 1 < stages) load_stage(st + kStages - 1);
        cp_async_commit();
        dequant_step(st + 1, 0, af[cur ^ 1]);
      }
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int m = 0; m < kSlices; ++m) {
#pragma unroll
    for (int q = 0; q < 4; ++q) hold(af[0][m][q]), hold(af[1][m][q]);
#pragma unroll
    for (int i = 0; i < NT / 2; ++i) hold(acc[m][i]);
  }
  cp_async_wait<0>();

  // acc[m][4i + q]: output column 64 strip + 16 word(m) + g (+8 for q >= 2), token m0 + 8i + 2t (+1 for odd q).
  const int g = lane / 4, t = lane % 4;
  auto acc_token = [&](int i, int q) { return 8 * i + 2 * t + (q & 1); };  // from the tile's first token
  auto acc_column = [&](int m, int q) { return 16 * word_of(m) + g + (q >> 1) * 8; };  // from the strip's first
  if constexpr (CLUSTER) {
    // This block is K slice `rank` of a cluster of S that share one output tile. Per round of up to 64 tokens:
    // every block stages its accumulators in its own ring, then sums 1/S of the round's elements over the S
    // blocks' rings in rank (slice) order and stores them. Every warp takes part, strips past N included (their
    // accumulators are zero and they store nothing): the cluster barriers count all threads.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const int S = (int)cluster.num_blocks(), rank = (int)cluster.block_rank();
    // A round stages up to 64 tokens × 256 columns of fp32 in the (now idle) ring, rows padded by 4 floats so that
    // the accumulator stores of a warp's lanes (8 columns × 4 row pairs) fall in 32 distinct banks.
    constexpr int kSumLd = kBlockN + 4;
    constexpr int kRoundTokens = NT < 64 ? NT : 64, kRounds = NT / kRoundTokens;
    constexpr int kVecs = kRoundTokens * kBlockN / 4;  // float4 elements of a round
    static_assert(kRoundTokens * kSumLd * 4 <= kStages * kStage, "a round's tile fits the ring");
    float* tile = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done with the ring
#pragma unroll
    for (int rd = 0; rd < kRounds; ++rd) {
#pragma unroll
      for (int m = 0; m < kSlices; ++m)
#pragma unroll
        for (int i = 0; i < kRoundTokens / 8; ++i)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int col = block_strip * kW4StripN + acc_column(m, q);
            tile[acc_token(i, q) * kSumLd + col] = acc[m][4 * (rd * kRoundTokens / 8 + i) + q];
          }
      cluster.sync();  // release/acquire: every block's tile is written and visible to the others
      const int v0 = rank * kVecs / S, v1 = (rank + 1) * kVecs / S;
      for (int v = v0 + tid; v < v1; v += kThreads) {
        const int row = v / (kBlockN / 4), col = v % (kBlockN / 4) * 4;
        float4 parts[kMaxCluster];
#pragma unroll
        for (int r = 0; r < kMaxCluster; ++r)  // the remote reads of one element all in flight together
          parts[r] = r < S ? *reinterpret_cast<const float4*>(cluster.map_shared_rank(tile, r) + row * kSumLd + col)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
        float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int r = 0; r < kMaxCluster; ++r)
          sum[0] += parts[r].x, sum[1] += parts[r].y, sum[2] += parts[r].z, sum[3] += parts[r].w;
        const int out_row = m0 + rd * kRoundTokens + row, out_col = blockIdx.x * kBlockN + col;
        if (out_row >= M || out_col >= N) continue;  // N is a multiple of 64: all 4 columns or none
        const int64_t o = (int64_t)out_row * N + out_col;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (residual) sum[e] += Act<T>::to_float(residual[o + e]);
          c[o + e] = Act<T>::from_float(sum[e]);
        }
      }
      cluster.sync();  // every tile has been read: the next round may overwrite them, and no block leaves early
    }
    return;
  }
  if (!active) return;
#pragma unroll
  for (int m = 0; m < kSlices; ++m)
#pragma unroll
    for (int i = 0; i < NT / 8; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int row = m0 + acc_token(i, q);
        if (row >= M) continue;
        const int col = strip * kW4StripN + acc_column(m, q);
        float v = acc[m][4 * i + q];
        if (partial) {
          partial[((int64_t)blockIdx.y * M + row) * N + col] = v;
        } else {
          if (residual) v += Act<T>::to_float(residual[(int64_t)row * N + col]);
          c[(int64_t)row * N + col] = Act<T>::from_float(v);
        }
      }
#else
  __trap();  // built without sm_90a: w4a16_wgmma_applies() is false (wgmma_code_runs())
#endif
}

// Up to this many rows the strip form is the default. Measured on the H200 (2026-12-04 late, bench/gemm,
// docs/benchmarks/cuda_engine.md): from 64 to 192 rows it beat the general tensor-core kernel on all eight 2B
// and 7B layers (0.41-0.93 of its time; at 32 it lost on the 7B qkv and gate_up layers), and from 160 rows
// dequantize + cuBLAS beat it on the qkv and gate_up layers, which carry most of the time.
constexpr int kStripDefaultMaxRows = 128;

// Whether the kernel's real code runs here: the library was built for sm_90a and the GPU is compute
// capability 9.0 (arch-specific code runs nowhere else; other GPUs would get the trap).
bool wgmma_code_runs() {
#if defined(VLM_CUDA_SM90A)
  static const bool runs = cuda::compute_capability_is_9_0() && cuda::hopper_code_runs();
  return runs;
#else
  return false;
#endif
}

// The form that takes M rows: 0 none, 1 the block form, 2 the strip form. VLM_W4A16_WGMMA unset: the strip
// form up to kStripDefaultMaxRows; 0: none; 1 or 2: that form at every M.
int wgmma_form_at(int M) {
  static const int forced = cuda::env_int("VLM_W4A16_WGMMA", -1);
  if (!wgmma_code_runs() || M <= 16) return 0;
  if (forced >= 0) return forced == 1 || forced == 2 ? forced : 0;
  return M <= kStripDefaultMaxRows ? 2 : 0;
}

struct Plan {
  int wgs, nt, m_tiles, splits, quantum;
  bool cluster;  // the splits are one thread-block cluster a tile, summed in distributed shared memory
};

// VLM_W4A16_WGMMA_CLUSTER: 0 K slices always summed from fp32 partials by a second kernel, 1 always in clusters
// (where K is split), unset (-1) as make_plan decides.
int cluster_setting() {
  static const int setting = cuda::env_int("VLM_W4A16_WGMMA_CLUSTER", -1);
  return setting;
}

// Below this many bytes of fp32 partials a split-K sum through global memory stays in the L2 (50 MB on the
// H200) and its second kernel is cheap: summing 8 slices in a cluster through distributed shared memory was
// slower on every such layer measured (H200, 2026-12-04 19:05 UTC: 2B.qkv at 128 rows, 16 MiB of partials,
// 15.3 µs with partials and 17.5 in clusters), while above it clusters won (7B.qkv at 64/128 rows, 24/48 MiB:
// 38.8 → 36.0 and 64.1 → 52.1 µs).
constexpr int64_t kClusterMinPartialBytes = 20 << 20;

// More than the default 48 KiB of shared memory; granted once per instantiation.
template <class T, int NT, int WGS, bool CLUSTER>
cudaError_t grant_smem() {
  static const cudaError_t granted = cudaFuncSetAttribute(w4a16_wgmma_kernel<T, NT, WGS, CLUSTER>,
                                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                          kStages * stage_bytes<NT>());
  return granted;
}

// Clusters of S blocks of this instantiation that the GPU holds at once; asked once per (instantiation, S).
template <int NT, int WGS>
int resident_clusters(int S) {
  thread_local std::map<int, int> cache;  // per thread: tensor-parallel ranks plan on threads of their own
  if (auto it = cache.find(S); it != cache.end()) return it->second;
  const bool granted = grant_smem<__half, NT, WGS, true>() == cudaSuccess;
  if (!granted) cudaGetLastError();  // the plan goes on without clusters; later checks must start clean
  const int n = granted ? cuda::max_active_clusters(w4a16_wgmma_kernel<__half, NT, WGS, true>, dim3(128 * WGS),
                                                    kStages * stage_bytes<NT>(), S)
                        : 0;
  cache.emplace(S, n);
  return n;
}

int resident_clusters_for(const Plan& p, int S) {
  if (p.wgs == 4) return p.nt == 64 ? resident_clusters<64, 4>(S) : resident_clusters<128, 4>(S);
  return p.nt == 32 ? resident_clusters<32, 1>(S) : resident_clusters<64, 1>(S);
}

Plan make_plan(int M, int N, int K, int group) {
  Plan p{};
  p.wgs = wgmma_form_at(M) == 2 ? 4 : 1;
  p.nt = p.wgs == 4 ? (M <= 64 ? 64 : 128) : (M <= 32 ? 32 : 64);
  p.m_tiles = (M + p.nt - 1) / p.nt;
  p.quantum = std::max(group, kStageK);
  const int units = K / p.quantum;
  const int blocks = (N + kBlockN - 1) / kBlockN * p.m_tiles;
  // Split K where it shortens the run counted in waves of resident blocks (a slice at least kMinSliceK):
  // cost(s) = waves(blocks · s) / s in whole-K block times; ties go to fewer slices (less partial traffic).
  // The block form keeps two blocks an SM (registers), the strip form one.
  const int most = std::max(1, std::min(units, K / kMinSliceK));
  const int64_t slots = (p.wgs == 4 ? 1LL : 2LL) * cuda::sm_count();
  const double whole = 1.0 * ((blocks + slots - 1) / slots);
  int partial_splits = 1;
  double partial_cost = whole;
  for (int s = 2; s <= most; ++s) {
    const double cost = 1.0 * ((blocks * s + slots - 1) / slots) / s;
    if (cost < partial_cost * 0.95) partial_cost = cost, partial_splits = s;
  }
  p.splits = partial_splits;
  const int setting = cluster_setting();
  if (setting == 0) return p;
  // The same cost counted in waves of resident clusters of s blocks (at most the portable cluster size).
  int cluster_splits = 1;
  double cluster_cost = whole;
  for (int s = 2; s <= std::min(most, kMaxCluster); ++s) {
    const int fit = resident_clusters_for(p, s);
    if (fit <= 0) continue;
    const double cost = 1.0 * ((blocks + fit - 1) / fit) / s;
    if (cost < cluster_cost * 0.95) cluster_cost = cost, cluster_splits = s;
  }
  // By default clusters where they keep the partials' parallelism (their waves cost no more) and save more
  // than they cost: a 2-slice sum is one remote read a value; more slices pay only once the partials would
  // spill from L2 (kClusterMinPartialBytes).
  const int64_t partial_bytes = (int64_t)partial_splits * M * N * 4;
  const bool use = setting > 0 ? cluster_splits > 1
                               : cluster_splits > 1 && cluster_cost <= partial_cost &&
                                     (cluster_splits == 2 || partial_bytes >= kClusterMinPartialBytes);
  if (use) p.splits = cluster_splits, p.cluster = true;
  return p;
}

template <class T, int NT, int WGS>
cudaError_t launch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c, int M,
                   int N, int K, int group, void* workspace, cudaStream_t stream) {
  constexpr int kSmem = kStages * stage_bytes<NT>();
  const dim3 grid((N + kBlockN - 1) / kBlockN, p.splits, p.m_tiles);
  if (p.cluster) {
    if (const cudaError_t granted = grant_smem<T, NT, WGS, true>(); granted != cudaSuccess) return granted;
    return cuda::launch_dependent_in_clusters(
        w4a16_wgmma_kernel<T, NT, WGS, true>, grid, dim3(128 * WGS), dim3(1, p.splits, 1), kSmem, stream,
        static_cast<const T*>(a), static_cast<const uint4*>(w), static_cast<const uint4*>(sz),
        static_cast<const T*>(residual), static_cast<T*>(c), nullptr, M, N, K, group, p.quantum);
  }
  if (const cudaError_t granted = grant_smem<T, NT, WGS, false>(); granted != cudaSuccess) return granted;
  float* partial = p.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  cudaError_t e = cuda::launch_dependent(w4a16_wgmma_kernel<T, NT, WGS, false>, grid, dim3(128 * WGS), kSmem, stream,
                                         static_cast<const T*>(a), static_cast<const uint4*>(w),
                                         static_cast<const uint4*>(sz), static_cast<const T*>(residual),
                                         static_cast<T*>(c), partial, M, N, K, group, p.quantum);
  if (e != cudaSuccess || p.splits == 1) return e;
  return w4a16_splitk_reduce<T>(partial, static_cast<const T*>(residual), static_cast<T*>(c), (int64_t)M * N,
                                p.splits, stream);
}

template <class T>
cudaError_t launch_for(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                       int M, int N, int K, int group, void* workspace, cudaStream_t stream) {
  if (p.wgs == 4)
    return p.nt == 64 ? launch<T, 64, 4>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream)
                      : launch<T, 128, 4>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream);
  return p.nt == 32 ? launch<T, 32, 1>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream)
                    : launch<T, 64, 1>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream);
}

}  // namespace

int w4a16_wgmma_form(int M, int N, int K, int group) {
  const bool shape_fits =
      N % kW4StripN == 0 && (group == 64 || group == 128) && K % std::max(group, kStageK) == 0;
  return shape_fits ? wgmma_form_at(M) : 0;
}

bool w4a16_wgmma_applies(int M, int N, int K, int group) { return w4a16_wgmma_form(M, N, K, group) != 0; }

// The dequantization reads the 4-bit weights once (microseconds), after which cuBLAS runs a dense tensor-core
// GEMM several times faster than the general w4a16 kernel's large-M path (docs/benchmarks/gemm.md: 0.13-0.37x
// cuBLAS at M = 256-2048). Where the strip form takes up to 128 rows, the general kernel would take 129-255,
// where it measured 1.2-2x slower than the strip form (H200, 2026-12-04: e.g. 7B.qkv at 192 rows 158.4 us,
// the strip form 85.6, dequantize + cuBLAS 72.1 at 256), so dequantization starts right above the strip form.
int w4a16_dequant_gemm_min_rows() { return wgmma_code_runs() ? kStripDefaultMaxRows + 1 : 256; }

void w4a16_wgmma_plan(int M, int N, int K, int group, int* splits, bool* cluster) {
  *splits = 0, *cluster = false;
  if (!w4a16_wgmma_applies(M, N, K, group)) return;
  const Plan p = make_plan(M, N, K, group);
  *splits = p.splits, *cluster = p.cluster;
}

int64_t w4a16_wgmma_workspace_bytes(int M, int N, int K, int group) {
  const Plan p = make_plan(M, N, K, group);
  return p.splits > 1 && !p.cluster ? (int64_t)p.splits * M * N * 4 : 0;
}

cudaError_t w4a16_wgmma_gemm(const void* a, const void* w, const void* sz, const void* residual, void* c, int M,
                             int N, int K, int group, bool bf16, void* workspace, cudaStream_t stream) {
  if (!w4a16_wgmma_applies(M, N, K, group)) return cudaErrorInvalidValue;
  const Plan p = make_plan(M, N, K, group);
  if (p.splits > 1 && !p.cluster && workspace == nullptr) return cudaErrorInvalidValue;
  return bf16 ? launch_for<__nv_bfloat16>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream)
              : launch_for<__half>(p, a, w, sz, residual, c, M, N, K, group, workspace, stream);
}

}  // namespace vlm
