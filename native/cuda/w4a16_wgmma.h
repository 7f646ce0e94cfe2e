// Host entry points of the Hopper wgmma w4a16 GEMM (w4a16_wgmma.cu), for 17 rows and up: sm_90a builds on
// compute capability 9.0 only; by default its strip form up to 128 rows (VLM_W4A16_WGMMA=0: off, 1: the block
// form, 2: the strip form at every M). w4a16_gemm() routes to it when w4a16_wgmma_applies().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

// The form that runs this shape on the current device: 0 none, 1 the block form, 2 the strip form.
int w4a16_wgmma_form(int M, int N, int K, int group);
bool w4a16_wgmma_applies(int M, int N, int K, int group);
// Rows from which the engine dequantizes a w4a16 layer into a scratch fp16/bf16 matrix and multiplies it with
// cuBLAS (where w4a16_wgmma_applies() is false): right above the strip form's default rows where its code runs,
// 256 elsewhere.
int w4a16_dequant_gemm_min_rows();
// The K slices this shape runs as and whether they are summed in thread-block clusters (else fp32 partials and
// a second kernel); 0 slices where no form applies.
void w4a16_wgmma_plan(int M, int N, int K, int group, int* splits, bool* cluster);
// fp32 split-K partials for this shape; 0 when it runs as one slice or sums in clusters.
int64_t w4a16_wgmma_workspace_bytes(int M, int N, int K, int group);
cudaError_t w4a16_wgmma_gemm(const void* a, const void* w, const void* scale_zero, const void* residual, void* c,
                             int M, int N, int K, int group, bool bf16, void* workspace, cudaStream_t stream);

}  // namespace vlm
