// The CUDA backend's step runner: the model's weights and the paged KV cache
// in device memory, one decoder step as a sequence of kernels on one stream,
// logits copied back for the engine's sampler.
//
// Weights come from the finalized host Model (its CPU layouts are the single
// source of truth) and are converted once at load: dense tensors to the
// activation type (fp16, or bf16 for bf16 checkpoints), AWQ linears to the
// tensor-core fragment layout when the shape fits the w4a16 kernel (N a
// multiple of 64, group 64 or 128), otherwise to the plain 4-bit row layout
// of the CUDA-core kernel. Host C++ (compiled by the C++ compiler): errors are
// vlm::Error, which the engine reports on the requests of the failed step.
#include <cuda_runtime.h>
#include <omp.h>
#if VLM_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/numeric.h"
#include "cpu/w4a16_pack.h"
#include "cuda/cuda_check.cuh"
#include "cuda/decoder_kernels.h"
#include "cuda/dense_decode.h"
#include "cuda/draw_rows.h"
#include "cuda/env_int.h"
#include "cuda/simt_linear.h"
#include "cuda/step_profiler.h"
#include "cuda/w4a16_cutlass.h"
#include "cuda/w4a16_cutlass_rows.h"
#include "cuda/w4a16_decode.h"
#include "cuda/w4a16_gemm.h"
#include "cuda/w4a16_gemv.h"
#include "cuda/w4a16_layer_tail.h"
#include "cuda/w4a16_wgmma.h"
#include "engine/communicator.h"
#include "engine/kv_cache.h"
#include "engine/step_runner.h"

namespace vlm {
namespace {

using cuda::ActType;

// cudaMalloc'd bytes that only grow; freed with the owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  // True when the memory moved (pointers taken before are stale).
  bool reserve(size_t bytes) {
    if (bytes <= bytes_) return false;
    if (p_) cudaFree(p_);
    p_ = nullptr;
    bytes_ = 0;
    check_allocation(cudaMalloc(&p_, bytes), bytes);
    bytes_ = bytes;
    return true;
  }
  // Grows keeping the contents, as of the stream's work so far (the stream is waited for before the old memory
  // goes). True when the memory moved.
  bool reserve_keeping(size_t bytes, cudaStream_t stream) {
    if (bytes <= bytes_) return false;
    void* p = nullptr;
    check_allocation(cudaMalloc(&p, bytes), bytes);
    if (p_) {
      VLM_CUDA_CHECK(cudaMemcpyAsync(p, p_, bytes_, cudaMemcpyDeviceToDevice, stream));
      VLM_CUDA_CHECK(cudaStreamSynchronize(stream));
      cudaFree(p_);
    }
    p_ = p;
    bytes_ = bytes;
    return true;
  }
  template <class T> void upload(const std::vector<T>& v) {
    reserve(v.size() * sizeof(T));
    if (!v.empty()) VLM_CUDA_CHECK(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  template <class T = void> T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  // The message says how much memory was free and how much the device has, so that whoever reads it can tell a
  // cache sized too large (little free) from one request asking too much (much free, a larger ask).
  static void check_allocation(cudaError_t e, size_t bytes) {
    if (e == cudaSuccess) return;
    size_t free_b = 0, total_b = 0;
    const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    cudaGetLastError();  // clear the (not sticky) error, so that no later check, for requests still served, sees it
    VLM_CHECK(false, e == cudaErrorMemoryAllocation ? VLM_ERR_OUT_OF_MEMORY : VLM_ERR_INTERNAL,
              "cannot allocate " << bytes << " bytes (" << (bytes >> 20) << " MiB) of device memory: "
                                 << cudaGetErrorString(e)
                                 << (known ? "; " + std::to_string(free_b >> 20) + " MiB free of " +
                                                 std::to_string(total_b >> 20) + " MiB"
                                           : std::string()));
  }

  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory, grown as needed (at least doubling, up to a cap where one is given: allocating it is
// slow, and the step's metadata grows a little with every token): copies to and from it are queued on the stream
// and return at once. Each launched step has its own (two alternate), grown only when its previous step has been
// collected, so no copy is in flight when it moves.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (p_) cudaFreeHost(p_);
  }
  void reserve(size_t bytes) {
    const cudaError_t e = grow(bytes, SIZE_MAX);
    VLM_CHECK(e == cudaSuccess, VLM_ERR_OUT_OF_MEMORY,
              "cannot allocate " << bytes << " bytes of page-locked host memory: " << cudaGetErrorString(e));
  }
  // For buffers that have an ordinary-memory way round: false (and the buffer empty) where the page-locked
  // memory cannot be had; growth stops at `cap` bytes (at least `bytes`).
  bool try_reserve(size_t bytes, size_t cap) {
    if (grow(bytes, cap) == cudaSuccess) return true;
    cudaGetLastError();  // not sticky: leave no error for the step's own checks to find
    return false;
  }
  template <class T = void> T* as() const { return static_cast<T*>(p_); }

 private:
  cudaError_t grow(size_t bytes, size_t cap) {
    if (bytes <= bytes_) return cudaSuccess;
    bytes = std::max(bytes, std::min(2 * bytes_, cap));
    if (p_) cudaFreeHost(p_);
    p_ = nullptr;
    bytes_ = 0;
    const cudaError_t e = cudaMallocHost(&p_, bytes);
    if (e == cudaSuccess) bytes_ = bytes;
    return e;
  }

  void* p_ = nullptr;
  size_t bytes_ = 0;
};

constexpr int kAwqShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};  // AutoAWQ nibble of column j in a group of 8

struct DeviceLinear {
  int out = 0, in = 0, group = 0;  // group 0: dense
  bool tensor_core = false;        // w4a16 fragment layout (w, scale = packed scale/zero)
  DeviceBuffer w, scale, nzs, bias;
  // A tensor-core layer dequantized once at load (VLM_PREFILL_DENSE_WEIGHTS=1): prefill-sized GEMMs multiply it
  // through cuBLAS instead of dequantizing the layer on every such call; empty otherwise.
  DeviceBuffer dense;
  // The same layer for the CUTLASS mixed-input GEMM (w4a16_cutlass.h: codes reordered, scales, offsets), made at
  // load where cutlass_prefill_requested(): prefill-sized GEMMs read it instead of dequantizing; empty otherwise.
  DeviceBuffer cutlass;
  // The same layer in the column-tile decode kernel's layout (w4a16_gemv.h), made at load where gemv_rows() > 0
  // and a rule of keep_gemv_weights gives it the kernel; empty otherwise. gemv_row_mask: bit M set where a decode
  // step of M rows multiplies it through that kernel, gemv_ring the ring of chunks it is launched with.
  DeviceBuffer gemv;
  unsigned gemv_row_mask = 0;
  int gemv_ring = kGemvRingSetting;
};

struct DeviceLayer {
  DeviceBuffer input_norm, post_norm;
  // q/k/v and gate/up are each stacked into one linear (one GEMM, a wider N to fill the GPU).
  DeviceLinear qkv, o, gate_up, down;
};

// VLM_CUDA_W4A16_TENSOR_CORES=0 sends every 4-bit linear to the CUDA-core kernel (to test one path against the other).
bool tensor_cores_enabled() {
  const char* v = std::getenv("VLM_CUDA_W4A16_TENSOR_CORES");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

uint16_t act_bits(float x, bool bf16) { return bf16 ? f32_to_bf16(x) : f32_to_f16(x); }

// Linears that read the same input with their output rows stacked in order
// ([q; k; v], [gate; up]); row n of the stack is row n - offset of one part.
class StackedLinear {
 public:
  explicit StackedLinear(std::vector<const Linear*> parts) : parts_(std::move(parts)) {
    const Linear& f = *parts_.front();
    for (const Linear* l : parts_) {
      VLM_CHECK(l->in == f.in && l->kind == f.kind && l->group_size == f.group_size, VLM_ERR_UNSUPPORTED,
                "the CUDA backend stacks q/k/v and gate/up into one GEMM and needs them alike: got input sizes "
                    << f.in << "/" << l->in << ", group sizes " << f.group_size << "/" << l->group_size
                    << (l->kind != f.kind ? ", and a mix of quantized and dense weights" : ""));
      offsets_.push_back(out);
      out += l->out;
    }
    in = f.in;
    group = f.kind == WeightKind::AWQ4 ? f.group_size : 0;
  }
  int out = 0, in = 0, group = 0;
  // (part, row within it) of stacked row n.
  std::pair<const Linear*, int> row(int n) const {
    size_t p = parts_.size() - 1;
    while (offsets_[p] > n) --p;
    return {parts_[p], n - offsets_[p]};
  }
  const std::vector<const Linear*>& parts() const { return parts_; }

 private:
  std::vector<const Linear*> parts_;
  std::vector<int> offsets_;
};

bool tensor_core_shape(const StackedLinear& l) {
  return tensor_cores_enabled() && l.group && l.out % 64 == 0 && (l.group == 64 || l.group == 128) &&
         l.in % l.group == 0 && l.in % 64 == 0;
}

void upload_dense(const StackedLinear& l, bool bf16, DeviceLinear& d) {
  std::vector<uint16_t> host((size_t)l.out * l.in);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < l.out; ++n) {
    const auto [part, pn] = l.row(n);
    for (int k = 0; k < l.in; ++k) host[(size_t)n * l.in + k] = act_bits(part->at(pn, k), bf16);
  }
  d.w.upload(host);
}

// Code, zero point and scale of W[n][k] from the CPU's AWQ panels.
struct AwqParts {
  const Linear& l;
  int code(int n, int k) const {
    const uint8_t b = l.q4[((int64_t)(n / kPanel) * l.in + k) * 16 + (n % kPanel & 15)];
    return n % kPanel < 16 ? (b & 15) : (b >> 4);
  }
  int64_t group_index(int n, int k) const {
    return ((int64_t)(n / kPanel) * (l.in / l.group_size) + k / l.group_size) * kPanel + n % kPanel;
  }
  float scale(int n, int k) const { return l.scale[group_index(n, k)]; }
  float nzs(int n, int k) const { return l.neg_zero_scale[group_index(n, k)]; }
  int zero(int n, int k) const {
    const float s = scale(n, k);
    return s == 0.f ? 0 : (int)std::lround(-nzs(n, k) / s);
  }
};

void upload_awq(const StackedLinear& l, bool bf16, DeviceLinear& d) {
  const int N = l.out, K = l.in, g = l.group, G = K / g;
  auto at = [&](int n) {
    const auto [part, pn] = l.row(n);
    return std::make_pair(AwqParts{*part}, pn);
  };
  if (tensor_core_shape(l)) {
    // Back to AutoAWQ's tensors, then into the kernel's fragment order.
    std::vector<int32_t> qweight((size_t)K * (N / 8)), qzeros((size_t)G * (N / 8));
    std::vector<uint16_t> scales((size_t)G * N);
#pragma omp parallel for schedule(static)
    for (int n8 = 0; n8 < N / 8; ++n8)
      for (int j = 0; j < 8; ++j) {
        const auto [a, pn] = at(n8 * 8 + j);
        for (int k = 0; k < K; ++k)
          qweight[(size_t)k * (N / 8) + n8] |= (int32_t)((uint32_t)a.code(pn, k) << kAwqShift[j]);
        for (int gi = 0; gi < G; ++gi) {
          qzeros[(size_t)gi * (N / 8) + n8] |= (int32_t)((uint32_t)a.zero(pn, gi * g) << kAwqShift[j]);
          scales[(size_t)gi * N + n8 * 8 + j] = f32_to_f16(a.scale(pn, gi * g));
        }
      }
    std::vector<uint32_t> packed(w4a16_weight_bytes(N, K) / 4);
    std::vector<uint16_t> scale_zero(w4a16_scale_zero_bytes(N, K, g) / 2);
    w4a16_pack(qweight.data(), qzeros.data(), scales.data(), N, K, g, bf16, packed.data(), scale_zero.data());
    d.w.upload(packed);
    d.scale.upload(scale_zero);
    d.tensor_core = true;
    return;
  }
  std::vector<uint32_t> codes((size_t)N * (K / 8));
  std::vector<float> scale((size_t)N * G), nzs((size_t)N * G);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const auto [a, pn] = at(n);
    for (int k8 = 0; k8 < K / 8; ++k8) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= (uint32_t)a.code(pn, k8 * 8 + i) << (4 * i);
      codes[(size_t)n * (K / 8) + k8] = word;
    }
    for (int gi = 0; gi < G; ++gi) {
      scale[(size_t)n * G + gi] = a.scale(pn, gi * g);
      nzs[(size_t)n * G + gi] = a.nzs(pn, gi * g);
    }
  }
  d.w.upload(codes);
  d.scale.upload(scale);
  d.nzs.upload(nzs);
}

void upload_linear(const StackedLinear& l, bool bf16, DeviceLinear& d) {
  VLM_CHECK(l.in % 8 == 0, VLM_ERR_UNSUPPORTED,
            "the CUDA backend needs linear input sizes that are multiples of 8, got " << l.in);
  d.out = l.out;
  d.in = l.in;
  d.group = l.group;
  if (d.group) {
    VLM_CHECK(d.group % 8 == 0, VLM_ERR_UNSUPPORTED, "AWQ group size " << d.group << " on CUDA");
    upload_awq(l, bf16, d);
  } else {
    upload_dense(l, bf16, d);
  }
  bool any_bias = false;
  for (const Linear* p : l.parts()) any_bias |= !p->bias.empty();
  if (any_bias) {  // parts without a bias add zeros
    std::vector<float> bias;
    for (const Linear* p : l.parts()) {
      if (p->bias.empty()) bias.insert(bias.end(), p->out, 0.f);
      else bias.insert(bias.end(), p->bias.begin(), p->bias.end());
    }
    d.bias.upload(bias);
  }
}

void upload_linear(const Linear& l, bool bf16, DeviceLinear& d) { upload_linear(StackedLinear({&l}), bf16, d); }

bool is_bf16_model(const Model& m) {
  // bf16 checkpoints keep bf16 activations (their range); everything else computes in fp16.
  return m.embed_table().kind == WeightKind::BF16;
}

constexpr int kFusedSiluMaxRows = 16;
// Decode steps up to this many rows run RoPE and the K/V write inside the tensor-core attention (2B w4a16
// + int8 KV on the H200, 2026-12-04: batch 1 943 -> 978 and 952 -> 963 tok/s). Above it the RoPE kernel
// runs first: in the fused form each slice that holds its row's own position writes that row before it
// loads a tile, and from ~64 rows every block is such a slice (batch 64 measured 21,359 -> 20,720 once,
// inside the ~2 % spread between runs of one code).
constexpr int kRopeInAttentionMaxRows = 16;
// Rows up to which dense layers run the decode-size kernel instead of cuBLAS (CudaRunner::dense_decodes).
constexpr int kDenseDecodeEngineRows = 1;

// VLM_FUSED_NORM=0 keeps every RMSNorm a kernel of its own (to measure what folding it into the
// decode-size GEMM saves; both give the same bits for hidden sizes up to 8192).
bool fused_norm_enabled() {
  const char* v = std::getenv("VLM_FUSED_NORM");
  return !(v && std::strcmp(v, "0") == 0);
}

class CudaRunner final : public StepRunner {
 public:
  CudaRunner(const Model& model, int device, Communicator* comm)
      : p_(model.params()), device_(device), comm_(comm), vocab_out_(model.lm_head().out) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      count = 0;
    }
    VLM_CHECK(count > device, VLM_ERR_UNSUPPORTED,
              "device=cuda but no CUDA GPU is visible (" << count << " found); use device=cpu");
    VLM_CUDA_CHECK(cudaSetDevice(device_));
    VLM_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
    bf16_ = is_bf16_model(model);
    act_ = bf16_ ? ActType::BF16 : ActType::F16;
    VLM_CHECK(p_.hidden_size % 8 == 0 && p_.intermediate_size % 8 == 0 && (p_.num_heads * p_.head_dim) % 8 == 0,
              VLM_ERR_UNSUPPORTED, "the CUDA backend needs hidden, intermediate and attention sizes that are "
                                   "multiples of 8");
    VLM_CHECK(p_.head_dim <= 256, VLM_ERR_UNSUPPORTED, "the CUDA backend takes head_dim <= 256");
    VLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    copies_ = std::make_unique<StepCopies[]>(2);
#if VLM_HAVE_CUBLAS
    VLM_CHECK(cublasCreate(&blas_) == CUBLAS_STATUS_SUCCESS, VLM_ERR_INTERNAL, "cublasCreate failed");
    VLM_CHECK(cublasSetStream(blas_, stream_) == CUBLAS_STATUS_SUCCESS, VLM_ERR_INTERNAL, "cublasSetStream failed");
    // A workspace of our own: cuBLAS then never allocates inside a captured decode graph.
    blas_workspace_.reserve(32 << 20);
    VLM_CHECK(cublasSetWorkspace(blas_, blas_workspace_.as(), blas_workspace_.bytes()) == CUBLAS_STATUS_SUCCESS,
              VLM_ERR_INTERNAL, "cublasSetWorkspace failed");
#endif
    // VLM_CUDA_GRAPHS=0 runs decode steps eagerly (the same kernels and plans, launched one by one).
    const char* graphs = std::getenv("VLM_CUDA_GRAPHS");
    graphs_enabled_ = graphs == nullptr || std::strcmp(graphs, "0") != 0;
    // VLM_LM_HEAD_DECODE: how the lm head runs at one row (LmHeadDecode).
    lm_head_decode_ = static_cast<LmHeadDecode>(std::clamp(cuda::env_int("VLM_LM_HEAD_DECODE", 1), 0, 2));
    // At one row that kernel also takes the greedy token, so no argmax kernel runs after it (H100, 2026-12-07:
    // w4a16 + int8 KV batch 1 2B 945 / 947 -> 958 / 956 tok/s, 7B 438 / 438 -> 442 / 439; the same tokens and
    // logits); VLM_LM_HEAD_ARGMAX=0 keeps the argmax kernel.
    lm_head_argmax_ = cuda::env_int("VLM_LM_HEAD_ARGMAX", 1) != 0;
    // VLM_LM_HEAD_NORM=1: at one row that kernel also computes the final norm (off until measured on a GPU).
    lm_head_norm_ = cuda::env_int("VLM_LM_HEAD_NORM", 0) != 0;
    // VLM_DEVICE_SAMPLING=1 draws sampled rows on the GPU (draw_rows.cu) instead of copying them back whole.
    const char* sampling = std::getenv("VLM_DEVICE_SAMPLING");
    device_draws_ = sampling != nullptr && std::strcmp(sampling, "0") != 0 && comm_ == nullptr;
    // VLM_CUDA_PROFILE=1 times every phase of every step (eagerly) and prints the means at exit.
    const char* profile = std::getenv("VLM_CUDA_PROFILE");
    if (profile != nullptr && std::strcmp(profile, "0") != 0) {
      prof_ = std::make_unique<cuda::StepProfiler>();
      graphs_enabled_ = false;
    }

    upload_linear(model.embed_table(), bf16_, embed_);
    if (!p_.tie_word_embeddings) upload_linear(model.lm_head(), bf16_, lm_head_);
    final_norm_.upload(model.final_norm());
    inv_freq_.upload(model.rope().inv_freq);
    layers_.resize(p_.num_layers);
    for (int i = 0; i < p_.num_layers; ++i) {
      const LayerWeights& w = model.layer(i);
      DeviceLayer& d = layers_[i];
      d.input_norm.upload(w.input_norm);
      d.post_norm.upload(w.post_attention_norm);
      upload_linear(StackedLinear({&w.q, &w.k, &w.v}), bf16_, d.qkv);
      upload_linear(w.o, bf16_, d.o);
      upload_linear(StackedLinear({&w.gate, &w.up}), bf16_, d.gate_up);
      upload_linear(w.down, bf16_, d.down);
    }
    if (prefill_dense_weights_requested()) keep_dense_prefill_weights();
    else if (cutlass_prefill_requested()) keep_cutlass_prefill_weights();
    if (gemv_rows() > 0) keep_gemv_weights();
    VLM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  ~CudaRunner() override {
#if VLM_HAVE_CUBLAS
    if (blas_) cublasDestroy(blas_);
#endif
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  int resolve_kv_dtype(int requested) const override {
    if (requested == VLM_DTYPE_AUTO) return bf16_ ? VLM_DTYPE_BF16 : VLM_DTYPE_F16;
    return requested;
  }

  int64_t kv_memory_bytes() const override {
    VLM_CUDA_CHECK(cudaSetDevice(device_));
    size_t free_b = 0, total_b = 0;
    VLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return (int64_t)free_b;
  }

  void allocate_cache(int64_t num_blocks, int block_size, int kv_dtype) override {
    VLM_CUDA_CHECK(cudaSetDevice(device_));
    kv_dtype_ = kv_dtype;
    block_size_ = block_size;
    num_blocks_ = num_blocks;
    const int64_t rows = num_blocks * p_.num_kv_heads * block_size;
    const int64_t row_bytes = KvCache::row_bytes(kv_dtype, p_.head_dim);
    const bool quantized = kv_dtype == VLM_DTYPE_I8 || kv_dtype == VLM_DTYPE_I4;
    // Checked whole before the first layer's buffers, so that a cache asked larger than the device says so in its
    // own words (7B's 32 K/V heads at 384 sequences of 768 tokens: 80 GB of int8 rows) instead of failing on
    // whichever layer's allocation runs out.
    const int64_t need =
        num_blocks * KvCache::bytes_per_block(p_.num_layers, block_size, p_.num_kv_heads, p_.head_dim, kv_dtype);
    size_t free_b = 0, total_b = 0;
    VLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    // At least 1: on the device no free memory means none, not "not known".
    KvCache::check_fits(num_blocks, block_size, need, std::max<int64_t>(1, (int64_t)free_b), "device");
    cache_.resize(p_.num_layers);
    for (LayerCache& c : cache_) {
      for (DeviceBuffer* b : {&c.k, &c.v}) {
        b->reserve(rows * row_bytes);
        VLM_CUDA_CHECK(cudaMemset(b->as(), 0, rows * row_bytes));
      }
      if (quantized)
        for (DeviceBuffer* b : {&c.k_sz, &c.v_sz}) {
          b->reserve(rows * 4);
          VLM_CUDA_CHECK(cudaMemset(b->as(), 0, rows * 4));
        }
    }
  }

  int64_t dense_prefill_weight_bytes() const override { return dense_prefill_bytes_; }
  int64_t cutlass_weight_bytes() const override { return cutlass_bytes_; }
  int64_t gemv_weight_bytes() const override { return gemv_bytes_; }

  int64_t kv_cache_bytes() const override {
    return KvCache::bytes_per_block(p_.num_layers, block_size_, p_.num_kv_heads, p_.head_dim, kv_dtype_) *
           num_blocks_;
  }

  // One step at a time: whole rows go straight into the output (a long prompt's prompt logprobs can ask for
  // thousands of them, more than is worth keeping page-locked), the argmax through this step's buffers.
  void forward(const StepBatch& b, StepOutput& out) override {
    launch_step(b, &out);
    collect(out);
  }

  // Steps overlap (the engine plans and launches the next before taking this one's output) unless every phase
  // is being timed one step at a time (VLM_CUDA_PROFILE).
  bool overlaps() const override { return prof_ == nullptr; }

  void launch(const StepBatch& b) override { launch_step(b, nullptr); }

  void collect(StepOutput& out) override {
    VLM_CHECK(!queued_.empty(), VLM_ERR_INTERNAL, "no launched step to collect");
    Queued q = std::move(queued_.front());
    queued_.pop_front();
    StepCopies& c = copies_[q.slot];
    VLM_CUDA_CHECK(cudaEventSynchronize(c.done));
    const int V = vocab_out_;
    out.argmax.resize(q.rows);
    out.max_logit.resize(q.rows);
    if (q.rows > 0) {
      std::memcpy(out.argmax.data(), c.argmax.as(), (size_t)q.rows * 4);
      std::memcpy(out.max_logit.data(), c.argmax.as<unsigned char>() + (size_t)q.rows * 4, (size_t)q.rows * 4);
    }
    if (!q.pageable.empty()) {
      out.logits.swap(q.pageable);
    } else if (!q.direct) {  // staged in page-locked memory (a direct step's rows are in `out` already)
      out.logits.resize(q.full * V);
      if (q.full > 0) std::memcpy(out.logits.data(), c.logits.as(), q.full * V * 4);
    }
    if (prof_) {
      prof_->host_phase("wait for the GPU", q.t_wait);
      prof_->end();
    }
  }

 private:
  // Queues one step (queue_step). Where that fails part way, some of its uploads from this slot's page-locked
  // buffers, and kernels reading the device buffers, may already be queued, and the slot is not marked used (the
  // engine finishes the step's requests with the error and goes on): waiting for them here keeps the next step,
  // which takes the same slot and buffers, from overwriting what they still read.
  void launch_step(const StepBatch& b, StepOutput* direct) {
    try {
      queue_step(b, direct);
    } catch (...) {
      cudaStreamSynchronize(stream_);
      cudaGetLastError();  // its error, if any, is the one being thrown
      throw;
    }
  }

  // Queues one step. Whole rows are copied into `direct`'s logits when given (the caller collects at once),
  // else into the step's page-locked buffers, so that the host can plan the next step while this one runs.
  void queue_step(const StepBatch& b, StepOutput* direct) {
    const int64_t t_entry = cuda::StepProfiler::now();
    VLM_CHECK(queued_.size() < 2, VLM_ERR_INTERNAL, "a third step launched before the first was collected");
    VLM_CUDA_CHECK(cudaSetDevice(device_));
    const int slot = (int)(launches_ % 2);  // this step's page-locked buffers and completion event
    const int T = (int)b.tokens.size(), R = (int)b.logit_rows.size();
    const int H = p_.hidden_size, F = p_.intermediate_size, V = vocab_out_;
    const int nq = p_.num_heads * p_.head_dim, nkv = p_.num_kv_heads * p_.head_dim;
    const size_t a = 2;  // bytes of one activation element (fp16 or bf16)
    grow(h_, (size_t)T * H * 4);
    grow(h_next_, (size_t)T * H * 4);
    grow(x_, (size_t)T * H * a);
    grow(qkv_, (size_t)T * (nq + 2 * nkv) * a);
    grow(q_, (size_t)T * nq * a);
    grow(attn_, (size_t)T * nq * a);
    grow(delta_, (size_t)T * H * a);
    grow(gate_up_, (size_t)T * 2 * F * a);
    grow(ffn_, (size_t)T * F * a);
    grow(logits_d_, (size_t)std::max(R, 1) * V * 4);
    // Kept when it grows: a row of this step may read its token from the previous step's argmax (a token -1 - i).
    if (argmax_d_.reserve_keeping((size_t)std::max(R, 1) * 8, stream_)) ++epoch_;
    // Shared by the argmax kernel and the lm head's own argmax (VLM_LM_HEAD_ARGMAX), one or the other a step.
    grow(argmax_partial_, std::max((size_t)cuda::argmax_partial_bytes(std::max(R, 1), V),
                                   (size_t)dense_decode_argmax_partials() * 8));
    grow_zeroed(argmax_arrivals_, (size_t)std::max(R, 1) * sizeof(int));

    const bool decode = is_decode_step(b);
    int context = T ? *std::max_element(b.positions.begin(), b.positions.end()) + 1 : 0;
    // Decode steps plan attention for a power-of-two context bound (key slices past a row's
    // position are empty), so one captured graph serves every step up to that bound.
    if (decode) context = context_bucket(context);
    if (prof_) prof_->begin(decode ? "decode, " + std::to_string(T) + " rows" : "prefill or mixed");
    grow(attn_workspace_, (size_t)cuda::paged_attention_workspace_bytes(T, p_.num_heads, p_.head_dim,
                                                                       p_.num_kv_heads, context, num_sms_));
    grow_zeroed(attn_arrivals_, (size_t)T * p_.num_kv_heads * sizeof(int));  // split-KV arrival counters
    if (layer_tail_runs(T)) {
      const TailPlan& plan = tail_plan(T);
      grow(tail_partials_, std::max<size_t>(plan.partial_floats, 1) * sizeof(float));
      grow_zeroed(tail_arrivals_, plan.arrival_ints * sizeof(int));
      grow(tail_barrier_, sizeof(unsigned));
    }
    const cuda::StepMeta meta = upload_meta(b, slot);
    // The spliced rows (an image's embeddings: 2 MB for 256 rows of 2,048) and the row tiles go up through this
    // step's page-locked buffers, as the metadata does: a copy from pageable memory may wait for the stream, i.e.
    // for the step still running, which is what overlapped steps are there to hide. Past VLM_PINNED_ROWS_MAX_MB
    // (below) the rows go from ordinary memory instead, not to keep that much memory page-locked for good.
    StepCopies& c = copies_[slot];
    static const size_t pinned_rows_max = (size_t)std::max(0, cuda::env_int("VLM_PINNED_ROWS_MAX_MB", 128)) << 20;
    if (!b.embedding_rows.empty()) {
      const size_t n = b.embedding_rows.size(), bytes = n * H * sizeof(float);
      float* rows = nullptr;
      if (bytes <= pinned_rows_max && c.splice.try_reserve(bytes, pinned_rows_max)) {
        rows = c.splice.as<float>();
      } else {
        splice_host_.resize(n * H);
        rows = splice_host_.data();
      }
      for (size_t i = 0; i < n; ++i) std::memcpy(rows + i * H, b.embedding_rows[i].second, sizeof(float) * H);
      grow(splice_, bytes);
      VLM_CUDA_CHECK(cudaMemcpyAsync(splice_.as(), rows, bytes, cudaMemcpyHostToDevice, stream_));
    }

    // Other steps (prefill chunks, with any decode rows beside them) attend in row tiles.
    int num_tiles = 0;
    if (!decode) {
      const int tile_rows = cuda::prefill_tile_rows(p_.num_heads, kv_view(0));
      tiles_host_.clear();
      for (const AttentionSegment& s : b.segments)
        for (int i = 0; i < s.count; i += tile_rows) tiles_host_.push_back({s.row + i, std::min(tile_rows, s.count - i)});
      num_tiles = (int)tiles_host_.size();
      const size_t bytes = tiles_host_.size() * sizeof(int2);
      c.tiles.reserve(bytes);
      std::memcpy(c.tiles.as(), tiles_host_.data(), bytes);
      grow(tiles_, bytes);
      VLM_CUDA_CHECK(cudaMemcpyAsync(tiles_.as(), c.tiles.as(), bytes, cudaMemcpyHostToDevice, stream_));
    }

    const int64_t t_launch = cuda::StepProfiler::now();
    if (prof_) prof_->host_phase("prepare (metadata, uploads)", t_entry);
    if (decode && graphs_enabled_)
      run_decode_graph(T, context, meta);
    else
      enqueue_step(T, R, context, meta, (int)b.embedding_rows.size(), num_tiles);
    const int64_t t_wait = cuda::StepProfiler::now();
    if (prof_) {
      prof_->host_phase("launch", t_launch);
      mark("copy out");
    }

    if (!b.draws.empty()) draw_on_device(b, R, V, slot);

    // Every row's argmax (R x 8 bytes; a drawn row's token in its place), and whole rows only where the engine
    // needs them.
    size_t full = 0;
    for (int i = 0; i < R; ++i) full += b.full_logits[i] != 0;
    if (R > 0) {  // indices then values, one copy
      c.argmax.reserve((size_t)R * 8);
      VLM_CUDA_CHECK(cudaMemcpyAsync(c.argmax.as(), argmax_d_.as(), (size_t)R * 8, cudaMemcpyDeviceToHost, stream_));
    }
    // Where the whole rows go: the caller's output (one step at a time), else this step's page-locked buffer, or,
    // past VLM_PINNED_ROWS_MAX_MB (default 128: a decode step of ~350 rows at a 92,544 vocabulary), ordinary
    // memory handed over at collect(), as a prefill scoring thousands of prompt positions would otherwise keep
    // that much memory page-locked for good. A copy into ordinary memory returns only when the step is done: such
    // a step does not overlap the next one's planning.
    std::vector<float> pageable;
    float* rows_host = nullptr;
    if (direct) {
      direct->logits.resize(full * V);
      rows_host = direct->logits.data();
    } else if (full > 0 && full * V * 4 <= pinned_rows_max && c.logits.try_reserve(full * V * 4, pinned_rows_max)) {
      rows_host = c.logits.as<float>();
    } else if (full > 0) {  // past the limit, or no page-locked memory to be had
      pageable.resize(full * V);
      rows_host = pageable.data();
    }
    if (full == (size_t)R && R > 0) {
      VLM_CUDA_CHECK(cudaMemcpyAsync(rows_host, logits_d_.as(), (size_t)R * V * 4, cudaMemcpyDeviceToHost, stream_));
    } else {
      for (int i = 0, j = 0; i < R; ++i)
        if (b.full_logits[i])
          VLM_CUDA_CHECK(cudaMemcpyAsync(rows_host + (size_t)j++ * V, logits_d_.as<float>() + (size_t)i * V,
                                         (size_t)V * 4, cudaMemcpyDeviceToHost, stream_));
    }
    mark("end");
    VLM_CUDA_CHECK(cudaEventRecord(c.done, stream_));
    queued_.push_back({slot, R, full, direct != nullptr, t_wait, std::move(pageable)});
    ++launches_;
  }

  // Every kernel of one step, queued on stream_: no allocation, no host sync and no
  // host memory touched (so a decode step can be captured into a CUDA graph).
  void enqueue_step(int T, int R, int context, const cuda::StepMeta& meta, int splice_rows, int num_tiles = 0) {
    const int H = p_.hidden_size, F = p_.intermediate_size, V = vocab_out_;
    mark("embed");
    VLM_CUDA_CHECK(cuda::embed_rows(act_, embed_.w.as(), meta_tokens_, argmax_d_.as<int32_t>(), T, H, h_.as<float>(),
                                    stream_));
    if (splice_rows)
      VLM_CUDA_CHECK(cuda::scatter_rows(splice_.as<float>(), meta_splice_rows_, splice_rows, H, h_.as<float>(),
                                        stream_));
    const void* delta = nullptr;
    // The residual stream: h_ after the embedding. Where the norms run inside the decode-size GEMMs,
    // each writes h + delta to the other buffer (its blocks all read the current one), and they swap.
    float* h = h_.as<float>();
    float* h_other = h_next_.as<float>();
    const bool fuse_norms = norms_fuse(T);
    // The GEMMs after each attention in one persistent launch (w4a16_layer_tail.h), in steps whose rows all decode
    // (the ones its tests cover); its grid barrier counts on from zero through the step's launches.
    bool tail = num_tiles == 0 && layer_tail_runs(T);
    unsigned tail_barrier_count = 0;  // the barrier counter's value where the next launch starts
    if (tail) VLM_CUDA_CHECK(cudaMemsetAsync(tail_barrier_.as(), 0, sizeof(unsigned), stream_));
    // The norm before `l` (rms_norm(h + delta) * weight) as its input, fused or as its own kernel.
    auto normed_linear = [&](const DeviceLinear& l, const DeviceBuffer& weight, void* y, const char* fused_phase,
                             const char* phase) {
      if (fuse_norms) {
        mark(fused_phase);
        linear_rms_norm(l, {h, delta, weight.as<float>(), delta ? h_other : nullptr, p_.rms_norm_eps}, T, y);
        if (delta) std::swap(h, h_other);
        return;
      }
      mark("add + rms norm");
      VLM_CUDA_CHECK(cuda::add_rms_norm(act_, h, delta, weight.as<float>(), nullptr, T, H, p_.rms_norm_eps, x_.as(),
                                        stream_));
      mark(phase);
      linear(l, x_.as(), T, y);
    };
    for (int l = 0; l < p_.num_layers; ++l) {
      DeviceLayer& w = layers_[l];
      const cuda::KvView kv = kv_view(l);
      if (!tail || l == 0)  // with the persistent tail, a layer's q/k/v come from the tail of the layer before
        normed_linear(w.qkv, w.input_norm, qkv_.as(), "rms norm + qkv proj", "qkv proj");
      // Small decode steps on the tensor-core attention rotate q and write K/V inside it: one kernel fewer.
      const bool rope_in_attention =
          !num_tiles && T <= kRopeInAttentionMaxRows && cuda::decode_attention_writes_kv(act_, p_.num_heads, kv);
      if (!rope_in_attention) {
        mark("rope + kv write");
        VLM_CUDA_CHECK(cuda::rope_and_cache_write(act_, qkv_.as(), q_.as(), meta, inv_freq_.as<float>(), T,
                                                  p_.num_heads, kv, stream_));
      }
      mark(rope_in_attention ? "rope + kv write + attention" : "attention");
      const cuda::RopeSource rope{qkv_.as(), inv_freq_.as<float>()};
      if (num_tiles)
        VLM_CUDA_CHECK(cuda::prefill_attention(act_, q_.as(), attn_.as(), meta, tiles_.as<int2>(), num_tiles,
                                               p_.num_heads, p_.sliding_window, kv, stream_));
      else
        VLM_CUDA_CHECK(cuda::paged_attention(act_, q_.as(), attn_.as(), meta, T, p_.num_heads, p_.sliding_window,
                                             context, num_sms_, kv, attn_workspace_.as(),
                                             attn_arrivals_.as<int>(), stream_, rope_in_attention ? &rope : nullptr));
      if (tail) {
        const LayerTailArgs args = layer_tail_args(l, T, h, h_other);
        if (w4a16_layer_tail_wide_cut())
          mark(args.next_qkv.w ? "layer tail, wide cut (o, gate_up, down, next qkv)"
                               : "layer tail, wide cut (o, gate_up, down)");
        else
          mark(args.next_qkv.w ? "layer tail (o, gate_up, down, next qkv)" : "layer tail (o, gate_up, down)");
        const LayerTailWorkspace ws{tail_partials_.as<float>(), tail_arrivals_.as<int>(), tail_barrier_.as<unsigned>(),
                                    tail_barrier_count};
        unsigned added = 0;
        const cudaError_t launched = w4a16_layer_tail(args, ws, bf16_, stream_, &added);
        if (launched == cudaSuccess) {
          tail_barrier_count += added;
          if (!args.next_qkv.w) {  // the last layer: h_other holds h + o's delta, delta_ down's output
            std::swap(h, h_other);
            delta = delta_.as();
          }
          continue;
        }
        // Refused at launch (nothing was queued): this layer and the rest of the step take the chain, and the
        // tail is off for this runner from now on, said once.
        cudaGetLastError();
        std::fprintf(stderr, "vlmcore: the persistent layer tail could not be launched (%s); the kernel chain runs\n",
                     cudaGetErrorString(launched));
        tail = false;
        tail_refused_ = true;
      }
      mark("o proj");
      linear(w.o, attn_.as(), T, delta_.as());
      mark("all-reduce");
      all_reduce(delta_.as(), (int64_t)T * H);
      delta = delta_.as();
      normed_linear(w.gate_up, w.post_norm, gate_up_.as(), "rms norm + gate_up proj", "gate_up proj");
      // Decode sizes: silu(gate) * up computed as the down GEMM stages its input (one launch
      // fewer). Larger steps keep the separate pass: every column block of the GEMM would
      // recompute it for its rows (measured slower at 64 rows).
      if ((w.down.tensor_core && T <= kFusedSiluMaxRows) || dense_decodes(w.down, T)) {
        mark("silu * up + down proj");
        linear(w.down, gate_up_.as(), T, delta_.as(), true);
      } else {
        mark("silu * up");
        VLM_CUDA_CHECK(cuda::silu_mul(act_, gate_up_.as(), ffn_.as(), T, F, stream_));
        mark("down proj");
        linear(w.down, ffn_.as(), T, delta_.as());
      }
      mark("all-reduce");
      all_reduce(delta_.as(), (int64_t)T * H);
    }
    if (R > 0) {
      const DeviceLinear& head = p_.tie_word_embeddings ? embed_ : lm_head_;
      const bool head_kernel = lm_head_decode_ != LmHeadDecode::kCublas && R <= kDenseDecodeEngineRows &&
                               dense_decode_applies(R, head.out, head.in);
      // A step of one row (batch-1 decode) whose layers' norms run inside their GEMMs computes the final norm in
      // the lm head's kernel too (its only row is the logits' row): one launch fewer, the same bits.
      const bool norm_in_head = head_kernel && lm_head_norm_ && T == 1 && R == 1 && fuse_norms;
      const RmsNormInput final_norm{h, delta, final_norm_.as<float>(), nullptr, p_.rms_norm_eps};
      if (!norm_in_head) {
        // The last layer's update is added only on the rows whose logits are wanted.
        mark("final norm");
        VLM_CUDA_CHECK(cuda::add_rms_norm(act_, h, delta, final_norm_.as<float>(), meta_logit_rows_, R, H,
                                          p_.rms_norm_eps, x_.as(), stream_));
      }
      mark(norm_in_head ? "final norm + lm head" : "lm head");
      const bool argmax_in_head = head_kernel && lm_head_argmax_ && R == 1;
      const LogitArgmax in_head{argmax_d_.as<int32_t>(), argmax_d_.as<float>() + R, argmax_arrivals_.as<int>(),
                                argmax_partial_.as()};
      if (head_kernel)
        VLM_CUDA_CHECK(dense_decode_logits(x_.as(), head.w.as(), logits_d_.as<float>(), R, head.out, head.in, bf16_,
                                           lm_head_decode_ == LmHeadDecode::kEvictFirst,
                                           argmax_in_head ? &in_head : nullptr, stream_,
                                           norm_in_head ? &final_norm : nullptr));
      else if (!dense_gemm(head.w.as(), head.out, head.in, x_.as(), R, logits_d_.as(), true))
        VLM_CUDA_CHECK(cuda::simt_linear(act_, x_.as(), R, H, V, {head.w.as(), nullptr, nullptr, 0}, nullptr,
                                         logits_d_.as(), true, stream_));
      if (!argmax_in_head) {
        mark("argmax");
        VLM_CUDA_CHECK(cuda::argmax_rows(logits_d_.as<float>(), R, V, argmax_d_.as<int32_t>(),
                                         argmax_d_.as<float>() + R, argmax_arrivals_.as<int>(), argmax_partial_.as(),
                                         stream_));
      }
    }
  }

  // A step of one new token per request, rows in request order, logits for every row,
  // no image rows: the shape the decode graphs are captured for.
  static bool is_decode_step(const StepBatch& b) {
    const size_t T = b.tokens.size();
    if (T == 0 || b.segments.size() != T || b.logit_rows.size() != T || !b.embedding_rows.empty()) return false;
    for (size_t i = 0; i < T; ++i)
      if (b.segments[i].count != 1 || b.segments[i].row != (int)i || b.logit_rows[i] != (int)i) return false;
    return true;
  }

  static int context_bucket(int context) {
    int bound = 64;
    while (bound < context) bound *= 2;
    return bound;
  }

  // Decode steps replay a CUDA graph per (batch rows, context bound): ~10 launches per layer
  // become one. A shape is run eagerly the first time (which sizes every buffer), captured the
  // second; graphs are dropped whenever a buffer they point into is reallocated.
  void run_decode_graph(int T, int context, const cuda::StepMeta& meta) {
    if (graph_epoch_ != epoch_) {
      graphs_.clear();
      seen_.clear();
      graph_epoch_ = epoch_;
    }
    const int64_t key = (int64_t)T << 32 | (uint32_t)context;
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (seen_.insert(key).second) {
        enqueue_step(T, T, context, meta, 0);
        return;
      }
      cudaGraph_t graph = nullptr;
      VLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_step(T, T, context, meta, 0);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      VLM_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      GraphExec exec;
      const cudaError_t e = cudaGraphInstantiate(&exec.exec, graph, 0);
      cudaGraphDestroy(graph);
      VLM_CUDA_CHECK(e);
      VLM_CHECK(graph_epoch_ == epoch_, VLM_ERR_INTERNAL, "a buffer was reallocated while a decode step was captured");
      it = graphs_.emplace(key, std::move(exec)).first;
    }
    VLM_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
  }

  void mark(const char* phase) {
    if (prof_) prof_->mark(phase, stream_);
  }

  bool draws_on_device() const override { return device_draws_; }

  // The step's sampled rows drawn where their logits are (draw_rows.cu), over the argmax the step wrote: the
  // rows' parameters go up as five arrays in one buffer, through page-locked memory as the step's metadata does
  // (outside any captured graph: they change every step).
  void draw_on_device(const StepBatch& b, int R, int V, int slot) {
    VLM_CHECK((int)b.draws.size() == R, VLM_ERR_INTERNAL,
              "a step's draws (" << b.draws.size() << ") do not match its logit rows (" << R << ")");
    mark("draw");
    const size_t n = (size_t)R;
    const size_t f_bytes = n * 4, d_off = (4 * f_bytes + 7) / 8 * 8;  // temperature, top_k, top_p, min_p; then u
    const size_t bytes = d_off + n * 8;
    PinnedBuffer& staged = copies_[slot].draw;
    staged.reserve(bytes);
    unsigned char* h = staged.as<unsigned char>();
    for (size_t i = 0; i < n; ++i) {
      const RowDraw& d = b.draws[i];
      std::memcpy(h + i * 4, &d.temperature, 4);
      std::memcpy(h + f_bytes + i * 4, &d.top_k, 4);
      std::memcpy(h + 2 * f_bytes + i * 4, &d.top_p, 4);
      std::memcpy(h + 3 * f_bytes + i * 4, &d.min_p, 4);
      std::memcpy(h + d_off + i * 8, &d.u, 8);
    }
    draw_params_.reserve(bytes);  // not in any graph: no re-capture when it moves
    unsigned char* dev = static_cast<unsigned char*>(draw_params_.as());
    VLM_CUDA_CHECK(cudaMemcpyAsync(dev, h, bytes, cudaMemcpyHostToDevice, stream_));
    const cuda::DrawParams params{reinterpret_cast<const float*>(dev), reinterpret_cast<const int32_t*>(dev + f_bytes),
                                  reinterpret_cast<const float*>(dev + 2 * f_bytes),
                                  reinterpret_cast<const float*>(dev + 3 * f_bytes),
                                  reinterpret_cast<const double*>(dev + d_off)};
    VLM_CUDA_CHECK(cuda::draw_rows(logits_d_.as<float>(), R, V, params, argmax_d_.as<int32_t>(), stream_));
  }

  void grow(DeviceBuffer& b, size_t bytes) {
    if (b.reserve(bytes)) ++epoch_;
  }
  // Arrival counters: zeroed once when allocated; the kernels that count in them leave them at zero.
  void grow_zeroed(DeviceBuffer& b, size_t bytes) {
    if (!b.reserve(bytes)) return;
    ++epoch_;
    VLM_CUDA_CHECK(cudaMemsetAsync(b.as(), 0, b.bytes(), stream_));
  }

  struct LayerCache {
    DeviceBuffer k, v, k_sz, v_sz;
  };

  // A shard's row-parallel output is its partial sum; the ranks add theirs in place.
  void all_reduce(void* data, int64_t count) {
    if (comm_) comm_->all_reduce_sum(data, count, bf16_ ? VLM_DTYPE_BF16 : VLM_DTYPE_F16, stream_);
  }

  cuda::KvView kv_view(int layer) {
    LayerCache& c = cache_[layer];
    return {kv_dtype_, block_size_, p_.num_kv_heads, p_.head_dim, (int)KvCache::row_bytes(kv_dtype_, p_.head_dim),
            c.k.as(), c.v.as(), c.k_sz.as(), c.v_sz.as()};
  }

  // Whether a dense (fp16/bf16) layer runs the decode-size kernel at M rows (dense_decode.h): at one
  // row. Measured on the H200 (2026-12-04, docs/benchmarks/cuda_engine.md): 2B fp16 weights + int8 KV
  // batch 1 631 -> 760 tok/s with it; at 4 rows cuBLAS with the norms apart is faster (2,254 vs 1,791
  // tok/s; the kernel's per-row shared-memory reads and conversions, 61-79 % of the fp16 floor in
  // bench/gemm against 82-101 % at one row).
  // Output columns a prefill-sized w4a16 GEMM dequantizes at a time: every one, unless VLM_DEQUANT_CHUNK_MB
  // asks for scratch stretches of at most that many MiB (whole 64-column strips, at least one).
  // VLM_DEQUANT_CHUNK_COLUMNS sets the stretch in columns instead (rounded down to whole strips): how the tests
  // cut the tiny models' layers, a few hundred columns wide, into several stretches and a ragged last one.
  static int dequant_chunk_columns(int out, int in) {
    static const int mb = cuda::env_int("VLM_DEQUANT_CHUNK_MB", 0);
    static const int columns = cuda::env_int("VLM_DEQUANT_CHUNK_COLUMNS", 0) / kW4StripN * kW4StripN;
    if (columns > 0) return std::min(out, columns);
    if (mb <= 0) return out;
    const int64_t cols = ((int64_t)mb << 20) / ((int64_t)in * 2) / kW4StripN * kW4StripN;
    return (int)std::min<int64_t>(out, std::max<int64_t>(kW4StripN, cols));
  }

  // VLM_PREFILL_DENSE_WEIGHTS=1: keep every tensor-core 4-bit layer dequantized too (2 bytes a weight, on top of
  // the 4-bit copy that decode-sized GEMMs read), so that a step of at least w4a16_dequant_gemm_min_rows() rows
  // (prefill, and serving steps that carry an image's prompt) calls cuBLAS on it directly. Without it such a
  // step dequantizes every layer it multiplies (the 2B model: ~1.1 ms a step, written to and read back from
  // HBM). Memory for speed, so off by default; the KV cache is sized from what is free after these copies.
  static bool prefill_dense_weights_requested() {
#if VLM_HAVE_CUBLAS
    return cuda::env_int("VLM_PREFILL_DENSE_WEIGHTS", 0) != 0;
#else
    return false;  // prefill-sized 4-bit GEMMs never go through cuBLAS without it
#endif
  }

  // The rows from which a layer with a dequantized copy multiplies it through cuBLAS (whatever 4-bit kernel the
  // plan would take there): where the layer would otherwise be dequantized per call, unless
  // VLM_PREFILL_DENSE_MIN_ROWS lowers it into the 4-bit kernels' range (17-128 rows on Hopper: the wgmma kernel
  // there runs at 0.7-1.1x cuBLAS fp16, which with the copy pays no dequantization), to be measured.
  static int dense_copy_min_rows() {
    static const int rows = [] {
      const int v = cuda::env_int("VLM_PREFILL_DENSE_MIN_ROWS", 0);
      return v > 0 ? v : w4a16_dequant_gemm_min_rows();
    }();
    return rows;
  }

  void keep_dense_prefill_weights() {
    std::vector<DeviceLinear*> quantized;  // the layers on the tensor-core 4-bit path
    int64_t need = 0;
    for (DeviceLayer& d : layers_)
      for (DeviceLinear* l : {&d.qkv, &d.o, &d.gate_up, &d.down})
        if (l->tensor_core) {
          quantized.push_back(l);
          need += (int64_t)l->out * l->in * 2;
        }
    if (quantized.empty()) return;
    size_t free_b = 0, total_b = 0;
    VLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    VLM_CHECK((int64_t)free_b > need, VLM_ERR_OUT_OF_MEMORY,
              "VLM_PREFILL_DENSE_WEIGHTS=1 needs " << (need >> 20) << " MiB of device memory for the dequantized "
              "layers and " << (free_b >> 20) << " MiB are free after the weights; unset it");
    for (DeviceLinear* l : quantized) {
      l->dense.reserve((size_t)l->out * l->in * 2);
      // The same kernel and arguments as the per-call dequantization in linear(): the same matrix, bit for bit.
      VLM_CUDA_CHECK(w4a16_dequantize(l->w.as(), l->scale.as(), l->dense.as(), l->out, l->in, l->group, bf16_,
                                      stream_));
    }
    VLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    dense_prefill_bytes_ = need;
  }

  // GEMMs of tensor-core 4-bit layers of the rows w4a16_cutlass_takes_rows() (w4a16_cutlass_rows.h: from 32 rows
  // on wide layers, from 97 on the others) run CUTLASS's mixed-input kernel
  // on a copy of each layer in its layout (0.53 bytes a weight more, made at load), instead of dequantizing the
  // layer for cuBLAS on every such call or the wgmma kernel, where a library built with it runs on a Hopper GPU
  // (w4a16_cutlass_runs()). On by default (VLM_W4A16_CUTLASS=1), leaving the copies out (with a note) where they
  // would take more than a quarter of the free memory (the KV cache is sized from what is left); =2 requires it
  // (loading fails where the copies do not fit), =0 turns it off. VLM_PREFILL_DENSE_WEIGHTS=1 takes precedence.
  static bool cutlass_prefill_requested() { return w4a16_cutlass_setting() > 0 && w4a16_cutlass_runs(); }

  void keep_cutlass_prefill_weights() {
    std::vector<DeviceLinear*> quantized;
    int64_t need = 0, scratch = 0;
    for (DeviceLayer& d : layers_)
      for (DeviceLinear* l : {&d.qkv, &d.o, &d.gate_up, &d.down})
        if (l->tensor_core && w4a16_cutlass_applies(1, l->out, l->in, l->group)) {
          quantized.push_back(l);
          need += w4a16_cutlass_prepared_bytes(l->out, l->in, l->group);
          scratch = std::max<int64_t>(scratch, (int64_t)l->out * l->in / 2);
        }
    if (quantized.empty()) return;
    size_t free_b = 0, total_b = 0;
    VLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (w4a16_cutlass_setting() < 2 && need + scratch > (int64_t)free_b / 4) {
      std::fprintf(stderr, "vlmcore: the CUTLASS GEMM's layer copies (%lld MiB) would take more than a quarter of "
                           "the %lld MiB free after the weights: left out (VLM_W4A16_CUTLASS=2 requires them)\n",
                   (long long)((need + scratch) >> 20), (long long)(free_b >> 20));
      return;
    }
    VLM_CHECK((int64_t)free_b > need + scratch, VLM_ERR_OUT_OF_MEMORY,
              "VLM_W4A16_CUTLASS=2 needs " << ((need + scratch) >> 20) << " MiB of device memory for the layers' "
              "CUTLASS copies and " << (free_b >> 20) << " MiB are free after the weights; set it to 1 or 0");
    DeviceBuffer rows;
    rows.reserve((size_t)scratch);
    for (DeviceLinear* l : quantized) {
      l->cutlass.reserve((size_t)w4a16_cutlass_prepared_bytes(l->out, l->in, l->group));
      VLM_CUDA_CHECK(w4a16_cutlass_prepare(l->w.as(), l->scale.as(), l->cutlass.as(), rows.as(), l->out, l->in,
                                           l->group, bf16_, stream_));
    }
    VLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cutlass_bytes_ = need;
  }

  // Decode steps of up to VLM_W4A16_GEMV rows (2 by default, 0 off, at most kGemvMaxRows) multiply a layer's
  // q/k/v, o and gate_up through the column-tile kernel (w4a16_gemv.cu: whole output columns a block, no K slices
  // summed across blocks) on copies in its layout made at load (those layers' packed size again), instead of the
  // strip kernel (w4a16_decode.cu), where it pays on all three at that row count (w4a16_gemv_pays). All three or
  // none: under dependent launch a kernel's blocks start early only where the kernel before left registers free,
  // and a column-tile grid leaves none, so a strip GEMM after one lost its early start (7B gate_up after o: 21.4 ->
  // 24.5 us; docs/benchmarks/cuda_engine.md, 2026-12-07 16:28 and 16:42). down stays on the strip kernel: through
  // the column-tile kernel it took 9.8 us against 6.3 at 2B (after a column-tile gate_up; batching its staged
  // row's loads did not change that). Measured with this rule (H100, 2026-12-07 21:40, three runs each): 2B w4a16
  // + int8 KV batch 1 968 / 971 / 968 -> 1,012 / 1,009 / 1,009 tok/s with 1 against 0; on the 7B model no layer
  // takes it. Past one row (H100, 2026-12-08 00:43-00:45, three runs each, up to 4 rows against 1): batch 2 1,792 /
  // 1,788 / 1,804 -> 1,859 / 1,843 / 1,850 tok/s, batch 3 2,438 / 2,425 -> 2,419 / 2,433 (level), batch 4 2,982 /
  // 3,009 / 2,945 -> 2,929 / 2,878 / 2,909 (-2.3 %), hence the default of 2.
  // VLM_W4A16_GEMV_EACH=1 (measuring) instead gives each of the four layers, down too, the kernel where it pays on
  // that layer alone; =2 every layer it applies to (the pays rule was measured with the register ring). With its
  // ring in shared memory (VLM_W4A16_GEMV_SHARED_RING) a column-tile grid holds half the registers, so the kernel
  // after it may start early. Measured (2B batch-1 step, H100, 2026-12-07 21:37): that gives the next kernel its
  // early start back (strip down after the chain: 6.1 us, started 12.2 us early, against 9.0 and 1.6), but the
  // column-tile GEMMs then run slower beside the kernels that start early next to them (q/k/v 4.6 -> 6.2, gate_up
  // 9.9 -> 12.6 us): 1,039.7 us a step against 997.3 with the register ring; each layer on the 8-chunk shared ring
  // 996.2, every layer on the 16-chunk one 1,138.7.
  static int gemv_rows() {
    static const int rows = std::clamp(cuda::env_int("VLM_W4A16_GEMV", 2), 0, kGemvMaxRows);
    return rows;
  }
  // VLM_W4A16_GEMV_ALONE=1 (measuring): in a layer whose chain does not take the kernel, o alone takes it through
  // the shared ring (kGemvRingShared) where that pays: its grid then leaves the registers gate_up's strip kernel
  // needs to start early (the 7B, whose q/k/v and gate_up stream 32 or more chunks a warp and do not pay). Not
  // faster (H100, 2026-12-08 00:40, 7B w4a16 + int8 KV batch 1): 446 tok/s off, 447 on, 446 with o alone on the
  // register ring; in the step o took 7.07 us own against the strip kernel's 6.56 and gate_up 21.32 against 21.67
  // (both steps 2,269.3 us), hence off.
  static bool gemv_o_alone() {
    static const bool alone = cuda::env_int("VLM_W4A16_GEMV_ALONE", 0) != 0;
    return alone;
  }
  static int gemv_each_layer() {
    static const int each = std::clamp(cuda::env_int("VLM_W4A16_GEMV_EACH", 0), 0, 2);
    return each;
  }
  // Which of a layer's GEMMs may take the kernel under any of the rules (measuring and tests): bits 1 q/k/v, 2 o,
  // 4 gate_up, 8 down (VLM_W4A16_GEMV_LAYERS, default all); the chain needs its three.
  static int gemv_layer_mask() {
    static const int layers = std::clamp(cuda::env_int("VLM_W4A16_GEMV_LAYERS", 15), 0, 15);
    return layers;
  }

  void keep_gemv_weights() {
    int64_t need = 0;
    auto keep = [&](DeviceLinear* l, unsigned mask, int ring = kGemvRingSetting) {
      l->gemv.reserve(l->w.bytes());
      VLM_CUDA_CHECK(w4a16_gemv_repack(l->w.as(), l->gemv.as(), l->out, l->in, stream_));
      l->gemv_row_mask = mask;
      l->gemv_ring = ring;
      need += (int64_t)l->w.bytes();
    };
    // Bit M set where the kernel pays on l at M rows with this ring (applies, under VLM_W4A16_GEMV_EACH=2).
    auto rows_paying = [](const DeviceLinear& l, int ring = kGemvRingSetting) {
      unsigned mask = 0;
      for (int M = 1; l.tensor_core && M <= gemv_rows(); ++M)
        if (gemv_each_layer() == 2 ? w4a16_gemv_applies(M, l.out, l.in, l.group, ring)
                                   : w4a16_gemv_pays(M, l.out, l.in, l.group, ring))
          mask |= 1u << M;
      return mask;
    };
    auto allowed = [](int i) { return ((gemv_layer_mask() >> i) & 1) != 0; };
    for (DeviceLayer& d : layers_) {
      if (gemv_each_layer()) {
        const std::array<DeviceLinear*, 4> each = {&d.qkv, &d.o, &d.gate_up, &d.down};
        for (int i = 0; i < 4; ++i)
          if (const unsigned mask = allowed(i) ? rows_paying(*each[i]) : 0u) keep(each[i], mask);
        continue;
      }
      const unsigned chain =
          allowed(0) && allowed(1) && allowed(2) ? rows_paying(d.qkv) & rows_paying(d.o) & rows_paying(d.gate_up) : 0u;
      if (chain) {
        for (DeviceLinear* l : {&d.qkv, &d.o, &d.gate_up}) keep(l, chain);
      } else if (gemv_o_alone() && allowed(1)) {
        if (const unsigned mask = rows_paying(d.o, kGemvRingShared)) keep(&d.o, mask, kGemvRingShared);
      }
    }
    VLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    gemv_bytes_ = need;
  }

  static bool gemv_takes(const DeviceLinear& l, int M) {
    return l.gemv.bytes() && M <= gemv_rows() && ((l.gemv_row_mask >> M) & 1u);
  }

  static bool dense_decodes(const DeviceLinear& l, int M) {
    return M <= kDenseDecodeEngineRows && !l.tensor_core && !l.group && dense_decode_applies(M, l.out, l.in);
  }

  // y = x · Wᵀ (+ bias); gate_up_input (tensor-core w4a16, and dense layers at decode sizes): x is the
  // stacked [gate | up] output and the GEMM reads silu(gate) * up.
  void linear(const DeviceLinear& l, const void* x, int M, void* y, bool gate_up_input = false) {
#if VLM_HAVE_CUBLAS
    if (l.dense.bytes() && !gate_up_input && M >= dense_copy_min_rows()) {
      // Dequantized at load: the whole-layer call of the branch below, without the dequantization.
      dense_gemm(l.dense.as(), l.out, l.in, x, M, y, false, l.out);
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    if (l.cutlass.bytes() && !gate_up_input && w4a16_cutlass_takes_rows(M, l.out)) {
      const int64_t ws = w4a16_cutlass_workspace_bytes(M, l.out, l.in, l.group, bf16_);
      VLM_CHECK(ws >= 0, VLM_ERR_INTERNAL, "w4a16 CUTLASS GEMM: no workspace size for M=" << M << " N=" << l.out);
      if (ws > 0) grow(cutlass_workspace_, (size_t)ws);
      VLM_CUDA_CHECK(w4a16_cutlass_gemm(x, l.cutlass.as(), y, M, l.out, l.in, l.group, bf16_,
                                        cutlass_workspace_.as(), cutlass_workspace_.bytes(), stream_));
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    if (l.tensor_core && !gate_up_input && M >= w4a16_dequant_gemm_min_rows() &&
        !w4a16_wgmma_applies(M, l.out, l.in, l.group)) {
      // The layer dequantized for cuBLAS, whole or (VLM_DEQUANT_CHUNK_MB) a stretch of output columns at a time
      // through a scratch small enough to stay in the L2 between its write and the GEMM's read. Column
      // stretches of whole strips are contiguous in the packed layout (cpu/w4a16_pack.h).
      const int chunk = dequant_chunk_columns(l.out, l.in);
      grow(dequant_, (size_t)chunk * l.in * 2);
      for (int n0 = 0; n0 < l.out; n0 += chunk) {
        const int n = std::min(chunk, l.out - n0);
        const int strip = n0 / kW4StripN;
        VLM_CUDA_CHECK(w4a16_dequantize(l.w.as<unsigned char>() + (size_t)strip * l.in * (kW4StripN / 2),
                                        l.scale.as<unsigned char>() + (size_t)strip * (l.in / l.group) * 256,
                                        dequant_.as(), n, l.in, l.group, bf16_, stream_));
        dense_gemm(dequant_.as(), n, l.in, x, M, static_cast<unsigned char*>(y) + (size_t)n0 * 2, false, l.out);
      }
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
#endif
    if (gemv_takes(l, M)) {
      VLM_CUDA_CHECK(w4a16_gemv(x, l.gemv.as(), l.scale.as(), nullptr, y, M, l.out, l.in, l.group, bf16_,
                                gate_up_input, stream_, 0, l.gemv_ring));
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    if (l.tensor_core) {
      const int64_t ws = w4a16_workspace_bytes(M, l.out, l.in, l.group);
      VLM_CHECK(ws >= 0, VLM_ERR_INTERNAL, "w4a16: no plan for M=" << M << " N=" << l.out << " K=" << l.in);
      if (ws > 0) grow_zeroed(workspace_, ws);  // its split-K counters
      VLM_CUDA_CHECK(w4a16_gemm(x, l.w.as(), l.scale.as(), nullptr, y, M, l.out, l.in, l.group, bf16_,
                                workspace_.as(), stream_, gate_up_input));
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    if (dense_decodes(l, M)) {
      VLM_CUDA_CHECK(dense_decode_gemm(x, l.w.as(), y, M, l.out, l.in, bf16_, gate_up_input, stream_));
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    VLM_CHECK(!gate_up_input, VLM_ERR_INTERNAL, "silu(gate) * up input needs the tensor-core w4a16 GEMM or the "
                                                "dense decode-size one");
    if (!l.group && dense_gemm(l.w.as(), l.out, l.in, x, M, y, false)) {
      if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
      return;
    }
    VLM_CUDA_CHECK(cuda::simt_linear(act_, x, M, l.in, l.out, {l.w.as(), l.scale.as<float>(), l.nzs.as<float>(), l.group},
                                     l.bias.bytes() ? l.bias.as<float>() : nullptr, y, false, stream_));
  }

  // Whether a step of T rows runs its norms inside the GEMMs after them: a decode-size kernel (w4a16
  // or dense) takes every such GEMM (the layers share their shapes).
  bool norms_fuse(int T) const {
    static const bool enabled = fused_norm_enabled();
    if (!enabled || layers_.empty()) return false;
    const DeviceLayer& w = layers_[0];
    if (w.qkv.in != p_.hidden_size) return false;
    if (dense_decodes(w.qkv, T) && dense_decodes(w.gate_up, T)) return true;
    const auto fuses = [T](const DeviceLinear& l) {
      return l.tensor_core && (gemv_takes(l, T) || w4a16_decode_applies(T, l.out, l.in, l.group));
    };
    return fuses(w.qkv) && fuses(w.gate_up);
  }

  // Whether a step of T rows runs each layer's GEMMs after its attention as one persistent launch
  // (VLM_LAYER_TAIL=1, off by default until measured): one shard, every layer on the 4-bit tensor-core path at
  // this size (no dequantized copy taking it) and a plan for every layer's shapes. Its norms are its own (the
  // same bits as the norm kernel's), so it does not depend on the chain fusing them.
  bool layer_tail_runs(int T) const {
    static const bool enabled = cuda::env_int("VLM_LAYER_TAIL", 0) != 0;
    if (!enabled || tail_refused_ || comm_ || T < 1 || T > kLayerTailMaxRows || layers_.empty()) return false;
    return tail_plan(T).ok;
  }

  // Every layer's tail at T rows checked and planned (once per T): whether all run it, and the largest workspace.
  struct TailPlan {
    bool ok = false;
    size_t partial_floats = 0, arrival_ints = 0;
  };
  const TailPlan& tail_plan(int T) const {
    auto it = tail_plans_.find(T);
    if (it != tail_plans_.end()) return it->second;
    TailPlan plan;
    plan.ok = true;
    for (const DeviceLayer& w : layers_)
      for (const DeviceLinear* l : {&w.qkv, &w.o, &w.gate_up, &w.down})
        if (!l->tensor_core || (l->dense.bytes() && T >= dense_copy_min_rows())) plan.ok = false;
    for (int l = 0; l < (int)layers_.size() && plan.ok; ++l) {
      size_t partials = 0, arrivals = 0;
      int grid = 0;
      plan.ok = w4a16_layer_tail_plan(layer_tail_args(l, T), &partials, &arrivals, &grid);
      plan.partial_floats = std::max(plan.partial_floats, partials);
      plan.arrival_ints = std::max(plan.arrival_ints, arrivals);
    }
    return tail_plans_.emplace(T, plan).first->second;
  }

  static W4a16Layer tail_layer(const DeviceLinear& l) {
    return {l.w.as(), l.scale.as(), l.bias.bytes() ? l.bias.as<float>() : nullptr, l.out, l.in, l.group};
  }

  // Layer l's tail at T rows over the residual h (h + o's delta goes to h_other); its shapes alone where h is null.
  LayerTailArgs layer_tail_args(int l, int T, float* h = nullptr, float* h_other = nullptr) const {
    const DeviceLayer& w = layers_[l];
    LayerTailArgs a;
    a.M = T;
    a.o = tail_layer(w.o);
    a.gate_up = tail_layer(w.gate_up);
    a.down = tail_layer(w.down);
    if (l + 1 < (int)layers_.size()) {
      a.next_qkv = tail_layer(layers_[l + 1].qkv);
      a.next_input_norm = layers_[l + 1].input_norm.as<float>();
      a.qkv_out = qkv_.as();
    }
    a.attn = attn_.as();
    a.delta = delta_.as();
    a.gate_up_out = gate_up_.as();
    a.h = h;
    a.h_other = h_other;
    a.post_norm = w.post_norm.as<float>();
    a.eps = p_.rms_norm_eps;
    return a;
  }

  // y = rms_norm(h + delta) · Wᵀ (+ bias) in one launch (w4a16_decode_gemm_rms_norm or the dense form).
  void linear_rms_norm(const DeviceLinear& l, const RmsNormInput& norm, int M, void* y) {
    if (gemv_takes(l, M))
      VLM_CUDA_CHECK(w4a16_gemv_rms_norm(norm, l.gemv.as(), l.scale.as(), y, M, l.out, l.in, l.group, bf16_,
                                         stream_, 0, l.gemv_ring));
    else if (l.tensor_core)
      VLM_CUDA_CHECK(w4a16_decode_gemm_rms_norm(norm, l.w.as(), l.scale.as(), y, M, l.out, l.in, l.group, bf16_,
                                                stream_));
    else
      VLM_CUDA_CHECK(dense_decode_gemm_rms_norm(norm, l.w.as(), y, M, l.out, l.in, bf16_, stream_));
    if (l.bias.bytes()) VLM_CUDA_CHECK(cuda::add_bias(act_, y, l.bias.as<float>(), M, l.out, stream_));
  }

  // y = x · Wᵀ for dense weights through cuBLAS (fp32 accumulation); false where
  // the build has no cuBLAS, and the library's own kernel runs instead.
  // w is [out][in] row-major in the activation dtype.
  // ldy: elements between rows of y (0: out).
  bool dense_gemm(const void* w, int out, int in, const void* x, int M, void* y, bool y_f32, int ldy = 0) {
#if VLM_HAVE_CUBLAS
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = bf16_ ? CUDA_R_16BF : CUDA_R_16F;
    // Column-major view: yᵀ [N][M] = W [N][K] (stored as Kx N column-major, so transposed) · xᵀ [K][M].
    const cublasStatus_t st = cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, M, in, &one, w, t, in, x, t, in,
                                           &zero, y, y_f32 ? CUDA_R_32F : t, ldy ? ldy : out, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT);
    VLM_CHECK(st == CUBLAS_STATUS_SUCCESS, VLM_ERR_INTERNAL, "cublasGemmEx failed with status " << (int)st);
    return true;
#else
    (void)w, (void)out, (void)in, (void)x, (void)M, (void)y, (void)y_f32, (void)ldy;
    return false;
#endif
  }

  // One host array, one copy: tokens, positions, slots, row segments, table
  // offsets, logit rows and spliced rows first (their offsets depend only on the
  // row counts, so a captured decode graph keeps pointing at them), block tables last.
  cuda::StepMeta upload_meta(const StepBatch& b, int slot) {
    const int T = (int)b.tokens.size(), S = (int)b.segments.size(), R = (int)b.logit_rows.size();
    const int E = (int)b.embedding_rows.size();
    const size_t tokens = 0, positions = T, slots = 2 * (size_t)T, row_segment = 3 * (size_t)T,
                 table_offset = 4 * (size_t)T, logit_rows = table_offset + S, splice_rows = logit_rows + R,
                 tables = splice_rows + E;
    meta_host_.resize(tables);
    std::copy(b.tokens.begin(), b.tokens.end(), meta_host_.begin() + tokens);
    std::copy(b.positions.begin(), b.positions.end(), meta_host_.begin() + positions);
    std::copy(b.logit_rows.begin(), b.logit_rows.end(), meta_host_.begin() + logit_rows);
    for (int i = 0; i < E; ++i) meta_host_[splice_rows + i] = b.embedding_rows[i].first;
    for (int s = 0; s < S; ++s) {
      const AttentionSegment& seg = b.segments[s];
      const int blocks = (seg.start + seg.count + block_size_ - 1) / block_size_;
      meta_host_[table_offset + s] = (int32_t)(meta_host_.size() - tables);
      for (int i = 0; i < seg.count; ++i) {
        const int pos = seg.start + i, row = seg.row + i;
        meta_host_[slots + row] = seg.block_table[pos / block_size_] * block_size_ + pos % block_size_;
        meta_host_[row_segment + row] = (int32_t)s;
      }
      meta_host_.insert(meta_host_.end(), seg.block_table, seg.block_table + blocks);
    }
    // Grown with headroom: block tables lengthen as contexts do, and each move drops the graphs.
    if (meta_host_.size() * 4 > meta_.bytes()) grow(meta_, meta_host_.size() * 8);
    // Through page-locked memory: the copy is then queued and the host goes on to launch the step (from pageable
    // memory the call waits for the driver's own staging).
    PinnedBuffer& staged = copies_[slot].meta;
    staged.reserve(meta_host_.size() * 4);
    std::memcpy(staged.as(), meta_host_.data(), meta_host_.size() * 4);
    VLM_CUDA_CHECK(cudaMemcpyAsync(meta_.as(), staged.as(), meta_host_.size() * 4, cudaMemcpyHostToDevice, stream_));
    const int32_t* d = meta_.as<int32_t>();
    meta_tokens_ = d + tokens;
    meta_logit_rows_ = d + logit_rows;
    meta_splice_rows_ = d + splice_rows;
    return {d + positions, d + slots, d + row_segment, d + table_offset, d + tables};
  }

  const vlm_model_params& p_;  // the Model outlives its engine's runner
  int device_;
  Communicator* comm_;  // null unless this model is a tensor-parallel shard
  int vocab_out_;       // logits columns: the vocabulary, or this shard's slice of it
  int num_sms_ = 1;
  bool bf16_ = false;
  ActType act_ = ActType::F16;
  cudaStream_t stream_ = nullptr;
#if VLM_HAVE_CUBLAS
  cublasHandle_t blas_ = nullptr;
#endif

  DeviceLinear embed_, lm_head_;
  DeviceBuffer final_norm_, inv_freq_;
  std::vector<DeviceLayer> layers_;

  int kv_dtype_ = VLM_DTYPE_F16, block_size_ = 1;
  int64_t num_blocks_ = 0;
  std::vector<LayerCache> cache_;

  // Step scratch (grows to the largest step seen).
  DeviceBuffer h_, h_next_, x_, qkv_, q_, attn_, delta_, gate_up_, ffn_, logits_d_, workspace_, attn_workspace_, meta_, splice_;
  DeviceBuffer blas_workspace_, argmax_d_, argmax_partial_, argmax_arrivals_, tiles_, attn_arrivals_;
  DeviceBuffer tail_partials_, tail_arrivals_, tail_barrier_;  // the persistent layer tail's (w4a16_layer_tail.h)
  mutable std::map<int, TailPlan> tail_plans_;                  // by rows
  bool tail_refused_ = false;                                   // a launch was refused: the chain from then on
  DeviceBuffer dequant_;  // one w4a16 layer as a dense matrix, for prefill-sized GEMMs
  DeviceBuffer cutlass_workspace_;  // the CUTLASS GEMM's stream-K partial tiles (VLM_W4A16_CUTLASS=1)
  int64_t dense_prefill_bytes_ = 0;  // the layers kept dequantized (VLM_PREFILL_DENSE_WEIGHTS=1)
  int64_t gemv_bytes_ = 0;           // the layers' copies for the column-tile decode GEMM (keep_gemv_weights)
  int64_t cutlass_bytes_ = 0;        // the layers' copies for the CUTLASS GEMM (keep_cutlass_prefill_weights)
  std::vector<int2> tiles_host_;
  std::vector<float> splice_host_;  // spliced rows past VLM_PINNED_ROWS_MAX_MB
  std::vector<int32_t> meta_host_;
  // The host side of a launched step's transfers, one set per step in flight (steps alternate between two):
  // metadata and draw parameters up, argmax and whole rows down, and the event that marks them done.
  struct StepCopies {
    PinnedBuffer meta, splice, tiles, draw, argmax, logits;
    cudaEvent_t done = nullptr;
    StepCopies() { VLM_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming)); }
    StepCopies(const StepCopies&) = delete;
    StepCopies& operator=(const StepCopies&) = delete;
    ~StepCopies() {
      if (done) cudaEventDestroy(done);
    }
  };
  std::unique_ptr<StepCopies[]> copies_;  // two, made once the device is chosen
  struct Queued {
    int slot, rows;
    size_t full;
    bool direct;  // whole rows went straight into the caller's output
    int64_t t_wait;
    std::vector<float> pageable;  // or into this (too many for the page-locked buffer), handed over at collect
  };
  std::deque<Queued> queued_;  // launched, not yet collected, oldest first
  uint64_t launches_ = 0;
  uint64_t epoch_ = 0;  // bumped whenever a scratch buffer moves

  // Decode graphs (run_decode_graph), keyed by rows << 32 | context bound.
  struct GraphExec {
    cudaGraphExec_t exec = nullptr;
    GraphExec() = default;
    GraphExec(GraphExec&& o) noexcept : exec(o.exec) { o.exec = nullptr; }
    GraphExec(const GraphExec&) = delete;
    ~GraphExec() {
      if (exec) cudaGraphExecDestroy(exec);
    }
  };
  bool graphs_enabled_ = true;
  // The lm head at one row: the decode-size dense kernel with its weights read under an L2 evict_first policy
  // (1, the default), the same kernel with plain loads (2; the policy's effect alone), or cuBLAS (0). The kernel
  // is ~1 % faster a step than cuBLAS at batch 1 (2B and 7B w4a16, H100, 2026-12-07; dense_decode.cu).
  enum class LmHeadDecode { kCublas = 0, kEvictFirst = 1, kPlain = 2 };
  LmHeadDecode lm_head_decode_ = LmHeadDecode::kEvictFirst;
  // The greedy token taken in that kernel's tail at one row (dense_decode.h's LogitArgmax), the same index and
  // value as the argmax kernel (on by default: batch-1 decode +0.5–1.1 %, H100 2026-12-07).
  bool lm_head_argmax_ = true;
  // The final norm computed in that kernel's prologue in steps of one row (dense_decode_logits' `norm`), the same
  // bits as the norm kernel's; off until measured on a GPU.
  bool lm_head_norm_ = false;
  uint64_t graph_epoch_ = 0;
  std::unordered_map<int64_t, GraphExec> graphs_;
  std::unordered_set<int64_t> seen_;
  // Sampled rows drawn on the device (VLM_DEVICE_SAMPLING=1): their parameters, staged and uploaded each step.
  bool device_draws_ = false;
  DeviceBuffer draw_params_;
  std::unique_ptr<cuda::StepProfiler> prof_;  // VLM_CUDA_PROFILE
  const int32_t *meta_tokens_ = nullptr, *meta_logit_rows_ = nullptr, *meta_splice_rows_ = nullptr;
};

}  // namespace

std::unique_ptr<StepRunner> make_cuda_runner(const Model& model, int device, Communicator* comm) {
  return std::make_unique<CudaRunner>(model, device, comm);
}

}  // namespace vlm
