// make_host_group: ranks are threads; all_reduce_sum is three barriers around
// a shared fp32 buffer (publish pointers; each rank sums its slice over the
// ranks in rank order; each rank copies the total back).
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "common/error.h"
#include "engine/communicator.h"

namespace vlm {
namespace {

class HostGroup;

class HostCommunicator final : public Communicator {
 public:
  HostCommunicator(HostGroup& group, int rank) : group_(group), rank_(rank) {}
  void all_reduce_sum(void* data, int64_t count, int dtype, void* stream) override;

 private:
  HostGroup& group_;
  int rank_;
};

class HostGroup final : public CommGroup {
 public:
  explicit HostGroup(int world) : world_(world), buffers_(world) {
    for (int r = 0; r < world; ++r) ranks_.push_back(std::make_unique<HostCommunicator>(*this, r));
  }
  int world() const override { return world_; }
  Communicator* rank(int r) override { return ranks_.at(r).get(); }
  void abort() override {
    std::lock_guard<std::mutex> lk(mu_);
    aborted_ = true;
    cv_.notify_all();
  }
  void reset() override {
    std::lock_guard<std::mutex> lk(mu_);
    aborted_ = false;
    arrived_ = 0;
  }

  void all_reduce(int rank, float* data, int64_t count) {
    buffers_[rank] = data;
    if (rank == 0) total_.resize(count);  // nobody reads total_ between the previous call's last barrier and this one's first
    barrier();
    const int64_t begin = count * rank / world_, end = count * (rank + 1) / world_;
    for (int64_t i = begin; i < end; ++i) {
      float s = 0.f;
      for (int r = 0; r < world_; ++r) s += buffers_[r][i];
      total_[i] = s;
    }
    barrier();
    std::memcpy(data, total_.data(), sizeof(float) * count);
    barrier();
  }

 private:
  void barrier() {
    std::unique_lock<std::mutex> lk(mu_);
    VLM_CHECK(!aborted_, VLM_ERR_INTERNAL, "another tensor-parallel rank failed during this step");
    const int64_t gen = generation_;
    if (++arrived_ == world_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lk, [&] { return generation_ != gen || aborted_; });
    VLM_CHECK(generation_ != gen, VLM_ERR_INTERNAL, "another tensor-parallel rank failed during this step");
  }

  int world_;
  std::vector<std::unique_ptr<HostCommunicator>> ranks_;
  std::vector<float*> buffers_;
  std::vector<float> total_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  bool aborted_ = false;
};

void HostCommunicator::all_reduce_sum(void* data, int64_t count, int dtype, void*) {
  VLM_CHECK(dtype == VLM_DTYPE_F32, VLM_ERR_INTERNAL, "the host group sums fp32 only");
  group_.all_reduce(rank_, static_cast<float*>(data), count);
}

}  // namespace

std::unique_ptr<CommGroup> make_host_group(int world) { return std::make_unique<HostGroup>(world); }

}  // namespace vlm
