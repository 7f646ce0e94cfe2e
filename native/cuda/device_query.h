// What the CUDA kernels' host code asks of the device (device_query.cu).
#pragma once

namespace vlm {
namespace cuda {

// Multiprocessors of the device current at the first call (100 if it cannot be read); the
// w4a16 plans size their grids from it. Asked once per process.
int sm_count();
// Whether the current device (at the first call) is compute capability 9.0: the only one that runs sm_90a
// (arch-specific) code. Asked once per process.
bool compute_capability_is_9_0();
// The most dynamic shared memory a block may take on the device current at the first call, for kernels with up to
// 1 KiB of static shared memory (the fused norm's row sums): the opt-in limit less that KiB; 0 if it cannot be
// read. Asked once per process.
int dynamic_smem_limit();

}  // namespace cuda
}  // namespace vlm
