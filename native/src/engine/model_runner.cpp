#include "engine/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <string>

#include "common/error.h"
#include "engine/step_runner.h"

namespace vlm {
namespace {

void rms_norm(const float* x, const float* w, int rows, int dim, float eps, float* out) {
#pragma omp parallel for if (rows > 4)
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + (int64_t)r * dim;
    float* o = out + (int64_t)r * dim;
    float ss = 0.f;
    for (int i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / dim + eps);
    for (int i = 0; i < dim; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

int64_t available_host_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// The CPU backend: fp32 activations, a host KvCache.
class CpuRunner final : public StepRunner {
 public:
  CpuRunner(const Model& model, Communicator* comm) : runner_(model, comm) {}
  int resolve_kv_dtype(int requested) const override {
    return requested == VLM_DTYPE_AUTO ? VLM_DTYPE_F32 : requested;
  }
  int64_t kv_memory_bytes() const override { return available_host_memory_bytes(); }
  void allocate_cache(int64_t num_blocks, int block_size, int kv_dtype) override {
    const vlm_model_params& p = runner_.model().params();
    // Checked against the memory the system reports available before allocating: zeroed memory is only mapped
    // when touched, so a cache larger than the machine would otherwise be granted and the process killed later,
    // mid-serving, as its rows fill. (Tensor-parallel ranks share the host: their runner checks the whole cache.)
    const int64_t need =
        num_blocks * KvCache::bytes_per_block(p.num_layers, block_size, p.num_kv_heads, p.head_dim, kv_dtype);
    KvCache::check_fits(num_blocks, block_size, need, available_host_memory_bytes(), "host");
    cache_ = std::make_unique<KvCache>(p.num_layers, num_blocks, block_size, p.num_kv_heads, p.head_dim, kv_dtype);
  }
  int64_t kv_cache_bytes() const override { return cache_ ? cache_->total_bytes() : 0; }
  // Whole rows where the engine asks for them, the argmax of every other row (the engine reads no argmax entry of
  // a row it gets whole; here those are -1), as the GPU runners return them.
  void forward(const StepBatch& batch, StepOutput& out) override {
    launch(batch);
    collect(out);
  }
  // The step runs here and now (the host is the device); overlapping only changes when its output is handed
  // over, which exercises the engine's overlapped path on any machine.
  bool overlaps() const override { return true; }
  void launch(const StepBatch& batch) override {
    VLM_CHECK(queued_.size() < 2, VLM_ERR_INTERNAL, "a third step launched before the first was collected");
    const StepBatch* b = &batch;
    if (std::any_of(batch.tokens.begin(), batch.tokens.end(), [](int32_t t) { return t < 0; })) {
      resolved_ = batch;  // the previous step's tokens in place of their references
      for (int32_t& t : resolved_.tokens)
        if (t < 0) {
          const size_t i = (size_t)(-t - 1);
          VLM_CHECK(i < last_argmax_.size(), VLM_ERR_INTERNAL, "a row refers to logit row " << i
                                                 << " of a previous step that had " << last_argmax_.size());
          t = last_argmax_[i];
        }
      b = &resolved_;
    }
    // Every row whole (prompt scoring, a batch drawn on the host): the rows are the output as computed.
    const bool all_whole = std::all_of(batch.full_logits.begin(), batch.full_logits.end(), [](uint8_t f) { return f; });
    StepOutput out = std::move(spare_);  // a collected step's buffers, reused
    std::vector<float>& rows = all_whole ? out.logits : rows_;
    runner_.forward(*b, *cache_, rows);
    const int R = (int)batch.logit_rows.size(), V = runner_.model().lm_head().out;
    out.argmax.assign(R, -1);
    out.max_logit.assign(R, -INFINITY);
    if (!all_whole) out.logits.clear();
    for (int i = 0; i < R; ++i) {
      const float* row = &rows[(size_t)i * V];
      if (batch.full_logits[i]) {  // the host takes its token from the row itself: no argmax needed
        if (!all_whole) out.logits.insert(out.logits.end(), row, row + V);
        continue;
      }
      const int best = (int)(std::max_element(row, row + V) - row);  // the first of equal largest, as on the GPU
      out.argmax[i] = best;
      out.max_logit[i] = row[best];
    }
    last_argmax_ = out.argmax;
    queued_.push_back(std::move(out));
  }
  void collect(StepOutput& out) override {
    VLM_CHECK(!queued_.empty(), VLM_ERR_INTERNAL, "no launched step to collect");
    std::swap(out, queued_.front());
    spare_ = std::move(queued_.front());  // what `out` held: its buffers serve a later step
    queued_.pop_front();
  }

 private:
  ModelRunner runner_;
  std::unique_ptr<KvCache> cache_;
  StepBatch resolved_;
  std::vector<float> rows_;
  std::deque<StepOutput> queued_;     // launched, not yet collected, oldest first
  StepOutput spare_;
  std::vector<int32_t> last_argmax_;  // the last launched step's tokens (what the next step's references read)
};

}  // namespace

std::unique_ptr<StepRunner> make_cpu_runner(const Model& model, Communicator* comm) {
  return std::make_unique<CpuRunner>(model, comm);
}

void ModelRunner::forward(const StepBatch& b, KvCache& cache, std::vector<float>& logits) {
  const vlm_model_params& p = m_.params();
  const int T = (int)b.tokens.size();
  const int H = p.hidden_size, hd = p.head_dim, nq = p.num_heads * hd, nkv = p.num_kv_heads * hd;
  const int F = p.intermediate_size, half = hd / 2;
  h_.resize((size_t)T * H);
  x_.resize((size_t)T * H);
  q_.resize((size_t)T * nq);
  attn_.resize((size_t)T * nq);
  k_.resize((size_t)T * nkv);
  v_.resize((size_t)T * nkv);
  gate_.resize((size_t)T * F);
  up_.resize((size_t)T * F);
  cos_.resize((size_t)T * half);
  sin_.resize((size_t)T * half);

#pragma omp parallel for if (T > 4)
  for (int t = 0; t < T; ++t) m_.embed(b.tokens[t], &h_[(size_t)t * H]);
  for (const auto& [row, data] : b.embedding_rows) std::memcpy(&h_[(size_t)row * H], data, sizeof(float) * H);
  m_.rope().tables(b.positions.data(), T, cos_.data(), sin_.data());

  const AttentionShape shape{p.num_heads, p.num_kv_heads, hd, p.sliding_window};
  for (int l = 0; l < p.num_layers; ++l) {
    const LayerWeights& w = m_.layer(l);
    rms_norm(h_.data(), w.input_norm.data(), T, H, p.rms_norm_eps, x_.data());
    linear_forward(w.q, x_.data(), T, q_.data());
    linear_forward(w.k, x_.data(), T, k_.data());
    linear_forward(w.v, x_.data(), T, v_.data());
    for (int t = 0; t < T; ++t) {
      m_.rope().apply(&q_[(size_t)t * nq], p.num_heads, &cos_[(size_t)t * half], &sin_[(size_t)t * half]);
      m_.rope().apply(&k_[(size_t)t * nkv], p.num_kv_heads, &cos_[(size_t)t * half], &sin_[(size_t)t * half]);
    }
    for (const AttentionSegment& s : b.segments)
      for (int i = 0; i < s.count; ++i) {
        const int pos = s.start + i, row = s.row + i;
        cache.write(l, s.block_table[pos / cache.block_size()], pos % cache.block_size(),
                    &k_[(size_t)row * nkv], &v_[(size_t)row * nkv]);
      }
    paged_attention(cache, l, shape, b.segments, q_.data(), attn_.data());
    linear_forward(w.o, attn_.data(), T, x_.data());
    if (comm_) comm_->all_reduce_sum(x_.data(), (int64_t)T * H, VLM_DTYPE_F32, nullptr);
    for (size_t i = 0; i < (size_t)T * H; ++i) h_[i] += x_[i];

    rms_norm(h_.data(), w.post_attention_norm.data(), T, H, p.rms_norm_eps, x_.data());
    linear_forward(w.gate, x_.data(), T, gate_.data());
    linear_forward(w.up, x_.data(), T, up_.data());
#pragma omp parallel for if (T > 4)
    for (int64_t i = 0; i < (int64_t)T * F; ++i) {
      const float g = gate_[i];
      gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];
    }
    linear_forward(w.down, gate_.data(), T, x_.data());
    if (comm_) comm_->all_reduce_sum(x_.data(), (int64_t)T * H, VLM_DTYPE_F32, nullptr);
    for (size_t i = 0; i < (size_t)T * H; ++i) h_[i] += x_[i];
  }

  const int R = (int)b.logit_rows.size();
  sel_.resize((size_t)R * H);
  for (int i = 0; i < R; ++i)
    std::memcpy(&sel_[(size_t)i * H], &h_[(size_t)b.logit_rows[i] * H], sizeof(float) * H);
  rms_norm(sel_.data(), m_.final_norm().data(), R, H, p.rms_norm_eps, x_.data());
  logits.resize((size_t)R * m_.lm_head().out);
  if (R > 0) linear_forward(m_.lm_head(), x_.data(), R, logits.data());
}

}  // namespace vlm
