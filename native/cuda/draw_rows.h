// Sampled decoding's draw on the GPU (draw_rows.cu): temperature, top-k, top-p and min-p over fp32 logit rows,
// then one token a row from a uniform number the host drew from the request's own generator, so that a
// sampled request's row never has to be copied back whole.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {
namespace cuda {

// Per-row parameters, device arrays of `rows` entries each. A row with temperature <= 0 is left alone (its
// token is what the caller already wrote there, e.g. the argmax).
struct DrawParams {
  const float* temperature;
  const int32_t* top_k;  // 0: off
  const float* top_p;    // 1: off
  const float* min_p;    // 0: off
  const double* u;       // uniform in [0, 1)
};

// The token of each active row into tokens[row]. The same semantics as the host sampler (engine/sampler.h)
// without the repetition penalty: x = logit / temperature; the top-k tokens by x (ties: lower index first);
// within them the smallest prefix of that order whose weight reaches top_p of theirs; tokens whose weight is
// below min_p of the largest dropped; then the first token, in vocabulary order, at which the running weight
// exceeds u times the kept weight. Weights are exp(x - max x) as integers (units of 2^-40 of the largest, so
// every sum is exact and the result is the same run to run; a token below 2^-41 of the largest has none).
// One block a row; asynchronous on `stream`.
cudaError_t draw_rows(const float* logits, int rows, int vocab, const DrawParams& params, int32_t* tokens,
                      cudaStream_t stream);

}  // namespace cuda
}  // namespace vlm
