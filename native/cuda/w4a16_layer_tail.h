// A decoder layer's GEMMs after its attention, in one persistent launch, for decode steps of
// up to 16 rows with 4-bit weights on Hopper (w4a16_layer_tail.cu):
//   delta = attn · Woᵀ;  h' = h + delta;  gate_up = rms_norm(h') · Wgate_upᵀ;
//   delta = (silu(gate) * up) · Wdownᵀ;  and, where the layer has a successor,
//   h = h' + delta;  qkv = rms_norm(h) · Wqkv(next)ᵀ (+ bias).
// The kernel chain runs these as four launches, each paying a launch, a first trip to memory
// with little in flight and a drain before the next may read its output (~4-6 us a boundary at
// batch 1, docs/benchmarks/cuda_engine.md). Here every block stays resident: between two GEMMs
// it waits at a grid-wide barrier while its rings already stream its next GEMM's weights (they
// depend on no activation). Each GEMM is cut and summed exactly as the decode kernel cuts and
// sums it (w4a16_decode_block.cuh, the same plan), so up to 4 rows, where the chain runs that
// kernel, the results are the chain's bits (its norms are those of the fused-norm GEMMs and of the
// norm kernel's vectorised form, i.e. rows of up to 8192 elements); at 5-16 rows (where the chain
// runs the general kernel, another sum order) the rows fill more of the mma's 8-column operand
// (one tile to 8 rows, two to 16, the weights' fragments made once for both).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace vlm {

// One 4-bit layer (tensor-core packed: cpu/w4a16_pack.h) of the tail; bias (fp32, N) may be null.
struct W4a16Layer {
  const void* w = nullptr;
  const void* scale_zero = nullptr;
  const float* bias = nullptr;
  int N = 0, K = 0, group = 0;
};

constexpr int kLayerTailMaxRows = 16;  // two 8-row tiles of the mma's activation operand

struct LayerTailArgs {
  int M = 0;  // rows, 1..kLayerTailMaxRows
  W4a16Layer o, gate_up, down;
  W4a16Layer next_qkv;           // w null: the model's last layer (the tail ends with down)
  const void* attn = nullptr;    // [M][o.K], the attention's output
  void* delta = nullptr;         // [M][o.N]: o's output, then down's
  void* gate_up_out = nullptr;   // [M][gate_up.N] ([gate | up] a row)
  void* qkv_out = nullptr;       // [M][next_qkv.N]
  float* h = nullptr;            // the fp32 residual stream [M][o.N]: read, and (next_qkv) written back
  float* h_other = nullptr;      // h + o's delta is written here (must not alias h)
  const float* post_norm = nullptr;        // the norm before gate_up
  const float* next_input_norm = nullptr;  // the norm before next_qkv
  float eps = 0.f;
};

// Workspace of one launch: fp32 K-slice partials, per-column-block arrival counters (zeroed once; each
// launch leaves them at zero) and the grid barrier's counter (zeroed before the first launch of a step: every
// launch counts on from where the previous one left it, by `barriers` x its grid).
struct LayerTailWorkspace {
  float* partials = nullptr;
  int* arrivals = nullptr;
  unsigned* barrier = nullptr;
  unsigned barrier_start = 0;  // the counter's value when this launch starts
};

// Whether the persistent form runs these shapes on this GPU and build (sm_90 code, every GEMM's decode
// plan, shared memory, all SMs usable: no MPS share limit); when it does, the sizes of the workspace it needs
// and the grid (blocks) it launches with, which may differ between layers of different shapes or between the
// last layer and the others.
bool w4a16_layer_tail_plan(const LayerTailArgs& args, size_t* partial_floats, size_t* arrival_ints, int* grid);
// Whether GEMMs are cut the tail's own way (VLM_LAYER_TAIL_WIDE=1: about one long K slice a block, not the chain's
// sum order at any row count) rather than as the decode kernel cuts them (the default: the chain's bits up to 4 rows).
bool w4a16_layer_tail_wide_cut();
// Queues the launch; cudaErrorInvalidValue where w4a16_layer_tail_plan() is false. On success *barrier_arrivals is
// what the launch adds to the barrier counter (its barriers times its grid): the next launch's barrier_start grows
// by it.
cudaError_t w4a16_layer_tail(const LayerTailArgs& args, const LayerTailWorkspace& ws, bool bf16,
                             cudaStream_t stream, unsigned* barrier_arrivals);

}  // namespace vlm
