#include "common/l2_prefetch_plan.h"

#include <algorithm>

namespace vlm {

std::vector<L2Prefetch> plan_l2_prefetch(const std::vector<std::vector<DeviceRange>>& gemms, int64_t budget) {
  const int n = (int)gemms.size();
  std::vector<L2Prefetch> plan(n, L2Prefetch{{}, {}, 0});
  // Every range of every GEMM after the first, in order, and how much of each has been asked for so far
  // (a prefix: pieces are taken from the front). The first GEMM's ranges are nobody's to prefetch.
  struct Pending {
    int gemm;
    const unsigned char* ptr;
    int64_t bytes, taken;
  };
  std::vector<Pending> pending;
  for (int g = 1; g < n; ++g)
    for (const DeviceRange& r : gemms[g])
      if (r.bytes >= 16) pending.push_back({g, static_cast<const unsigned char*>(r.ptr), r.bytes / 16 * 16, 0});
  size_t first = 0;  // the first pending range of a GEMM after the current one
  for (int g = 0; g + 1 < n && budget >= 16; ++g) {
    while (first < pending.size() && pending[first].gemm <= g) ++first;
    int64_t window = 0;  // bytes of the GEMMs after g, from g + 1 on, that the window already spans
    L2Prefetch& p = plan[g];
    for (size_t i = first; i < pending.size() && window < budget && p.count < L2Prefetch::kMaxRanges; ++i) {
      Pending& r = pending[i];
      const int64_t room = budget - window;
      const int64_t upto = std::min(r.bytes, room) / 16 * 16;  // this range's prefix inside the window
      if (upto > r.taken) {
        // A kernel argument holds 32-bit sizes: larger pieces go out over several GEMMs.
        const int64_t piece = std::min<int64_t>(upto - r.taken, int64_t{1} << 31);
        p.ptr[p.count] = r.ptr + r.taken;
        p.bytes[p.count] = (uint32_t)piece;
        ++p.count;
        r.taken += piece;
      }
      window += std::min(r.bytes, room);
    }
  }
  return plan;
}

}  // namespace vlm
