// The CUTLASS mixed-input GEMM's kernels for bf16 activations (w4a16_cutlass_kernel.cuh).
#include "cuda/w4a16_cutlass_kernel.cuh"

namespace vlm {
namespace cutlass_w4a16 {

cudaError_t gemm_bf16(const void* a, const Prepared& p, void* c, int M, int N, int K, int group, void* workspace,
                     size_t workspace_bytes, size_t* need, cudaStream_t stream) {
  return dispatch<__nv_bfloat16>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
}

}  // namespace cutlass_w4a16
}  // namespace vlm
