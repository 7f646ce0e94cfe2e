// Greedy decoding's argmax over fp32 logit rows, split across blocks.
//
// Why split: one block per row read a 92,544-entry row in ~90 dependent rounds of loads, a 33 us kernel in
// every batch-1 decode step on the H200 (bench/decode_trace.py, 2026-12-03) for 0.37 MB. Here each
// row is cut into slices of a few thousand entries, one block each, with several loads in flight
// per thread; each slice leaves (value, index) in the scratch, and the last block of a row to
// finish (an arrival counter per row) reduces the slices in slice order and resets the counter, so
// the result does not depend on which finished last and the same scratch serves the next step.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda/argmax_best.cuh"
#include "cuda/decoder_kernels.h"
#include "cuda/dependent_launch.cuh"

namespace vlm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxSlices = 64;
constexpr int kSliceEntries = 4096;  // about 16 loads per thread

int slices_for(int vocab) { return std::min(kMaxSlices, std::max(1, (vocab + kSliceEntries - 1) / kSliceEntries)); }

// grid (rows, slices), kThreads threads. counters: one per row, zero; partial: rows * slices
// (value bits, index) pairs.
__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const float* __restrict__ logits, int vocab,
                                                                int32_t* __restrict__ index,
                                                                float* __restrict__ value, int* __restrict__ counters,
                                                                int2* __restrict__ partial) {
  pdl_wait();  // the logits come from the kernel before
  pdl_allow_next();
  const int row = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
  const int chunk = (vocab + slices - 1) / slices;
  const int lo = slice * chunk, hi = min(vocab, lo + chunk);
  const float* p = logits + (int64_t)row * vocab;
  float best = -INFINITY;
  int bi = INT_MAX;
#pragma unroll 8
  for (int i = lo + threadIdx.x; i < hi; i += kThreads) scan_best(p[i], i, best, bi);
  slices_best<kThreads>(best, bi, slice, slices, partial + (int64_t)row * slices, counters + row, index + row,
                        value + row);
}

}  // namespace

int64_t argmax_partial_bytes(int rows, int vocab) { return (int64_t)rows * slices_for(vocab) * 8; }

cudaError_t argmax_rows(const float* logits, int rows, int vocab, int32_t* index, float* value, int* counters,
                        void* partial, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int slices = slices_for(vocab);
  if (slices > 1 && (counters == nullptr || partial == nullptr)) return cudaErrorInvalidValue;
  return launch_dependent(argmax_rows_kernel, dim3(rows, slices), dim3(kThreads), 0, stream, logits, vocab, index,
                          value, counters, static_cast<int2*>(partial));
}

}  // namespace cuda
}  // namespace vlm
