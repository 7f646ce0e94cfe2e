// The persistent layer-tail kernel (w4a16_layer_tail.h): o, the post-attention norm with
// gate_up, silu * up with down, and the next layer's input norm with q/k/v, in one launch of
// resident blocks.
//
// Each GEMM ("phase") is cut as the decode kernel cuts it for the same plan (w4a16_decode_plan():
// column blocks of S strips, C K slices, units of U steps) into items (column block, slice); the
// grid's blocks take items in turn. An item is the decode kernel's block: its warps' rings, the
// codes on the tensor cores, the block's partial (w4a16_decode_block.cuh). Where the decode kernel
// sums a column block's C partials across a thread-block cluster, here each item stores its
// partial in global memory and the last of the C to arrive sums them, in slice order as the
// cluster does: the same bits. Between phases a grid-wide barrier (a counter every block adds to
// and waits on); before it, each block has already requested its next item's first ring stages,
// so the weight stream does not stop at the barrier.
//
// The grid is the blocks the GPU holds at once, so every block is resident while others wait at a
// barrier (the launch is a dependent one like the chain's, not a cooperative one: it starts its
// weight loads while the attention before it finishes, and a cooperative kernel's programmatic
// edges are not something the chain has relied on). The counter is zeroed once a step; each
// launch is told where it starts (LayerTailWorkspace), so no launch needs its own reset.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "cpu/w4a16_pack.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/env_int.h"
#include "cuda/grid_counter.cuh"
#include "cuda/rms_norm_row.cuh"
#include "cuda/w4a16_decode.h"
#include "cuda/w4a16_decode_block.cuh"
#include "cuda/w4a16_layer_tail.h"

namespace vlm {
namespace {

using w4a16::Act;
using w4a16::BlockSlice;
using w4a16::WarpRing;
using w4a16::kDecodeMaxCluster;
using w4a16::kDecodeThreads;
using w4a16::kDecodeWarps;

// Ring stages a warp: the deeper of the decode kernel's two depths where shared memory allows (the depth changes
// when bytes arrive, not what is summed, and with one block an SM it is what keeps bytes in flight), else 8.
constexpr int kDeepStages = 16, kShallowStages = 8;
constexpr int kMaxPhases = 4;
constexpr int kMaxRows = kLayerTailMaxRows;  // two 8-row tiles of the mma's activation operand
constexpr int kTileRows = 8;
constexpr int kRedPerTile = 512;  // floats a warp leaves a tile's sums in (4 x 4 x 32)

struct Phase {
  const uint4* w;
  const uint4* sz;
  const float* bias;  // null: none
  const void* a;      // the input where norm.weight is null ([M][K], or [M][2K] of gate | up with silu_up)
  RmsNormInput norm;  // norm.weight set: the input is rms_norm(norm.h + norm.delta) (h_out by column block 0)
  void* c;            // [M][N]
  int N, K, group_shift, S, C, U, slice_steps;
  bool silu_up;
};

struct Params {
  Phase phase[kMaxPhases];
  int phases, M;
  float* partials;
  int* arrivals;
  unsigned* barrier;
  unsigned barrier_start;
};

__host__ __device__ inline int tiles_of(int rows) { return (rows + kTileRows - 1) / kTileRows; }

// Shared memory: rings (weights, group records), the warps' sums, the block's partial, the staged A of `rows` rows.
struct Layout {
  int ring, grp, red, part, a, bytes;
};
__host__ __device__ inline Layout layout_of(int lda, int rows, int stages) {
  Layout l;
  l.ring = 0;
  l.grp = l.ring + kDecodeWarps * stages * 512;
  l.red = l.grp + kDecodeWarps * stages * 256;
  l.part = l.red + kDecodeWarps * tiles_of(rows) * kRedPerTile * 4;
  l.a = l.part + w4a16::kDecodeMaxStrips * rows * kW4StripN * 4;
  l.bytes = l.a + rows * lda * 2;
  return l;
}
__host__ __device__ inline int longest_row(const Params& p) {  // halves per staged A row: the longest slice + pad
  int lda = 0;
  for (int ph = 0; ph < p.phases; ++ph) {
    const int need = p.phase[ph].slice_steps * 16 + w4a16::kDecodeSmemPad;
    lda = need > lda ? need : lda;
  }
  return lda;
}

__host__ __device__ inline int column_blocks(const Phase& f) { return (f.N / kW4StripN + f.S - 1) / f.S; }
__host__ __device__ inline int items_of(const Phase& f) { return column_blocks(f) * f.C; }

// Every block adds one and waits for `target` (the blocks of the grid times the barriers so far). The fences
// make each block's writes before the barrier visible to every block after it, as a cooperative grid sync does.
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    cuda::wait_for_count(counter, target);
    __threadfence();
  }
  __syncthreads();
}

struct Smem {
  uint4* ring;
  uint4* grp;
  float* red;
  float* part;
  unsigned char* a;
};

template <int U, int ST>
__device__ __forceinline__ void prime_unit(const Phase& f, int item, const Smem& s, int warp, int lane) {
  const BlockSlice b = w4a16::block_slice(item / f.C, item % f.C, f.C, f.S, f.N, f.K, U, warp);
  w4a16::warp_ring<U, ST>(b, f.w, f.sz, f.K, f.group_shift, s.ring, s.grp, warp, lane).prime();
}
// The first ring stages of `item` of phase f (weights only: it may run before the phase's input exists).
template <int ST>
__device__ __forceinline__ void prime(const Phase& f, int item, const Smem& s, int warp, int lane) {
  switch (f.U) {
    case 8: prime_unit<8, ST>(f, item, s, warp, lane); break;
    case 4: prime_unit<4, ST>(f, item, s, warp, lane); break;
    default: prime_unit<2, ST>(f, item, s, warp, lane);
  }
}

// This block's item after (ph, item): the next of the same phase, else its first of a later phase; false if none.
__device__ __forceinline__ bool next_item(const Params& p, int ph, int item, int* nph, int* nitem) {
  if (item + (int)gridDim.x < items_of(p.phase[ph])) {
    *nph = ph;
    *nitem = item + gridDim.x;
    return true;
  }
  for (int q = ph + 1; q < p.phases; ++q)
    if ((int)blockIdx.x < items_of(p.phase[q])) {
      *nph = q;
      *nitem = blockIdx.x;
      return true;
    }
  return false;
}

// One item of phase ph (its ring primed): stage its A, run the rings, start the next item's weights, sum the
// block's partial and, once the column block's C partials are in, write its outputs.
template <class T, int U, int ST, int NT>
__device__ void run_item(const Params& p, int ph, int item, const Smem& s, int warp, int lane) {
  const Phase& f = p.phase[ph];
  const int M = p.M, bx = item / f.C, rank = item % f.C;
  const BlockSlice b = w4a16::block_slice(bx, rank, f.C, f.S, f.N, f.K, U, warp);
  const WarpRing<U, ST> ring = w4a16::warp_ring<U, ST>(b, f.w, f.sz, f.K, f.group_shift, s.ring, s.grp, warp, lane);
  T* sa = reinterpret_cast<T*>(s.a);
  const int lda = f.slice_steps * 16 + w4a16::kDecodeSmemPad;
  const int vec_per_row = (b.bs1 - b.bs0) * 2;
  if (f.norm.weight) {
    cuda::stage_rms_norm_rows<T, kMaxRows, true>(f.norm, M, f.K, b.bs0 * 16, vec_per_row, sa, lda,
                                                   f.norm.h_out && bx == 0);
  } else {
    for (int i = threadIdx.x; i < M * vec_per_row; i += kDecodeThreads) {
      const int r = i / vec_per_row, v = i % vec_per_row;
      *reinterpret_cast<uint4*>(sa + r * lda + v * 8) =
          w4a16::load_a8<T, true>(static_cast<const T*>(f.a), r, b.bs0 * 16 + v * 8, f.K, f.silu_up);
    }
  }
  __syncthreads();

  const T* b_rows[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n)
    b_rows[n] = sa + min(kTileRows * n + lane % 8, M - 1) * lda + ((lane / 8) % 2) * 8 + (b.ws0 - b.bs0) * 16;
  float acc[NT][4][4];
  w4a16::ring_sums<T, U, ST, NT>(ring, b_rows, acc);
  int nph, nitem;
  if (next_item(p, ph, item, &nph, &nitem)) prime<ST>(p.phase[nph], nitem, s, warp, lane);
  w4a16::block_partial<NT>(acc, s.red, NT * kRedPerTile, s.part, f.S, M, b.kw, warp, lane);

  const int elems = f.S * M * kW4StripN;
  auto store = [&](int e, float v) {
    int64_t o;
    if (!w4a16::partial_element<kMaxRows>(e, bx, f.S, M, f.N, &o)) return;
    T y = Act<T>::from_float(v);
    // As the bias kernel after the chain's GEMM: the GEMM's output rounded, then the bias added and rounded.
    if (f.bias) y = Act<T>::from_float(Act<T>::to_float(y) + f.bias[o % f.N]);
    static_cast<T*>(f.c)[o] = y;
  };
  if (f.C == 1) {
    for (int e = threadIdx.x; e < elems; e += kDecodeThreads) store(e, s.part[e]);
    return;
  }
  float* mine = p.partials + (int64_t)item * elems;  // items of a column block are consecutive: bx * C + rank
  for (int e = threadIdx.x; e < elems; e += kDecodeThreads) __stcg(mine + e, s.part[e]);
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const int before = atomicAdd(p.arrivals + bx, 1);
    __threadfence();  // the other blocks' partials, published before their arrivals, are read after this one
    last = before == f.C - 1;
    if (last) p.arrivals[bx] = 0;  // left at zero for the next phase and launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const float* column_block = p.partials + (int64_t)bx * f.C * elems;
  for (int e = threadIdx.x; e < elems; e += kDecodeThreads) {
    float v = 0.f;
#pragma unroll
    for (int r = 0; r < kDecodeMaxCluster; ++r) v += r < f.C ? __ldcg(column_block + (int64_t)r * elems + e) : 0.f;
    store(e, v);
  }
}

// NT: tiles of 8 rows (1 up to 8 rows, 2 up to 16).
template <class T, int ST, int NT>
__global__ void __launch_bounds__(kDecodeThreads, 1) layer_tail_kernel(const __grid_constant__ Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(kDecodeThreads == cuda::kRmsNormThreads, "the shared norm arithmetic is defined for 256 threads");
  extern __shared__ __align__(16) unsigned char smem[];
  const Layout L = layout_of(longest_row(p), p.M, ST);
  const Smem s{reinterpret_cast<uint4*>(smem + L.ring), reinterpret_cast<uint4*>(smem + L.grp),
               reinterpret_cast<float*>(smem + L.red), reinterpret_cast<float*>(smem + L.part), smem + L.a};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  {
    int ph = 0;
    while (ph < p.phases && (int)blockIdx.x >= items_of(p.phase[ph])) ++ph;
    if (ph < p.phases) prime<ST>(p.phase[ph], blockIdx.x, s, warp, lane);
  }
  // Weights depend on no earlier kernel: the first ones were requested above, while the attention may still run.
  cuda::pdl_wait();
  unsigned target = p.barrier_start;
  for (int ph = 0; ph < p.phases; ++ph) {
    const Phase& f = p.phase[ph];
    // The next kernel (the next layer's attention, launched dependent) may start its own prologue during the last
    // GEMM: its blocks wait for this whole grid before they read anything it writes (dependent_launch.cuh).
    if (ph + 1 == p.phases) cuda::pdl_allow_next();
    for (int item = blockIdx.x; item < items_of(f); item += gridDim.x) {
      switch (f.U) {
        case 8: run_item<T, 8, ST, NT>(p, ph, item, s, warp, lane); break;
        case 4: run_item<T, 4, ST, NT>(p, ph, item, s, warp, lane); break;
        default: run_item<T, 2, ST, NT>(p, ph, item, s, warp, lane);
      }
      __syncthreads();  // the item's shared memory is read before the next item's A overwrites it
    }
    if (ph + 1 < p.phases) grid_barrier(p.barrier, target += gridDim.x);
  }
#endif
}

// Hopper code present (older PTX leaves the kernel's body empty), and not an MPS client: the grid is sized to be
// resident on every SM at once, which a client of an MPS server cannot rely on (a share of the SMs may be set by
// the client's environment or by the server's control daemon, and other clients' kernels hold SMs), and blocks
// waiting at a barrier for blocks that cannot start would wait until the barrier's timeout. Whether the engine
// uses the tail is its own setting.
bool decide_supported() {
  for (const char* mps : {"CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"})
    if (const char* v = std::getenv(mps); v && *v) return false;
  return cuda::hopper_code_runs();
}

// k16 steps of a GEMM's longest K slice: its units cut into C slices as evenly as block_slice() cuts them.
int slice_steps_of(const Phase& f) { return (f.K / 16 / f.U + f.C - 1) / f.C * f.U; }

// The phases of `args` without their activation pointers, each cut as the decode kernel cuts it: its plan for
// these rows up to 4 (the chain's own, so the chain's bits), else the 4-row plan (how K and N are cut does not
// depend on the rows; launch_for() may cut K finer where the staged A of more rows needs it); false where a GEMM
// has none.
bool plan_phases(const LayerTailArgs& a, Params* p) {
  const W4a16Layer* layers[kMaxPhases] = {&a.o, &a.gate_up, &a.down, &a.next_qkv};
  p->phases = a.next_qkv.w ? 4 : 3;
  p->M = a.M;
  for (int i = 0; i < p->phases; ++i) {
    const W4a16Layer& l = *layers[i];
    int S = 0, C = 0, U = 0, ring = 0;
    if (!l.w || !l.scale_zero || (l.group != 64 && l.group != 128)) return false;
    w4a16_decode_plan(std::min(a.M, kMaxDecodeRows), l.N, l.K, l.group, &S, &C, &U, &ring);
    if (S == 0 || C > kDecodeMaxCluster || (U != 2 && U != 4 && U != 8)) return false;
    Phase& f = p->phase[i];
    f = Phase{};
    f.w = static_cast<const uint4*>(l.w);
    f.sz = static_cast<const uint4*>(l.scale_zero);
    f.bias = l.bias;
    f.N = l.N;
    f.K = l.K;
    f.group_shift = l.group == 128 ? 3 : 2;
    f.S = S;
    f.C = C;
    f.U = U;
    f.slice_steps = slice_steps_of(f);
  }
  return true;
}

template <class T, int ST, int NT>
constexpr auto kernel_of() {
  return layer_tail_kernel<T, ST, NT>;
}

int current_device() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return device;
}

// The current device's SMs, 0 where the runtime cannot say (then the tail does not run: its grid must fit).
int device_sms() {
  thread_local std::map<int, int> cache;
  const int device = current_device();
  if (auto it = cache.find(device); it != cache.end()) return it->second;
  int n = 0;
  if (device < 0 || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return cache.emplace(device, n).first->second;
}

// The dynamic shared memory a block of this instantiation may have on the current device: its opt-in limit a block
// less the kernel's own static shared memory (the norm's sums, the arrival flag); granted once a device (the most
// any launch may ask: launches of several sizes interleave), 0 where it cannot be.
template <class T, int ST, int NT>
int granted_smem() {
  thread_local std::map<int, int> cache;
  const int device = current_device();
  if (auto it = cache.find(device); it != cache.end()) return it->second;
  cudaFuncAttributes attrs{};
  int optin = 0, most = 0;
  if (device >= 0 && cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
      cudaFuncGetAttributes(&attrs, kernel_of<T, ST, NT>()) == cudaSuccess) {
    most = optin - (int)attrs.sharedSizeBytes;
    if (most <= 0 ||
        cudaFuncSetAttribute(kernel_of<T, ST, NT>(), cudaFuncAttributeMaxDynamicSharedMemorySize, most) != cudaSuccess)
      most = 0;
  }
  cudaGetLastError();  // not sticky: leave no error for the caller's own checks
  return cache.emplace(device, most).first->second;
}

// What one (ring depth, row tiles) form may use on the current device: the shared memory both activation types
// were granted, and the blocks an SM holds with `smem` bytes each, the fewer of the two (asked once per size).
template <int ST, int NT>
struct Form {
  static int smem_limit() { return std::min(granted_smem<__half, ST, NT>(), granted_smem<__nv_bfloat16, ST, NT>()); }
  static int resident_blocks(int smem) {
    if (smem > smem_limit()) return 0;
    thread_local std::map<std::pair<int, int>, int> cache;
    const auto key = std::make_pair(current_device(), smem);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    int fp16 = 0, bf16 = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fp16, kernel_of<__half, ST, NT>(), kDecodeThreads, smem) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bf16, kernel_of<__nv_bfloat16, ST, NT>(), kDecodeThreads,
                                                      smem) != cudaSuccess) {
      cudaGetLastError();
      fp16 = bf16 = 0;
    }
    return cache.emplace(key, std::min(fp16, bf16)).first->second;
  }
};

int smem_limit(int stages, int tiles) {
  if (stages == kDeepStages) return tiles == 1 ? Form<kDeepStages, 1>::smem_limit() : Form<kDeepStages, 2>::smem_limit();
  return tiles == 1 ? Form<kShallowStages, 1>::smem_limit() : Form<kShallowStages, 2>::smem_limit();
}
int resident_blocks(int stages, int tiles, int smem) {
  if (stages == kDeepStages)
    return tiles == 1 ? Form<kDeepStages, 1>::resident_blocks(smem) : Form<kDeepStages, 2>::resident_blocks(smem);
  return tiles == 1 ? Form<kShallowStages, 1>::resident_blocks(smem) : Form<kShallowStages, 2>::resident_blocks(smem);
}

struct Launch {
  int stages, smem, grid;
  size_t partial_floats, arrival_ints;
};

// Ring depth, shared memory, grid and workspace of a planned launch: 16 stages where they fit, else 8 (or the other
// way round, VLM_LAYER_TAIL_RING=8). Where the cut need not be the chain's (past 4 rows, or `recut`: the tail's own
// cut), a GEMM whose K slice would not fit the staged A of M rows is cut into the fewest more slices (up to 8) that
// fit; false where nothing fits. p's slices are updated to what runs.
bool launch_for(Params* p, Launch* out, bool recut) {
  const int tiles = tiles_of(p->M), sms = device_sms();
  if (sms <= 0) return false;
  // VLM_LAYER_TAIL_RING=8 tries the shallow ring first (more blocks an SM where the staged A is small), for
  // measuring one depth against the other.
  static const bool shallow_first = cuda::env_int("VLM_LAYER_TAIL_RING", kDeepStages) == kShallowStages;
  const int order[2] = {shallow_first ? kShallowStages : kDeepStages, shallow_first ? kDeepStages : kShallowStages};
  for (int stages : order) {
    Params q = *p;
    const int fixed = layout_of(0, q.M, stages).bytes, limit = smem_limit(stages, tiles);
    const int most_lda = (limit - fixed) / (q.M * 2);  // halves a staged row may take
    bool fits = most_lda > 0;
    for (int i = 0; i < q.phases && fits; ++i) {
      Phase& f = q.phase[i];
      while ((recut || q.M > kMaxDecodeRows) && f.slice_steps * 16 + w4a16::kDecodeSmemPad > most_lda &&
             f.C < kDecodeMaxCluster) {
        ++f.C;
        f.slice_steps = slice_steps_of(f);
      }
      fits = f.slice_steps * 16 + w4a16::kDecodeSmemPad <= most_lda;
    }
    if (!fits) continue;
    const int smem = layout_of(longest_row(q), q.M, stages).bytes;
    const int per_sm = resident_blocks(stages, tiles, smem);
    if (per_sm < 1) continue;
    size_t partials = 0, arrivals = 0;
    for (int i = 0; i < q.phases; ++i) {
      const Phase& f = q.phase[i];
      if (f.C > 1) partials = std::max(partials, (size_t)items_of(f) * f.S * q.M * kW4StripN);
      arrivals = std::max(arrivals, (size_t)column_blocks(f));
    }
    *p = q;
    *out = Launch{stages, smem, per_sm * sms, partials, arrivals};
    return true;
  }
  return false;
}

// The tail's own cut of one GEMM for `grid` resident blocks (VLM_LAYER_TAIL_WIDE=1). The decode kernel's cut is
// made for 3-4 resident blocks an SM; at the tail's one block an SM its short items run one after another, each a
// round trip with its own staged A, reduction and partial exchange (2B gate_up at one row: 512 items of 8 steps a
// warp for 132 blocks; docs/benchmarks/cuda_engine.md, eighth session). Here: the cut whose busiest block takes the
// least time by a simple model — waves (items over the grid, rounded up) times an item's weight (S strips of a K
// slice, in k16 steps) plus its fixed cost — among equals fewer K slices, then fewer items. The fixed costs are in
// steps of one SM's share of the bandwidth (512 bytes at ~23 GB/s, ~22 ns): ~1.4 us for an item's first round trip,
// staged A and reduction, ~1 us more where its partial goes through global memory; estimates, to be measured.
// Not the chain's sum order at any row count.
constexpr int kItemFixedSteps = 64, kExchangeSteps = 48;
void widen(Phase* f, int grid) {
  const int strips = f->N / kW4StripN, ksteps = f->K / 16, gsteps = 1 << f->group_shift;
  int64_t best_cost = -1, best_items = 0;
  int best_s = 0, best_c = 0, best_u = 0;
  for (int C = 1; C <= kDecodeMaxCluster; ++C)
    for (int S : {4, 2, 1}) {
      const int kw = kDecodeWarps / S;
      int U = gsteps;
      while (U > 2 && ksteps / U < C * kw) U /= 2;
      if (ksteps / U < C * kw) continue;  // every warp at least one unit
      const int64_t items = (int64_t)(strips + S - 1) / S * C, waves = (items + grid - 1) / grid;
      const int64_t slice = (int64_t)(ksteps / U + C - 1) / C * U;
      const int64_t cost = waves * (S * slice + kItemFixedSteps + (C > 1 ? kExchangeSteps : 0));
      if (best_cost < 0 || cost < best_cost || (cost == best_cost && C == best_c && items < best_items)) {
        best_cost = cost, best_items = items, best_s = S, best_c = C, best_u = U;
      }
    }
  if (best_cost < 0) return;  // no cut gives every warp a unit: the decode kernel's stays
  f->S = best_s;
  f->C = best_c;
  f->U = best_u;
  f->slice_steps = slice_steps_of(*f);
}

// A planned launch for these shapes on the current device, without pointers: each phase's cut (S, C, U, slice)
// and the launch's form. Planned once per shape (the engine asks it for every layer of every eager step).
struct Planned {
  bool ok = false;
  Params shape{};
  Launch launch{};
};
const Planned& planned(const LayerTailArgs& a) {
  using Key = std::array<int, 16>;
  const Key key{current_device(), a.M, a.o.N, a.o.K, a.o.group, a.gate_up.N, a.gate_up.K, a.gate_up.group,
                a.down.N, a.down.K, a.down.group, a.next_qkv.w ? 1 : 0, a.next_qkv.N, a.next_qkv.K,
                a.next_qkv.group, 0};
  thread_local std::map<Key, Planned> cache;
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  Planned pl;
  pl.ok = plan_phases(a, &pl.shape) && launch_for(&pl.shape, &pl.launch, false);
  const bool wide = w4a16_layer_tail_wide_cut();  // read once a process
  // The wide cut depends on the grid, and the grid on the shared memory its staged A needs: cut for the chain's
  // grid, plan the launch, and cut again once if that launch has fewer blocks.
  for (int pass = 0; wide && pl.ok && pass < 2; ++pass) {
    const int grid = pl.launch.grid;
    Params q = pl.shape;
    for (int i = 0; i < q.phases; ++i) widen(&q.phase[i], grid);
    Launch l{};
    pl.ok = launch_for(&q, &l, true);
    pl.shape = q;
    pl.launch = l;
    if (!pl.ok || l.grid >= grid) break;
  }
  // With the step profiler on, each shape's cut once on stderr, to read the profile's tail times against.
  static const bool report = cuda::env_int("VLM_CUDA_PROFILE", 0) != 0;
  if (report && pl.ok) {
    std::fprintf(stderr, "[vlm layer tail] %d rows, %s cut, grid %d, %d ring stages:", a.M, wide ? "wide" : "chain",
                 pl.launch.grid, pl.launch.stages);
    for (int i = 0; i < pl.shape.phases; ++i) {
      const Phase& f = pl.shape.phase[i];
      std::fprintf(stderr, " [%dx%d S=%d C=%d U=%d items %d]", f.N, f.K, f.S, f.C, f.U, items_of(f));
    }
    std::fprintf(stderr, "\n");
  }
  return cache.emplace(key, pl).first->second;
}

bool shapes_fit(const LayerTailArgs& a) {
  const int H = a.o.N;
  return a.M >= 1 && a.M <= kMaxRows && H % 8 == 0 && a.gate_up.K == H && a.down.N == H &&
         a.gate_up.N == 2 * a.down.K && (!a.next_qkv.w || a.next_qkv.K == H);
}

template <class T, int NT>
cudaError_t launch_tiles(const Launch& l, const Params& p, cudaStream_t stream) {
  if (l.stages == kDeepStages)
    return cuda::launch_dependent(kernel_of<T, kDeepStages, NT>(), dim3(l.grid), dim3(kDecodeThreads), l.smem, stream,
                                  p);
  return cuda::launch_dependent(kernel_of<T, kShallowStages, NT>(), dim3(l.grid), dim3(kDecodeThreads), l.smem,
                                stream, p);
}
template <class T>
cudaError_t launch(const Launch& l, const Params& p, cudaStream_t stream) {
  return tiles_of(p.M) == 1 ? launch_tiles<T, 1>(l, p, stream) : launch_tiles<T, 2>(l, p, stream);
}

}  // namespace

bool w4a16_layer_tail_wide_cut() {
  static const bool wide = cuda::env_int("VLM_LAYER_TAIL_WIDE", 0) != 0;
  return wide;
}

bool w4a16_layer_tail_plan(const LayerTailArgs& args, size_t* partial_floats, size_t* arrival_ints, int* grid) {
  static const bool supported = decide_supported();
  if (!supported || !shapes_fit(args)) return false;
  const Planned& pl = planned(args);
  if (!pl.ok) return false;
  *partial_floats = pl.launch.partial_floats;
  *arrival_ints = pl.launch.arrival_ints;
  *grid = pl.launch.grid;
  return true;
}

cudaError_t w4a16_layer_tail(const LayerTailArgs& a, const LayerTailWorkspace& ws, bool bf16, cudaStream_t stream,
                             unsigned* barrier_arrivals) {
  static const bool supported = decide_supported();
  if (!supported || !shapes_fit(a)) return cudaErrorInvalidValue;
  const Planned& pl = planned(a);
  if (!pl.ok || !ws.barrier || !ws.arrivals || (pl.launch.partial_floats && !ws.partials) || !a.attn || !a.delta ||
      !a.gate_up_out || !a.h || !a.h_other || a.h == a.h_other || !a.post_norm ||
      (a.next_qkv.w && (!a.qkv_out || !a.next_input_norm)))
    return cudaErrorInvalidValue;
  // The planned cut of each GEMM with this layer's weights. o: attn -> delta. gate_up: rms_norm(h + delta) ->
  // gate_up_out, h + delta -> h_other. down: silu(gate) * up -> delta. q/k/v of the next layer:
  // rms_norm(h_other + delta) -> qkv_out, h_other + delta -> h.
  Params p = pl.shape;
  const W4a16Layer* layers[kMaxPhases] = {&a.o, &a.gate_up, &a.down, &a.next_qkv};
  for (int i = 0; i < p.phases; ++i) {
    p.phase[i].w = static_cast<const uint4*>(layers[i]->w);
    p.phase[i].sz = static_cast<const uint4*>(layers[i]->scale_zero);
    p.phase[i].bias = layers[i]->bias;
  }
  p.phase[0].a = a.attn;
  p.phase[0].c = a.delta;
  p.phase[1].norm = RmsNormInput{a.h, a.delta, a.post_norm, a.h_other, a.eps};
  p.phase[1].c = a.gate_up_out;
  p.phase[2].a = a.gate_up_out;
  p.phase[2].silu_up = true;
  p.phase[2].c = a.delta;
  if (p.phases == 4) {
    p.phase[3].norm = RmsNormInput{a.h_other, a.delta, a.next_input_norm, a.h, a.eps};
    p.phase[3].c = a.qkv_out;
  }
  p.partials = ws.partials;
  p.arrivals = ws.arrivals;
  p.barrier = ws.barrier;
  p.barrier_start = ws.barrier_start;
  const cudaError_t e = bf16 ? launch<__nv_bfloat16>(pl.launch, p, stream) : launch<__half>(pl.launch, p, stream);
  if (e == cudaSuccess && barrier_arrivals) *barrier_arrivals = (unsigned)((p.phases - 1) * pl.launch.grid);
  return e;
}

}  // namespace vlm
