// The sampler (engine/sampler.cpp) against a reference that sorts the whole vocabulary: the same token from
// the same generator state for every filter combination, on rows whose top-p prefix lies close to the largest
// logit, far from it (flat rows and long tails: the logit threshold has to grow) and everywhere (a prefix of the whole
// vocabulary), with tied logits and masked (-inf) tokens. Fails with a line per mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "engine/sampler.h"

namespace {

int failures = 0;

double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// The specification of sample_token written the slow way: every token sorted where an order is needed.
int32_t reference_token(vlm::Request& r, const std::vector<float>& logits) {
  const vlm_sampling_params& s = r.sampling;
  const int V = (int)logits.size();
  std::vector<float> x = logits;
  if (s.repetition_penalty != 1.f) {
    std::vector<char> seen(V, 0);
    auto mark = [&](int32_t t) {
      if (!seen[t]) {
        seen[t] = 1;
        x[t] = x[t] > 0 ? x[t] / s.repetition_penalty : x[t] * s.repetition_penalty;
      }
    };
    for (int32_t t : r.prompt) mark(t);
    for (int32_t t : r.output) mark(t);
  }
  if (s.temperature == 0.f || s.top_k == 1) return (int32_t)(std::max_element(x.begin(), x.end()) - x.begin());
  for (float& v : x) v /= s.temperature;
  const float mx = *std::max_element(x.begin(), x.end());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  const bool top_k = s.top_k > 0 && s.top_k < V, top_p = s.top_p < 1.f;
  if (top_k || top_p)
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  int n = top_k ? s.top_k : V;
  std::vector<double> w(n);
  for (int i = 0; i < n; ++i) w[i] = std::exp(static_cast<double>(x[order[i]] - mx));
  if (top_p) {
    double total = 0.0, cum = 0.0;
    if (top_k) {
      for (int i = 0; i < n; ++i) total += w[i];
    } else {  // over the vocabulary in index order
      for (int i = 0; i < V; ++i) total += std::exp(static_cast<double>(x[i] - mx));
    }
    for (int i = 0; i < n; ++i) {
      cum += w[i] / total;
      if (cum >= s.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (s.min_p > 0.f) {
    double pmax = 0.0;
    for (int i = 0; i < n; ++i) pmax = std::max(pmax, w[i]);
    for (int i = 0; i < n; ++i)
      if (w[i] < s.min_p * pmax) w[i] = 0.0;
  }
  double kept = 0.0;
  for (int i = 0; i < n; ++i) kept += w[i];
  double u = uniform01(r.rng) * kept;
  int32_t token = order[n - 1];
  for (int i = 0; i < n; ++i) {
    if (w[i] == 0.0) continue;
    u -= w[i];
    if (u < 0.0) {
      token = order[i];
      break;
    }
  }
  return token;
}

std::vector<float> make_row(int kind, int V, std::mt19937& g) {
  std::vector<float> x(V);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& v : x) v = nd(g);
  switch (kind) {
    case 0:  // peaked: a few tokens hold most of the mass
      for (float& v : x) v *= 4.f;
      for (int i = 0; i < 5; ++i) x[g() % V] += 12.f;
      break;
    case 1:  // flat: the top-p prefix reaches far below the largest logit
      for (float& v : x) v *= 0.05f;
      break;
    case 2:  // wide: logits spread over ~60 nats, so the threshold doubles several times
      for (float& v : x) v *= 12.f;
      break;
    case 3:  // ties: logits on a coarse grid
      for (float& v : x) v = std::round(v * 2.f) / 2.f;
      break;
    case 4:  // masked: most tokens at -inf
      for (int i = 0; i < V; ++i)
        if (g() % 4) x[i] = -INFINITY;
      break;
    default:  // a long tail: most of the mass in thousands of tokens ~9-12 nats below a few large ones, which
              // the first logit threshold (8 nats at T = 1) leaves out
      for (float& v : x) v = -9.f - std::fabs(v) * 3.f;
      for (int i = 0; i < 3; ++i) x[g() % V] = 0.f;
      break;
  }
  return x;
}

}  // namespace

int main() {
  const int V = 5000;
  std::mt19937 g(7);
  const float temps[] = {0.7f, 1.f, 1.6f};
  const int top_ks[] = {0, 1, 7, 50};
  const float top_ps[] = {1.f, 0.95f, 0.5f, 0.999f};
  const float min_ps[] = {0.f, 0.05f};
  const float penalties[] = {1.f, 1.3f};
  vlm::SamplerScratch scratch;
  int checks = 0;
  for (int kind = 0; kind < 6; ++kind)
    for (int row = 0; row < 3; ++row) {
      const std::vector<float> logits = make_row(kind, V, g);
      for (float t : temps)
        for (int k : top_ks)
          for (float p : top_ps)
            for (float mp : min_ps)
              for (float pen : penalties) {
                vlm::Request a, b;
                a.prompt = {1, 17, 4000, 2500};
                a.output = {3, 17};
                a.sampling.temperature = t, a.sampling.top_k = k, a.sampling.top_p = p;
                a.sampling.min_p = mp, a.sampling.repetition_penalty = pen;
                b.prompt = a.prompt, b.output = a.output, b.sampling = a.sampling;
                const unsigned seed = g();
                a.rng.seed(seed);
                b.rng.seed(seed);
                for (int draw = 0; draw < 4; ++draw) {
                  const int32_t got = vlm::sample_token(a, logits.data(), V, scratch).token;
                  const int32_t want = reference_token(b, logits);
                  ++checks;
                  if (got != want) {
                    ++failures;
                    if (failures <= 20)
                      std::printf("row kind %d, T %g, top_k %d, top_p %g, min_p %g, penalty %g, draw %d: token %d, "
                                  "reference %d\n", kind, t, k, p, mp, pen, draw, got, want);
                  }
                }
              }
    }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
