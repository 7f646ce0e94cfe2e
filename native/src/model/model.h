// The weights of one LLaMA-family decoder, in the CPU kernels' layout.
// Built tensor by tensor through set_tensor(), then finalize()d; immutable
// afterwards and shared (shared_ptr) by every engine that runs it.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu/linear.h"
#include "model/rope.h"
#include "vlmcore.h"

namespace vlm {

struct LayerWeights {
  std::vector<float> input_norm;
  std::vector<float> post_attention_norm;
  Linear q, k, v, o, gate, up, down;
};

class Model {
 public:
  explicit Model(const vlm_model_params& params);

  void set_tensor(const std::string& name, int dtype, int ndim, const int64_t* shape,
                  const void* data);
  void finalize();

  const vlm_model_params& params() const { return p_; }
  bool finalized() const { return finalized_; }
  int64_t weight_bytes() const;

  // Row `token` of the embedding table as fp32.
  void embed(int32_t token, float* out) const;
  const Linear& embed_table() const { return embed_; }
  const Linear& lm_head() const { return p_.tie_word_embeddings ? embed_ : lm_head_; }
  const std::vector<float>& final_norm() const { return norm_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  const Rope& rope() const { return rope_; }

  // Rank `rank` of `world`'s tensor-parallel shard (model/shard.cpp): its own
  // heads, KV heads, FFN columns and vocabulary slice of the lm_head; params
  // hold the per-rank sizes (vocab_size stays whole: the embedding is replicated).
  std::unique_ptr<Model> shard(int rank, int world) const;

 private:
  struct AwqParts {  // AutoAWQ tensors of one linear, held until all three arrive
    std::vector<int32_t> qweight, qzeros;
    std::vector<uint16_t> scales;
    int64_t in = 0, out = 0;
  };
  Linear* linear_by_name(int layer, const std::string& proj);
  int64_t linear_out(const std::string& proj) const;
  int64_t linear_in(const std::string& proj) const;
  void set_awq_part(int layer, const std::string& proj, const std::string& part, int dtype,
                    int ndim, const int64_t* shape, const void* data);

  vlm_model_params p_;
  Rope rope_;
  Linear embed_, lm_head_;
  std::vector<float> norm_;
  std::vector<LayerWeights> layers_;
  std::map<std::string, AwqParts> awq_pending_;
  std::map<std::string, bool> seen_;
  bool finalized_ = false;
};

// Validates architecture parameters (clear message on the first problem).
void validate_model_params(const vlm_model_params& p);
// Checks that `world` ranks can split this architecture evenly (whole heads,
// whole KV heads, whole AWQ groups); INVALID_ARGUMENT naming the first problem.
void check_tensor_parallel(const vlm_model_params& p, int world);
// [begin, end) of rank's part when `total` items are split over `world` ranks.
std::pair<int, int> shard_range(int total, int rank, int world);

}  // namespace vlm
