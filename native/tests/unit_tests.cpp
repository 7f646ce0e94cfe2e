// Native unit tests of the C ABI's contract (run by ctest). Model-level
// correctness is tested from Python against transformers.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "vlmcore.h"

static int g_failures = 0;
#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, \
                  vlm_last_error());                                   \
      ++g_failures;                                                    \
    }                                                                  \
  } while (0)

static vlm_model* tiny_model(std::mt19937& rng) {
  vlm_model_params p = vlm_model_default_params();
  vlm_model* m = nullptr;
  EXPECT(vlm_model_create(&p, &m) == VLM_OK);
  std::normal_distribution<float> nd(0.f, 0.2f);
  auto set = [&](const char* name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(n);
    for (float& x : data) x = nd(rng);
    EXPECT(vlm_model_set_tensor(m, name, VLM_DTYPE_F32, (int)shape.size(), shape.data(), data.data()) == VLM_OK);
  };
  const int64_t V = p.vocab_size, H = p.hidden_size, F = p.intermediate_size, D = p.num_heads * p.head_dim;
  set("embed_tokens", {V, H});
  set("lm_head", {V, H});
  set("norm", {H});
  set("layers.0.input_layernorm", {H});
  set("layers.0.post_attention_layernorm", {H});
  set("layers.0.q_proj.weight", {D, H});
  set("layers.0.k_proj.weight", {D, H});
  set("layers.0.v_proj.weight", {D, H});
  set("layers.0.o_proj.weight", {H, D});
  set("layers.0.gate_proj.weight", {F, H});
  set("layers.0.up_proj.weight", {F, H});
  set("layers.0.down_proj.weight", {H, F});
  return m;
}

int main() {
  std::mt19937 rng(1234);
  EXPECT(vlm_abi_version() == VLM_ABI_VERSION);

  // NULL and foreign handles are reported, not dereferenced.
  vlm_model_params p = vlm_model_default_params();
  EXPECT(vlm_model_create(nullptr, nullptr) == VLM_ERR_INVALID_ARGUMENT);
  EXPECT(vlm_model_finalize(nullptr) == VLM_ERR_INVALID_HANDLE);
  EXPECT(vlm_model_finalize(reinterpret_cast<vlm_model*>(&p)) == VLM_ERR_INVALID_HANDLE);
  EXPECT(std::strlen(vlm_last_error()) > 0);

  // Invalid architecture.
  vlm_model_params bad = p;
  bad.num_kv_heads = 3;
  vlm_model* m = nullptr;
  EXPECT(vlm_model_create(&bad, &m) == VLM_ERR_INVALID_ARGUMENT && m == nullptr);

  m = tiny_model(rng);
  // Wrong shape and unknown names.
  std::vector<float> junk(16, 1.f);
  int64_t shape[2] = {4, 4};
  EXPECT(vlm_model_set_tensor(m, "norm", VLM_DTYPE_F32, 2, shape, junk.data()) == VLM_ERR_INVALID_ARGUMENT);
  EXPECT(vlm_model_set_tensor(m, "layers.7.q_proj.weight", VLM_DTYPE_F32, 2, shape, junk.data()) ==
         VLM_ERR_NOT_FOUND);
  EXPECT(vlm_model_set_tensor(m, "bogus", VLM_DTYPE_F32, 2, shape, junk.data()) == VLM_ERR_NOT_FOUND);
  EXPECT(vlm_model_finalize(m) == VLM_OK);

  vlm_engine_params ep = vlm_engine_default_params();
  ep.num_blocks = 8;
  ep.block_size = 16;
  vlm_engine* e = nullptr;
  EXPECT(ep.prefill_hold_steps == 0);
  ep.prefill_hold_steps = -1;  // a negative hold is refused
  EXPECT(vlm_engine_create(m, &ep, &e) == VLM_ERR_INVALID_ARGUMENT && e == nullptr);
  ep.prefill_hold_steps = 0;
  EXPECT(vlm_engine_create(m, &ep, &e) == VLM_OK);

  // Bad requests are refused; a good one still runs to completion.
  vlm_request_params rp = vlm_request_default_params();
  int32_t prompt[4] = {1, 2, 3, 300};
  rp.prompt = prompt;
  rp.prompt_len = 4;
  uint64_t id = 0;
  EXPECT(vlm_engine_enqueue(e, &rp, &id) == VLM_ERR_OUT_OF_RANGE);
  prompt[3] = 4;
  rp.sampling.top_p = 0.f;
  EXPECT(vlm_engine_enqueue(e, &rp, &id) == VLM_ERR_INVALID_ARGUMENT);
  rp.sampling.top_p = 1.f;
  rp.max_new_tokens = 8;
  EXPECT(vlm_engine_enqueue(e, &rp, &id) == VLM_OK && id > 0);
  EXPECT(vlm_engine_cancel(e, id + 100) == VLM_ERR_NOT_FOUND);

  int tokens = 0, finished = 0;
  vlm_event ev[8];
  while (!finished) {
    int32_t n = 0;
    EXPECT(vlm_engine_poll(e, 1000, ev, 8, &n) == VLM_OK);
    for (int i = 0; i < n; ++i) {
      if (ev[i].kind == VLM_EVENT_TOKEN) ++tokens;
      if (ev[i].kind == VLM_EVENT_FINISH) {
        finished = 1;
        EXPECT(ev[i].finish_reason == VLM_FINISH_LENGTH);
        EXPECT(ev[i].output_tokens == 8);
      }
    }
  }
  EXPECT(tokens == 8);
  vlm_engine_stats st;
  EXPECT(vlm_engine_get_stats(e, &st) == VLM_OK);
  EXPECT(st.free_blocks == st.total_blocks);

  vlm_engine_free(e);
  EXPECT(vlm_engine_get_stats(e, &st) == VLM_ERR_INVALID_HANDLE);  // freed handle
  vlm_model_free(m);
  EXPECT(vlm_model_finalize(m) == VLM_ERR_INVALID_HANDLE);
  vlm_model_free(m);  // double free is a no-op

  std::printf("%d failures\n", g_failures);
  return g_failures ? 1 : 0;
}
