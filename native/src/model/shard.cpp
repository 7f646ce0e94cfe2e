// Tensor-parallel shards of a Model: the Megatron split of a LLaMA decoder.
//
// Column-parallel (output rows split): q, k, v (whole heads and whole KV heads
// per rank), gate, up, and the lm_head (a vocabulary slice per rank, so each
// rank computes its own logits columns and no gather runs on the device).
// Row-parallel (input columns split): o and down; their outputs are partial
// sums that the ranks all-reduce. AWQ groups stay whole: a rank's share of
// an input dimension is a multiple of the group size. Norms and the
// embedding table are replicated.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "model/model.h"

namespace vlm {
namespace {

int round_up_panel(int n) { return (n + kPanel - 1) / kPanel * kPanel; }

// Rows [n0, n1) and input columns [k0, k1) of `s`, in the same panel layout.
Linear sub_linear(const Linear& s, int n0, int n1, int k0, int k1) {
  Linear d;
  d.kind = s.kind;
  d.group_size = s.group_size;
  d.out = n1 - n0;
  d.in = k1 - k0;
  d.padded_out = round_up_panel(d.out);
  const int P = d.padded_out / kPanel, K = d.in;
  const bool awq = s.kind == WeightKind::AWQ4;
  const int g = awq ? s.group_size : 1, G = K / g, g0 = k0 / g, sG = s.in / g;
  if (awq)
    VLM_CHECK(k0 % g == 0 && K % g == 0, VLM_ERR_INTERNAL, "AWQ shard does not keep whole groups");
  switch (s.kind) {
    case WeightKind::F32: d.w32.assign((size_t)P * K * kPanel, 0.f); break;
    case WeightKind::F16:
    case WeightKind::BF16: d.w16.assign((size_t)P * K * kPanel, 0); break;
    case WeightKind::AWQ4:
      d.q4.assign((size_t)P * K * 16, 0);
      d.scale.assign((size_t)P * G * kPanel, 0.f);
      d.neg_zero_scale.assign((size_t)P * G * kPanel, 0.f);
      break;
  }
  if (n0 % kPanel == 0) {
    // Panels line up: every destination panel is a contiguous k-range of a source panel.
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; ++p) {
      const int64_t sp = n0 / kPanel + p;
      if (!d.w32.empty())
        std::memcpy(&d.w32[(size_t)p * K * kPanel], &s.w32[(size_t)(sp * s.in + k0) * kPanel],
                    sizeof(float) * K * kPanel);
      if (!d.w16.empty())
        std::memcpy(&d.w16[(size_t)p * K * kPanel], &s.w16[(size_t)(sp * s.in + k0) * kPanel],
                    sizeof(uint16_t) * K * kPanel);
      if (awq) {
        std::memcpy(&d.q4[(size_t)p * K * 16], &s.q4[(size_t)(sp * s.in + k0) * 16], (size_t)K * 16);
        std::memcpy(&d.scale[(size_t)p * G * kPanel], &s.scale[(size_t)(sp * sG + g0) * kPanel],
                    sizeof(float) * G * kPanel);
        std::memcpy(&d.neg_zero_scale[(size_t)p * G * kPanel], &s.neg_zero_scale[(size_t)(sp * sG + g0) * kPanel],
                    sizeof(float) * G * kPanel);
      }
    }
  } else {
    // Rows move between panel positions: element by element (whole panels per thread,
    // since two AWQ columns share a code byte).
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; ++p)
      for (int n = p * kPanel; n < std::min(d.out, (p + 1) * kPanel); ++n) {
        const int sn = n0 + n, sp = sn / kPanel, sj = sn % kPanel, j = n % kPanel;
        for (int k = 0; k < K; ++k) {
          const size_t si = ((size_t)sp * s.in + k0 + k) * kPanel + sj, di = ((size_t)p * K + k) * kPanel + j;
          if (!d.w32.empty()) d.w32[di] = s.w32[si];
          if (!d.w16.empty()) d.w16[di] = s.w16[si];
          if (awq) {
            const uint8_t b = s.q4[((size_t)sp * s.in + k0 + k) * 16 + (sj & 15)];
            const uint8_t code = sj < 16 ? (b & 15) : (b >> 4);
            uint8_t& o = d.q4[((size_t)p * K + k) * 16 + (j & 15)];
            o |= j < 16 ? code : (uint8_t)(code << 4);
          }
        }
        if (awq)
          for (int gi = 0; gi < G; ++gi) {
            const size_t si = ((size_t)sp * sG + g0 + gi) * kPanel + sj, di = ((size_t)p * G + gi) * kPanel + j;
            d.scale[di] = s.scale[si];
            d.neg_zero_scale[di] = s.neg_zero_scale[si];
          }
      }
  }
  if (!s.bias.empty()) d.bias.assign(s.bias.begin() + n0, s.bias.begin() + n1);
  return d;
}

}  // namespace

std::pair<int, int> shard_range(int total, int rank, int world) {
  return {(int)((int64_t)total * rank / world), (int)((int64_t)total * (rank + 1) / world)};
}

void check_tensor_parallel(const vlm_model_params& p, int world) {
  VLM_CHECK_ARG(world >= 1 && world <= 8, "tensor_parallel must be in [1, 8], got " << world);
  if (world == 1) return;
  VLM_CHECK_ARG(p.num_heads % world == 0, "num_heads (" << p.num_heads << ") is not divisible by tp=" << world);
  VLM_CHECK_ARG(p.num_kv_heads % world == 0, "num_kv_heads (" << p.num_kv_heads << ") is not divisible by tp="
                                                 << world << ": each rank holds whole KV heads");
  VLM_CHECK_ARG(p.intermediate_size % world == 0,
                "intermediate_size (" << p.intermediate_size << ") is not divisible by tp=" << world);
  VLM_CHECK_ARG(p.vocab_size >= world, "vocab_size (" << p.vocab_size << ") is smaller than tp=" << world);
  if (p.awq_group_size) {
    const int g = p.awq_group_size;
    VLM_CHECK_ARG((p.intermediate_size / world) % g == 0 && (p.num_heads / world * p.head_dim) % g == 0,
                  "with tp=" << world << " each rank's share of intermediate_size (" << p.intermediate_size / world
                             << ") and of the attention width (" << p.num_heads / world * p.head_dim
                             << ") must be a multiple of the AWQ group size " << g);
  }
}

std::unique_ptr<Model> Model::shard(int rank, int world) const {
  VLM_CHECK(finalized_, VLM_ERR_FAILED_PRECONDITION, "model is not finalized");
  check_tensor_parallel(p_, world);
  VLM_CHECK_ARG(rank >= 0 && rank < world, "rank " << rank << " outside [0, " << world << ")");
  vlm_model_params sp = p_;
  sp.num_heads /= world;
  sp.num_kv_heads /= world;
  sp.intermediate_size /= world;
  sp.tie_word_embeddings = 0;  // each rank's lm_head is its own vocabulary slice
  auto m = std::make_unique<Model>(sp);
  const int H = p_.hidden_size, hd = p_.head_dim;
  const auto [v0, v1] = shard_range(p_.vocab_size, rank, world);
  m->embed_ = embed_;
  m->lm_head_ = sub_linear(lm_head(), v0, v1, 0, H);
  m->norm_ = norm_;
  const int nq = sp.num_heads * hd, nkv = sp.num_kv_heads * hd, F = sp.intermediate_size;
  for (int l = 0; l < p_.num_layers; ++l) {
    const LayerWeights& s = layers_[l];
    LayerWeights& d = m->layers_[l];
    d.input_norm = s.input_norm;
    d.post_attention_norm = s.post_attention_norm;
    d.q = sub_linear(s.q, rank * nq, (rank + 1) * nq, 0, H);
    d.k = sub_linear(s.k, rank * nkv, (rank + 1) * nkv, 0, H);
    d.v = sub_linear(s.v, rank * nkv, (rank + 1) * nkv, 0, H);
    d.o = sub_linear(s.o, 0, H, rank * nq, (rank + 1) * nq);
    d.gate = sub_linear(s.gate, rank * F, (rank + 1) * F, 0, H);
    d.up = sub_linear(s.up, rank * F, (rank + 1) * F, 0, H);
    d.down = sub_linear(s.down, 0, H, rank * F, (rank + 1) * F);
  }
  m->finalized_ = true;
  return m;
}

}  // namespace vlm
