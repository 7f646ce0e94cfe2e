// Tensor parallelism as one more StepRunner: `world` rank runners, each on its
// own shard of the model (Model::shard) and its own device, step together.
// Ranks 1.. run on persistent threads, rank 0 on the engine's thread; each
// rank all-reduces its row-parallel outputs through the CommGroup and returns
// its vocabulary slice of the logits, which land side by side in the
// engine's logits rows. Every rank holds its KV heads for every block, so
// the engine's block tables are the same on all ranks.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "engine/communicator.h"
#include "engine/kv_cache.h"
#include "engine/step_runner.h"

namespace vlm {
namespace {

// Runs one function on every rank at once and waits for all of them.
class RankThreads {
 public:
  explicit RankThreads(int world) : world_(world) {
    for (int r = 1; r < world; ++r) threads_.emplace_back([this, r] { serve(r); });
  }
  ~RankThreads() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // fn(r) for r in [0, world); errors[r] holds what rank r threw.
  void run(const std::function<void(int)>& fn, std::vector<std::exception_ptr>& errors) {
    errors.assign(world_, nullptr);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      errors_ = &errors;
      pending_ = world_ - 1;
      ++generation_;
    }
    start_cv_.notify_all();
    try {
      fn(0);
    } catch (...) {
      errors[0] = std::current_exception();
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void serve(int r) {
    int64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* fn;
      std::vector<std::exception_ptr>* errors;
      {
        std::unique_lock<std::mutex> lk(mu_);
        start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        fn = fn_;
        errors = errors_;
      }
      try {
        (*fn)(r);
      } catch (...) {
        (*errors)[r] = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }

  int world_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  std::vector<std::exception_ptr>* errors_ = nullptr;
  int pending_ = 0;
  int64_t generation_ = 0;
  bool stop_ = false;
};

class TensorParallelRunner final : public StepRunner {
 public:
  TensorParallelRunner(const Model& model, int world, bool cuda)
      : world_(world), cuda_(cuda), vocab_(model.params().vocab_size), threads_(world) {
    const int cores = model.params().num_threads > 0 ? model.params().num_threads : omp_get_num_procs();
    threads_per_rank_ = std::max(1, cores / world);
    for (int r = 0; r < world; ++r) shards_.push_back(model.shard(r, world));
    if (cuda) {
      std::vector<int> devices(world);
      for (int r = 0; r < world; ++r) devices[r] = r;
      group_ = make_nccl_group(devices);
    } else {
      group_ = make_host_group(world);
    }
    runners_.resize(world);
    local_.resize(world);
    // Weights upload to all devices at once.
    on_every_rank([&](int r) {
      runners_[r] = cuda_ ? make_cuda_runner(*shards_[r], r, group_->rank(r))
                          : make_cpu_runner(*shards_[r], group_->rank(r));
    });
  }

  int resolve_kv_dtype(int requested) const override { return runners_[0]->resolve_kv_dtype(requested); }

  // The engine sizes blocks for the whole model; a rank stores 1/world of each.
  int64_t kv_memory_bytes() const override {
    if (!cuda_) return runners_[0]->kv_memory_bytes();  // one host memory shared by all ranks
    int64_t least = runners_[0]->kv_memory_bytes();
    for (int r = 1; r < world_; ++r) least = std::min(least, runners_[r]->kv_memory_bytes());
    return least * world_;
  }

  void allocate_cache(int64_t num_blocks, int block_size, int kv_dtype) override {
    if (!cuda_) {  // the ranks' shares of one host memory, checked together (each rank alone checks only its own)
      int64_t need = 0;
      for (const auto& shard : shards_) {
        const vlm_model_params& p = shard->params();
        need += num_blocks * KvCache::bytes_per_block(p.num_layers, block_size, p.num_kv_heads, p.head_dim, kv_dtype);
      }
      KvCache::check_fits(num_blocks, block_size, need, runners_[0]->kv_memory_bytes(), "host");
    }
    on_every_rank([&](int r) { runners_[r]->allocate_cache(num_blocks, block_size, kv_dtype); });
  }

  int64_t kv_cache_bytes() const override {
    int64_t total = 0;
    for (const auto& r : runners_) total += r->kv_cache_bytes();
    return total;
  }

  int64_t dense_prefill_weight_bytes() const override {
    int64_t total = 0;
    for (const auto& r : runners_) total += r->dense_prefill_weight_bytes();
    return total;
  }

  int64_t cutlass_weight_bytes() const override {
    int64_t total = 0;
    for (const auto& r : runners_) total += r->cutlass_weight_bytes();
    return total;
  }

  int64_t gemv_weight_bytes() const override {
    int64_t total = 0;
    for (const auto& r : runners_) total += r->gemv_weight_bytes();
    return total;
  }

  void forward(const StepBatch& b, StepOutput& out) override {
    on_every_rank([&](int r) { runners_[r]->forward(b, local_[r]); });
    const int R = (int)b.logit_rows.size();
    const bool argmax = !local_[0].argmax.empty();
    // Each rank's argmax is over its vocabulary slice: the largest wins, the lower rank on a tie
    // (its indices are lower), which is the first index of the whole row's max.
    out.argmax.assign(argmax ? R : 0, 0);
    out.max_logit.assign(argmax ? R : 0, 0.f);
    for (int r = 0; argmax && r < world_; ++r) {
      const int v0 = shard_range(vocab_, r, world_).first;
      for (int i = 0; i < R; ++i)
        if (r == 0 || local_[r].max_logit[i] > out.max_logit[i]) {
          out.max_logit[i] = local_[r].max_logit[i];
          out.argmax[i] = v0 + local_[r].argmax[i];
        }
    }
    const size_t rows = argmax ? std::count(b.full_logits.begin(), b.full_logits.end(), 1) : (size_t)R;
    out.logits.resize(rows * vocab_);
    for (int r = 0; r < world_; ++r) {
      const auto [v0, v1] = shard_range(vocab_, r, world_);
      const int width = v1 - v0;
      for (size_t i = 0; i < rows; ++i)
        std::memcpy(&out.logits[i * vocab_ + v0], &local_[r].logits[i * width], sizeof(float) * width);
    }
  }

 private:
  // fn on every rank at once; when one rank throws, the others are released from
  // their collectives and the first rank's own error is rethrown.
  void on_every_rank(const std::function<void(int)>& fn) {
    std::atomic<int> first_failure{-1};
    std::vector<std::exception_ptr> errors;
    threads_.run(
        [&](int r) {
          omp_set_num_threads(threads_per_rank_);
          try {
            fn(r);
          } catch (...) {
            int none = -1;
            first_failure.compare_exchange_strong(none, r);
            if (group_) group_->abort();
            throw;
          }
        },
        errors);
    const int failed = first_failure.load();
    if (failed < 0) return;
    if (group_) group_->reset();
    std::rethrow_exception(errors[failed]);
  }

  int world_;
  bool cuda_;
  int vocab_;
  int threads_per_rank_ = 1;
  std::vector<std::unique_ptr<Model>> shards_;  // outlive their runners (declared first)
  std::unique_ptr<CommGroup> group_;
  std::vector<std::unique_ptr<StepRunner>> runners_;
  std::vector<StepOutput> local_;
  RankThreads threads_;  // declared last: its threads stop before the runners go
};

}  // namespace

std::unique_ptr<StepRunner> make_tensor_parallel_runner(const Model& model, int world, bool cuda) {
  return std::make_unique<TensorParallelRunner>(model, world, cuda);
}

}  // namespace vlm
