// One check macro for CUDA calls: a failing call becomes a vlm::Error that the
// C ABI turns into a status and message.
#pragma once
#include <cuda_runtime.h>

#include "common/error.h"

#define VLM_CUDA_CHECK(expr)                                                                 \
  do {                                                                                       \
    cudaError_t vlm_cuda_err_ = (expr);                                                      \
    VLM_CHECK(vlm_cuda_err_ == cudaSuccess, VLM_ERR_INTERNAL,                                \
              #expr << " failed: " << cudaGetErrorString(vlm_cuda_err_));                    \
  } while (0)
