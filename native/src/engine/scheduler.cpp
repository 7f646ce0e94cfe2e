#include "engine/scheduler.h"

#include <algorithm>

namespace vlm {

int64_t Scheduler::blocks_to_cover(const Request* r, int count) const {
  const int64_t need = (r->num_computed + count + block_size_ - 1) / block_size_;
  return std::max<int64_t>(0, need - (int64_t)r->block_table.size());
}

void Scheduler::preempt(Request* r) {
  blocks_.release(r->block_table);
  r->num_computed = 0;
  r->preemptions += 1;
  r->hold_exempt = true;
  running_.erase(std::find(running_.begin(), running_.end(), r));
  waiting_.push_front(r);
}

void Scheduler::remove(Request* r) {
  blocks_.release(r->block_table);
  auto it = std::find(running_.begin(), running_.end(), r);
  if (it != running_.end()) running_.erase(it);
  auto wt = std::find(waiting_.begin(), waiting_.end(), r);
  if (wt != waiting_.end()) waiting_.erase(wt);
}

std::vector<ScheduledWork> Scheduler::schedule(std::vector<Request*>& preempted) {
  ++plans_;
  std::vector<ScheduledWork> work;
  int budget = budget_;

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    const int count = std::min(r->length() - r->num_computed, budget);
    int64_t need = blocks_to_cover(r, count);
    bool self_preempted = false;
    while (need > blocks_.num_free()) {
      Request* victim = running_.back();
      preempted.push_back(victim);
      preempt(victim);
      if (victim == r) { self_preempted = true; break; }
    }
    if (self_preempted) break;  // r was the last running request: nothing after it to plan
    blocks_.allocate(need, r->block_table);
    work.push_back({r, count});
    budget -= count;
    ++i;
  }

  admit(work, budget);
  return work;
}

std::vector<ScheduledWork> Scheduler::schedule_ahead(const std::function<bool(const Request&)>& hold) {
  ++plans_;
  std::vector<ScheduledWork> work;
  int budget = budget_;
  for (Request* r : running_) {
    if (budget <= 0) break;
    if (hold(*r)) continue;
    const int count = std::min(r->length() - r->num_computed, budget);
    if (count <= 0) continue;
    const int64_t need = blocks_to_cover(r, count);
    if (need > blocks_.num_free()) return {};
    blocks_.allocate(need, r->block_table);
    work.push_back({r, count});
    budget -= count;
  }
  admit(work, budget);
  return work;
}

// Whether waiting requests may be let in this plan (the prefill hold, scheduler.h).
bool Scheduler::admission_due(int budget) const {
  if (hold_steps_ <= 0 || running_.empty() || waiting_.empty()) return true;
  const Request* oldest = waiting_.front();
  if (oldest->hold_exempt || plans_ - oldest->queued_at_plan >= hold_steps_) return true;
  if ((int)waiting_.size() >= max_batch_ - (int)running_.size()) return true;  // they would fill the batch
  int64_t tokens = 0;  // or the step's token budget: waiting longer would not put more of them in it
  for (const Request* r : waiting_) {
    tokens += r->length() - r->num_computed;
    if (tokens >= budget) return true;
  }
  return false;
}

// Admission keeps one free block per running request in reserve, so the
// requests just admitted do not force an immediate preemption.
void Scheduler::admit(std::vector<ScheduledWork>& work, int& budget) {
  if (!admission_due(budget)) return;
  while (!waiting_.empty() && budget > 0 && (int)running_.size() < max_batch_) {
    Request* r = waiting_.front();
    const int count = std::min(r->length() - r->num_computed, budget);
    const int64_t need = blocks_to_cover(r, count);
    if (need + (int64_t)running_.size() > blocks_.num_free() && !running_.empty()) break;
    if (need > blocks_.num_free()) break;
    waiting_.pop_front();
    r->hold_exempt = false;
    blocks_.allocate(need, r->block_table);
    running_.push_back(r);
    work.push_back({r, count});
    budget -= count;
  }
}

}  // namespace vlm
