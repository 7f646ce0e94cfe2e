// C entry points of vlmcore_kernels.h: single kernels for tests and benchmarks.
#include "api_guard.h"
#include "cpu/w4a16_pack.h"
#include "vlmcore_kernels.h"
#ifdef VLM_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/cuda_check.cuh"
#include "cuda/decoder_kernels.h"
#include "cuda/dense_decode.h"
#include "cuda/draw_rows.h"
#include "cuda/step_stream_probe.h"
#include "cuda/stream_read.h"
#include "cuda/w4a16_cutlass.h"
#include "cuda/w4a16_cutlass_rows.h"
#include "cuda/w4a16_decode.h"
#include "cuda/w4a16_gemm.h"
#include "cuda/w4a16_gemv.h"
#include "cuda/w4a16_wgmma.h"
#include "engine/kv_cache.h"
#endif

extern "C" {

int vlm_w4a16_packed_sizes(int32_t n, int32_t k, int32_t group_size, int64_t* weight_bytes,
                           int64_t* scale_zero_bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(weight_bytes && scale_zero_bytes, "NULL output");
    VLM_CHECK_ARG(n > 0 && k > 0 && group_size > 0 && k % group_size == 0, "invalid shape");
    *weight_bytes = vlm::w4a16_weight_bytes(n, k);
    *scale_zero_bytes = vlm::w4a16_scale_zero_bytes(n, k, group_size);
  });
}

int vlm_w4a16_pack(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int32_t n, int32_t k,
                   int32_t group_size, int32_t act_dtype, void* packed_weight, void* packed_scale_zero) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(qweight && qzeros && scales && packed_weight && packed_scale_zero, "NULL argument");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::w4a16_pack(qweight, qzeros, scales, n, k, group_size, act_dtype == VLM_DTYPE_BF16,
                    static_cast<uint32_t*>(packed_weight), static_cast<uint16_t*>(packed_scale_zero));
  });
}

int vlm_w4a16_workspace_bytes(int32_t m, int32_t n, int32_t k, int32_t group_size, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    *bytes = vlm::w4a16_workspace_bytes(m, n, k, group_size);
    VLM_CHECK(*bytes >= 0, VLM_ERR_UNSUPPORTED, "w4a16: K " << k << " is too large to plan");
#else
    (void)m, (void)n, (void)k, (void)group_size;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_wgmma_form(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* form) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(form, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    *form = vlm::w4a16_wgmma_form(m, n, k, group_size);
#else
    *form = 0;
#endif
  });
}

int vlm_w4a16_wgmma_plan(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* splits, int32_t* cluster) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(splits && cluster, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    int s = 0;
    bool c = false;
    vlm::w4a16_wgmma_plan(m, n, k, group_size, &s, &c);
    *splits = s, *cluster = c ? 1 : 0;
#else
    *splits = 0, *cluster = 0;
#endif
  });
}

int vlm_w4a16_decode_plan(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* strips_per_block,
                          int32_t* k_slices, int32_t* unit_steps, int32_t* ring_stages) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(strips_per_block && k_slices && unit_steps && ring_stages, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
    int s = 0, c = 0, u = 0, r = 0;
#ifdef VLM_HAVE_CUDA
    vlm::w4a16_decode_plan(m, n, k, group_size, &s, &c, &u, &r);
#endif
    *strips_per_block = s, *k_slices = c, *unit_steps = u, *ring_stages = r;
  });
}

int vlm_w4a16_dequant_gemm_min_rows(int32_t* rows) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(rows, "NULL output");
#ifdef VLM_HAVE_CUDA
    *rows = vlm::w4a16_dequant_gemm_min_rows();
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemm(const void* a, const void* packed_weight, const void* packed_scale_zero, const void* residual,
                   void* c, int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype, void* workspace,
                   void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(a && packed_weight && packed_scale_zero && c, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    VLM_CHECK_ARG(vlm::w4a16_workspace_bytes(m, n, k, group_size) == 0 || workspace != nullptr,
                  "w4a16: this shape needs a workspace (vlm_w4a16_workspace_bytes)");
    VLM_CUDA_CHECK(vlm::w4a16_gemm(a, packed_weight, packed_scale_zero, residual, c, m, n, k, group_size,
                                   act_dtype == VLM_DTYPE_BF16, workspace, static_cast<cudaStream_t>(stream)));
#else
    (void)residual, (void)m, (void)n, (void)k, (void)group_size, (void)workspace, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemm_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps, float* h_out,
                            const void* packed_weight, const void* packed_scale_zero, void* c, int32_t m, int32_t n,
                            int32_t k, int32_t group_size, int32_t act_dtype, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(h && norm_weight && packed_weight && packed_scale_zero && c, "NULL device pointer");
    VLM_CHECK_ARG(h_out != h, "h_out must not be h (every block reads all of h)");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    VLM_CHECK_ARG(eps >= 0.f, "eps must be >= 0");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    VLM_CHECK(vlm::w4a16_decode_applies(m, n, k, group_size), VLM_ERR_UNSUPPORTED,
              "the fused norm runs only in the decode-size w4a16 kernel (M <= " << vlm::kMaxDecodeRows
                                                                                << " on a Hopper GPU); M = " << m);
    VLM_CUDA_CHECK(vlm::w4a16_decode_gemm_rms_norm({h, delta, norm_weight, h_out, eps}, packed_weight,
                                                   packed_scale_zero, c, m, n, k, group_size,
                                                   act_dtype == VLM_DTYPE_BF16, static_cast<cudaStream_t>(stream)));
#else
    (void)delta, (void)eps, (void)h_out, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemv_repack(const void* packed_weight, void* out, int32_t n, int32_t k, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(packed_weight && out, "NULL device pointer");
    VLM_CHECK_ARG(packed_weight != out, "the repack cannot run in place");
    VLM_CHECK_ARG(n > 0 && n % vlm::kW4StripN == 0 && k > 0 && k % 64 == 0,
                  "w4a16 gemv layout: N must be a multiple of 64 and K of 64, got N=" << n << " K=" << k);
#ifdef VLM_HAVE_CUDA
    VLM_CUDA_CHECK(vlm::w4a16_gemv_repack(packed_weight, out, n, k, static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemv_k_parts(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* k_parts) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(k_parts, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    *k_parts = vlm::w4a16_gemv_k_parts(m, n, k, group_size);
#else
    *k_parts = 0;
#endif
  });
}

#ifdef VLM_HAVE_CUDA
namespace {
void check_gemv_parts(int32_t k, int32_t k_parts) {
  VLM_CHECK_ARG(vlm::w4a16_gemv_parts_valid(k, k_parts),
                "k_parts must be 0 (the kernel's choice) or 1, 2, 4 or 8 with K / 64 >= k_parts, got "
                    << k_parts << " at K=" << k);
}
}  // namespace
#endif

int vlm_w4a16_gemv(const void* a, const void* gemv_weight, const void* packed_scale_zero, const void* residual,
                   void* c, int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                   int32_t a_is_gate_up, int32_t k_parts, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(a && gemv_weight && packed_scale_zero && c, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_gemv_parts(k, k_parts);
    VLM_CHECK(vlm::w4a16_gemv_applies(m, n, k, group_size), VLM_ERR_UNSUPPORTED,
              "the column-tile w4a16 kernel runs M <= " << vlm::kGemvMaxRows << " rows, K a multiple of 64, on a "
                                                        << "Hopper GPU; got M=" << m << " K=" << k);
    VLM_CUDA_CHECK(vlm::w4a16_gemv(a, gemv_weight, packed_scale_zero, residual, c, m, n, k, group_size,
                                   act_dtype == VLM_DTYPE_BF16, a_is_gate_up != 0, static_cast<cudaStream_t>(stream),
                                   k_parts));
#else
    (void)residual, (void)a_is_gate_up, (void)k_parts, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_gemv_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps, float* h_out,
                            const void* gemv_weight, const void* packed_scale_zero, void* c, int32_t m, int32_t n,
                            int32_t k, int32_t group_size, int32_t act_dtype, int32_t k_parts, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(h && norm_weight && gemv_weight && packed_scale_zero && c, "NULL device pointer");
    VLM_CHECK_ARG(h_out != h, "h_out must not be h (every block reads all of h)");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    VLM_CHECK_ARG(eps >= 0.f, "eps must be >= 0");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_gemv_parts(k, k_parts);
    VLM_CHECK(vlm::w4a16_gemv_applies(m, n, k, group_size), VLM_ERR_UNSUPPORTED,
              "the column-tile w4a16 kernel runs M <= " << vlm::kGemvMaxRows << " rows, K a multiple of 64, on a "
                                                        << "Hopper GPU; got M=" << m << " K=" << k);
    VLM_CUDA_CHECK(vlm::w4a16_gemv_rms_norm({h, delta, norm_weight, h_out, eps}, gemv_weight, packed_scale_zero, c,
                                            m, n, k, group_size, act_dtype == VLM_DTYPE_BF16,
                                            static_cast<cudaStream_t>(stream), k_parts));
#else
    (void)delta, (void)eps, (void)h_out, (void)k_parts, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

namespace {
bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The shape and dtype rules of the dense decode GEMM, checked before any GPU is asked.
void check_dense_decode(int32_t m, int32_t n, int32_t k, int32_t act_dtype) {
  VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
  VLM_CHECK_ARG(m >= 1 && m <= 4, "dense decode GEMM: m must be 1..4, got " << m);
  VLM_CHECK_ARG(n > 0 && k > 0 && k % 8 == 0, "dense decode GEMM: n must be positive and k a positive multiple of 8, "
                                               "got n = " << n << ", k = " << k);
}
}  // namespace

namespace {
int64_t align16(int64_t n);
void check_workspace_alignment(const void* workspace);

// The logits' greedy token (vlm_dense_decode_logits): where to write it, and its workspace (the arrival
// counter, then the blocks' partials at a 16-byte offset). Unset: index NULL.
struct ArgmaxArgs {
  int32_t* index;
  float* value;
  void* workspace;
};

// Both entries of the dense decode GEMM on A in act_dtype: the checks, then the act-dtype C (a_is_gate_up: A is
// [gate | up]) or, with `logits`, fp32 C (l2_evict_first: W's loads under that L2 policy; am.index set: the
// greedy token too).
int dense_decode_entry(const void* a, const void* w, void* c, int32_t m, int32_t n, int32_t k, int32_t act_dtype,
                       bool a_is_gate_up, bool logits, bool l2_evict_first, const ArgmaxArgs& am, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(a && w && c, "NULL device pointer");
    check_dense_decode(m, n, k, act_dtype);
    VLM_CHECK_ARG(aligned(a, 16) && aligned(w, 16), "a and w must be 16-byte aligned");
    const bool argmax = am.index || am.value || am.workspace;
    if (argmax) {
      VLM_CHECK_ARG(am.index && am.value && am.workspace, "argmax: index, value and workspace go together");
      VLM_CHECK_ARG(m == 1, "argmax: one row only, got m = " << m);
      check_workspace_alignment(am.workspace);
    }
#ifdef VLM_HAVE_CUDA
    VLM_CHECK(vlm::dense_decode_applies(m, n, k), VLM_ERR_UNSUPPORTED,
              "the dense decode GEMM does not run m = " << m << ", k = " << k << " on this GPU (shared memory), "
              "or VLM_DENSE_DECODE=0");
    const bool bf16 = act_dtype == VLM_DTYPE_BF16;
    const auto s = static_cast<cudaStream_t>(stream);
    if (!logits) {
      VLM_CUDA_CHECK(vlm::dense_decode_gemm(a, w, c, m, n, k, bf16, a_is_gate_up, s));
      return;
    }
    vlm::LogitArgmax la{am.index, am.value, static_cast<int*>(am.workspace),
                        static_cast<char*>(am.workspace) + align16(sizeof(int))};
    // The arrival counter starts at zero: set here, so any workspace of the size will do.
    if (argmax) VLM_CUDA_CHECK(cudaMemsetAsync(la.counter, 0, sizeof(int), s));
    VLM_CUDA_CHECK(vlm::dense_decode_logits(a, w, static_cast<float*>(c), m, n, k, bf16, l2_evict_first,
                                            argmax ? &la : nullptr, s));
#else
    (void)a_is_gate_up, (void)logits, (void)l2_evict_first, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}
}  // namespace

int vlm_dense_decode_gemm(const void* a, const void* w, void* c, int32_t m, int32_t n, int32_t k, int32_t act_dtype,
                          int32_t a_is_gate_up, void* stream) {
  return dense_decode_entry(a, w, c, m, n, k, act_dtype, a_is_gate_up != 0, false, false, {}, stream);
}

int vlm_dense_decode_argmax_workspace_bytes(int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
#ifdef VLM_HAVE_CUDA
    *bytes = align16(sizeof(int)) + (int64_t)vlm::dense_decode_argmax_partials() * 8;
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_dense_decode_logits(const void* a, const void* w, float* c, int32_t m, int32_t n, int32_t k,
                            int32_t act_dtype, int32_t l2_evict_first, int32_t* argmax_index, float* argmax_value,
                            void* argmax_workspace, void* stream) {
  return dense_decode_entry(a, w, c, m, n, k, act_dtype, false, true, l2_evict_first != 0,
                            {argmax_index, argmax_value, argmax_workspace}, stream);
}

int vlm_dense_decode_gemm_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps,
                                   float* h_out, const void* w, void* c, int32_t m, int32_t n, int32_t k,
                                   int32_t act_dtype, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(h && norm_weight && w && c, "NULL device pointer");
    VLM_CHECK_ARG(h_out != h, "h_out must not be h (every block reads all of h)");
    VLM_CHECK_ARG(eps >= 0.f, "eps must be >= 0");
    check_dense_decode(m, n, k, act_dtype);
    VLM_CHECK_ARG(aligned(h, 16) && aligned(norm_weight, 16) && aligned(w, 16) && aligned(h_out, 16) &&
                      aligned(delta, 8),
                  "h, h_out, norm_weight and w must be 16-byte aligned, delta 8");
#ifdef VLM_HAVE_CUDA
    VLM_CHECK(vlm::dense_decode_applies(m, n, k), VLM_ERR_UNSUPPORTED,
              "the dense decode GEMM does not run m = " << m << ", k = " << k << " on this GPU (shared memory), "
              "or VLM_DENSE_DECODE=0");
    VLM_CUDA_CHECK(vlm::dense_decode_gemm_rms_norm({h, delta, norm_weight, h_out, eps}, w, c, m, n, k,
                                                   act_dtype == VLM_DTYPE_BF16, static_cast<cudaStream_t>(stream)));
#else
    (void)delta, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_add_rms_norm(float* h, const void* delta, const float* weight, float eps, void* out, int32_t rows,
                     int32_t hidden, int32_t act_dtype, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(h && weight && out, "NULL device pointer");
    VLM_CHECK_ARG(rows > 0 && hidden > 0, "rows and hidden must be positive");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    VLM_CHECK_ARG(eps >= 0.f, "eps must be >= 0");
#ifdef VLM_HAVE_CUDA
    VLM_CUDA_CHECK(vlm::cuda::add_rms_norm(act_dtype == VLM_DTYPE_BF16 ? vlm::cuda::ActType::BF16
                                                                       : vlm::cuda::ActType::F16,
                                           h, delta, weight, nullptr, rows, hidden, eps, out,
                                           static_cast<cudaStream_t>(stream)));
#else
    (void)delta, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_dequantize(const void* packed_weight, const void* packed_scale_zero, void* out, int32_t n, int32_t k,
                         int32_t group_size, int32_t act_dtype, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(packed_weight && packed_scale_zero && out, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(1, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    VLM_CUDA_CHECK(vlm::w4a16_dequantize(packed_weight, packed_scale_zero, out, n, k, group_size,
                                         act_dtype == VLM_DTYPE_BF16, static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_cutlass_built(int32_t* built) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(built, "NULL output");
#ifdef VLM_HAVE_CUDA
    *built = vlm::w4a16_cutlass_built() ? 1 : 0;
#else
    *built = 0;
#endif
  });
}

int vlm_w4a16_cutlass_engine_takes(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* takes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(takes, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    *takes = vlm::w4a16_cutlass_engine_takes(m, n, k, group_size) ? 1 : 0;
#else
    *takes = 0;
#endif
  });
}

int vlm_w4a16_cutlass_tiles(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t num_sms, int32_t* tile_m,
                            int32_t* tile_n, int32_t* tile_k, int32_t* stream_k) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(tile_m && tile_n && tile_k && stream_k, "NULL output");
    vlm::check_w4a16_shape(m, n, k, group_size);
    VLM_CHECK_ARG(num_sms >= 0, "num_sms " << num_sms << " must be 0 (this GPU's) or a count of SMs");
    *tile_m = *tile_n = *tile_k = *stream_k = 0;
#ifdef VLM_HAVE_CUDA
    int tm = 0, tn = 0, tk = 0;
    bool sk = false;
    if (vlm::w4a16_cutlass_tiles(m, n, k, group_size, num_sms, &tm, &tn, &tk, &sk))
      *tile_m = tm, *tile_n = tn, *tile_k = tk, *stream_k = sk ? 1 : 0;
#endif
  });
}

namespace {

#ifdef VLM_HAVE_CUDA
// After check_w4a16_shape (every build checks shapes first).
void check_cutlass_shape(int32_t m, int32_t n, int32_t k, int32_t group_size) {
  VLM_CHECK(vlm::w4a16_cutlass_built(), VLM_ERR_UNSUPPORTED,
            "this build has no CUTLASS w4a16 GEMM (CUTLASS's headers were not found, or no sm_90a code)");
  VLM_CHECK_ARG(vlm::w4a16_cutlass_applies(m, n, k, group_size),
                "w4a16 CUTLASS GEMM: N " << n << " must be a multiple of 128, K " << k
                                         << " of 64 and of the group size " << group_size);
}
#endif

}  // namespace

int vlm_w4a16_cutlass_prepared_bytes(int32_t n, int32_t k, int32_t group_size, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    vlm::check_w4a16_shape(1, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_cutlass_shape(1, n, k, group_size);
    *bytes = vlm::w4a16_cutlass_prepared_bytes(n, k, group_size);
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_cutlass_prepare(const void* packed_weight, const void* packed_scale_zero, void* prepared,
                              void* scratch, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                              void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(packed_weight && packed_scale_zero && prepared && scratch, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(1, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_cutlass_shape(1, n, k, group_size);
    VLM_CUDA_CHECK(vlm::w4a16_cutlass_prepare(packed_weight, packed_scale_zero, prepared, scratch, n, k, group_size,
                                              act_dtype == VLM_DTYPE_BF16, static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_cutlass_workspace_bytes(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                                      int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_cutlass_shape(m, n, k, group_size);
    *bytes = vlm::w4a16_cutlass_workspace_bytes(m, n, k, group_size, act_dtype == VLM_DTYPE_BF16);
    VLM_CHECK(*bytes >= 0, VLM_ERR_INTERNAL, "w4a16 CUTLASS GEMM: no workspace size for this shape");
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_w4a16_cutlass_gemm(const void* a, const void* prepared, void* c, int32_t m, int32_t n, int32_t k,
                           int32_t group_size, int32_t act_dtype, void* workspace, int64_t workspace_bytes,
                           void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(a && prepared && c, "NULL device pointer");
    VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
    vlm::check_w4a16_shape(m, n, k, group_size);
#ifdef VLM_HAVE_CUDA
    check_cutlass_shape(m, n, k, group_size);
    const bool bf16 = act_dtype == VLM_DTYPE_BF16;
    const int64_t need = vlm::w4a16_cutlass_workspace_bytes(m, n, k, group_size, bf16);
    VLM_CHECK_ARG(need >= 0 && workspace_bytes >= need && (need == 0 || workspace),
                  "w4a16 CUTLASS GEMM: this shape needs a workspace of " << need
                      << " bytes (vlm_w4a16_cutlass_workspace_bytes), " << workspace_bytes << " given");
    VLM_CUDA_CHECK(vlm::w4a16_cutlass_gemm(a, prepared, c, m, n, k, group_size, bf16, workspace,
                                           (size_t)workspace_bytes, static_cast<cudaStream_t>(stream)));
#else
    (void)workspace, (void)workspace_bytes, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

namespace {

void check_decode_attention_shape(int32_t rows, int32_t num_heads, int32_t kv_heads, int32_t head_dim,
                                  int32_t max_context) {
  VLM_CHECK_ARG(rows > 0 && num_heads > 0 && kv_heads > 0 && head_dim > 0 && max_context > 0,
                "decode attention: sizes must be positive");
  VLM_CHECK_ARG(num_heads % kv_heads == 0, "decode attention: num_heads " << num_heads
                                                                         << " is not a multiple of kv_heads " << kv_heads);
  VLM_CHECK_ARG(head_dim <= 256 && head_dim % 8 == 0, "decode attention: head_dim must be a multiple of 8 up to 256");
}

// The entry points' workspaces keep each of their arrays at a 16-byte offset.
int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

#ifdef VLM_HAVE_CUDA
int num_sms() {
  int dev = 0, n = 0;
  VLM_CUDA_CHECK(cudaGetDevice(&dev));
  VLM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// The attention entry points' view of a paged cache in the engine's layout.
vlm::cuda::KvView kv_view_of(int32_t kv_dtype, int32_t block_size, int32_t kv_heads, int32_t head_dim,
                             const void* k_cache, const void* v_cache, const void* k_scale_zero,
                             const void* v_scale_zero) {
  return {kv_dtype, block_size, kv_heads, head_dim, (int)vlm::KvCache::row_bytes(kv_dtype, head_dim),
          const_cast<void*>(k_cache), const_cast<void*>(v_cache), const_cast<void*>(k_scale_zero),
          const_cast<void*>(v_scale_zero)};
}
#endif

// Workspace of vlm_prefill_attention: each row's request, each request's table offset, then the row
// tiles (int2, read as 8-byte words: their offset is aligned).
int64_t prefill_tiles_offset(int32_t rows, int32_t num_requests) {
  return align16(((int64_t)rows + num_requests) * 4);
}
int64_t prefill_workspace_bytes(int32_t rows, int32_t num_requests) {
  return prefill_tiles_offset(rows, num_requests) + (int64_t)rows * 8;
}

// The attention and argmax workspaces hold 8- and 16-byte words at 16-byte offsets from their start.
void check_workspace_alignment(const void* workspace) {
  VLM_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, "workspace must be 16-byte aligned");
}

// The attention entry points' arguments about the paged cache: dtypes, scales, block geometry.
void check_cache_args(int32_t act_dtype, int32_t kv_dtype, const void* k_scale_zero, const void* v_scale_zero,
                      int32_t block_size, int32_t max_blocks, int32_t sliding_window) {
  VLM_CHECK_ARG(act_dtype == VLM_DTYPE_F16 || act_dtype == VLM_DTYPE_BF16, "act_dtype must be F16 or BF16");
  VLM_CHECK_ARG(kv_dtype >= VLM_DTYPE_F32 && kv_dtype <= VLM_DTYPE_I4 && kv_dtype != VLM_DTYPE_I32,
                "kv_dtype must be F32, F16, BF16, I8 or I4");
  const bool quantized = kv_dtype == VLM_DTYPE_I8 || kv_dtype == VLM_DTYPE_I4;
  VLM_CHECK_ARG(!quantized || (k_scale_zero && v_scale_zero), "I8/I4 caches need their scale/zero arrays");
  VLM_CHECK_ARG(block_size > 0 && (block_size & (block_size - 1)) == 0,
                "block_size must be a power of two (as the engine's), got " << block_size);
  VLM_CHECK_ARG(max_blocks > 0 && sliding_window >= 0, "invalid max_blocks or sliding_window");
}

}  // namespace

int vlm_draw_rows(const float* logits, int32_t rows, int32_t vocab, const float* temperature, const int32_t* top_k,
                  const float* top_p, const float* min_p, const double* u, int32_t* tokens, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(logits && temperature && top_k && top_p && min_p && u && tokens, "NULL device pointer");
    VLM_CHECK_ARG(rows > 0 && vocab > 0, "rows and vocab must be positive, got " << rows << " and " << vocab);
#ifdef VLM_HAVE_CUDA
    VLM_CUDA_CHECK(vlm::cuda::draw_rows(logits, rows, vocab, vlm::cuda::DrawParams{temperature, top_k, top_p, min_p, u},
                                        tokens, static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_stream_read_sink_words(int32_t* words) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(words, "NULL output");
#ifdef VLM_HAVE_CUDA
    *words = vlm::stream_read_sink_words();
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_stream_read(const void* p, int64_t bytes, uint32_t* sink, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(p && sink, "NULL device pointer");
    VLM_CHECK_ARG(bytes > 0 && bytes % 16 == 0, "bytes must be a positive multiple of 16, got " << bytes);
    VLM_CHECK_ARG(aligned(p, 16) && aligned(sink, 4), "p must be 16-byte aligned, sink 4");
#ifdef VLM_HAVE_CUDA
    VLM_CUDA_CHECK(vlm::stream_read(p, bytes, sink, static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

namespace {
void check_probe_shape(int32_t blocks_per_sm, int32_t ring_stages) {
  VLM_CHECK_ARG(blocks_per_sm >= 1 && blocks_per_sm <= 32, "blocks_per_sm must be 1 to 32, got " << blocks_per_sm);
  VLM_CHECK_ARG(ring_stages == 4 || ring_stages == 8 || ring_stages == 16,
                "ring_stages must be 4, 8 or 16, got " << ring_stages);
}
}  // namespace

int vlm_step_probe_grid(int32_t blocks_per_sm, int32_t ring_stages, int32_t* grid) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(grid, "NULL output");
    check_probe_shape(blocks_per_sm, ring_stages);
#ifdef VLM_HAVE_CUDA
    *grid = vlm::step_probe_grid(blocks_per_sm, ring_stages);
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_step_stream_probe(const void* p, const int64_t* phase_bytes, int32_t phases, int32_t mode,
                          int32_t blocks_per_sm, int32_t ring_stages, uint32_t* sink, uint32_t* counters,
                          void* rows, int32_t row_halves, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(p && sink, "NULL device pointer");
    VLM_CHECK_ARG(phase_bytes, "NULL phase_bytes");
    VLM_CHECK_ARG(phases >= 1 && phases <= 256, "phases must be 1 to 256, got " << phases);
    for (int32_t i = 0; i < phases; ++i)
      VLM_CHECK_ARG(phase_bytes[i] > 0 && phase_bytes[i] % 512 == 0,
                    "phase " << i << " has " << phase_bytes[i] << " bytes: each must be a positive multiple of 512");
    VLM_CHECK_ARG(mode >= 0 && mode <= 3,
                  "mode must be 0 (chain), 1 (persistent), 2 (no waits) or 3 (exclusive chain), got " << mode);
    VLM_CHECK_ARG(mode == 0 || mode == 3 || counters, "NULL counters (the persistent modes count in them)");
    VLM_CHECK_ARG(aligned(p, 16) && aligned(sink, 4) && (!counters || aligned(counters, 4)),
                  "p must be 16-byte aligned, sink and counters 4");
    VLM_CHECK_ARG(row_halves >= 0 && row_halves <= 65536 && row_halves % 8 == 0,
                  "row_halves must be a multiple of 8 from 0 to 65536, got " << row_halves);
    VLM_CHECK_ARG(row_halves == 0 || (rows && aligned(rows, 16)), "rows must be a 16-byte aligned device pointer");
    check_probe_shape(blocks_per_sm, ring_stages);
#ifdef VLM_HAVE_CUDA
    VLM_CHECK_ARG(vlm::step_probe_grid(blocks_per_sm, ring_stages) > 0,
                  blocks_per_sm << " blocks an SM with " << ring_stages
                                << " ring stages a warp do not fit on this GPU's SMs at once");
    VLM_CUDA_CHECK(vlm::step_stream_probe(p, phase_bytes, phases, static_cast<vlm::StepProbeMode>(mode),
                                          blocks_per_sm, ring_stages, sink, counters, rows, row_halves,
                                          static_cast<cudaStream_t>(stream)));
#else
    (void)counters;
    (void)rows;
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_argmax_rows_workspace_bytes(int32_t rows, int32_t vocab, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    VLM_CHECK_ARG(rows > 0 && vocab > 0, "rows and vocab must be positive");
#ifdef VLM_HAVE_CUDA
    *bytes = align16((int64_t)rows * 4) + vlm::cuda::argmax_partial_bytes(rows, vocab);
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_argmax_rows(const float* logits, int32_t rows, int32_t vocab, int32_t* index, float* value, void* workspace,
                    void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(logits && index && value && workspace, "NULL device pointer");
    VLM_CHECK_ARG(rows > 0 && vocab > 0, "rows and vocab must be positive");
    check_workspace_alignment(workspace);
#ifdef VLM_HAVE_CUDA
    // The kernel's arrival counters (one a row) start at zero: set here, so any workspace of the size will do.
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    int* counters = static_cast<int*>(workspace);
    VLM_CUDA_CHECK(cudaMemsetAsync(counters, 0, (size_t)rows * 4, s));
    VLM_CUDA_CHECK(vlm::cuda::argmax_rows(logits, rows, vocab, index, value, counters,
                                          static_cast<char*>(workspace) + align16((int64_t)rows * 4), s));
#else
    (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_decode_attention_workspace_bytes(int32_t rows, int32_t num_heads, int32_t kv_heads, int32_t head_dim,
                                         int32_t max_context, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    check_decode_attention_shape(rows, num_heads, kv_heads, head_dim, max_context);
#ifdef VLM_HAVE_CUDA
    *bytes = align16((int64_t)rows * kv_heads * 4) + align16((int64_t)rows * 8) +
             vlm::cuda::paged_attention_workspace_bytes(rows, num_heads, head_dim, kv_heads, max_context, num_sms());
#else
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_decode_attention_form(int32_t num_heads, int32_t kv_heads, int32_t head_dim, int32_t act_dtype,
                              int32_t kv_dtype, int32_t block_size, int32_t* form) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(form, "NULL output");
    check_decode_attention_shape(1, num_heads, kv_heads, head_dim, 1);
    const int32_t no_array = 0;  // the query reads no scale/zero arrays: this stands in for them
    check_cache_args(act_dtype, kv_dtype, &no_array, &no_array, block_size, 1, 0);
    *form = 0;
#ifdef VLM_HAVE_CUDA
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      cudaGetLastError();  // no GPU: no kernel runs (and no error is left behind)
      return;
    }
    const vlm::cuda::KvView kv = kv_view_of(kv_dtype, block_size, kv_heads, head_dim, nullptr, nullptr, nullptr, nullptr);
    *form = vlm::cuda::decode_attention_form(act_dtype == VLM_DTYPE_BF16 ? vlm::cuda::ActType::BF16
                                                                         : vlm::cuda::ActType::F16,
                                             num_heads, kv);
#endif
  });
}

int vlm_decode_attention(const void* q, void* out, int32_t rows, int32_t num_heads, int32_t kv_heads,
                         int32_t head_dim, int32_t act_dtype, int32_t kv_dtype, int32_t block_size, const void* k_cache,
                         const void* v_cache, const void* k_scale_zero, const void* v_scale_zero,
                         const int32_t* positions, const int32_t* block_tables, int32_t max_blocks,
                         int32_t sliding_window, int32_t max_context, void* workspace, void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(q && out && k_cache && v_cache && positions && block_tables && workspace, "NULL device pointer");
    check_decode_attention_shape(rows, num_heads, kv_heads, head_dim, max_context);
    check_workspace_alignment(workspace);
    check_cache_args(act_dtype, kv_dtype, k_scale_zero, v_scale_zero, block_size, max_blocks, sliding_window);
#ifdef VLM_HAVE_CUDA
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    int* arrivals = reinterpret_cast<int*>(ws);
    int32_t* segments = reinterpret_cast<int32_t*>(ws + align16((int64_t)rows * kv_heads * 4));
    void* partial = ws + align16((int64_t)rows * kv_heads * 4) + align16((int64_t)rows * 8);
    std::vector<int32_t> host(2 * (size_t)rows);  // row r is segment r; its table starts at r * max_blocks
    for (int32_t r = 0; r < rows; ++r) host[r] = r, host[rows + r] = r * max_blocks;
    // From pageable memory the copy has left `host` when the call returns (it is staged), so the
    // call stays asynchronous for the kernel below.
    VLM_CUDA_CHECK(cudaMemcpyAsync(segments, host.data(), host.size() * 4, cudaMemcpyHostToDevice, s));
    const vlm::cuda::StepMeta meta{positions, nullptr, segments, segments + rows, block_tables};
    const vlm::cuda::KvView kv =
        kv_view_of(kv_dtype, block_size, kv_heads, head_dim, k_cache, v_cache, k_scale_zero, v_scale_zero);
    VLM_CUDA_CHECK(vlm::cuda::paged_attention(act_dtype == VLM_DTYPE_BF16 ? vlm::cuda::ActType::BF16
                                                                          : vlm::cuda::ActType::F16,
                                              q, out, meta, rows, num_heads, sliding_window, max_context, num_sms(),
                                              kv, partial, arrivals, s));
#else
    (void)q, (void)out, (void)rows, (void)num_heads, (void)kv_heads, (void)head_dim, (void)act_dtype, (void)kv_dtype,
        (void)block_size, (void)k_cache, (void)v_cache, (void)k_scale_zero, (void)v_scale_zero, (void)positions,
        (void)block_tables, (void)max_blocks, (void)sliding_window, (void)max_context, (void)workspace, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

int vlm_prefill_attention_workspace_bytes(int32_t rows, int32_t num_requests, int64_t* bytes) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(bytes, "NULL output");
    VLM_CHECK_ARG(rows > 0 && num_requests > 0 && num_requests <= rows,
                  "prefill attention: need 1 <= num_requests <= rows, got " << num_requests << " and " << rows);
    *bytes = prefill_workspace_bytes(rows, num_requests);
  });
}

int vlm_prefill_attention(const void* q, void* out, int32_t rows, int32_t num_heads, int32_t kv_heads,
                          int32_t head_dim, int32_t act_dtype, int32_t kv_dtype, int32_t block_size,
                          const void* k_cache, const void* v_cache, const void* k_scale_zero, const void* v_scale_zero,
                          const int32_t* positions, const int32_t* block_tables, int32_t max_blocks,
                          const int32_t* request_rows, int32_t num_requests, int32_t sliding_window, void* workspace,
                          void* stream) {
  return vlm::guarded([&] {
    VLM_CHECK_ARG(q && out && k_cache && v_cache && positions && block_tables && workspace, "NULL device pointer");
    VLM_CHECK_ARG(request_rows, "NULL request_rows");
    check_workspace_alignment(workspace);
    VLM_CHECK_ARG(rows > 0 && num_heads > 0 && kv_heads > 0 && head_dim > 0 && num_requests > 0,
                  "prefill attention: sizes must be positive");
    VLM_CHECK_ARG(num_heads % kv_heads == 0,
                  "prefill attention: num_heads " << num_heads << " is not a multiple of kv_heads " << kv_heads);
    VLM_CHECK_ARG(head_dim <= 256, "prefill attention: head_dim must be at most 256, got " << head_dim);
    check_cache_args(act_dtype, kv_dtype, k_scale_zero, v_scale_zero, block_size, max_blocks, sliding_window);
    int64_t total = 0;
    for (int32_t i = 0; i < num_requests; ++i) {
      VLM_CHECK_ARG(request_rows[i] > 0, "request " << i << " has " << request_rows[i] << " rows");
      total += request_rows[i];
    }
    VLM_CHECK_ARG(total == rows, "request_rows sum to " << total << ", not rows = " << rows);
#ifdef VLM_HAVE_CUDA
    // The engine's step metadata for these requests (row -> request, request -> table) and its row tiles.
    const vlm::cuda::KvView kv =
        kv_view_of(kv_dtype, block_size, kv_heads, head_dim, k_cache, v_cache, k_scale_zero, v_scale_zero);
    const int tile_rows = vlm::cuda::prefill_tile_rows(num_heads, kv);
    std::vector<int32_t> host((size_t)rows + num_requests);
    std::vector<int2> tiles;
    for (int32_t i = 0, r0 = 0; i < num_requests; r0 += request_rows[i++]) {
      for (int32_t j = 0; j < request_rows[i]; ++j) host[r0 + j] = i;
      host[rows + i] = i * max_blocks;
      for (int32_t j = 0; j < request_rows[i]; j += tile_rows)
        tiles.push_back({r0 + j, std::min(tile_rows, request_rows[i] - j)});
    }
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    int32_t* meta_d = reinterpret_cast<int32_t*>(ws);
    int2* tiles_d = reinterpret_cast<int2*>(ws + prefill_tiles_offset(rows, num_requests));
    // From pageable memory the copies have left the host vectors when the call returns (they are staged).
    VLM_CUDA_CHECK(cudaMemcpyAsync(meta_d, host.data(), host.size() * 4, cudaMemcpyHostToDevice, s));
    VLM_CUDA_CHECK(cudaMemcpyAsync(tiles_d, tiles.data(), tiles.size() * sizeof(int2), cudaMemcpyHostToDevice, s));
    const vlm::cuda::StepMeta meta{positions, nullptr, meta_d, meta_d + rows, block_tables};
    VLM_CUDA_CHECK(vlm::cuda::prefill_attention(act_dtype == VLM_DTYPE_BF16 ? vlm::cuda::ActType::BF16
                                                                            : vlm::cuda::ActType::F16,
                                                q, out, meta, tiles_d, (int)tiles.size(), num_heads, sliding_window,
                                                kv, s));
#else
    (void)q, (void)out, (void)head_dim, (void)act_dtype, (void)kv_dtype, (void)k_cache, (void)v_cache,
        (void)positions, (void)block_tables, (void)workspace, (void)stream;
    VLM_CHECK(false, VLM_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
  });
}

}  // extern "C"
