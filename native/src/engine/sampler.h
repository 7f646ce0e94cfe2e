// Turns one row of logits into the next token for a request: repetition
// penalty, temperature, top-k, top-p, min-p, then a draw from the request's
// own seeded generator (so batching never changes a seeded result).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/request.h"

namespace vlm {

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.f;  // log p(token) under the raw model distribution
  std::vector<int32_t> top_tokens;
  std::vector<float> top_logprobs;
};

// `logits` (vocab floats) is not modified; `scratch` is reused between calls.
SampleResult sample_token(Request& r, const float* logits, int vocab, std::vector<float>& scratch);

// log_softmax(logits)[token] for every requested token (used for prompt logprobs).
float log_softmax_at(const float* logits, int vocab, int32_t token);

// Validates sampling parameters; throws vlm::Error with a clear message.
void validate_sampling(const vlm_sampling_params& s);

}  // namespace vlm
