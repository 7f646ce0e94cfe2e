// The engine: owns the KV cache, the scheduler and a decoding thread that
// repeats schedule -> run -> postprocess while there is work. Callers talk to
// it only through enqueue / cancel / poll / stats (see engine/README.md for
// the invariants).
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/block_manager.h"
#include "engine/kv_cache.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/step_runner.h"
#include "model/model.h"

namespace vlm {

class Engine {
 public:
  Engine(std::shared_ptr<const Model> model, const vlm_engine_params& params);
  ~Engine();

  uint64_t enqueue(const vlm_request_params& params);
  // All of them or none (the first invalid one throws): they reach the scheduler together,
  // so they start in the same step.
  std::vector<uint64_t> enqueue_batch(const vlm_request_params* params, int n);
  void cancel(uint64_t id);
  int poll(int timeout_ms, vlm_event* out, int max_events);
  vlm_engine_stats stats() const;

 private:
  struct Event {
    vlm_event ev{};
    std::vector<float> data;
    std::string error;
  };

  std::unique_ptr<Request> build_request(const vlm_request_params& params) const;
  // What each of a step's logit rows is for, in logit_rows order: its request and position, the prompt token
  // whose logprob it gives (-1: none), whether it is a prompt row (logits or logprobs asked for) and whether the
  // request's next token comes from it, chosen on the device (argmax or draw) or on the host from the row.
  struct LogitRowUse {
    Request* request;
    int pos;
    int32_t scored_token;
    bool prompt_row;
    bool sample;
    bool from_device;
  };
  // A step from planning to its events.
  struct Step {
    int64_t index = 0;  // 1, 2, ... in launch order
    std::vector<ScheduledWork> work;
    StepBatch batch;
    std::vector<LogitRowUse> uses;
    StepOutput out;
  };

  void loop();
  void step();
  bool launch(Step& s, std::vector<ScheduledWork> work);
  void complete(Step& s);
  bool ends_with_pending(const Request& r) const;
  void postprocess(Step& s);
  void sample_rows(const Step& s);
  static bool token_is_all_it_needs(const Request& r);
  static bool is_greedy(const Request& r);
  static bool argmax_suffices(const Request& r);
  static bool draws_on_device(const Request& r);
  void finish(Request* r, int reason, int stop_len, const std::string& error = "");
  void release_retired();
  void emit(Event&& e);
  void deliver_locked(Event&& e);  // with mu_ held
  void flush_events();
  int check_stop(const Request& r, int* stop_len) const;
  void publish_stats();
  size_t pending_incoming();

  std::shared_ptr<const Model> model_;
  vlm_engine_params params_;
  int max_model_len_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<StepRunner> runner_;  // declared before the thread that uses it

  // Owned by the decoding thread.
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;
  // Overlapped steps (with a runner that overlaps(), unless VLM_OVERLAP_STEPS=0): while one step runs on the device
  // the next is planned and launched, its decode rows reading their tokens where the running step leaves
  // them, and only then is the running step's output taken and its events sent; so the device does not wait
  // for the host's work between steps. Two Steps alternate; `in_flight_` is the launched one not yet completed.
  bool overlap_ = false;
  Step steps_buf_[2];
  Step* in_flight_ = nullptr;
  int64_t launched_ = 0, completed_ = 0;
  // Finished requests that a launched step still holds (Request::last_step > completed_): freed after it.
  std::vector<std::unique_ptr<Request>> retired_;
  // The step's tokens drawn on the host (rows whose full logits came back), in row order, and each sampling
  // thread's buffers (Engine::sample_rows).
  std::vector<SampleResult> sampled_;
  std::vector<float> prompt_logprobs_;  // the step's prompt rows' logprobs, in row order
  std::vector<SamplerScratch> sample_scratch_;
  // While a step's outputs are processed, its events wait here and reach the pollers together (flush_events).
  bool batch_events_ = false;
  std::vector<Event> batched_;

  // Shared with callers, guarded by mu_.
  mutable std::mutex mu_;
  std::condition_variable work_cv_, event_cv_;
  std::vector<std::unique_ptr<Request>> incoming_;
  std::unordered_set<uint64_t> cancels_;
  std::unordered_set<uint64_t> live_;
  std::deque<Event> events_;
  std::vector<Event> delivered_;  // keeps data/error of the last poll alive
  uint64_t next_id_ = 1;
  bool stop_ = false;

  std::atomic<int> running_{0}, waiting_{0};
  std::atomic<int64_t> free_blocks_{0}, steps_{0}, preemptions_{0}, overlapped_steps_{0};
  std::thread thread_;
};

}  // namespace vlm
