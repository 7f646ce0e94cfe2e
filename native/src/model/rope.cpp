#include "model/rope.h"

#include <cmath>

namespace vlm {

Rope Rope::from_params(const vlm_model_params& p) {
  Rope r;
  r.head_dim = p.head_dim;
  const int half = p.head_dim / 2;
  r.inv_freq.resize(half);
  for (int i = 0; i < half; ++i)
    r.inv_freq[i] = 1.0f / std::pow(p.rope_theta, static_cast<float>(2 * i) / p.head_dim);
  if (p.rope_scaling == VLM_ROPE_LINEAR) {
    for (float& f : r.inv_freq) f /= p.rope_factor;
  } else if (p.rope_scaling == VLM_ROPE_LLAMA3) {
    const float old_len = static_cast<float>(p.rope_original_max_position);
    const float low_wavelen = old_len / p.rope_low_freq_factor;
    const float high_wavelen = old_len / p.rope_high_freq_factor;
    for (float& f : r.inv_freq) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      float scaled = wavelen > low_wavelen ? f / p.rope_factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const float smooth = (old_len / wavelen - p.rope_low_freq_factor) /
                             (p.rope_high_freq_factor - p.rope_low_freq_factor);
        scaled = (1.0f - smooth) * scaled / p.rope_factor + smooth * scaled;
      }
      f = scaled;
    }
  }
  return r;
}

void Rope::tables(const int* positions, int n, float* cos_out, float* sin_out) const {
  const int half = head_dim / 2;
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos_out[t * half + i] = std::cos(angle);
      sin_out[t * half + i] = std::sin(angle);
    }
}

void Rope::apply(float* x, int heads, const float* c, const float* s) const {
  const int half = head_dim / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * c[i] - b * s[i];
      v[i + half] = b * c[i] + a * s[i];
    }
  }
}

}  // namespace vlm
