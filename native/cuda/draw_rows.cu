// The draw of draw_rows.h: one block of kThreads a row, every quantity a pass over the row (it sits in the L2
// after the lm_head wrote it), the order statistics found by radix selection over the logits' order-preserving
// 32-bit keys, 8 bits a pass, so no row is ever sorted:
//  1. max x; 2. top-k: the k-th largest key, then among the tokens with that key the index of the last one kept
//     (ties by index); 3. top-p: the key at which the kept weight, summed from the largest key down, reaches
//     top_p of the top-k weight, then the index among that key's tokens where it does; 4. the kept weight K and
//     the token at which the running weight, in vocabulary order, exceeds floor(u K).
// Weights are exp(x - max) in units of 2^-40 (integers): histogram bins and sums are exact whatever order the
// threads add in, so the token is the same run to run and from any grid.
#include "cuda/draw_rows.h"

#include <cstdint>

namespace vlm {
namespace cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr double kUnit = 1099511627776.0;  // 2^40: the largest weight, exp(0)

__device__ __forceinline__ uint32_t order_key(float x) {  // larger x, larger key; -0 and +0 the same key
  const uint32_t b = __float_as_uint(x + 0.f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ uint64_t weight_of(float x, float mx) {
  const float e = expf(x - mx);
  return e > 0.f ? (uint64_t)__double2ull_rn((double)e * kUnit) : 0;  // NaN logits weigh nothing
}

// Block-wide sum; every thread gets it. `scratch`: kWarps words of shared memory.
__device__ uint64_t block_sum(uint64_t v, uint64_t* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch free from any earlier use
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  uint64_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];  // the same order in every thread
  return total;
}

__device__ float block_max(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// Exclusive prefix sum over the threads in thread order; `scratch`: kWarps words.
__device__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t inclusive = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const uint64_t n = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  uint64_t before = 0;
  for (int w = 0; w < warp; ++w) before += scratch[w];
  return before + inclusive - v;
}

struct Shared {
  uint64_t bins[256];  // a radix pass's histogram: counts (top-k) or weights (top-p)
  uint64_t words[kWarps];
  float floats[kWarps];
  uint32_t prefix;     // the radix selection's key so far
  uint64_t carry;      // count or weight of the tokens above the selected bin
  int32_t index;       // a tie's last kept index, or the drawn token
};

// One radix pass: among the tokens that `in` admits whose key matches `prefix` on `mask`, bins by the 8 bits at
// `shift`, counting 1 (by_weight false) or the weight. Then, from the largest bin down, the first bin at which
// carry + bins reaches `target`: its bits join the prefix and carry takes what lay above it.
template <class In>
__device__ void radix_pass(const float* row, int vocab, float t, float mx, int shift, uint32_t mask,
                           bool by_weight, uint64_t target, In in, Shared& sh) {
  for (int b = threadIdx.x; b < 256; b += kThreads) sh.bins[b] = 0;
  __syncthreads();
  const uint32_t prefix = sh.prefix;
  // Each thread adds a run of tokens that fall in the same bin as one atomic: in the first pass nearly every
  // logit has the same top byte, and one shared-memory atomic a token would serialize the block on one bin.
  int run_bin = -1;
  uint64_t run = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float x = row[i] / t;
    const uint32_t key = order_key(x);
    if ((key & mask) != prefix || !in(i, x, key)) continue;
    const int bin = (int)((key >> shift) & 255u);
    if (bin != run_bin) {
      if (run_bin >= 0) atomicAdd(reinterpret_cast<unsigned long long*>(&sh.bins[run_bin]), (unsigned long long)run);
      run_bin = bin, run = 0;
    }
    run += by_weight ? weight_of(x, mx) : 1;
  }
  if (run_bin >= 0) atomicAdd(reinterpret_cast<unsigned long long*>(&sh.bins[run_bin]), (unsigned long long)run);
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t carry = sh.carry;
    int b = 255;
    for (; b > 0; --b) {
      if (carry + sh.bins[b] >= target) break;
      carry += sh.bins[b];
    }
    sh.prefix = prefix | ((uint32_t)b << shift);
    sh.carry = carry;
  }
  __syncthreads();
}

// The tokens of key `key` that `in` admits, in index order: the index at which carry + their running count
// (by_weight false) or weight reaches `target`.
template <class In>
__device__ int32_t tie_limit(const float* row, int vocab, float t, float mx, uint32_t key, bool by_weight,
                             uint64_t carry, uint64_t target, In in, Shared& sh) {
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, (int)threadIdx.x * chunk), hi = min(vocab, lo + chunk);
  uint64_t mine = 0;
  for (int i = lo; i < hi; ++i) {
    const float x = row[i] / t;
    if (order_key(x) == key && in(i, x, key)) mine += by_weight ? weight_of(x, mx) : 1;
  }
  uint64_t run = carry + block_exclusive_scan(mine, sh.words);
  if (threadIdx.x == 0) sh.index = vocab - 1;
  __syncthreads();
  if (run < target && run + mine >= target) {  // exactly one thread's stretch holds the crossing
    for (int i = lo; i < hi; ++i) {
      const float x = row[i] / t;
      if (order_key(x) != key || !in(i, x, key)) continue;
      run += by_weight ? weight_of(x, mx) : 1;
      if (run >= target) {
        sh.index = i;
        break;
      }
    }
  }
  __syncthreads();
  return sh.index;
}

__global__ void __launch_bounds__(kThreads, 1) draw_rows_kernel(const float* __restrict__ logits, int vocab,
                                                             DrawParams params, int32_t* __restrict__ tokens) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const float t = params.temperature[r];
  if (!(t > 0.f)) return;  // not a sampled row
  const float* row = logits + (size_t)r * vocab;
  const int top_k = params.top_k[r];
  const float top_p = params.top_p[r], min_p = params.min_p[r];

  float m = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) m = fmaxf(m, row[i] / t);
  const float mx = block_max(m, sh.floats);
  if (!(mx > -INFINITY)) return;  // no finite logit (or NaNs only): the argmax stays

  // Top-k: the k-th largest key, then how many of that key's tokens (lowest indices first) are kept.
  const bool use_k = top_k > 0 && top_k < vocab;
  uint32_t key_k = 0;
  int32_t idx_k = vocab - 1;
  auto everything = [](int, float, uint32_t) { return true; };
  if (use_k) {
    if (threadIdx.x == 0) sh.prefix = 0, sh.carry = 0;
    uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      radix_pass(row, vocab, t, mx, shift, mask, false, (uint64_t)top_k, everything, sh);
      mask |= 255u << shift;
    }
    key_k = sh.prefix;
    idx_k = tie_limit(row, vocab, t, mx, key_k, false, sh.carry, (uint64_t)top_k, everything, sh);
  }
  auto in_k = [=](int i, float, uint32_t key) { return !use_k || key > key_k || (key == key_k && i <= idx_k); };

  // Top-p within them: the key, then the index, at which the weight from the largest key down reaches top_p.
  const bool use_p = top_p < 1.f;
  uint32_t key_p = 0;
  int32_t idx_p = vocab - 1;
  if (use_p) {
    uint64_t mine = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float x = row[i] / t;
      if (in_k(i, x, order_key(x))) mine += weight_of(x, mx);
    }
    const uint64_t total = block_sum(mine, sh.words);
    uint64_t target = (uint64_t)ceil((double)top_p * (double)total);
    target = target < 1 ? 1 : (target > total ? total : target);
    if (threadIdx.x == 0) sh.prefix = 0, sh.carry = 0;
    __syncthreads();
    uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      radix_pass(row, vocab, t, mx, shift, mask, true, target, in_k, sh);
      mask |= 255u << shift;
    }
    key_p = sh.prefix;
    idx_p = tie_limit(row, vocab, t, mx, key_p, true, sh.carry, target, in_k, sh);
  }
  const double floor_w = min_p > 0.f ? (double)min_p * kUnit : 0.0;  // the largest weight is kUnit
  auto kept_weight = [=](int i) -> uint64_t {
    const float x = row[i] / t;
    const uint32_t key = order_key(x);
    if (!in_k(i, x, key)) return 0;
    if (use_p && !(key > key_p || (key == key_p && i <= idx_p))) return 0;
    const uint64_t w = weight_of(x, mx);
    return (double)w < floor_w ? 0 : w;
  };

  // The draw, in vocabulary order over contiguous stretches of the row.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, (int)threadIdx.x * chunk), hi = min(vocab, lo + chunk);
  uint64_t mine = 0;
  for (int i = lo; i < hi; ++i) mine += kept_weight(i);
  const uint64_t before = block_exclusive_scan(mine, sh.words);
  const uint64_t kept = block_sum(mine, sh.words);
  if (kept == 0) return;
  uint64_t target = (uint64_t)(params.u[r] * (double)kept);  // floor; below kept for u < 1
  if (target >= kept) target = kept - 1;
  if (before <= target && target < before + mine) {  // exactly one thread's stretch holds it
    uint64_t run = before;
    for (int i = lo; i < hi; ++i) {
      run += kept_weight(i);
      if (run > target) {
        tokens[r] = i;
        break;
      }
    }
  }
}

}  // namespace

cudaError_t draw_rows(const float* logits, int rows, int vocab, const DrawParams& params, int32_t* tokens,
                      cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  draw_rows_kernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, tokens);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace vlm
