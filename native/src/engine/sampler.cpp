#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace vlm {
namespace {

double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

float log_sum_exp(const float* x, int n) {
  const float mx = *std::max_element(x, x + n);
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i] - mx));
  return mx + static_cast<float>(std::log(s));
}

void apply_repetition_penalty(const Request& r, float* logits, int vocab) {
  const float p = r.sampling.repetition_penalty;
  if (p == 1.0f) return;
  std::vector<char> seen(vocab, 0);
  auto mark = [&](int32_t t) {
    if (t >= 0 && t < vocab && !seen[t]) {
      seen[t] = 1;
      logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
    }
  };
  for (int32_t t : r.prompt) mark(t);
  for (int32_t t : r.output) mark(t);
}

}  // namespace

void validate_sampling(const vlm_sampling_params& s) {
  VLM_CHECK_ARG(std::isfinite(s.temperature) && s.temperature >= 0.f,
                "temperature must be >= 0, got " << s.temperature);
  VLM_CHECK_ARG(s.top_k >= 0, "top_k must be >= 0, got " << s.top_k);
  VLM_CHECK_ARG(std::isfinite(s.top_p) && s.top_p > 0.f && s.top_p <= 1.f, "top_p must be in (0, 1], got " << s.top_p);
  VLM_CHECK_ARG(std::isfinite(s.min_p) && s.min_p >= 0.f && s.min_p < 1.f, "min_p must be in [0, 1), got " << s.min_p);
  VLM_CHECK_ARG(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.f,
                "repetition_penalty must be > 0, got " << s.repetition_penalty);
}

float log_softmax_at(const float* logits, int vocab, int32_t token) {
  return logits[token] - log_sum_exp(logits, vocab);
}

SampleResult sample_token(Request& r, const float* logits, int vocab, std::vector<float>& x) {
  SampleResult res;
  x.assign(logits, logits + vocab);
  apply_repetition_penalty(r, x.data(), vocab);
  const vlm_sampling_params& s = r.sampling;

  if (s.temperature == 0.f || s.top_k == 1) {
    res.token = static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());  // first max wins
  } else {
    for (float& v : x) v /= s.temperature;
    // Candidates sorted by probability only when a filter needs the order.
    std::vector<int32_t> cand(vocab);
    std::iota(cand.begin(), cand.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    int n = vocab;
    if (s.top_k > 0 && s.top_k < n) {
      std::nth_element(cand.begin(), cand.begin() + s.top_k, cand.end(), by_logit);
      n = s.top_k;
    }
    const bool need_order = s.top_p < 1.f;
    if (need_order) std::sort(cand.begin(), cand.begin() + n, by_logit);
    float mx = -INFINITY;
    for (int i = 0; i < n; ++i) mx = std::max(mx, x[cand[i]]);
    std::vector<double> prob(n);
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += prob[i] = std::exp(static_cast<double>(x[cand[i]] - mx));
    if (need_order) {  // smallest prefix whose mass reaches top_p (always at least one token)
      double cum = 0.0;
      int keep = n;
      for (int i = 0; i < n; ++i) {
        cum += prob[i] / total;
        if (cum >= s.top_p) { keep = i + 1; break; }
      }
      n = keep;
    }
    if (s.min_p > 0.f) {  // drop tokens below min_p times the most likely one's probability
      double pmax = 0.0;
      for (int i = 0; i < n; ++i) pmax = std::max(pmax, prob[i]);
      for (int i = 0; i < n; ++i)
        if (prob[i] < s.min_p * pmax) prob[i] = 0.0;
    }
    double kept = 0.0;
    for (int i = 0; i < n; ++i) kept += prob[i];
    double u = uniform01(r.rng) * kept;
    res.token = cand[n - 1];
    for (int i = 0; i < n; ++i) {
      if (prob[i] == 0.0) continue;
      u -= prob[i];
      if (u < 0.0) { res.token = cand[i]; break; }
    }
  }

  if (r.logprobs >= 0) {
    const float lse = log_sum_exp(logits, vocab);
    res.logprob = logits[res.token] - lse;
    if (r.logprobs > 0) {
      const int k = std::min(r.logprobs, vocab);
      std::vector<int32_t> idx(vocab);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int i = 0; i < k; ++i) {
        res.top_tokens.push_back(idx[i]);
        res.top_logprobs.push_back(logits[idx[i]] - lse);
      }
    }
  }
  return res;
}

}  // namespace vlm
