// w4a16 GEMM on tensor cores: C = A · dequant(W)ᵀ with 4-bit weights (AWQ,
// per-group fp16/bf16 scale and zero), fp16/bf16 activations, fp32
// accumulation, mma.sync m16n8k16.
//
// Work split: a warp owns a strip of 64 output columns and a K slice; a
// block holds 4 warps (256 columns) and up to 64 rows of A staged in shared
// memory. Weights stream from global memory exactly once per row tile in
// the layout of cpu/w4a16_pack.h (16-byte loads, 512 contiguous bytes per
// warp step). Dequantization happens in registers: the code bits are placed
// into the mantissa of (magic + q), the zero point (stored as magic + z) is
// subtracted exactly and the scale multiplied. Small M fills the GPU with
// split-K: each K slice writes fp32 partials that a second kernel sums in a
// fixed order (deterministic), adding the optional residual; at decode sizes
// the GEMM's own last block per output tile does that sum instead (an arrival
// counter per tile in the workspace), saving a launch. This file never
// throws: errors return as cudaError_t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/w4a16_pack.h"
#include "cuda/w4a16_gemm.h"

namespace vlm {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockN = kWarps * kW4StripN;  // 256
constexpr int kSmemPad = 8;                   // halves per A row: keeps ldmatrix rows in distinct banks
constexpr int kUnroll = 4;                    // k16 steps whose weights are in flight together (8 for M <= 16)
constexpr int kMaxSmem = 160 * 1024;          // A slice staged per block (Hopper/Ampere allow more)

template <class T> struct Act;
template <> struct Act<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // half2(1024, 1024)
  __device__ static void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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
  __device__ static void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static uint32_t dequant(uint32_t bits, uint32_t zero2, uint32_t scale2) {
    __nv_bfloat162 h = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&bits), *reinterpret_cast<__nv_bfloat162*>(&zero2));
    h = __hmul2(h, *reinterpret_cast<__nv_bfloat162*>(&scale2));
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Two 16-byte halves of a lane's (scale, zero) values for one group: 8 columns each.
struct GroupParams {
  uint4 scale, zero;
};

__device__ __forceinline__ uint32_t pair(uint32_t packed16x2, int j) {
  // Replicates the j-th (0/1) 16-bit value of a word into both halves of a 2-vector.
  const uint32_t v = j ? (packed16x2 >> 16) : (packed16x2 & 0xFFFFu);
  return v | (v << 16);
}

// One lane's B fragments for one k16 step of a 64-column strip, from its 16 bytes of codes and its
// group's scales and zeros: b[tile][0] holds W[n][k], W[n][k+1] and b[tile][1] W[n][k+8], W[n][k+9],
// for n = 64 * strip + 8 * tile + lane / 4 and k = 16 * step + 2 * (lane % 4) (the mma m16n8k16 B layout).
template <class T>
__device__ __forceinline__ void dequant_fragments(const uint4& wv, const GroupParams& gp, uint32_t (&b)[8][2]) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  const uint32_t sc[4] = {gp.scale.x, gp.scale.y, gp.scale.z, gp.scale.w};
  const uint32_t zr[4] = {gp.zero.x, gp.zero.y, gp.zero.z, gp.zero.w};
#pragma unroll
  for (int wi = 0; wi < 4; ++wi)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int tile = 2 * wi + j;  // scale/zero of column 8*tile + g: 16-bit value `tile` of the lane's 8
      const uint32_t s2 = pair(sc[tile / 2], tile % 2), z2 = pair(zr[tile / 2], tile % 2);
      const uint32_t lo = ((words[wi] >> (8 * j)) & 0x000F000Fu) | Act<T>::kMagic;
      const uint32_t hi = ((words[wi] >> (8 * j + 4)) & 0x000F000Fu) | Act<T>::kMagic;
      b[tile][0] = Act<T>::dequant(lo, z2, s2);
      b[tile][1] = Act<T>::dequant(hi, z2, s2);
    }
}

// W [N][K] row-major in T from the packed layout: one warp per (strip, k16 step), with the GEMM's own
// fragment dequantization, so the values are bit for bit those its tensor cores multiply.
template <class T>
__global__ void dequant_kernel(const uint4* __restrict__ w, const uint4* __restrict__ sz, T* __restrict__ out, int N,
                               int K, int group) {
  const int64_t item = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32, ksteps = K / 16;
  if (item >= (int64_t)(N / kW4StripN) * ksteps) return;
  const int strip = (int)(item / ksteps), step = (int)(item % ksteps);
  const uint4 wv = load_streaming(w + item * 32 + lane);
  const uint4* szp = sz + (int64_t)strip * (K / group) * 16 + (lane / 4) + (int64_t)(step * 16 / group) * 16;
  const GroupParams gp{szp[0], szp[8]};
  uint32_t b[8][2];
  dequant_fragments<T>(wv, gp, b);
  const int k = step * 16 + 2 * (lane % 4);
#pragma unroll
  for (int tile = 0; tile < 8; ++tile) {
    T* row = out + (int64_t)(strip * kW4StripN + tile * 8 + lane / 4) * K + k;
    *reinterpret_cast<uint32_t*>(row) = b[tile][0];
    *reinterpret_cast<uint32_t*>(row + 8) = b[tile][1];
  }
}

// grid: (ceil(N / 256), splits, ceil(M / (16 * MT))); block: 128 threads.
// With splits > 1 every block writes fp32 partials; with `arrivals` the last block of
// an output tile to finish sums them (decode sizes), otherwise splitk_reduce_kernel does.
template <class T, int MT, int UNROLL>
__global__ void __launch_bounds__(kThreads) w4a16_kernel(const T* __restrict__ a, const uint4* __restrict__ w,
                                                          const uint4* __restrict__ sz, const T* __restrict__ residual,
                                                          T* __restrict__ c, float* __restrict__ partial,
                                                          int* __restrict__ arrivals, int M, int N, int K,
                                                          int group, int k_slice, bool silu_up) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sa = reinterpret_cast<T*>(smem_raw);
  const int lda_s = k_slice + kSmemPad;
  const int m0 = blockIdx.z * 16 * MT;
  const int k0 = blockIdx.y * k_slice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int strip = blockIdx.x * kWarps + warp;
  // N is a multiple of 64, not always of 256: the last block may hold strips past N,
  // whose warps help stage A and then leave.
  const bool active = strip < N / kW4StripN;
  const int ksteps_total = K / 16;
  const uint4* wp = w + ((int64_t)strip * ksteps_total + k0 / 16) * 32 + lane;

  // The first weights are requested before A is staged, so both latencies overlap.
  uint4 wv[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) wv[u] = active ? load_streaming(wp + (int64_t)u * 32) : make_uint4(0, 0, 0, 0);

  // Stage A[m0 : m0+16MT][k0 : k0+k_slice] (rows past M are zero).
  const int vec_per_row = k_slice / 8;
  for (int i = threadIdx.x; i < 16 * MT * vec_per_row; i += kThreads) {
    const int r = i / vec_per_row, v = i % vec_per_row;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (m0 + r < M) {
      if (silu_up) {  // A rows are [gate (K) | up (K)]: A = silu(gate) * up, rounded to T as a separate pass would
        const T* row = a + (int64_t)(m0 + r) * 2 * K + k0 + v * 8;
        const uint4 gv = *reinterpret_cast<const uint4*>(row), uv = *reinterpret_cast<const uint4*>(row + K);
        const T* gs = reinterpret_cast<const T*>(&gv);
        const T* us = reinterpret_cast<const T*>(&uv);
        T* out = reinterpret_cast<T*>(&val);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float g = Act<T>::to_float(gs[e]);
          out[e] = Act<T>::from_float(g / (1.0f + expf(-g)) * Act<T>::to_float(us[e]));
        }
      } else {
        val = *reinterpret_cast<const uint4*>(a + (int64_t)(m0 + r) * K + k0 + v * 8);
      }
    }
    *reinterpret_cast<uint4*>(sa + r * lda_s + v * 8) = val;
  }
  __syncthreads();

  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][j][q] = 0.f;

  const int groups = K / group;
  const uint4* szp = sz + (int64_t)strip * groups * 16 + (lane / 4);  // 16 uint4 per (strip, group)
  const int steps = k_slice / 16;
  const int steps_per_group = group / 16;
  GroupParams gp;

  // Strips past N only helped stage A (they still reach the barrier of the reduction below).
  for (int s0 = 0; active && s0 < steps; s0 += UNROLL) {
    if (s0 > 0) {
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) wv[u] = load_streaming(wp + (int64_t)(s0 + u) * 32);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int s = s0 + u;
      if (s % steps_per_group == 0) {
        const int gi = (k0 + s * 16) / group;
        gp.scale = szp[(int64_t)gi * 16];
        gp.zero = szp[(int64_t)gi * 16 + 8];
      }
      uint32_t b[8][2];
      dequant_fragments<T>(wv[u], gp, b);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t af[4];
        ldmatrix_x4(af, sa + (mt * 16 + (lane % 16)) * lda_s + s * 16 + (lane / 16) * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) Act<T>::mma(acc[mt][j], af, b[j][0], b[j][1]);
      }
    }
  }

  // Epilogue: fragment c0,c1 -> row g, cols 2t,2t+1; c2,c3 -> row g+8.
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + mt * 16 + g + half * 8;
        if (row >= M || !active) continue;
        const int col = strip * kW4StripN + j * 8 + 2 * t;
        float v0 = acc[mt][j][half * 2], v1 = acc[mt][j][half * 2 + 1];
        if (partial) {
          float* p = partial + ((int64_t)blockIdx.y * M + row) * N + col;
          *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
        } else {
          if (residual) {
            v0 += Act<T>::to_float(residual[(int64_t)row * N + col]);
            v1 += Act<T>::to_float(residual[(int64_t)row * N + col + 1]);
          }
          T* p = c + (int64_t)row * N + col;
          p[0] = Act<T>::from_float(v0);
          p[1] = Act<T>::from_float(v1);
        }
      }
  if (!partial || !arrivals) return;

  // The last K slice of this output tile to finish adds the slices in slice order (the
  // same sums as splitk_reduce_kernel) and leaves the tile's counter at zero again.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  int* counter = arrivals + blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == (int)gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int col0 = blockIdx.x * kBlockN, cols = min(kBlockN, N - col0), rows = min(16 * MT, M - m0);
  const int64_t mn = (int64_t)M * N;
  for (int i = threadIdx.x; i < rows * cols; i += kThreads) {
    const int64_t o = (int64_t)(m0 + i / cols) * N + col0 + i % cols;
    float acc_sum = 0.f;
    for (int k = 0; k < (int)gridDim.y; ++k) acc_sum += __ldcg(partial + k * mn + o);
    if (residual) acc_sum += Act<T>::to_float(residual[o]);
    c[o] = Act<T>::from_float(acc_sum);
  }
  if (threadIdx.x == 0) *counter = 0;
}

// Sums split-K partials in slice order (deterministic) and adds the residual.
template <class T>
__global__ void splitk_reduce_kernel(const float* __restrict__ partial, const T* __restrict__ residual,
                                     T* __restrict__ c, int64_t mn, int splits) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= mn) return;
  float s = 0.f;
  for (int k = 0; k < splits; ++k) s += partial[(int64_t)k * mn + i];
  if (residual) s += Act<T>::to_float(residual[i]);
  c[i] = Act<T>::from_float(s);
}

struct Plan {
  int mt, m_tiles, splits, k_slice, unroll;
  size_t smem;
  bool ok;
  bool fold;  // splits > 1 summed by the GEMM's last block per tile (no second kernel)
};

// The workspace starts with one arrival counter per output tile (zeroed by the caller
// once; every call leaves them at zero), then the fp32 partials.
constexpr int kArrivalInts = 4096;
constexpr int kFoldMaxM = 4;  // above this, a tile's reduction is too long for one block (measured at 16 rows)

int num_sms() {
  static int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 100;
  }();
  return sms;
}

// Split-K aims at this many resident blocks per SM (VLM_W4A16_BLOCKS_PER_SM overrides it, for tuning).
int blocks_per_sm() {
  static int v = [] {
    const char* e = std::getenv("VLM_W4A16_BLOCKS_PER_SM");
    const int x = e ? std::atoi(e) : 0;
    return x > 0 ? x : 4;
  }();
  return v;
}

Plan make_plan(int M, int N, int K, int group) {
  Plan p{};
  p.mt = M <= 16 ? 1 : (M <= 32 ? 2 : 4);
  p.unroll = p.mt == 1 ? 8 : kUnroll;  // one row tile: more weight bytes in flight per warp
  p.m_tiles = (M + 16 * p.mt - 1) / (16 * p.mt);
  const int blocks = ((N + kBlockN - 1) / kBlockN) * p.m_tiles;
  // Enough blocks for ~4 resident per SM, without slices shorter than one group
  // or one unrolled step, and with A's slice fitting shared memory.
  const int step = std::max(group, 16 * p.unroll);  // a slice is whole groups and whole unrolled steps
  const int max_splits = std::max(1, K / step);
  auto fits = [&](int sp) { return K % sp == 0 && (K / sp) % step == 0; };
  int splits = std::max(1, std::min(max_splits, (blocks_per_sm() * num_sms() + blocks - 1) / blocks));
  while (splits > 1 && !fits(splits)) --splits;
  if (!fits(splits)) {  // K is not a multiple of 16*unroll: fall back to the shorter unroll
    p.unroll = kUnroll;
    splits = 1;
  }
  p.ok = true;
  while ((size_t)16 * p.mt * (K / splits + kSmemPad) * 2 > kMaxSmem) {
    int next = splits + 1;
    while (next <= max_splits && !fits(next)) ++next;
    if (next > max_splits) {
      p.ok = false;
      break;
    }
    splits = next;
  }
  p.splits = splits;
  p.fold = splits > 1 && M <= kFoldMaxM && p.m_tiles * ((N + kBlockN - 1) / kBlockN) <= kArrivalInts;
  p.k_slice = K / splits;
  p.smem = (size_t)16 * p.mt * (p.k_slice + kSmemPad) * 2;
  return p;
}

template <class T, int MT, int UNROLL>
cudaError_t launch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                   int M, int N, int K, int group, void* workspace, bool silu_up, cudaStream_t stream) {
  auto kernel = w4a16_kernel<T, MT, UNROLL>;
  static bool smem_granted = false;  // per instantiation; raised once, not on every (graph-captured) call
  if (!smem_granted) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
    if (e != cudaSuccess) return e;
    smem_granted = true;
  }
  int* arrivals = static_cast<int*>(workspace);
  float* partial = reinterpret_cast<float*>(arrivals + kArrivalInts);
  dim3 grid((N + kBlockN - 1) / kBlockN, p.splits, p.m_tiles);
  kernel<<<grid, kThreads, p.smem, stream>>>(static_cast<const T*>(a), static_cast<const uint4*>(w),
                                             static_cast<const uint4*>(sz), static_cast<const T*>(residual),
                                             static_cast<T*>(c), p.splits > 1 ? partial : nullptr,
                                             p.fold ? arrivals : nullptr, M, N, K, group, p.k_slice, silu_up);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.splits == 1 || p.fold) return e;
  const int64_t mn = (int64_t)M * N;
  splitk_reduce_kernel<T><<<(unsigned)((mn + 255) / 256), 256, 0, stream>>>(partial, static_cast<const T*>(residual),
                                                                            static_cast<T*>(c), mn, p.splits);
  return cudaGetLastError();
}

template <class T>
cudaError_t dispatch(const Plan& p, const void* a, const void* w, const void* sz, const void* residual, void* c,
                     int M, int N, int K, int group, void* workspace, bool silu_up, cudaStream_t stream) {
  if (p.mt == 1 && p.unroll == 8)
    return launch<T, 1, 8>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.mt == 1) return launch<T, 1, kUnroll>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  if (p.mt == 2) return launch<T, 2, kUnroll>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
  return launch<T, 4, kUnroll>(p, a, w, sz, residual, c, M, N, K, group, workspace, silu_up, stream);
}

}  // namespace

int64_t w4a16_workspace_bytes(int M, int N, int K, int group) {
  const Plan p = make_plan(M, N, K, group);
  if (!p.ok) return -1;
  if (p.splits == 1) return 0;
  return (int64_t)kArrivalInts * 4 + (int64_t)p.splits * M * N * 4;
}

cudaError_t w4a16_gemm(const void* a, const void* w, const void* sz, const void* residual, void* c, int M, int N,
                       int K, int group, bool bf16, void* workspace, cudaStream_t stream, bool a_is_gate_up) {
  const Plan p = make_plan(M, N, K, group);
  if (!p.ok || (p.splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  if (bf16) return dispatch<__nv_bfloat16>(p, a, w, sz, residual, c, M, N, K, group, workspace, a_is_gate_up, stream);
  return dispatch<__half>(p, a, w, sz, residual, c, M, N, K, group, workspace, a_is_gate_up, stream);
}

cudaError_t w4a16_dequantize(const void* w, const void* sz, void* out, int N, int K, int group, bool bf16,
                             cudaStream_t stream) {
  const int64_t warps = (int64_t)(N / kW4StripN) * (K / 16);
  const unsigned blocks = (unsigned)((warps + kWarps - 1) / kWarps);
  if (bf16)
    dequant_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
        static_cast<const uint4*>(w), static_cast<const uint4*>(sz), static_cast<__nv_bfloat16*>(out), N, K, group);
  else
    dequant_kernel<__half><<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(w), static_cast<const uint4*>(sz),
                                                           static_cast<__half*>(out), N, K, group);
  return cudaGetLastError();
}

}  // namespace vlm
