#include "model/model.h"

#include <cstring>
#include <sstream>

#include "common/error.h"
#include "common/numeric.h"

namespace vlm {
namespace {

const char* const kProjections[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                    "gate_proj", "up_proj", "down_proj"};

std::string shape_str(int ndim, const int64_t* shape) {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

bool is_float_dtype(int d) { return d == VLM_DTYPE_F32 || d == VLM_DTYPE_F16 || d == VLM_DTYPE_BF16; }

void expect_shape(const std::string& name, int ndim, const int64_t* shape,
                  std::initializer_list<int64_t> want) {
  bool ok = ndim == static_cast<int>(want.size());
  int i = 0;
  for (int64_t w : want) ok = ok && i < ndim && shape[i++] == w;
  if (!ok) {
    std::vector<int64_t> wv(want);
    VLM_CHECK_ARG(false, "tensor '" << name << "' has shape " << shape_str(ndim, shape)
                                    << ", expected " << shape_str((int)wv.size(), wv.data()));
  }
}

std::vector<float> to_f32_vector(int dtype, const void* data, int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = load_as_f32(dtype, data, i);
  return v;
}

}  // namespace

void validate_model_params(const vlm_model_params& p) {
  VLM_CHECK_ARG(p.vocab_size > 0 && p.hidden_size > 0 && p.intermediate_size > 0 && p.num_layers > 0,
                "vocab_size, hidden_size, intermediate_size and num_layers must be positive");
  VLM_CHECK_ARG(p.num_heads > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
                "num_kv_heads (" << p.num_kv_heads << ") must divide num_heads (" << p.num_heads << ")");
  VLM_CHECK_ARG(p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= 512,
                "head_dim must be even and at most 512, got " << p.head_dim);
  VLM_CHECK_ARG(p.rms_norm_eps > 0.f, "rms_norm_eps must be positive");
  VLM_CHECK_ARG(p.rope_theta > 0.f, "rope_theta must be positive");
  VLM_CHECK_ARG(p.rope_scaling >= VLM_ROPE_NONE && p.rope_scaling <= VLM_ROPE_LLAMA3,
                "unknown rope_scaling " << p.rope_scaling);
  if (p.rope_scaling != VLM_ROPE_NONE) VLM_CHECK_ARG(p.rope_factor > 0.f, "rope_factor must be positive");
  if (p.rope_scaling == VLM_ROPE_LLAMA3)
    VLM_CHECK_ARG(p.rope_low_freq_factor > 0.f && p.rope_high_freq_factor > p.rope_low_freq_factor &&
                      p.rope_original_max_position > 0,
                  "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor and original_max_position");
  VLM_CHECK_ARG(p.max_position_embeddings > 0, "max_position_embeddings must be positive");
  VLM_CHECK_ARG(p.sliding_window >= 0, "sliding_window must be >= 0");
  VLM_CHECK_ARG(p.awq_group_size == 0 || p.awq_group_size == 32 || p.awq_group_size == 64 ||
                    p.awq_group_size == 128,
                "awq_group_size must be 0 (dense), 32, 64 or 128, got " << p.awq_group_size);
  if (p.awq_group_size) {
    VLM_CHECK_ARG(p.hidden_size % p.awq_group_size == 0 && p.intermediate_size % p.awq_group_size == 0 &&
                      (p.num_heads * p.head_dim) % p.awq_group_size == 0,
                  "AWQ group size " << p.awq_group_size << " must divide hidden_size, intermediate_size "
                                    << "and num_heads*head_dim");
  }
  VLM_CHECK_ARG(p.device >= VLM_DEVICE_AUTO && p.device <= VLM_DEVICE_CUDA, "unknown device " << p.device);
  VLM_CHECK_ARG(p.num_threads >= 0, "num_threads must be >= 0");
}

Model::Model(const vlm_model_params& params) : p_(params) {
  validate_model_params(p_);
  rope_ = Rope::from_params(p_);
  layers_.resize(p_.num_layers);
}

int64_t Model::linear_out(const std::string& proj) const {
  if (proj == "q_proj") return (int64_t)p_.num_heads * p_.head_dim;
  if (proj == "k_proj" || proj == "v_proj") return (int64_t)p_.num_kv_heads * p_.head_dim;
  if (proj == "gate_proj" || proj == "up_proj") return p_.intermediate_size;
  return p_.hidden_size;  // o_proj, down_proj
}

int64_t Model::linear_in(const std::string& proj) const {
  if (proj == "o_proj") return (int64_t)p_.num_heads * p_.head_dim;
  if (proj == "down_proj") return p_.intermediate_size;
  return p_.hidden_size;
}

Linear* Model::linear_by_name(int layer, const std::string& proj) {
  LayerWeights& l = layers_[layer];
  if (proj == "q_proj") return &l.q;
  if (proj == "k_proj") return &l.k;
  if (proj == "v_proj") return &l.v;
  if (proj == "o_proj") return &l.o;
  if (proj == "gate_proj") return &l.gate;
  if (proj == "up_proj") return &l.up;
  if (proj == "down_proj") return &l.down;
  return nullptr;
}

void Model::set_awq_part(int layer, const std::string& proj, const std::string& part, int dtype,
                         int ndim, const int64_t* shape, const void* data) {
  const std::string name = "layers." + std::to_string(layer) + "." + proj + "." + part;
  const int g = p_.awq_group_size;
  VLM_CHECK_ARG(g > 0, "tensor '" << name << "' is AWQ but the model was created with dense weights");
  const int64_t out = linear_out(proj), in = linear_in(proj);
  const std::string key = "layers." + std::to_string(layer) + "." + proj;
  AwqParts& parts = awq_pending_[key];
  if (part == "qweight") {
    VLM_CHECK_ARG(dtype == VLM_DTYPE_I32, "tensor '" << name << "' must be int32");
    expect_shape(name, ndim, shape, {in, out / 8});
    parts.qweight.assign(static_cast<const int32_t*>(data), static_cast<const int32_t*>(data) + in * (out / 8));
  } else if (part == "qzeros") {
    VLM_CHECK_ARG(dtype == VLM_DTYPE_I32, "tensor '" << name << "' must be int32");
    expect_shape(name, ndim, shape, {in / g, out / 8});
    parts.qzeros.assign(static_cast<const int32_t*>(data),
                        static_cast<const int32_t*>(data) + (in / g) * (out / 8));
  } else {
    VLM_CHECK_ARG(dtype == VLM_DTYPE_F16, "tensor '" << name << "' must be float16");
    expect_shape(name, ndim, shape, {in / g, out});
    parts.scales.assign(static_cast<const uint16_t*>(data), static_cast<const uint16_t*>(data) + (in / g) * out);
  }
  if (!parts.qweight.empty() && !parts.qzeros.empty() && !parts.scales.empty()) {
    Linear* dst = linear_by_name(layer, proj);
    std::vector<float> bias = std::move(dst->bias);
    *dst = pack_awq(parts.qweight.data(), parts.qzeros.data(), parts.scales.data(), (int)out, (int)in, g);
    dst->bias = std::move(bias);
    awq_pending_.erase(key);
  }
}

void Model::set_tensor(const std::string& name, int dtype, int ndim, const int64_t* shape, const void* data) {
  VLM_CHECK(!finalized_, VLM_ERR_FAILED_PRECONDITION, "model is finalized; tensors can no longer be set");
  VLM_CHECK_ARG(data != nullptr, "tensor '" << name << "' has no data");
  VLM_CHECK_ARG(ndim >= 1 && ndim <= 4 && shape != nullptr, "tensor '" << name << "' has invalid ndim " << ndim);
  for (int i = 0; i < ndim; ++i) VLM_CHECK_ARG(shape[i] > 0, "tensor '" << name << "' has a non-positive dimension");
  const int64_t V = p_.vocab_size, H = p_.hidden_size;

  if (name == "embed_tokens" || name == "lm_head") {
    VLM_CHECK_ARG(is_float_dtype(dtype), "tensor '" << name << "' must be F32, F16 or BF16");
    expect_shape(name, ndim, shape, {V, H});
    VLM_CHECK(!(name == "lm_head" && p_.tie_word_embeddings), VLM_ERR_INVALID_ARGUMENT,
              "lm_head given but the model ties it to embed_tokens");
    (name == "lm_head" ? lm_head_ : embed_) = pack_dense(dtype, data, (int)V, (int)H);
  } else if (name == "norm") {
    VLM_CHECK_ARG(is_float_dtype(dtype), "tensor 'norm' must be F32, F16 or BF16");
    expect_shape(name, ndim, shape, {H});
    norm_ = to_f32_vector(dtype, data, H);
  } else if (name.rfind("layers.", 0) == 0) {
    const size_t dot = name.find('.', 7);
    VLM_CHECK(dot != std::string::npos, VLM_ERR_NOT_FOUND, "unknown tensor '" << name << "'");
    int layer = -1;
    try {
      layer = std::stoi(name.substr(7, dot - 7));
    } catch (...) {
    }
    VLM_CHECK(layer >= 0 && layer < p_.num_layers, VLM_ERR_NOT_FOUND,
              "tensor '" << name << "' names a layer outside [0, " << p_.num_layers << ")");
    const std::string rest = name.substr(dot + 1);
    LayerWeights& l = layers_[layer];
    if (rest == "input_layernorm" || rest == "post_attention_layernorm") {
      VLM_CHECK_ARG(is_float_dtype(dtype), "tensor '" << name << "' must be F32, F16 or BF16");
      expect_shape(name, ndim, shape, {H});
      (rest == "input_layernorm" ? l.input_norm : l.post_attention_norm) = to_f32_vector(dtype, data, H);
    } else {
      const size_t d2 = rest.find('.');
      VLM_CHECK(d2 != std::string::npos, VLM_ERR_NOT_FOUND, "unknown tensor '" << name << "'");
      const std::string proj = rest.substr(0, d2), part = rest.substr(d2 + 1);
      Linear* dst = linear_by_name(layer, proj);
      VLM_CHECK(dst != nullptr, VLM_ERR_NOT_FOUND, "unknown tensor '" << name << "'");
      const int64_t out = linear_out(proj), in = linear_in(proj);
      if (part == "weight") {
        VLM_CHECK_ARG(p_.awq_group_size == 0,
                      "tensor '" << name << "' is dense but the model was created for AWQ weights");
        VLM_CHECK_ARG(is_float_dtype(dtype), "tensor '" << name << "' must be F32, F16 or BF16");
        expect_shape(name, ndim, shape, {out, in});
        std::vector<float> bias = std::move(dst->bias);
        *dst = pack_dense(dtype, data, (int)out, (int)in);
        dst->bias = std::move(bias);
      } else if (part == "bias") {
        VLM_CHECK(p_.attention_bias && (proj == "q_proj" || proj == "k_proj" || proj == "v_proj"),
                  VLM_ERR_NOT_FOUND, "unexpected bias tensor '" << name << "' (attention_bias is off)");
        VLM_CHECK_ARG(is_float_dtype(dtype), "tensor '" << name << "' must be F32, F16 or BF16");
        expect_shape(name, ndim, shape, {out});
        dst->bias = to_f32_vector(dtype, data, out);
      } else if (part == "qweight" || part == "qzeros" || part == "scales") {
        set_awq_part(layer, proj, part, dtype, ndim, shape, data);
      } else {
        VLM_CHECK(false, VLM_ERR_NOT_FOUND, "unknown tensor '" << name << "'");
      }
    }
  } else {
    VLM_CHECK(false, VLM_ERR_NOT_FOUND, "unknown tensor '" << name << "'");
  }
  seen_[name] = true;
}

void Model::finalize() {
  if (finalized_) return;
  auto missing = [](const std::string& n) {
    VLM_CHECK(false, VLM_ERR_FAILED_PRECONDITION, "weight '" << n << "' was never set");
  };
  if (embed_.empty()) missing("embed_tokens");
  if (!p_.tie_word_embeddings && lm_head_.empty()) missing("lm_head");
  if (norm_.empty()) missing("norm");
  for (int i = 0; i < p_.num_layers; ++i) {
    const std::string pre = "layers." + std::to_string(i) + ".";
    LayerWeights& l = layers_[i];
    if (l.input_norm.empty()) missing(pre + "input_layernorm");
    if (l.post_attention_norm.empty()) missing(pre + "post_attention_layernorm");
    for (const char* proj : kProjections) {
      Linear* w = linear_by_name(i, proj);
      if (w->empty()) missing(pre + proj + (p_.awq_group_size ? " (qweight/qzeros/scales)" : ".weight"));
      if (p_.attention_bias && (w == &l.q || w == &l.k || w == &l.v) && w->bias.empty())
        missing(pre + proj + ".bias");
    }
  }
  finalized_ = true;
}

int64_t Model::weight_bytes() const {
  int64_t b = embed_.weight_bytes() + lm_head_.weight_bytes() + (int64_t)norm_.size() * 4;
  for (const LayerWeights& l : layers_) {
    b += (int64_t)(l.input_norm.size() + l.post_attention_norm.size()) * 4;
    for (const Linear* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) b += w->weight_bytes();
  }
  return b;
}

void Model::embed(int32_t token, float* out) const {
  for (int k = 0; k < p_.hidden_size; ++k) out[k] = embed_.at(token, k);
}

}  // namespace vlm
