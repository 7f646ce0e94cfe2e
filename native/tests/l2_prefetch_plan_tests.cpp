// The L2 prefetch plan (common/l2_prefetch_plan.cpp) against what it promises, on random sequences of
// GEMMs (1-5 ranges each, sizes from 16 bytes to far over the budget) and budgets, simulated in 16-byte
// units over fake addresses: every piece lies inside a range of a later GEMM and inside the asking GEMM's
// window (the first `budget` bytes of what follows it); no unit is asked for twice; and by the time GEMM
// g runs, everything in its window has been asked for unless g's plan is full (kMaxRanges pieces).
// Plus the 2B layer's plan written out by hand. Fails with a line per broken promise.
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

#include "common/l2_prefetch_plan.h"

namespace {

int failures = 0;
#define EXPECT(cond, ...)                                  \
  do {                                                     \
    if (!(cond)) {                                         \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
      ++failures;                                          \
    }                                                      \
  } while (0)

using vlm::DeviceRange;
using vlm::L2Prefetch;

// Fake device addresses: range r of the test starts at kBase + its offset in one flat space (never read).
constexpr uintptr_t kBase = 0x100000;

const void* at(int64_t offset) { return reinterpret_cast<const void*>(kBase + (uintptr_t)offset); }
int64_t offset_of(const void* p) { return (int64_t)(reinterpret_cast<uintptr_t>(p) - kBase); }

void random_case(std::mt19937_64& rng, int case_index) {
  std::uniform_int_distribution<int> n_gemms(1, 12), n_ranges(1, 5), log_units(0, 12);
  std::vector<std::vector<DeviceRange>> gemms(n_gemms(rng));
  // unit -> (gemm, position of the unit in the concatenation of every range after gemm 0)
  int64_t flat = 0;
  std::map<int64_t, int> owner;  // range start offset -> gemm
  std::vector<std::vector<std::pair<int64_t, int64_t>>> units(gemms.size());  // [start, end) in units
  for (size_t g = 0; g < gemms.size(); ++g)
    for (int r = n_ranges(rng); r > 0; --r) {
      const int64_t u = 1 + (int64_t)(rng() % ((int64_t)1 << log_units(rng)));
      gemms[g].push_back({at(flat * 16), u * 16});
      units[g].push_back({flat, flat + u});
      flat += u + 3;  // gaps between ranges: a piece crossing one is caught
    }
  const int64_t budget = 16 * (int64_t)(rng() % 6000) + (int64_t)(rng() % 16);
  const std::vector<L2Prefetch> plan = vlm::plan_l2_prefetch(gemms, budget);
  EXPECT(plan.size() == gemms.size(), "case %d: %zu plans for %zu GEMMs", case_index, plan.size(), gemms.size());
  if (plan.size() != gemms.size()) return;

  std::vector<int> asked_by(flat, -1);  // the GEMM whose plan covers each unit
  for (size_t g = 0; g < gemms.size(); ++g) {
    // The window of g: the first budget / 16 units of the ranges of the GEMMs after it.
    std::vector<char> window(flat, 0);
    int64_t left = budget / 16;
    for (size_t h = g + 1; h < gemms.size() && left > 0; ++h)
      for (auto [s, e] : units[h])
        for (int64_t u = s; u < e && left > 0; ++u, --left) window[u] = 1;
    const L2Prefetch& p = plan[g];
    EXPECT(p.count >= 0 && p.count <= L2Prefetch::kMaxRanges, "case %d gemm %zu: count %d", case_index, g, p.count);
    for (int i = 0; i < p.count; ++i) {
      const int64_t s = offset_of(p.ptr[i]);
      EXPECT(s % 16 == 0 && p.bytes[i] % 16 == 0 && p.bytes[i] > 0, "case %d gemm %zu piece %d: %lld + %u", case_index,
             g, i, (long long)s, p.bytes[i]);
      const int64_t u0 = s / 16, u1 = u0 + p.bytes[i] / 16;
      // Inside one range of a later GEMM.
      bool inside = false;
      for (size_t h = g + 1; h < gemms.size() && !inside; ++h)
        for (auto [rs, re] : units[h]) inside = inside || (u0 >= rs && u1 <= re);
      EXPECT(inside, "case %d gemm %zu piece %d [%lld, %lld) is not inside a later GEMM's range", case_index, g, i,
             (long long)u0, (long long)u1);
      if (!inside) continue;
      for (int64_t u = u0; u < u1; ++u) {
        EXPECT(window[u], "case %d gemm %zu asks for unit %lld outside its window (budget %lld)", case_index, g,
               (long long)u, (long long)budget);
        EXPECT(asked_by[u] < 0, "case %d: unit %lld asked for by GEMMs %d and %zu", case_index, (long long)u,
               asked_by[u], g);
        asked_by[u] = (int)g;
      }
    }
    if (p.count < L2Prefetch::kMaxRanges)
      for (int64_t u = 0; u < flat; ++u)
        if (window[u] && (asked_by[u] < 0 || asked_by[u] > (int)g)) {
          EXPECT(false, "case %d: unit %lld in GEMM %zu's window was not asked for by then", case_index, (long long)u,
                 g);
          break;
        }
  }
  // The first GEMM's ranges are nobody's to prefetch.
  for (auto [s, e] : units[0])
    for (int64_t u = s; u < e; ++u) EXPECT(asked_by[u] < 0, "case %d: the first GEMM's unit %lld asked for", case_index,
                                           (long long)u);
}

// Two layers of the 2B model (scales, then packed weights, per GEMM), a 24 MiB window.
void two_b_layers() {
  const int64_t MiB = 1 << 20;
  // qkv 2048 -> 4096, o 2048 -> 2048, gate_up 2048 -> 16384, down 8192 -> 2048; groups of 128, 4-bit weights,
  // an fp16 scale and zero a group and column.
  auto w = [](int64_t in, int64_t out) { return in * out / 2; };
  auto sz = [](int64_t in, int64_t out) { return in / 128 * out * 4; };
  const int64_t shapes[4][2] = {{2048, 4096}, {2048, 2048}, {2048, 16384}, {8192, 2048}};
  std::vector<std::vector<DeviceRange>> gemms;
  int64_t flat = 0;
  for (int layer = 0; layer < 2; ++layer)
    for (auto& s : shapes) {
      gemms.push_back({{at(flat), sz(s[0], s[1])}, {at(flat + sz(s[0], s[1])), w(s[0], s[1])}});
      flat += sz(s[0], s[1]) + w(s[0], s[1]);
    }
  const std::vector<L2Prefetch> plan = vlm::plan_l2_prefetch(gemms, 24 * MiB);
  auto total = [&](int g) {
    int64_t t = 0;
    for (int i = 0; i < plan[g].count; ++i) t += plan[g].bytes[i];
    return t;
  };
  // qkv0: o0 and gate_up0 whole (2.06 + 17.0 MiB with scales), then the first 4.94 MiB of down0's ranges.
  EXPECT(plan[0].count == 6 && total(0) == 24 * MiB, "qkv0: %d pieces, %lld bytes", plan[0].count, (long long)total(0));
  EXPECT(plan[0].ptr[0] == gemms[1][0].ptr && plan[0].ptr[3] == gemms[2][1].ptr, "qkv0 starts with o0, then gate_up0");
  // o0: its window reaches 2.125 MiB further into down0's weights (gate_up0 was asked for already).
  EXPECT(plan[1].count == 1 && plan[1].bytes[0] == 2 * MiB + MiB / 8 &&
             offset_of(plan[1].ptr[0]) == offset_of(gemms[3][1].ptr) + 4 * MiB + 3 * MiB / 8,
         "o0: %d pieces", plan[1].count);
  // gate_up0: the rest of down0, qkv1, o1, and gate_up1's scales.
  EXPECT(plan[2].count >= 4 && offset_of(plan[2].ptr[0]) + (int64_t)plan[2].bytes[0] ==
                                   offset_of(gemms[3][1].ptr) + w(8192, 2048),
         "gate_up0 finishes down0's weights first");
  // The last GEMM asks for nothing.
  EXPECT(plan.back().count == 0, "the last GEMM asks for %d pieces", plan.back().count);
  // No budget, no plan.
  const std::vector<L2Prefetch> none = vlm::plan_l2_prefetch(gemms, 0);
  for (const L2Prefetch& p : none) EXPECT(p.count == 0, "budget 0 asks for %d pieces", p.count);
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261205);
  for (int i = 0; i < 3000; ++i) random_case(rng, i);
  two_b_layers();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("l2 prefetch plan: all checks passed\n");
  return 0;
}
