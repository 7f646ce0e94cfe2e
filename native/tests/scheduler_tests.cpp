// The scheduler's admission (engine/scheduler.cpp), the prefill hold above all: with hold_steps 0 a request
// enters at the next plan; with hold_steps > 0 and requests running it waits until the oldest waiting one has
// waited that many plans, or the waiting prompts fill the step's token budget or the batch, and then the
// waiting requests enter together; with nothing running, or back from preemption, it enters at once.
// Fails with a line per broken expectation.
#include <cstdio>
#include <memory>
#include <vector>

#include "engine/scheduler.h"

namespace {

int failures = 0;

#define EXPECT_EQ(got, want)                                                                         \
  do {                                                                                               \
    const long long g_ = (long long)(got), w_ = (long long)(want);                                   \
    if (g_ != w_) {                                                                                  \
      std::printf("FAIL %s:%d: %s is %lld, expected %lld\n", __FILE__, __LINE__, #got, g_, w_);      \
      ++failures;                                                                                    \
    }                                                                                                \
  } while (0)

struct Fixture {
  vlm::BlockManager blocks;
  vlm::Scheduler scheduler;
  std::vector<std::unique_ptr<vlm::Request>> requests;

  Fixture(int hold_steps, int max_batch = 8, int budget = 64, int64_t num_blocks = 256)
      : blocks(num_blocks), scheduler(blocks, /*block_size=*/4, max_batch, budget, hold_steps) {}

  vlm::Request* add(int prompt_len) {
    requests.push_back(std::make_unique<vlm::Request>());
    vlm::Request* r = requests.back().get();
    r->id = requests.size();
    r->prompt.assign(prompt_len, 1);
    scheduler.add(r);
    return r;
  }

  // One plan, then the step "runs": every planned request computes its tokens and a request whose prompt is
  // done gains one output token (as the engine does after a step). Returns the tokens each request computed.
  std::vector<int> step() {
    std::vector<vlm::Request*> preempted;
    std::vector<vlm::ScheduledWork> work = scheduler.schedule(preempted);
    std::vector<int> counts(requests.size() + 1, 0);
    for (const vlm::ScheduledWork& w : work) {
      w.request->num_computed += w.count;
      if (w.request->num_computed == w.request->length()) w.request->output.push_back(2);
      counts[w.request->id] = w.count;
    }
    return counts;
  }
};

void without_hold_a_request_enters_at_the_next_plan() {
  Fixture f(0);
  f.add(8);
  f.step();
  vlm::Request* b = f.add(8);
  EXPECT_EQ(f.step()[b->id], 8);
}

void held_requests_enter_together_when_the_oldest_has_waited() {
  Fixture f(3);
  vlm::Request* a = f.add(8);
  EXPECT_EQ(f.step()[a->id], 8);  // nothing running: no hold
  vlm::Request* b = f.add(8);
  std::vector<int> c1 = f.step();  // b has waited 1 plan
  EXPECT_EQ(c1[b->id], 0);
  EXPECT_EQ(c1[a->id], 1);  // the running request keeps decoding meanwhile
  vlm::Request* c = f.add(8);
  std::vector<int> c2 = f.step();  // b: 2 plans
  EXPECT_EQ(c2[b->id], 0);
  EXPECT_EQ(c2[c->id], 0);
  EXPECT_EQ(f.scheduler.num_waiting(), 2);
  std::vector<int> c3 = f.step();  // b: 3 plans: b and c (1 plan) enter together
  EXPECT_EQ(c3[b->id], 8);
  EXPECT_EQ(c3[c->id], 8);
  EXPECT_EQ(c3[a->id], 1);
  EXPECT_EQ(f.scheduler.num_waiting(), 0);
  EXPECT_EQ(f.scheduler.num_running(), 3);
}

void prompts_that_fill_the_budget_enter_at_once() {
  Fixture f(100, /*max_batch=*/8, /*budget=*/32);
  f.add(8);
  f.step();
  vlm::Request* b = f.add(16);
  EXPECT_EQ(f.step()[b->id], 0);  // 16 of the 31 tokens left after the decode row: held
  vlm::Request* c = f.add(15);    // 31 waiting tokens: the step's remaining budget is full
  std::vector<int> counts = f.step();
  EXPECT_EQ(counts[b->id], 16);
  EXPECT_EQ(counts[c->id], 15);
}

void requests_that_fill_the_batch_enter_at_once() {
  Fixture f(100, /*max_batch=*/3);
  f.add(4);
  f.step();
  vlm::Request* b = f.add(4);
  EXPECT_EQ(f.step()[b->id], 0);
  vlm::Request* c = f.add(4);  // two waiting for the batch's two free places
  std::vector<int> counts = f.step();
  EXPECT_EQ(counts[b->id], 4);
  EXPECT_EQ(counts[c->id], 4);
}

void a_held_request_enters_when_the_running_ones_leave() {
  Fixture f(100);
  vlm::Request* a = f.add(4);
  f.step();
  vlm::Request* b = f.add(4);
  EXPECT_EQ(f.step()[b->id], 0);
  f.scheduler.remove(a);  // finished
  EXPECT_EQ(f.step()[b->id], 4);
}

void a_preempted_request_returns_without_waiting_while_others_run() {
  // 9 blocks of 4 tokens; a, b and c (4-token prompts) enter together and grow a token a step. When the cache
  // runs out, c (the newest) is preempted and goes back to the head of the queue. Once b leaves, its blocks let
  // c back in: at the next plan, while a runs, the hold of 100 plans notwithstanding.
  Fixture f(100, /*max_batch=*/8, /*budget=*/64, /*num_blocks=*/9);
  vlm::Request* a = f.add(4);
  vlm::Request* b = f.add(4);
  vlm::Request* c = f.add(4);
  f.step();
  for (int i = 0; i < 32 && c->preemptions == 0; ++i) f.step();
  EXPECT_EQ(c->preemptions, 1);
  EXPECT_EQ(a->preemptions + b->preemptions, 0);
  EXPECT_EQ(c->hold_exempt, true);
  f.scheduler.remove(b);
  std::vector<int> counts = f.step();
  EXPECT_EQ(counts[a->id], 1);
  EXPECT_EQ(counts[c->id] > 1, true);  // its whole recomputation, at once
  EXPECT_EQ(c->hold_exempt, false);
  EXPECT_EQ(f.scheduler.num_waiting(), 0);
}

void look_ahead_plans_count_as_plans() {
  Fixture f(2);
  vlm::Request* a = f.add(4);
  f.step();
  vlm::Request* b = f.add(4);
  const auto none = [](const vlm::Request&) { return false; };
  std::vector<vlm::ScheduledWork> w1 = f.scheduler.schedule_ahead(none);  // b: 1 plan
  EXPECT_EQ(w1.size(), 1);
  for (auto& w : w1) w.request->num_computed += w.count, w.request->output.push_back(2);
  std::vector<vlm::ScheduledWork> w2 = f.scheduler.schedule_ahead(none);  // b: 2 plans: enters
  EXPECT_EQ(w2.size(), 2);
  EXPECT_EQ(w2.back().request == b, true);
  (void)a;
}

}  // namespace

int main() {
  without_hold_a_request_enters_at_the_next_plan();
  held_requests_enter_together_when_the_oldest_has_waited();
  prompts_that_fill_the_budget_enter_at_once();
  requests_that_fill_the_batch_enter_at_once();
  a_held_request_enters_when_the_running_ones_leave();
  a_preempted_request_returns_without_waiting_while_others_run();
  look_ahead_plans_count_as_plans();
  if (failures) {
    std::printf("%d scheduler expectation(s) failed\n", failures);
    return 1;
  }
  std::printf("scheduler tests passed\n");
  return 0;
}
