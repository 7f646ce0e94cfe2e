// Which weights each GEMM of a decode step asks the L2 to fetch for the GEMMs after it.
//
// At batch 1 a decode step's GEMMs are bound by memory latency, not bandwidth: a 2B layer's four
// GEMMs read 32 MB of 4-bit weights in ~30 us, about a fifth of what HBM could deliver, and the
// attention between them reads almost nothing. So while one GEMM runs, its blocks can also ask
// the L2 to fetch (cp.async.bulk.prefetch.L2, nothing waits for it) the weights of the GEMMs that
// follow, which then find them in the L2 instead of paying a DRAM round trip per stage.
//
// The plan walks the step's GEMMs in order with a window of `budget` bytes ahead of the running
// one: each GEMM prefetches whatever of the following GEMMs' ranges fits in the window and no
// earlier GEMM has prefetched already (a range may be taken in pieces across several GEMMs). The
// window plus the running GEMM's own bytes is what the L2 must hold at once, so `budget` is kept
// well under its size. Pure host code (tested in native/tests/unit_tests.cpp).
#pragma once
#include <cstdint>
#include <vector>

namespace vlm {

// What one kernel prefetches: up to kMaxRanges byte ranges (16-byte aligned, sizes multiples of 16),
// each spread over the kernel's blocks. Passed by value as a kernel argument.
struct L2Prefetch {
  static constexpr int kMaxRanges = 6;
  const unsigned char* ptr[kMaxRanges];
  uint32_t bytes[kMaxRanges];
  int count;
};

// One range of device memory a GEMM reads (its packed weights, its scales and zeros).
struct DeviceRange {
  const void* ptr;
  int64_t bytes;
};

// gemms[i]: the ranges GEMM i reads, in step order. Returns one L2Prefetch per GEMM. A GEMM whose
// share would need more than kMaxRanges pieces stops there (the next GEMM continues).
std::vector<L2Prefetch> plan_l2_prefetch(const std::vector<std::vector<DeviceRange>>& gemms, int64_t budget);

}  // namespace vlm
