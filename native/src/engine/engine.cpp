#include "engine/engine.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>

#include "common/error.h"
#include "common/numeric.h"
#include "engine/sampler.h"

namespace vlm {

Engine::Engine(std::shared_ptr<const Model> model, const vlm_engine_params& p)
    : model_(std::move(model)), params_(p) {
  const vlm_model_params& mp = model_->params();
  VLM_CHECK(model_->finalized(), VLM_ERR_FAILED_PRECONDITION, "model is not finalized");
  VLM_CHECK_ARG(p.kv_dtype == VLM_DTYPE_AUTO || p.kv_dtype == VLM_DTYPE_F32 || p.kv_dtype == VLM_DTYPE_F16 ||
                    p.kv_dtype == VLM_DTYPE_BF16 || p.kv_dtype == VLM_DTYPE_I8 || p.kv_dtype == VLM_DTYPE_I4,
                "unsupported kv_dtype " << p.kv_dtype);
  VLM_CHECK_ARG(p.block_size >= 1 && p.block_size <= 1024 && (p.block_size & (p.block_size - 1)) == 0,
                "block_size must be a power of two in [1, 1024], got " << p.block_size);
  VLM_CHECK_ARG(p.max_batch_size >= 1, "max_batch_size must be >= 1, got " << p.max_batch_size);
  VLM_CHECK_ARG(p.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1");
  VLM_CHECK_ARG(p.prefill_hold_steps >= 0, "prefill_hold_steps must be >= 0, got " << p.prefill_hold_steps);
  VLM_CHECK_ARG(p.max_model_len >= 0, "max_model_len must be >= 0");
  VLM_CHECK_ARG(p.num_blocks >= 0, "num_blocks must be >= 0");
  VLM_CHECK_ARG(p.num_blocks > 0 || (p.cache_max_entry_count > 0.f && p.cache_max_entry_count <= 1.f),
                "cache_max_entry_count must be in (0, 1] when num_blocks is 0");
  max_model_len_ = p.max_model_len > 0 ? p.max_model_len : mp.max_position_embeddings;
  check_tensor_parallel(mp, p.tensor_parallel);
  const bool cuda = mp.device == VLM_DEVICE_CUDA;
  if (cuda && p.tensor_parallel > 1)
    VLM_CHECK(vlm_cuda_device_count() >= p.tensor_parallel, VLM_ERR_UNSUPPORTED,
              "tensor_parallel=" << p.tensor_parallel << " needs " << p.tensor_parallel << " GPUs, "
                                 << vlm_cuda_device_count() << " visible");

  if (p.tensor_parallel > 1)
    runner_ = make_tensor_parallel_runner(*model_, p.tensor_parallel, cuda);
  else
    runner_ = cuda ? make_cuda_runner(*model_, 0) : make_cpu_runner(*model_);
  const int kv_dtype = runner_->resolve_kv_dtype(p.kv_dtype);
  const int64_t per_block =
      KvCache::bytes_per_block(mp.num_layers, p.block_size, mp.num_kv_heads, mp.head_dim, kv_dtype);
  const int64_t blocks_per_seq = (max_model_len_ + p.block_size - 1) / p.block_size;
  int64_t num_blocks = p.num_blocks;
  if (num_blocks == 0) {
    num_blocks = static_cast<int64_t>(runner_->kv_memory_bytes() * (double)p.cache_max_entry_count) / per_block;
    // Blocks beyond what max_batch_size full-length requests can use would never be touched.
    num_blocks = std::min(num_blocks, blocks_per_seq * p.max_batch_size);
  }
  VLM_CHECK(num_blocks >= 1, VLM_ERR_OUT_OF_MEMORY,
            "the KV cache budget holds no block (" << per_block << " bytes per block)");
  runner_->allocate_cache(num_blocks, p.block_size, kv_dtype);
  blocks_ = std::make_unique<BlockManager>(num_blocks);
  scheduler_ = std::make_unique<Scheduler>(*blocks_, p.block_size, p.max_batch_size, p.max_num_batched_tokens,
                                           p.prefill_hold_steps);
  free_blocks_ = num_blocks;
  // Steps overlap where the runner can (measured on the H200, 2026-12-05: 2B w4a16 decode +2-5 %);
  // VLM_OVERLAP_STEPS=0 plans, runs and completes one step at a time.
  const char* overlap = std::getenv("VLM_OVERLAP_STEPS");
  overlap_ = runner_->overlaps() && (overlap == nullptr || std::strcmp(overlap, "0") != 0);
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  event_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<Request> Engine::build_request(const vlm_request_params& p) const {
  const vlm_model_params& mp = model_->params();
  VLM_CHECK_ARG(p.prompt != nullptr && p.prompt_len >= 1, "prompt must hold at least one token");
  VLM_CHECK(p.prompt_len < max_model_len_, VLM_ERR_OUT_OF_RANGE,
            "prompt of " << p.prompt_len << " tokens leaves no room to generate within max_model_len "
                         << max_model_len_);
  VLM_CHECK_ARG(p.max_new_tokens >= 1, "max_new_tokens must be >= 1, got " << p.max_new_tokens);
  for (int i = 0; i < p.prompt_len; ++i)
    VLM_CHECK(p.prompt[i] >= 0 && p.prompt[i] < mp.vocab_size, VLM_ERR_OUT_OF_RANGE,
              "prompt token " << p.prompt[i] << " at position " << i << " is outside the vocabulary [0, "
                              << mp.vocab_size << ")");
  validate_sampling(p.sampling);
  VLM_CHECK_ARG(p.num_eos_ids >= 0 && p.num_eos_ids <= VLM_MAX_EOS_IDS, "num_eos_ids must be in [0, 8]");
  VLM_CHECK_ARG(p.num_stop_sequences >= 0 && p.num_stop_sequences <= VLM_MAX_STOP_SEQUENCES,
                "num_stop_sequences must be in [0, 16]");
  VLM_CHECK_ARG(p.logprobs >= -1 && p.logprobs <= VLM_MAX_TOP_LOGPROBS, "logprobs must be in [-1, 20]");
  VLM_CHECK_ARG(p.num_spans >= 0 && (p.num_spans == 0 || p.spans != nullptr), "spans missing");

  auto r = std::make_unique<Request>();
  r->prompt.assign(p.prompt, p.prompt + p.prompt_len);
  r->max_new_tokens = p.max_new_tokens;
  r->sampling = p.sampling;
  for (int i = 0; i < p.num_eos_ids; ++i) r->eos_ids.push_back(p.eos_ids[i]);
  r->ignore_eos = p.ignore_eos != 0;
  for (int i = 0; i < p.num_stop_sequences; ++i) {
    const int n = p.stop_sequence_lens[i];
    VLM_CHECK_ARG(n >= 1 && n <= VLM_MAX_STOP_SEQUENCE_LEN, "stop sequence " << i << " has length " << n);
    r->stop_sequences.emplace_back(p.stop_sequences[i], p.stop_sequences[i] + n);
  }
  r->logprobs = p.logprobs;
  r->prompt_logprobs = p.prompt_logprobs != 0;
  r->return_logits = p.return_logits != 0;

  std::vector<std::pair<int, int>> ranges;
  for (int i = 0; i < p.num_spans; ++i) {
    const vlm_embedding_span& s = p.spans[i];
    VLM_CHECK_ARG(s.data != nullptr && s.num_rows >= 1, "embedding span " << i << " is empty");
    VLM_CHECK_ARG(s.dtype == VLM_DTYPE_F32 || s.dtype == VLM_DTYPE_F16 || s.dtype == VLM_DTYPE_BF16,
                  "embedding span " << i << " must be F32, F16 or BF16");
    VLM_CHECK(s.position >= 0 && s.position + s.num_rows <= p.prompt_len, VLM_ERR_OUT_OF_RANGE,
              "embedding span " << i << " covers positions [" << s.position << ", " << s.position + s.num_rows
                                << ") outside the prompt of " << p.prompt_len << " tokens");
    ranges.emplace_back(s.position, s.position + s.num_rows);
    EmbeddingSpan span;
    span.position = s.position;
    span.rows = s.num_rows;
    span.data.resize((size_t)s.num_rows * mp.hidden_size);
    for (size_t j = 0; j < span.data.size(); ++j) span.data[j] = load_as_f32(s.dtype, s.data, (int64_t)j);
    r->spans.push_back(std::move(span));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    VLM_CHECK_ARG(ranges[i].first >= ranges[i - 1].second, "embedding spans overlap");

  // A request must fit the whole cache on its own, or it could never finish.
  const int64_t worst = std::min<int64_t>((int64_t)p.prompt_len + p.max_new_tokens, max_model_len_);
  const int64_t capacity = blocks_->total() * params_.block_size;
  VLM_CHECK(worst <= capacity, VLM_ERR_OUT_OF_MEMORY,
            "request needs up to " << worst << " tokens of KV cache but the cache holds " << capacity);
  if (p.sampling.has_seed) r->rng.seed(p.sampling.seed);
  else r->rng.seed(std::random_device{}());
  return r;
}

uint64_t Engine::enqueue(const vlm_request_params& p) { return enqueue_batch(&p, 1)[0]; }

std::vector<uint64_t> Engine::enqueue_batch(const vlm_request_params* params, int n) {
  std::vector<std::unique_ptr<Request>> built;
  for (int i = 0; i < n; ++i) {  // validates all before queueing any
    try {
      built.push_back(build_request(params[i]));
    } catch (const Error& e) {
      if (n == 1) throw;
      throw Error(e.status, "request " + std::to_string(i) + " of " + std::to_string(n) + ": " + e.what());
    }
  }
  const int64_t t = now_ns();
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& r : built) {
      r->enqueue_ns = t;
      ids.push_back(r->id = next_id_++);
      live_.insert(r->id);
      incoming_.push_back(std::move(r));
    }
    waiting_ += n;
  }
  work_cv_.notify_one();
  return ids;
}

void Engine::cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    VLM_CHECK(live_.count(id), VLM_ERR_NOT_FOUND, "no running or queued request with id " << id);
    cancels_.insert(id);
  }
  work_cv_.notify_one();
}

void Engine::emit(Event&& e) {
  if (batch_events_) {
    batched_.push_back(std::move(e));
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    deliver_locked(std::move(e));
  }
  event_cv_.notify_all();
}

void Engine::deliver_locked(Event&& e) {
  if (e.ev.kind == VLM_EVENT_FINISH) live_.erase(e.ev.request_id);
  events_.push_back(std::move(e));
}

void Engine::flush_events() {
  if (batched_.empty()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (Event& e : batched_) deliver_locked(std::move(e));
  }
  batched_.clear();
  event_cv_.notify_all();
}

int Engine::poll(int timeout_ms, vlm_event* out, int max_events) {
  VLM_CHECK_ARG(out != nullptr && max_events >= 1, "poll needs room for at least one event");
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [this] { return !events_.empty() || stop_; };
  if (timeout_ms < 0) event_cv_.wait(lk, ready);
  else if (timeout_ms > 0) event_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), ready);
  delivered_.clear();
  while (!events_.empty() && (int)delivered_.size() < max_events) {
    delivered_.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  for (size_t i = 0; i < delivered_.size(); ++i) {
    Event& e = delivered_[i];
    out[i] = e.ev;
    out[i].data = e.data.empty() ? nullptr : e.data.data();
    out[i].data_len = (int64_t)e.data.size();
    out[i].error = e.error.empty() ? nullptr : e.error.c_str();
  }
  return (int)delivered_.size();
}

vlm_engine_stats Engine::stats() const {
  vlm_engine_stats s{};
  s.running_requests = running_;
  s.waiting_requests = waiting_;
  s.total_blocks = blocks_->total();
  s.free_blocks = free_blocks_;
  s.block_size = params_.block_size;
  s.max_model_len = max_model_len_;
  s.steps = steps_;
  s.preemptions = preemptions_;
  s.kv_cache_bytes = runner_->kv_cache_bytes();
  s.overlapped_steps = overlapped_steps_;
  s.dense_prefill_weight_bytes = runner_->dense_prefill_weight_bytes();
  s.cutlass_weight_bytes = runner_->cutlass_weight_bytes();
  s.gemv_weight_bytes = runner_->gemv_weight_bytes();
  return s;
}

void Engine::finish(Request* r, int reason, int stop_len, const std::string& error) {
  Event e;
  e.ev.request_id = r->id;
  e.ev.kind = VLM_EVENT_FINISH;
  e.ev.finish_reason = reason;
  e.ev.stop_len = stop_len;
  e.ev.prompt_tokens = (int)r->prompt.size();
  e.ev.output_tokens = (int)r->output.size();
  e.ev.num_preemptions = r->preemptions;
  const int64_t t = now_ns();
  if (r->first_scheduled_ns) e.ev.queue_ns = r->first_scheduled_ns - r->enqueue_ns;
  if (r->first_token_ns) {
    e.ev.prefill_ns = r->first_token_ns - r->first_scheduled_ns;
    e.ev.decode_ns = t - r->first_token_ns;
  }
  e.error = error;
  scheduler_->remove(r);
  r->finished = true;
  auto it = requests_.find(r->id);
  if (r->last_step > completed_) retired_.push_back(std::move(it->second));  // a launched step still holds it
  requests_.erase(it);  // r is gone from here on
  publish_stats();      // before the event, so a caller woken by it sees the freed blocks
  emit(std::move(e));
}

void Engine::release_retired() {
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [this](const std::unique_ptr<Request>& r) { return r->last_step <= completed_; }),
                 retired_.end());
}

int Engine::check_stop(const Request& r, int* stop_len) const {
  const int32_t last = r.output.back();
  *stop_len = 0;
  if (!r.ignore_eos && std::find(r.eos_ids.begin(), r.eos_ids.end(), last) != r.eos_ids.end()) {
    *stop_len = 1;
    return VLM_FINISH_STOP;
  }
  for (const auto& seq : r.stop_sequences) {
    if (seq.size() > r.output.size()) continue;
    if (std::equal(seq.begin(), seq.end(), r.output.end() - seq.size())) {
      *stop_len = (int)seq.size();
      return VLM_FINISH_STOP;
    }
  }
  const int known = (int)(r.prompt.size() + r.output.size());  // without tokens still on the device
  if ((int)r.output.size() >= r.max_new_tokens || known >= max_model_len_) return VLM_FINISH_LENGTH;
  return VLM_FINISH_NONE;
}

void Engine::loop() {
  if (model_->params().num_threads > 0) omp_set_num_threads(model_->params().num_threads);
  for (;;) {
    std::vector<std::unique_ptr<Request>> incoming;
    std::unordered_set<uint64_t> cancels;
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [this] {
        return stop_ || !incoming_.empty() || !cancels_.empty() || !scheduler_->idle() || in_flight_;
      });
      if (stop_) return;
      incoming.swap(incoming_);
      cancels.swap(cancels_);
    }
    for (auto& r : incoming) {
      scheduler_->add(r.get());
      requests_[r->id] = std::move(r);
    }
    for (uint64_t id : cancels) {
      auto it = requests_.find(id);
      if (it != requests_.end()) finish(it->second.get(), VLM_FINISH_CANCELLED, 0);
    }
    if (!scheduler_->idle() || in_flight_) step();
    publish_stats();
  }
}

void Engine::publish_stats() {
  running_ = scheduler_->num_running();
  waiting_ = scheduler_->num_waiting() + (int)pending_incoming();
  free_blocks_ = blocks_->num_free();
}

size_t Engine::pending_incoming() {
  std::lock_guard<std::mutex> lk(mu_);
  return incoming_.size();
}

// One step. Without overlap: plan, run, send its events. With overlap (overlap_): a step is launched and left
// running; the next call plans and launches the step after it (its decode rows reading the running step's
// tokens on the device) before completing the running one, so the device is never idle while the host sends
// a step's events and plans the next. Planned one at a time instead: while the running step has a token the
// host draws from its logits (planned ahead, that request would join only every other step), and when a plan
// would preempt (a preempted request may have a token still on the device).
void Engine::step() {
  if (in_flight_) {
    Step& running = *in_flight_;
    Step& next = &running == &steps_buf_[0] ? steps_buf_[1] : steps_buf_[0];
    const bool host_draws = std::any_of(running.uses.begin(), running.uses.end(), [](const LogitRowUse& u) {
      return u.sample && !u.from_device && !u.request->finished;
    });
    std::vector<ScheduledWork> work;
    if (!host_draws) work = scheduler_->schedule_ahead([this](const Request& r) { return ends_with_pending(r); });
    const bool launched = !work.empty() && launch(next, std::move(work));
    if (launched) overlapped_steps_ += 1;
    in_flight_ = nullptr;
    complete(running);
    if (launched) in_flight_ = &next;
    return;
  }
  std::vector<Request*> preempted;
  std::vector<ScheduledWork> work = scheduler_->schedule(preempted);
  preemptions_ += (int64_t)preempted.size();
  if (work.empty()) return;
  Step& s = steps_buf_[0];
  if (!launch(s, std::move(work))) return;
  if (overlap_)
    in_flight_ = &s;  // completed by the next call, after the step after it is launched
  else
    complete(s);
}

// Whether the token a running request has on the device ends it by length: then the step planned while another
// runs leaves it out (nothing is left to compute).
bool Engine::ends_with_pending(const Request& r) const {
  return r.pending > 0 && ((int)r.output.size() + r.pending >= r.max_new_tokens || r.length() >= max_model_len_);
}

// Builds the step's batch from the planned work and hands it to the runner. From here on each request's state
// is what the next plan needs: its positions computed, the token its sample row chooses on the device pending
// (a token the host draws is appended when the step completes). False when the runner refused the step (its
// requests are finished with the error).
bool Engine::launch(Step& s, std::vector<ScheduledWork> work) {
  const int64_t t0 = now_ns();
  s.index = ++launched_;
  s.work = std::move(work);
  s.batch.clear();
  s.uses.clear();
  StepBatch& batch = s.batch;
  const bool device_draws = runner_->draws_on_device();
  bool any_draw = false;
  for (ScheduledWork& w : s.work) {
    Request* r = w.request;
    if (!r->first_scheduled_ns) r->first_scheduled_ns = t0;
    const int row0 = (int)batch.tokens.size();
    batch.segments.push_back({r->block_table.data(), r->num_computed, w.count, row0});
    for (int i = 0; i < w.count; ++i) {
      const int pos = r->num_computed + i;
      batch.tokens.push_back(r->token_at(pos));
      batch.positions.push_back(pos);
      for (const EmbeddingSpan& sp : r->spans)
        if (pos >= sp.position && pos < sp.position + sp.rows)
          batch.embedding_rows.emplace_back(row0 + i, &sp.data[(size_t)(pos - sp.position) * model_->params().hidden_size]);
      // Logits for prompt positions only when asked, and once each (not again after a preemption).
      const bool wants_prompt_row = (r->prompt_logprobs || r->return_logits) && pos >= r->logits_emitted &&
                                    pos < (int)r->prompt.size() - 1;
      const bool sample_row = pos == r->length() - 1;
      if (wants_prompt_row || sample_row) {
        batch.logit_rows.push_back(row0 + i);
        RowDraw draw;
        if (!wants_prompt_row && device_draws && draws_on_device(*r)) {
          const vlm_sampling_params& sp = r->sampling;
          draw = RowDraw{sp.temperature, sp.top_k, sp.top_p, sp.min_p, next_uniform(*r)};
          any_draw = true;
        }
        const bool whole = wants_prompt_row || (!argmax_suffices(*r) && draw.temperature == 0.f);
        batch.full_logits.push_back(whole);
        if (device_draws) batch.draws.push_back(draw);
        s.uses.push_back({r, pos, wants_prompt_row && r->prompt_logprobs ? r->prompt[pos + 1] : -1, wants_prompt_row,
                          !wants_prompt_row, !whole});
      }
    }
  }
  if (!any_draw) batch.draws.clear();  // nothing to draw on the device this step
  try {
    if (overlap_)
      runner_->launch(batch);
    else
      runner_->forward(batch, s.out);
  } catch (const std::exception& ex) {
    for (const ScheduledWork& w : s.work) finish(w.request, VLM_FINISH_ERROR, 0, ex.what());
    return false;
  }
  for (const ScheduledWork& w : s.work) {
    w.request->num_computed += w.count;  // unchanged since the batch was built from it
    w.request->last_step = s.index;
  }
  for (size_t i = 0; i < s.uses.size(); ++i) {
    const LogitRowUse& u = s.uses[i];
    if (u.sample && u.from_device) {
      u.request->pending += 1;
      u.request->pending_row = (int)i;
    }
  }
  return true;
}

// Takes a launched step's output (waiting for it when it overlaps) and sends its events.
void Engine::complete(Step& s) {
  try {
    if (overlap_) runner_->collect(s.out);
  } catch (const std::exception& ex) {
    completed_ = s.index;
    for (const ScheduledWork& w : s.work)
      if (!w.request->finished) finish(w.request, VLM_FINISH_ERROR, 0, ex.what());
    release_retired();
    return;
  }
  completed_ = s.index;
  steps_ += 1;
  postprocess(s);
  release_retired();
}

// A request that wants no logprobs, logits or repetition penalty (which need its whole row, or its history, on
// the host) needs nothing from its row but its token: a greedy one the row's largest logit, which a GPU runner
// finds without copying the row; a sampled one a draw, which a runner can make where the row is.
bool Engine::token_is_all_it_needs(const Request& r) {
  return r.sampling.repetition_penalty == 1.f && r.logprobs < 0 && !r.return_logits;
}

bool Engine::is_greedy(const Request& r) { return r.sampling.temperature == 0.f || r.sampling.top_k == 1; }

bool Engine::draws_on_device(const Request& r) { return token_is_all_it_needs(r) && !is_greedy(r); }

bool Engine::argmax_suffices(const Request& r) { return token_is_all_it_needs(r) && is_greedy(r); }

// The step's host work on whole rows, done before postprocess emits anything: every token that needs the host
// (a row whose full logits came back) drawn into sampled_, and every prompt row's logprob into prompt_logprobs_,
// each in row order. Each is the row's own work (its logits; a draw its request's generator, one row per request
// a step), so the rows are done in parallel, each thread with its own buffers: the results are those of doing
// them one after another. A vocabulary-long row takes ~0.1-1 ms: at 64 sampled rows, or a scored prompt's
// hundreds of rows, a step's worth of time with the GPU idle.
void Engine::sample_rows(const Step& s) {
  const StepOutput& out = s.out;
  const int V = model_->params().vocab_size;
  const bool argmax = !out.argmax.empty();
  std::vector<std::pair<Request*, const float*>> rows;  // sample rows that came back whole
  std::vector<std::pair<const float*, int32_t>> scored;  // prompt rows and the token whose logprob they give
  size_t full = 0;
  for (size_t index = 0; index < s.uses.size(); ++index) {
    const LogitRowUse& use = s.uses[index];
    const float* row = !argmax || s.batch.full_logits[index] ? &out.logits[full++ * (size_t)V] : nullptr;
    if (use.scored_token >= 0) scored.emplace_back(row, use.scored_token);
    if (use.sample && row) rows.emplace_back(use.request, row);
  }
  sampled_.assign(rows.size(), SampleResult{});
  prompt_logprobs_.assign(scored.size(), 0.f);
  const int jobs = (int)(rows.size() + scored.size());
  const int threads = jobs > 1 ? std::min(jobs, omp_get_max_threads()) : 1;
  if ((int)sample_scratch_.size() < threads) sample_scratch_.resize(threads);
  std::exception_ptr failure;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int i = 0; i < jobs; ++i) {
    try {
      if (i < (int)rows.size()) {
        if (!rows[i].first->finished)  // cancelled while its step ran: its generator is not advanced
          sampled_[i] = sample_token(*rows[i].first, rows[i].second, V, sample_scratch_[omp_get_thread_num()]);
      } else {
        prompt_logprobs_[i - rows.size()] = log_softmax_at(scored[i - rows.size()].first, V,
                                                           scored[i - rows.size()].second);
      }
    } catch (...) {
#pragma omp critical(vlm_sample_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

void Engine::postprocess(Step& s) {
  // The step's events (a token for each row, finishes) reach the poller together, also if this throws: one
  // wake-up and one poll per step instead of one per row (a service hands each poll's tokens to its
  // streams with one call into its event loop).
  batch_events_ = true;
  struct Flush {
    Engine* engine;
    ~Flush() {
      engine->batch_events_ = false;
      engine->flush_events();
    }
  } flush{this};
  sample_rows(s);
  const StepOutput& out = s.out;
  const int V = model_->params().vocab_size;
  const bool argmax = !out.argmax.empty();
  size_t full = 0;     // walks the whole rows among the logit rows
  size_t drawn = 0;    // walks sampled_
  size_t scored = 0;   // walks prompt_logprobs_
  for (size_t index = 0; index < s.uses.size(); ++index) {
    const LogitRowUse& u = s.uses[index];
    Request* r = u.request;
    const float* row = !argmax || s.batch.full_logits[index] ? &out.logits[full++ * (size_t)V] : nullptr;
    SampleResult* drew = u.sample && row ? &sampled_[drawn++] : nullptr;
    const float prompt_logprob = u.scored_token >= 0 ? prompt_logprobs_[scored++] : 0.f;
    if (r->finished) continue;  // finished (cancelled, or stopped by the step before) while this step ran
    const int pos = u.pos;
    if (r->return_logits && pos >= r->logits_emitted) r->logits_buf.insert(r->logits_buf.end(), row, row + V);
    if (u.prompt_row && r->prompt_logprobs) r->prompt_logprob_buf.push_back(prompt_logprob);
    r->logits_emitted = std::max(r->logits_emitted, pos + 1);
    if (!u.sample) continue;
    if (r->prompt_logprobs && r->output.empty()) {
      Event pe;
      pe.ev.request_id = r->id;
      pe.ev.kind = VLM_EVENT_PROMPT_LOGPROBS;
      pe.data = std::move(r->prompt_logprob_buf);
      r->prompt_logprob_buf.clear();
      emit(std::move(pe));
    }
    if (!r->logits_buf.empty()) {
      Event le;
      le.ev.request_id = r->id;
      le.ev.kind = VLM_EVENT_LOGITS;
      le.ev.token = (int)(r->logits_buf.size() / V);
      le.data = std::move(r->logits_buf);
      r->logits_buf.clear();
      emit(std::move(le));
    }
    SampleResult res;
    if (drew)
      res = std::move(*drew);
    else
      res.token = out.argmax[index];
    if (u.from_device) r->pending -= 1;
    r->output.push_back(res.token);
    if (!r->first_token_ns) r->first_token_ns = now_ns();
    Event te;
    te.ev.request_id = r->id;
    te.ev.kind = VLM_EVENT_TOKEN;
    te.ev.token = res.token;
    te.ev.logprob = res.logprob;
    te.ev.num_top = (int)res.top_tokens.size();
    std::copy(res.top_tokens.begin(), res.top_tokens.end(), te.ev.top_tokens);
    std::copy(res.top_logprobs.begin(), res.top_logprobs.end(), te.ev.top_logprobs);
    emit(std::move(te));
    int stop_len = 0;
    const int reason = check_stop(*r, &stop_len);
    if (reason != VLM_FINISH_NONE) finish(r, reason, stop_len);
  }
}

}  // namespace vlm
