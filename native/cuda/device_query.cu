// CUDA side of the library. The kernels of the CUDA backend live beside this
// file; what every build needs from CUDA is to know whether a GPU is usable.
#include <cuda_runtime.h>

#include "cuda/device_query.h"
#include "vlmcore.h"

extern "C" int vlm_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

namespace vlm {
namespace cuda {

int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      cudaGetLastError();
    return n > 0 ? n : 100;
  }();
  return sms;
}

bool compute_capability_is_9_0() {
  static const bool is = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major == 9 && minor == 0;
  }();
  return is;
}

int dynamic_smem_limit() {
  static const int limit = [] {
    int dev = 0, bytes = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return bytes > 1024 ? bytes - 1024 : 0;
  }();
  return limit;
}

}  // namespace cuda
}  // namespace vlm
