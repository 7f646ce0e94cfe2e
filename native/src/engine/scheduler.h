// Decides, before every step, which requests run and how many of their
// tokens: running requests first (oldest first), then waiting ones in FIFO
// order while the batch, the token budget and the free KV blocks allow.
// When a running request needs a block and none is free, the most recently
// admitted request is preempted: its blocks are freed and it goes back to the
// head of the queue to be recomputed later (its output so far is kept).
//
// Prefill hold (hold_steps > 0): while requests are running, new requests are
// not let in one by one as they arrive but together, once the oldest has waited
// hold_steps plans, or the waiting prompts would fill what is left of the
// step's token budget or of the batch. A step that carries prompt rows costs
// far more than a decode step whatever its prompt count (on the GPU it reads
// the weights in a larger form and runs eagerly), so fewer, fuller prefill
// steps serve more tokens a second under steady arrivals, for a few steps more
// of waiting each. Requests coming back from preemption are never held.
#pragma once
#include <deque>
#include <functional>
#include <vector>

#include "engine/block_manager.h"
#include "engine/request.h"

namespace vlm {

struct ScheduledWork {
  Request* request;
  int count;  // tokens computed this step, starting at request->num_computed
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, int block_size, int max_batch_size, int token_budget, int hold_steps = 0)
      : blocks_(blocks), block_size_(block_size), max_batch_(max_batch_size), budget_(token_budget),
        hold_steps_(hold_steps) {}

  void add(Request* r) {
    r->queued_at_plan = plans_;
    waiting_.push_back(r);
  }
  // Plans one step. Requests preempted while planning are appended to `preempted`.
  std::vector<ScheduledWork> schedule(std::vector<Request*>& preempted);
  // Plans the step after one still running on the device (Engine::step): running requests for which `hold`
  // says so are left out this time; nothing is preempted (a preempted request may have a token still on the
  // device): when a running request's blocks are not free, nothing is planned (blocks already given to requests
  // before it stay theirs: they cover positions those requests compute next anyway).
  std::vector<ScheduledWork> schedule_ahead(const std::function<bool(const Request&)>& hold);
  // Removes a request wherever it is and frees its blocks.
  void remove(Request* r);

  int num_running() const { return (int)running_.size(); }
  int num_waiting() const { return (int)waiting_.size(); }
  bool idle() const { return running_.empty() && waiting_.empty(); }

 private:
  int64_t blocks_to_cover(const Request* r, int count) const;
  void admit(std::vector<ScheduledWork>& work, int& budget);
  bool admission_due(int budget) const;
  void preempt(Request* r);

  BlockManager& blocks_;
  int block_size_, max_batch_, budget_, hold_steps_;
  int64_t plans_ = 0;  // schedule() and schedule_ahead() calls so far: the clock of the prefill hold
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
};

}  // namespace vlm
