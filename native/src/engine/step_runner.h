// What the engine needs from a backend: run one step's flattened tokens
// through the decoder against the backend's own paged KV cache and return
// the requested logits rows to the host. The engine owns requests, blocks
// and sampling; a runner owns weights on its device and the cache storage.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/model_runner.h"
#include "model/model.h"

namespace vlm {

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // The cache element type `requested` (VLM_DTYPE_AUTO allowed) becomes on this backend.
  virtual int resolve_kv_dtype(int requested) const = 0;
  // Bytes the KV cache may use before cache_max_entry_count is applied
  // (free host memory on the CPU, free device memory after the weights on a GPU).
  virtual int64_t kv_memory_bytes() const = 0;
  virtual void allocate_cache(int64_t num_blocks, int block_size, int kv_dtype) = 0;
  virtual int64_t kv_cache_bytes() const = 0;
  // Device memory held by dequantized copies of 4-bit layers for prefill-sized GEMMs (CUDA, opt-in).
  virtual int64_t dense_prefill_weight_bytes() const { return 0; }
  // Device memory held by copies of 4-bit layers for the CUTLASS GEMM (CUDA, Hopper builds that have it).
  virtual int64_t cutlass_weight_bytes() const { return 0; }
  virtual int64_t gemv_weight_bytes() const { return 0; }
  virtual void forward(const StepBatch& batch, StepOutput& out) = 0;
  // Overlapped steps (Engine::step, unless VLM_OVERLAP_STEPS=0): launch() queues a step and returns; collect() waits
  // for the oldest launched step not yet collected and fills its output. A runner that overlaps() takes the
  // next launch() before the previous step is collected (at most one step outstanding), and then a row's token
  // may be -(1 + i): the token the previous launched step chose for its logit row i (its argmax entry), read
  // where that step left it. launch() reads `batch` only while it runs.
  virtual bool overlaps() const { return false; }
  virtual void launch(const StepBatch& batch) { (void)batch; }
  virtual void collect(StepOutput& out) { (void)out; }
  // Whether forward() honours StepBatch::draws: a drawn row's token then comes back as its argmax entry and
  // its logits stay on the device.
  virtual bool draws_on_device() const { return false; }
};

class Communicator;

// `comm`: set when the model is one tensor-parallel shard; the runner then
// all-reduces its row-parallel outputs through it.
std::unique_ptr<StepRunner> make_cpu_runner(const Model& model, Communicator* comm = nullptr);
// Uploads the model's weights to CUDA device `device`. Throws VLM_ERR_UNSUPPORTED
// in builds without CUDA and when no GPU is visible.
std::unique_ptr<StepRunner> make_cuda_runner(const Model& model, int device, Communicator* comm = nullptr);
// `world` ranks, each running its shard of `model` (on CUDA device r, or as a CPU
// thread when !cuda); logits rows come back whole.
std::unique_ptr<StepRunner> make_tensor_parallel_runner(const Model& model, int world, bool cuda);

}  // namespace vlm
