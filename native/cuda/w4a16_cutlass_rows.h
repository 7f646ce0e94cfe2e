// Which w4a16 GEMMs the engine gives the CUTLASS mixed-input kernel (w4a16_cutlass.h), in one place so that the
// engine (cuda_runner.cpp) and the benchmarks that report the engine's path (vlm_w4a16_cutlass_engine_takes) agree.
#pragma once

namespace vlm {

// VLM_W4A16_CUTLASS: 0 off; 1 (the default) on where the layers' copies fit in a quarter of the free memory after
// the weights; 2 required (loading fails where the copies do not fit).
int w4a16_cutlass_setting();
// Whether a GEMM of M rows into N outputs is in the kernel's window of rows: from VLM_W4A16_CUTLASS_MIN_ROWS
// (default 97), for wide layers (N >= 8192) from VLM_W4A16_CUTLASS_WIDE_MIN_ROWS (default 32) already, up to
// VLM_W4A16_CUTLASS_MAX_ROWS (default: no limit). The settings are read once per process.
bool w4a16_cutlass_takes_rows(int M, int N);
// The engine's whole rule for a tensor-core 4-bit layer of this shape: on, built, a device that runs it, a shape
// it applies to and rows in the window (the engine also needs the layer's copy, which it leaves out where memory
// is short or VLM_PREFILL_DENSE_WEIGHTS=1 keeps dequantized copies instead).
bool w4a16_cutlass_engine_takes(int M, int N, int K, int group);

}  // namespace vlm
