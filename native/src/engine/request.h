// One generation request as the engine tracks it between enqueue and finish.
#pragma once
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "vlmcore.h"

namespace vlm {

using Clock = std::chrono::steady_clock;

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

struct EmbeddingSpan {
  int position = 0;
  int rows = 0;
  std::vector<float> data;  // [rows][hidden]
};

struct Request {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  int max_new_tokens = 16;
  vlm_sampling_params sampling{};
  std::vector<int32_t> eos_ids;
  bool ignore_eos = false;
  std::vector<std::vector<int32_t>> stop_sequences;
  int logprobs = -1;
  bool prompt_logprobs = false;
  bool return_logits = false;
  std::vector<EmbeddingSpan> spans;

  // Engine state. Tokens [0, num_computed) have K/V in the cache; the request
  // needs a forward pass over [num_computed, length()) and samples after it.
  int num_computed = 0;
  int logits_emitted = 0;  // prompt positions whose logits/logprobs were already sent
  std::vector<int32_t> block_table;
  std::mt19937_64 rng;
  int preemptions = 0;
  int64_t queued_at_plan = 0;  // the scheduler's plan count when it last joined the queue (the prefill hold)
  bool hold_exempt = false;    // back in the queue after a preemption: admitted without the prefill hold
  std::vector<float> prompt_logprob_buf;  // held until the first token, then sent in one event
  std::vector<float> logits_buf;          // likewise for return_logits rows

  int64_t enqueue_ns = 0, first_scheduled_ns = 0, first_token_ns = 0;

  // Overlapped steps (Engine::step): tokens a launched step chooses on the device, not yet back on the host.
  // They count in length() so the next step can be planned; their value reaches that step's input on the
  // device: the newest as -(1 + the logit row that chooses it in the last launched step).
  int pending = 0;
  int pending_row = 0;
  bool finished = false;       // finished while a launched step still holds it (Engine::finish, retired_)
  int64_t last_step = 0;       // the last launched step that holds it

  int length() const { return (int)(prompt.size() + output.size()) + pending; }
  int32_t token_at(int pos) const {
    if (pos < (int)prompt.size()) return prompt[pos];
    if (pos < (int)(prompt.size() + output.size())) return output[pos - prompt.size()];
    return -(1 + pending_row);  // only the newest pending token is ever an input (the one a decode row reads)
  }
};

}  // namespace vlm
