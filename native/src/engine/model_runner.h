// Runs the decoder over one step's flattened tokens (prefill chunks and
// decode tokens of many requests together) and returns the logits rows the
// scheduler asked for. Knows nothing of requests: only rows, positions and
// block tables.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/attention.h"
#include "engine/communicator.h"
#include "engine/kv_cache.h"
#include "model/model.h"

namespace vlm {

// A sampled row's draw: its filters and the uniform number its request's generator gave for this token.
struct RowDraw {
  float temperature = 0.f;
  int32_t top_k = 0;
  float top_p = 1.f;
  float min_p = 0.f;
  double u = 0.0;
};

struct StepBatch {
  std::vector<int32_t> tokens;                 // one per row
  std::vector<int> positions;                  // one per row
  std::vector<AttentionSegment> segments;      // one per request, rows contiguous
  std::vector<std::pair<int, const float*>> embedding_rows;  // (row, [hidden] fp32) overrides
  std::vector<int> logit_rows;                 // rows whose logits are returned, in this order
  std::vector<uint8_t> full_logits;            // per logit row: 0 when its argmax is all the engine needs
  // Empty, or per logit row: the draw a runner that draws on its device (StepRunner::draws_on_device) makes
  // in place of the argmax; temperature 0 where the row keeps its argmax or comes back whole.
  std::vector<RowDraw> draws;

  void clear() {
    tokens.clear(); positions.clear(); segments.clear(); embedding_rows.clear(); logit_rows.clear();
    full_logits.clear(); draws.clear();
  }
};

// What a runner returns for a step's logit rows.
struct StepOutput {
  // fp32 rows of this runner's vocabulary columns: every logit row when `argmax` is empty;
  // otherwise only the rows whose full_logits flag is set, in order.
  std::vector<float> logits;
  std::vector<int32_t> argmax;  // empty, or per logit row: the first index of its largest logit (a runner may
                                // leave it unset, -1, for a row it returns whole: the engine reads the row)
  std::vector<float> max_logit; // alongside argmax
};

class ModelRunner {
 public:
  // comm: set on a tensor-parallel shard (o_proj and down_proj outputs are partial sums).
  explicit ModelRunner(const Model& model, Communicator* comm = nullptr) : m_(model), comm_(comm) {}
  const Model& model() const { return m_; }
  // logits: [logit_rows.size()][lm_head().out]
  void forward(const StepBatch& batch, KvCache& cache, std::vector<float>& logits);

 private:
  const Model& m_;
  Communicator* comm_;
  std::vector<float> h_, x_, q_, k_, v_, attn_, gate_, up_, cos_, sin_, sel_;
};

}  // namespace vlm
