// Weights of a later GEMM requested into the L2 by an earlier kernel (host and device view).
//
// Why: at decode sizes a layer's kernels are bound by fixed latencies, not bytes (2B w4a16 at batch 1: ~40 us a
// layer against ~11 us of weight bytes at the HBM rate), so HBM sits idle most of a layer while each GEMM still
// waits on its own weights from HBM. A kernel handed an L2Prefetch asks the L2 for those ranges (the weights and
// group records of the next GEMMs in the chain) after requesting its own, and the later GEMM then finds them in
// the L2. A hint only: nothing is read back, results do not change.
#pragma once
#include <cstdint>

namespace vlm {

struct L2Prefetch {
  static constexpr int kRanges = 4;  // a layer's next GEMM or two: each its codes and its group records
  const void* ptr[kRanges] = {nullptr, nullptr, nullptr, nullptr};
  int64_t bytes[kRanges] = {0, 0, 0, 0};

  // Appends [p, p + n), cut to what is left of `budget` bytes; false once the ranges or the budget are used up.
  bool add(const void* p, int64_t n, int64_t* budget) {
    if (!p || n <= 0) return true;
    for (int r = 0; r < kRanges; ++r) {
      if (bytes[r]) continue;
      const int64_t take = n < *budget ? n : *budget;
      if (take <= 0) return false;
      ptr[r] = p;
      bytes[r] = take;
      *budget -= take;
      return true;
    }
    return false;
  }
  bool empty() const { return bytes[0] == 0; }
};

}  // namespace vlm
