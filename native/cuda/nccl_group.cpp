// make_nccl_group: one NCCL communicator per GPU of this process. NCCL is
// opened with dlopen when tensor parallelism is first asked for, so the
// library links only the CUDA runtime and loads wherever NCCL is absent.
// The few entry points used are declared here with NCCL's stable C ABI.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "common/error.h"
#include "engine/communicator.h"

namespace vlm {
namespace {

using nccl_comm = void*;
// ncclDataType_t / ncclRedOp_t values (nccl.h, unchanged since NCCL 2.0; bf16 since 2.10).
constexpr int kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclBfloat16 = 9, kNcclSum = 0;

struct NcclApi {
  int (*comm_init_all)(nccl_comm*, int, const int*) = nullptr;
  int (*all_reduce)(const void*, void*, size_t, int, int, nccl_comm, cudaStream_t) = nullptr;
  int (*comm_destroy)(nccl_comm) = nullptr;
  int (*comm_abort)(nccl_comm) = nullptr;
  const char* (*error_string)(int) = nullptr;
};

const NcclApi& nccl() {
  static NcclApi api;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* path = std::getenv("VLM_NCCL_LIBRARY");
    void* h = dlopen(path && *path ? path : "libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      failure = std::string("cannot load NCCL (") + (path && *path ? path : "libnccl.so.2") + "): " + dlerror() +
                "; set VLM_NCCL_LIBRARY to libnccl.so.2 (pip's nvidia-nccl ships one)";
      return;
    }
    auto sym = [&](const char* name) {
      void* s = dlsym(h, name);
      if (!s && failure.empty()) failure = std::string("NCCL library lacks ") + name;
      return s;
    };
    api.comm_init_all = reinterpret_cast<decltype(api.comm_init_all)>(sym("ncclCommInitAll"));
    api.all_reduce = reinterpret_cast<decltype(api.all_reduce)>(sym("ncclAllReduce"));
    api.comm_destroy = reinterpret_cast<decltype(api.comm_destroy)>(sym("ncclCommDestroy"));
    api.comm_abort = reinterpret_cast<decltype(api.comm_abort)>(sym("ncclCommAbort"));
    api.error_string = reinterpret_cast<decltype(api.error_string)>(sym("ncclGetErrorString"));
  });
  VLM_CHECK(failure.empty(), VLM_ERR_UNSUPPORTED, failure);
  return api;
}

#define VLM_NCCL_CHECK(expr)                                                                            \
  do {                                                                                                  \
    const int vlm_nccl_rc_ = (expr);                                                                    \
    VLM_CHECK(vlm_nccl_rc_ == 0, VLM_ERR_INTERNAL, "NCCL: " #expr " failed: " << nccl().error_string(vlm_nccl_rc_)); \
  } while (0)

class NcclCommunicator final : public Communicator {
 public:
  nccl_comm comm = nullptr;
  bool aborted = false;

  void all_reduce_sum(void* data, int64_t count, int dtype, void* stream) override {
    VLM_CHECK(!aborted, VLM_ERR_INTERNAL, "another tensor-parallel rank failed during this step");
    const int t = dtype == VLM_DTYPE_F16 ? kNcclFloat16 : dtype == VLM_DTYPE_BF16 ? kNcclBfloat16 : kNcclFloat32;
    VLM_NCCL_CHECK(nccl().all_reduce(data, data, (size_t)count, t, kNcclSum, comm, static_cast<cudaStream_t>(stream)));
  }
};

class NcclGroup final : public CommGroup {
 public:
  explicit NcclGroup(std::vector<int> devices) : devices_(std::move(devices)) {
    for (size_t r = 0; r < devices_.size(); ++r) ranks_.push_back(std::make_unique<NcclCommunicator>());
    init();
  }
  ~NcclGroup() override { destroy(); }
  int world() const override { return (int)devices_.size(); }
  Communicator* rank(int r) override { return ranks_.at(r).get(); }
  void abort() override {
    for (auto& r : ranks_) {
      r->aborted = true;
      if (r->comm) nccl().comm_abort(r->comm);
      r->comm = nullptr;
    }
  }
  void reset() override {
    destroy();
    init();
  }

 private:
  void init() {
    std::vector<nccl_comm> comms(devices_.size());
    VLM_NCCL_CHECK(nccl().comm_init_all(comms.data(), (int)devices_.size(), devices_.data()));
    for (size_t r = 0; r < devices_.size(); ++r) {
      ranks_[r]->comm = comms[r];
      ranks_[r]->aborted = false;
    }
  }
  void destroy() {
    for (auto& r : ranks_)
      if (r->comm) {
        nccl().comm_destroy(r->comm);
        r->comm = nullptr;
      }
  }

  std::vector<int> devices_;
  std::vector<std::unique_ptr<NcclCommunicator>> ranks_;
};

}  // namespace

std::unique_ptr<CommGroup> make_nccl_group(const std::vector<int>& devices) {
  return std::make_unique<NcclGroup>(devices);
}

}  // namespace vlm
