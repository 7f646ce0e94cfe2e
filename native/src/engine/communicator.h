// The collective a tensor-parallel rank needs: an in-place sum over all ranks.
// One CommGroup per engine holds a Communicator per rank; the rank's runner
// calls all_reduce_sum after each row-parallel linear (o_proj, down_proj).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace vlm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  // Sums `count` elements of vlm dtype `dtype` in place over every rank; all ranks
  // end with the same bits. `stream` is the rank's cudaStream_t (null on the CPU),
  // on which the sum is queued. Throws when the group was aborted.
  virtual void all_reduce_sum(void* data, int64_t count, int dtype, void* stream) = 0;
};

class CommGroup {
 public:
  virtual ~CommGroup() = default;
  virtual int world() const = 0;
  virtual Communicator* rank(int r) = 0;
  // A rank failed mid-step: ranks waiting in (or later entering) a collective fail too.
  virtual void abort() = 0;
  // After abort(), once no rank is inside a collective: usable again.
  virtual void reset() = 0;
};

// Ranks as threads of this process sharing host memory (the CPU backend): fp32
// sums in rank order, so a result does not depend on thread timing.
std::unique_ptr<CommGroup> make_host_group(int world);
// One NCCL communicator per CUDA device (cuda/nccl_group.cpp); NCCL is loaded
// at run time ($VLM_NCCL_LIBRARY, else libnccl.so.2). UNSUPPORTED when the build
// has no CUDA or NCCL cannot be loaded.
std::unique_ptr<CommGroup> make_nccl_group(const std::vector<int>& devices);

}  // namespace vlm
