// Built instead of the CUDA sources when no CUDA compiler was found.
#include "common/error.h"
#include "engine/communicator.h"
#include "engine/step_runner.h"
#include "vlmcore.h"

extern "C" int vlm_cuda_device_count(void) { return 0; }

namespace vlm {

std::unique_ptr<StepRunner> make_cuda_runner(const Model&, int, Communicator*) {
  VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build of libvlmcore has no CUDA backend (no CUDA compiler was found "
                                        "when it was built); use device=cpu");
}

}  // namespace vlm

namespace vlm {

std::unique_ptr<CommGroup> make_nccl_group(const std::vector<int>&) {
  VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build of libvlmcore has no CUDA backend, so no NCCL tensor parallelism");
}

}  // namespace vlm
