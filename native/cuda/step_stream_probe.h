// What one persistent kernel a decode step could gain over the chain of kernels the engine launches, measured
// without any arithmetic: the bytes a batch-1 step streams (each layer's GEMM weights and its KV cache, one
// "phase" each, laid out one after another) read in three ways:
//  - chain: one kernel a phase, launched dependent as the engine's kernels are: each block requests its first
//    ring stages, then waits for the kernel before it (griddepcontrol), then streams the rest;
//  - persistent: one launch of resident blocks that go through the phases in order; a block consumes a phase's
//    bytes only once every block has finished the phase before (a counter in global memory: a real layer's next
//    GEMM needs the whole of the previous one's output), having requested that phase's first ring stages before
//    the wait (weights depend on no activation);
//  - persistent without the waits: the same streaming with no dependency between phases;
//  - chain, exclusive: the chain with each kernel asking for so much shared memory that only its own blocks fit on
//    an SM, so the next kernel's blocks start (and request their first stages) only as this one's exit, as with the
//    engine's decode GEMMs (three blocks of ~58 KB an SM).
// Each warp streams its share of a phase in 512-byte steps through a ring of cp.async stages in shared memory, as
// the decode GEMM does. bench/step_stream_probe.py times the three; docs/benchmarks/cuda_engine.md reads them.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vlm {

constexpr int kStepProbeMaxPhases = 256;
constexpr int kStepProbeStepBytes = 512;  // a phase is a whole number of these (one warp's ring stage)

enum class StepProbeMode : int { kChain = 0, kPersistent = 1, kPersistentNoWaits = 2, kChainExclusive = 3 };

// Blocks of the probe's grid on the current device for `blocks_per_sm` blocks an SM with `ring_stages` (4, 8 or 16)
// stages a warp, or 0 where that many such blocks do not all fit on an SM at once (the persistent form's waits
// need every block resident). The sink of step_stream_probe() takes one word a block.
int step_probe_grid(int blocks_per_sm, int ring_stages);

// Reads phases[0..phases) bytes (each a positive multiple of kStepProbeStepBytes, the phases back to back from p,
// 16-byte aligned) once, in `mode`. Each block XORs what it read into sink[block] (so no load can be left out);
// counters: `phases` words of device memory the persistent form counts finished blocks in (zeroed here, on the
// stream, before the launch). With row_halves > 0 (a multiple of 8), the chains and the persistent form with waits
// also model the work around a GEMM's weights that depends on the phase before: after its wait every block reads the
// whole fp16 row the previous phase wrote and reduces its sum of squares (a fused RMSNorm's prologue), and after its
// weights writes its share of its own phase's row (rows: 2 x row_halves halves of device memory, 16-byte aligned).
// Asynchronous on `stream`; capturable in a CUDA graph.
cudaError_t step_stream_probe(const void* p, const int64_t* phase_bytes, int phases, StepProbeMode mode,
                              int blocks_per_sm, int ring_stages, uint32_t* sink, unsigned* counters, void* rows,
                              int row_halves, cudaStream_t stream);

}  // namespace vlm
