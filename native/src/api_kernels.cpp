// C entry points of vlmcore_kernels.h: single kernels for tests and benchmarks.
#include "api_guard.h"
#include "cpu/w4a16_pack.h"
#include "vlmcore_kernels.h"
#ifdef VLM_HAVE_CUDA
#include "cuda/cuda_check.cuh"
#include "cuda/w4a16_gemm.h"
#endif

extern "C" {

int vlm_w4a16_packed_sizes(int32_t n, int32_t k, int32_t group_size, int64_t* weight_bytes,
                           int64_t* scale_zero_bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(weight_bytes && scale_zero_bytes, "NULL output");
    VLM_CHECK_ARG(n > 0 && k > 0 && group_size > 0 && k % group_size == 0, "invalid shape");
    *weight_bytes = vlm::w4a16_weight_bytes(n, k);
    *scale_zero_bytes = vlm::w4a16_scale_zero_bytes(n, k, group_size);
  });
}

int vlm_w4a16_pack(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int32_t n, int32_t k,
                   int32_t group_size, int32_t act_dtype, void* packed_weight, void* packed_scale_zero) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(qweight && qzeros && scales && packed_weight && packed_scale_zero, "NULL argument");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::w4a16_pack(qweight, qzeros, scales, n, k, group_size, act_dtype == VLM_DTYPE_BF16,
                    static_cast<uint32_t*>(packed_weight), static_cast<uint16_t*>(packed_scale_zero));
  });
}

int vlm_w4a16_workspace_bytes(int32_t m, int32_t n, int32_t k, int32_t group_size, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    *bytes = vlm::w4a16_workspace_bytes(m, n, k, group_size);
    VLM_CHECK(*bytes >= 0, VLM_ERR_UNSUPPORTED, "w4a16: K " << k << " is too large to plan");
#else
    (void)m, (void)n, (void)k, (void)group_size;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemm(const void* a, const void* packed_weight, const void* packed_scale_zero, const void* residual,
                   void* c, int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype, void* workspace,
                   void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(a && packed_weight && packed_scale_zero && c, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    VLM_CHECK_ARG(vlm::w4a16_workspace_bytes(m, n, k, group_size) == 0 || workspace != nullptr,
                  "w4a16: this shape needs a workspace (vlm_w4a16_workspace_bytes)");
    VLM_CUDA_CHECK(vlm::w4a16_gemm(a, packed_weight, packed_scale_zero, residual, c, m, n, k, group_size,
                                   act_dtype == VLM_DTYPE_BF16, workspace, static_cast<cudaStream_t>(stream)));
#else
    (void)residual, (void)m, (void)n, (void)k, (void)group_size, (void)workspace, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

}  // extern "C"
