// A kernel that only reads (stream_read.cu): the time the GPU needs to read a buffer once in one kernel,
// with the streaming loads the weight kernels use. bench/gemm reports it beside each layer as the floor a
// GEMM call of those bytes cannot beat (launch, ramp and tail included, which a bandwidth figure is not).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

// Reads bytes (a multiple of 16) at p (16-byte aligned) once; each block writes one word of what it read
// to sink[block] (so that no load can be left out), at most 4 words per SM. Asynchronous on `stream`.
cudaError_t stream_read(const void* p, int64_t bytes, uint32_t* sink, cudaStream_t stream);
// Words stream_read writes to its sink on this GPU.
int stream_read_sink_words();

}  // namespace vlm
