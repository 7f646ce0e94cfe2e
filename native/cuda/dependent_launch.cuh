// Programmatic dependent launch (Hopper and later). A decode step is ~200 short
// kernels in a row; between two of them the GPU normally drains the first
// completely, then starts the second, which then waits for its first loads from
// memory. A kernel started with launch_dependent() may instead be scheduled
// while the kernel before it on the stream still runs: it does the work that
// depends on nothing earlier (the GEMM requests its weights), then
// pdl_wait() blocks until every earlier kernel has completed and its writes are
// visible.
//
// The rule for every kernel launched with launch_dependent(): call pdl_wait()
// before reading or writing anything another kernel touches (activations,
// workspaces, counters); only read-only data (weights) may be touched before
// it. pdl_allow_next() (after the wait, so at most two kernels overlap) lets
// the next kernel start its own prologue. Both are no-ops where the kernel was
// launched normally, and launch_dependent() launches normally where the GPU or
// the build cannot do this (dependent_launch_enabled()).
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace vlm {
namespace cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_allow_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// True when the current device is sm_90 or later and the library's kernels were compiled for it
// (not JIT-compiled from older PTX, where Hopper-only code compiles to nothing). Decided once per process.
bool hopper_code_runs();
// hopper_code_runs() and VLM_DEPENDENT_LAUNCH is not 0.
bool dependent_launch_enabled();

template <class... Params, class... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = dependent_launch_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// As launch_dependent(), in thread-block clusters of `cluster` blocks (sm_90; a cluster of one
// block is launched without the attribute).
template <class... Params, class... Args>
cudaError_t launch_dependent_in_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, dim3 cluster, size_t smem,
                                         cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attrs[2]{};
  int n = 0;
  if (cluster.x * cluster.y * cluster.z > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = cluster.x;
    attrs[n].val.clusterDim.y = cluster.y;
    attrs[n].val.clusterDim.z = cluster.z;
    ++n;
  }
  if (dependent_launch_enabled()) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// Clusters of (1, C, 1) blocks of `kernel` (block threads, smem bytes of dynamic shared memory, granted by the
// caller) that the GPU holds at once: a cluster's blocks share one GPC, so this is fewer than the resident blocks
// over C, the more so for large C. 0 if the runtime cannot say.
template <class... Params>
int max_active_clusters(void (*kernel)(Params...), dim3 block, size_t smem, int C) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 1;
  attr.val.clusterDim.y = C;
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1, C);
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace vlm
