// The C ABI: validates handles, turns exceptions into status codes and the
// thread-local last-error message. Nothing thrown below escapes from here.
#include <algorithm>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>

#include "api_guard.h"
#include "common/error.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "model/model.h"
#include "vlmcore.h"

struct vlm_model {
  std::shared_ptr<vlm::Model> impl;
};
struct vlm_engine {
  std::unique_ptr<vlm::Engine> impl;
};

namespace vlm {
std::string& last_error() {
  thread_local std::string message;
  return message;
}
}  // namespace vlm

namespace {

// Live handles: a freed or foreign pointer is reported instead of dereferenced.
std::mutex g_handles_mu;
std::unordered_set<const void*> g_handles;

void register_handle(const void* h) {
  std::lock_guard<std::mutex> lk(g_handles_mu);
  g_handles.insert(h);
}
bool unregister_handle(const void* h) {
  std::lock_guard<std::mutex> lk(g_handles_mu);
  return g_handles.erase(h) > 0;
}
void check_handle(const void* h, const char* what) {
  VLM_CHECK(h != nullptr, VLM_ERR_INVALID_HANDLE, what << " handle is NULL");
  std::lock_guard<std::mutex> lk(g_handles_mu);
  VLM_CHECK(g_handles.count(h), VLM_ERR_INVALID_HANDLE, what << " handle is not live (freed or never created)");
}

}  // namespace

extern "C" {

int vlm_abi_version(void) { return VLM_ABI_VERSION; }
const char* vlm_last_error(void) { return vlm::last_error().c_str(); }

const char* vlm_status_name(int s) {
  switch (s) {
    case VLM_OK: return "OK";
    case VLM_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case VLM_ERR_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case VLM_ERR_NOT_FOUND: return "NOT_FOUND";
    case VLM_ERR_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case VLM_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case VLM_ERR_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case VLM_ERR_INVALID_HANDLE: return "INVALID_HANDLE";
    case VLM_ERR_INTERNAL: return "INTERNAL";
  }
  return "UNKNOWN";
}

int vlm_kv_quantize(const float* x, int32_t n, int32_t bits, uint8_t* codes, uint16_t* scale_f16,
                    uint16_t* zero_f16) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(x && codes && scale_f16 && zero_f16, "NULL argument");
    VLM_CHECK_ARG(n >= 1, "n must be >= 1");
    VLM_CHECK_ARG(bits == 8 || bits == 4, "bits must be 8 or 4, got " << bits);
    vlm::kv_quantize(x, n, bits, codes, scale_f16, zero_f16);
  });
}

vlm_model_params vlm_model_default_params(void) {
  vlm_model_params p{};
  p.vocab_size = 256;
  p.hidden_size = 64;
  p.intermediate_size = 128;
  p.num_layers = 1;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 16;
  p.rms_norm_eps = 1e-6f;
  p.rope_theta = 10000.f;
  p.rope_scaling = VLM_ROPE_NONE;
  p.rope_factor = 1.f;
  p.rope_low_freq_factor = 1.f;
  p.rope_high_freq_factor = 4.f;
  p.rope_original_max_position = 8192;
  p.max_position_embeddings = 2048;
  p.device = VLM_DEVICE_CPU;
  return p;
}

int vlm_model_create(const vlm_model_params* params, vlm_model** out) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(params != nullptr && out != nullptr, "params and out must not be NULL");
    *out = nullptr;
    vlm_model_params p = *params;
    // AUTO: the GPU when one is visible to a CUDA build, else the CPU.
    const int gpus = vlm_cuda_device_count();
    if (p.device == VLM_DEVICE_AUTO) p.device = gpus > 0 ? VLM_DEVICE_CUDA : VLM_DEVICE_CPU;
    VLM_CHECK(p.device != VLM_DEVICE_CUDA || gpus > 0, VLM_ERR_UNSUPPORTED,
              "device=cuda but no CUDA GPU is visible to this build of libvlmcore; use device=cpu");
    auto m = std::make_unique<vlm_model>();
    m->impl = std::make_shared<vlm::Model>(p);
    register_handle(m.get());
    *out = m.release();
  });
}

void vlm_model_free(vlm_model* model) {
  if (model && unregister_handle(model)) delete model;
}

int vlm_model_set_tensor(vlm_model* model, const char* name, int dtype, int ndim, const int64_t* shape,
                         const void* data) {
  return vlm::guarded([&] {
    check_handle(model, "model");
    VLM_CHECK_ARG(name != nullptr, "tensor name is NULL");
    model->impl->set_tensor(name, dtype, ndim, shape, data);
  });
}

int vlm_model_finalize(vlm_model* model) {
  return vlm::guarded([&] {
    check_handle(model, "model");
    model->impl->finalize();
  });
}

int vlm_model_weight_bytes(const vlm_model* model, int64_t* out) {
  return vlm::guarded([&] {
    check_handle(model, "model");
    VLM_CHECK_ARG(out != nullptr, "out is NULL");
    *out = model->impl->weight_bytes();
  });
}

vlm_engine_params vlm_engine_default_params(void) {
  vlm_engine_params p{};
  p.kv_dtype = VLM_DTYPE_AUTO;
  p.block_size = 64;
  p.num_blocks = 0;
  p.cache_max_entry_count = 0.8f;
  p.max_batch_size = 128;
  p.max_num_batched_tokens = 2048;
  p.max_model_len = 0;
  p.tensor_parallel = 1;
  p.prefill_hold_steps = 0;
  return p;
}

int vlm_engine_create(vlm_model* model, const vlm_engine_params* params, vlm_engine** out) {
  return vlm::guarded([&] {
    check_handle(model, "model");
    VLM_CHECK_ARG(params != nullptr && out != nullptr, "params and out must not be NULL");
    *out = nullptr;
    auto e = std::make_unique<vlm_engine>();
    e->impl = std::make_unique<vlm::Engine>(model->impl, *params);
    register_handle(e.get());
    *out = e.release();
  });
}

void vlm_engine_free(vlm_engine* engine) {
  if (engine && unregister_handle(engine)) delete engine;
}

vlm_request_params vlm_request_default_params(void) {
  vlm_request_params p{};
  p.max_new_tokens = 16;
  p.sampling.temperature = 0.f;
  p.sampling.top_p = 1.f;
  p.sampling.repetition_penalty = 1.f;
  p.logprobs = -1;
  return p;
}

int vlm_engine_enqueue(vlm_engine* engine, const vlm_request_params* params, uint64_t* out_id) {
  return vlm::guarded([&] {
    check_handle(engine, "engine");
    VLM_CHECK_ARG(params != nullptr && out_id != nullptr, "params and out_id must not be NULL");
    *out_id = engine->impl->enqueue(*params);
  });
}

int vlm_engine_enqueue_batch(vlm_engine* engine, const vlm_request_params* params, int32_t num_requests,
                             uint64_t* out_ids) {
  return vlm::guarded([&] {
    check_handle(engine, "engine");
    VLM_CHECK_ARG(params != nullptr && out_ids != nullptr, "params and out_ids must not be NULL");
    VLM_CHECK_ARG(num_requests > 0, "num_requests must be positive, got " << num_requests);
    const std::vector<uint64_t> ids = engine->impl->enqueue_batch(params, num_requests);
    std::copy(ids.begin(), ids.end(), out_ids);
  });
}

int vlm_engine_cancel(vlm_engine* engine, uint64_t request_id) {
  return vlm::guarded([&] {
    check_handle(engine, "engine");
    engine->impl->cancel(request_id);
  });
}

int vlm_engine_poll(vlm_engine* engine, int32_t timeout_ms, vlm_event* events, int32_t max_events,
                    int32_t* num_events) {
  return vlm::guarded([&] {
    check_handle(engine, "engine");
    VLM_CHECK_ARG(num_events != nullptr, "num_events is NULL");
    *num_events = 0;
    *num_events = engine->impl->poll(timeout_ms, events, max_events);
  });
}

int vlm_engine_get_stats(vlm_engine* engine, vlm_engine_stats* out) {
  return vlm::guarded([&] {
    check_handle(engine, "engine");
    VLM_CHECK_ARG(out != nullptr, "out is NULL");
    *out = engine->impl->stats();
  });
}

}  // extern "C"
