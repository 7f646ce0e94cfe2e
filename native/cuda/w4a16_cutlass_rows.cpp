// The engine's rule for the CUTLASS mixed-input w4a16 GEMM (w4a16_cutlass_rows.h).
//
// Measured on the H100 (docs/benchmarks/gemm.md, 2026-12-06, the same runs as torch fp16): at 256 rows the
// kernel is 1.9-2.1x faster than dequantizing for cuBLAS on the 7B layers; at 2048 rows, with its tiles of 256
// tokens, 306/106/581/276 us against 359/115/667/314 us on 7B q/k/v, o, gate_up, down; at 32 and 64 rows faster
// than the wgmma and general kernels on the wide layers (13.0 vs 21.1 us on 2B gate_up, 22.2 vs 39.6 on 7B q/k/v
// at 64 rows) and slower on the others (13.6 vs 7.9 us on 2B o, on tiles of 128 rows: few tiles, and one SM's
// conversion of a tile's codes bounds each). On the H100 the engine with it (tiles chosen by the layer) prefills a
// 512-token prompt 22-30 % faster and decodes 32-128 rows 3-26 % faster on the 2B and 7B shapes (07:01); its whole
// GPU suite passes with it (2026-12-06).
// With tiles of 64 weight rows on the layers of few tiles (w4a16_cutlass.cu) it is also faster than our kernels
// from 96 rows on the narrower layers but the down layers (H100 06:56: 2B q/k/v 10.3 vs 13.7 us at 96 rows, 2B o
// 10.0 vs 12.7, 7B o 17.2 vs 18.2; 2B down 22.3 vs 18.0, 7B down 34.6 vs 33.9 at 96 and 35.1 vs 40.4 at 128) and
// slower up to 80 rows on 2B o and 7B o (10.1 vs 8.1 us at 64, 17.3 vs 16.6 at 80): those layers take it from 97.
#include "cuda/w4a16_cutlass_rows.h"

#include <algorithm>
#include <climits>

#include "cuda/env_int.h"
#include "cuda/w4a16_cutlass.h"

namespace vlm {

namespace {
constexpr int kWideN = 8192;  // 2B gate_up, 7B q/k/v and gate_up
constexpr int kNarrowMinRows = 97;
}

int w4a16_cutlass_setting() {
  static const int v = cuda::env_int("VLM_W4A16_CUTLASS", 1);
  return v;
}

bool w4a16_cutlass_takes_rows(int M, int N) {
  static const int lo = [] {
    const int v = cuda::env_int("VLM_W4A16_CUTLASS_MIN_ROWS", 0);
    return v > 0 ? v : kNarrowMinRows;
  }();
  static const int wide_lo = std::min(lo, cuda::env_int("VLM_W4A16_CUTLASS_WIDE_MIN_ROWS", 32));
  static const int hi = [] {
    const int v = cuda::env_int("VLM_W4A16_CUTLASS_MAX_ROWS", 0);
    return v > 0 ? v : INT_MAX;
  }();
  return M >= (N >= kWideN ? wide_lo : lo) && M <= hi;
}

bool w4a16_cutlass_engine_takes(int M, int N, int K, int group) {
  return w4a16_cutlass_setting() > 0 && w4a16_cutlass_runs() && w4a16_cutlass_applies(M, N, K, group) &&
         w4a16_cutlass_takes_rows(M, N);
}

}  // namespace vlm
