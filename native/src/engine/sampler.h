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

// Buffers one sampling thread reuses from row to row (a row is the vocabulary long: allocating them per
// row would cost more than the arithmetic).
struct SamplerScratch {
  std::vector<float> x;         // the row after the penalty and the temperature
  std::vector<double> weight;   // exp(x - max) by vocabulary index (top-p without top-k)
  std::vector<double> prob;     // the weights of the candidates, in candidate order
  std::vector<int32_t> cand;    // candidate token ids, in the order the draw walks them
  std::vector<int32_t> marked;  // tokens the repetition penalty touched (to clear `seen` after)
  std::vector<char> seen;
};

// `logits` (vocab floats) is not modified.
//
// The draw: candidates in walk order with weights w, kept = Σ w, u = uniform · kept, the first candidate
// at which the running u − Σ w turns negative. The walk order is the vocabulary's without a filter that needs
// an order; by logit (then index) descending where top-k or top-p applies. Top-k ranks only the tokens within
// a logit threshold of the largest that holds at least k of them. Top-p keeps the smallest prefix of the
// descending order whose share of the total weight reaches top_p: only that prefix is ever sorted (a threshold
// on the logit grows until the prefix lies within it), not the vocabulary.
SampleResult sample_token(Request& r, const float* logits, int vocab, SamplerScratch& scratch);

// The uniform number in [0, 1) a draw takes from the request's generator (sample_token takes one a token; a
// runner that draws on its device is given this one instead).
double next_uniform(Request& r);

// log_softmax(logits)[token] for every requested token (used for prompt logprobs).
float log_softmax_at(const float* logits, int vocab, int32_t token);

// Validates sampling parameters; throws vlm::Error with a clear message.
void validate_sampling(const vlm_sampling_params& s);

}  // namespace vlm
