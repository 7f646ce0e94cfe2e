// The residual stream as a GEMM's input: row r of A is the RMSNorm of h[r] + delta[r] (delta, in
// the act dtype, may be null) scaled by `weight`. Where h_out is set, h + delta is also written
// there (it must not alias h: every block of the GEMMs that take this reads all of h). Taken by
// the decode-size GEMMs that fold the norm into their prologue (w4a16_decode.h, dense_decode.h).
#pragma once

namespace vlm {

struct RmsNormInput {
  const float* h;
  const void* delta;
  const float* weight;
  float* h_out;
  float eps;
};

}  // namespace vlm
