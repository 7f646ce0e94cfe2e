// Decides, before every step, which requests run and how many of their
// tokens: running requests first (oldest first), then waiting ones in FIFO
// order while the batch, the token budget and the free KV blocks allow.
// When a running request needs a block and none is free, the most recently
// admitted request is preempted: its blocks are freed and it goes back to the
// head of the queue to be recomputed later (its output so far is kept).
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
  Scheduler(BlockManager& blocks, int block_size, int max_batch_size, int token_budget)
      : blocks_(blocks), block_size_(block_size), max_batch_(max_batch_size), budget_(token_budget) {}

  void add(Request* r) { waiting_.push_back(r); }
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
  void preempt(Request* r);

  BlockManager& blocks_;
  int block_size_, max_batch_, budget_;
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
};

}  // namespace vlm
