// Rotary position embedding as Hugging Face's LLaMA computes it (rotate-half
// layout, fp32 frequencies), with linear and Llama 3 frequency scaling.
#pragma once
#include <vector>

#include "vlmcore.h"

namespace vlm {

struct Rope {
  int head_dim = 0;
  std::vector<float> inv_freq;  // head_dim / 2

  static Rope from_params(const vlm_model_params& p);
  // cos/sin for `n` positions: out arrays [n][head_dim/2].
  void tables(const int* positions, int n, float* cos_out, float* sin_out) const;
  // Rotates `heads` consecutive head vectors of one token in place.
  void apply(float* x, int heads, const float* cos_row, const float* sin_row) const;
};

}  // namespace vlm
