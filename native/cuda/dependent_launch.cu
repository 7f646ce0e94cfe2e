// Whether the library's Hopper code runs on this device, and with it whether launch_dependent()
// may let kernels overlap (see dependent_launch.cuh).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "cuda/dependent_launch.cuh"

namespace vlm {
namespace cuda {
namespace {

// Compiled with the same architecture list as every other kernel of the library, so the
// PTX version the runtime picks for it is the one it picks for them.
__global__ void probe_kernel() {}

bool decide_hopper() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                                                  cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, probe_kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // ptxVersion is the virtual architecture the kernel was compiled for (90 for sm_90 and sm_90a):
  // code JIT-compiled from compute_80 PTX has no griddepcontrol, cluster or other sm_90 instructions.
  return major >= 9 && attr.ptxVersion >= 90;
}

}  // namespace

bool hopper_code_runs() {
  static const bool runs = decide_hopper();
  return runs;
}

bool dependent_launch_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("VLM_DEPENDENT_LAUNCH");
    return !(env && std::strcmp(env, "0") == 0) && hopper_code_runs();
  }();
  return enabled;
}

}  // namespace cuda
}  // namespace vlm
