// CUDA side of the library. The kernels of the CUDA backend live beside this
// file; what every build needs from CUDA is to know whether a GPU is usable.
#include <cuda_runtime.h>

#include "vlmcore.h"

extern "C" int vlm_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}
