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

void apply_repetition_penalty(const Request& r, float* logits, int vocab, SamplerScratch& sc) {
  const float p = r.sampling.repetition_penalty;
  if (p == 1.0f) return;
  if ((int)sc.seen.size() != vocab) sc.seen.assign(vocab, 0);
  sc.marked.clear();
  auto mark = [&](int32_t t) {
    if (t >= 0 && t < vocab && !sc.seen[t]) {
      sc.seen[t] = 1;
      sc.marked.push_back(t);
      logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
    }
  };
  for (int32_t t : r.prompt) mark(t);
  for (int32_t t : r.output) mark(t);
  for (int32_t t : sc.marked) sc.seen[t] = 0;  // all clear again for the next row
}

// The order the filters rank tokens in: x descending, index ascending.
struct ByLogit {
  const float* x;
  bool operator()(int32_t a, int32_t b) const { return x[a] > x[b] || (x[a] == x[b] && a < b); }
};

// The tokens within `gap` of the largest logit `mx`, in index order, into `cand`: the first tokens of the
// order, all of them ahead of every token left out. Returns false once the gap has grown past any finite
// distance and `cand` holds every token.
bool tokens_within(const float* x, int vocab, float mx, float gap, std::vector<int32_t>& cand) {
  const bool every = !(gap < 1e30f);
  const float floor = mx - gap;
  cand.clear();
  for (int i = 0; i < vocab; ++i)
    if (every || x[i] >= floor) cand.push_back(i);
  return !every;
}

// The k first tokens of the order into sc.cand, in that order. Only tokens within a gap of the largest logit are
// ranked; the gap doubles (8 nats first) until at least k lie within it.
void top_k_candidates(const float* x, int vocab, float mx, int k, SamplerScratch& sc) {
  for (float gap = 8.f; tokens_within(x, vocab, mx, gap, sc.cand) && (int)sc.cand.size() < k; gap *= 2.f) {
  }
  std::nth_element(sc.cand.begin(), sc.cand.begin() + k, sc.cand.end(), ByLogit{x});
  sc.cand.resize(k);
  std::sort(sc.cand.begin(), sc.cand.end(), ByLogit{x});
}

// How many of the weights w[0..n), in that order, make the smallest prefix whose share of `total` reaches top_p
// (n when even all of them fall short).
size_t prefix_reaching(const double* w, size_t n, double total, float top_p) {
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += w[i] / total;
    if (cum >= top_p) return i + 1;
  }
  return n;
}

// Smallest prefix of the order whose weights reach top_p of `total`: the prefix's tokens into sc.cand and their
// weights into sc.prob, in that order. Only tokens within a gap of the largest logit are sorted; when their
// prefix falls short of top_p the gap doubles (then every token, and short of top_p every token is kept).
// Tokens within a gap are a prefix of the whole order, so the prefix found is the one a sort of the whole
// vocabulary would give, with the same weights and running sums.
void top_p_prefix(const float* x, const double* weight, int vocab, float mx, double total, float top_p,
                  SamplerScratch& sc) {
  for (float gap = 8.f;; gap *= 2.f) {
    const bool more = tokens_within(x, vocab, mx, gap, sc.cand) && (int)sc.cand.size() < vocab;
    std::sort(sc.cand.begin(), sc.cand.end(), ByLogit{x});
    sc.prob.resize(sc.cand.size());
    for (size_t i = 0; i < sc.cand.size(); ++i) sc.prob[i] = weight[sc.cand[i]];
    const size_t n = prefix_reaching(sc.prob.data(), sc.prob.size(), total, top_p);
    if (n < sc.cand.size() || !more) {  // the prefix ends inside the candidates, or they are every token
      sc.cand.resize(n);
      sc.prob.resize(n);
      return;
    }
  }
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

double next_uniform(Request& r) { return uniform01(r.rng); }

float log_softmax_at(const float* logits, int vocab, int32_t token) {
  return logits[token] - log_sum_exp(logits, vocab);
}

SampleResult sample_token(Request& r, const float* logits, int vocab, SamplerScratch& sc) {
  SampleResult res;
  std::vector<float>& x = sc.x;
  x.assign(logits, logits + vocab);
  apply_repetition_penalty(r, x.data(), vocab, sc);
  const vlm_sampling_params& s = r.sampling;

  if (s.temperature == 0.f || s.top_k == 1) {
    res.token = static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());  // first max wins
  } else {
    // Locals, so that the compiler knows the row cannot alias them and vectorizes both loops.
    const float temperature = s.temperature;
    float* xs = x.data();
    for (int i = 0; i < vocab; ++i) xs[i] /= temperature;
    float mx = -INFINITY;
    for (int i = 0; i < vocab; ++i) mx = xs[i] > mx ? xs[i] : mx;
    const bool top_k = s.top_k > 0 && s.top_k < vocab, top_p = s.top_p < 1.f;
    int n = vocab;
    if (top_k) {  // the top_k first of the order
      top_k_candidates(x.data(), vocab, mx, s.top_k, sc);
      n = s.top_k;
      sc.prob.resize(n);
      for (int i = 0; i < n; ++i) sc.prob[i] = std::exp(static_cast<double>(x[sc.cand[i]] - mx));
      if (top_p) {  // smallest prefix whose mass reaches top_p (always at least one token)
        double total = 0.0;
        for (int i = 0; i < n; ++i) total += sc.prob[i];
        n = (int)prefix_reaching(sc.prob.data(), n, total, s.top_p);
      }
    } else if (top_p) {
      sc.weight.resize(vocab);
      double total = 0.0;
      for (int i = 0; i < vocab; ++i) total += sc.weight[i] = std::exp(static_cast<double>(x[i] - mx));
      top_p_prefix(x.data(), sc.weight.data(), vocab, mx, total, s.top_p, sc);
      n = (int)sc.cand.size();
    } else {  // the vocabulary in its own order
      sc.cand.resize(vocab);
      std::iota(sc.cand.begin(), sc.cand.end(), 0);
      sc.prob.resize(vocab);
      for (int i = 0; i < vocab; ++i) sc.prob[i] = std::exp(static_cast<double>(x[i] - mx));
    }
    double* prob = sc.prob.data();
    if (s.min_p > 0.f) {  // drop tokens below min_p times the most likely one's probability
      double pmax = 0.0;
      for (int i = 0; i < n; ++i) pmax = std::max(pmax, prob[i]);
      for (int i = 0; i < n; ++i)
        if (prob[i] < s.min_p * pmax) prob[i] = 0.0;
    }
    double kept = 0.0;
    for (int i = 0; i < n; ++i) kept += prob[i];
    double u = uniform01(r.rng) * kept;
    res.token = sc.cand[n - 1];
    for (int i = 0; i < n; ++i) {
      if (prob[i] == 0.0) continue;
      u -= prob[i];
      if (u < 0.0) {
        res.token = sc.cand[i];
        break;
      }
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
