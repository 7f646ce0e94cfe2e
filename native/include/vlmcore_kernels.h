/*
 * vlmcore_kernels.h — direct entry points to single kernels, for kernel tests
 * and benchmarks (the engine reaches them through vlmcore.h). Same
 * conventions: int status, vlm_last_error(), no exception crosses.
 * Pointers marked "device" are CUDA device pointers; `stream` is a
 * cudaStream_t (NULL: the default stream). Not for serving code: these calls
 * check shapes but cannot check that device buffers are large enough.
 */
#ifndef VLMCORE_KERNELS_H
#define VLMCORE_KERNELS_H

#include "vlmcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes of the w4a16 tensor-core weight layout for an [N out, K in] layer. */
VLM_API int vlm_w4a16_packed_sizes(int32_t n, int32_t k, int32_t group_size, int64_t* weight_bytes,
                                   int64_t* scale_zero_bytes);

/* Host-side repack of AutoAWQ "gemm" tensors (qweight int32 [K][N/8],
 * qzeros int32 [K/g][N/8], scales fp16 [K/g][N]) into the kernel's fragment
 * order. act_dtype (F16 or BF16) selects the precision of the stored scales
 * and zero points. Outputs are host buffers of the sizes above. */
VLM_API int vlm_w4a16_pack(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales,
                           int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                           void* packed_weight, void* packed_scale_zero);

/* Workspace bytes vlm_w4a16_gemm needs for this shape (0 if none). The
 * workspace must be zero-filled before its first use (it holds counters that
 * every call leaves at zero); one workspace serves any later call as long as
 * it is large enough and calls on it do not run concurrently. */
VLM_API int vlm_w4a16_workspace_bytes(int32_t m, int32_t n, int32_t k, int32_t group_size, int64_t* bytes);

/* Which Hopper wgmma form vlm_w4a16_gemm runs for this shape on the current
 * device: 0 none (the decode-size or the general tensor-core kernel), 1 the
 * block form, 2 the strip form (VLM_W4A16_WGMMA; by default the strip form from
 * 17 to 128 rows on a compute capability 9.0 GPU with an sm_90a build). 0 in
 * builds without CUDA. For benchmarks that report the path they measured. */
VLM_API int vlm_w4a16_wgmma_form(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* form);

/* How the wgmma form of vlm_w4a16_gemm splits this shape's K: *splits slices
 * (1: none), summed in thread-block clusters through distributed shared memory
 * (*cluster 1) or from fp32 partials by a second kernel (0); both 0 where no
 * wgmma form runs the shape, and in builds without CUDA. VLM_W4A16_WGMMA_CLUSTER
 * 0 or 1 forces partials or clusters. For benchmarks and checks. */
VLM_API int vlm_w4a16_wgmma_plan(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* splits,
                                 int32_t* cluster);

/* The plan of the decode-size w4a16 kernel (M <= 4, Hopper) for this shape:
 * *strips_per_block strips of 64 output columns a block, *k_slices slices of K
 * (the blocks of one thread-block cluster, summed through distributed shared
 * memory), *unit_steps k16 steps scaled together, *ring_stages steps of weights
 * in flight a warp (8 or 16); all 0 where that kernel does not run the shape,
 * and in builds without CUDA. VLM_W4A16_DECODE_S, VLM_W4A16_DECODE_C and
 * VLM_W4A16_DECODE_RING, read when a shape is first planned in a thread, pin the
 * first two and the last. For benchmarks that sweep the plan. */
VLM_API int vlm_w4a16_decode_plan(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* strips_per_block,
                                  int32_t* k_slices, int32_t* unit_steps, int32_t* ring_stages);

/* Rows from which the engine dequantizes a w4a16 layer and multiplies it with
 * cuBLAS instead of running vlm_w4a16_gemm (where no wgmma form takes the
 * shape): 129 where the wgmma strip form runs, else 256. CUDA builds only. */
VLM_API int vlm_w4a16_dequant_gemm_min_rows(int32_t* rows);

/* C[M][N] = A[M][K] · dequant(W)ᵀ (+ residual[M][N] if not NULL), A/C/residual
 * row-major in act_dtype (F16 or BF16), fp32 accumulation. All device
 * pointers; workspace of vlm_w4a16_workspace_bytes. Asynchronous on `stream`;
 * launch errors are reported. CUDA builds only (else VLM_ERR_UNSUPPORTED). */
VLM_API int vlm_w4a16_gemm(const void* a, const void* packed_weight, const void* packed_scale_zero,
                           const void* residual, void* c, int32_t m, int32_t n, int32_t k, int32_t group_size,
                           int32_t act_dtype, void* workspace, void* stream);

/* The same GEMM with its A computed from an fp32 residual stream, as the engine
 * runs decode steps: A[r] = rms_norm(h[r] + delta[r]) * norm_weight (rms with
 * eps; delta in act_dtype, or NULL), and h + delta written to h_out (if not
 * NULL; it must not be h). Only where the decode-size kernel runs (M <= 4, a
 * Hopper GPU): elsewhere VLM_ERR_UNSUPPORTED, and the engine runs the norm and
 * the GEMM apart. Device pointers; asynchronous on `stream`. */
VLM_API int vlm_w4a16_gemm_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps,
                                    float* h_out, const void* packed_weight, const void* packed_scale_zero, void* c,
                                    int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                                    void* stream);

/* The column-tile w4a16 kernel at decode sizes (M <= 4, Hopper): whole output columns a block, its own
 * weight layout. vlm_w4a16_gemv_repack writes it (device to device, the packed weights' size) from
 * the packed weights of vlm_w4a16_pack; vlm_w4a16_gemv then computes what vlm_w4a16_gemm does from
 * that copy and the packed scales and zeros (a_is_gate_up: A is [M][2K] and the GEMM reads silu(gate)
 * * up). *k_parts of vlm_w4a16_gemv_k_parts: warps that share a tile of 16 columns (0 where the kernel
 * does not run the shape: VLM_ERR_UNSUPPORTED from the GEMM there); the GEMMs' k_parts: 0 for that
 * choice, or 1, 2, 4 or 8 with K / 64 >= k_parts to pin it (tests, measurements; else
 * VLM_ERR_INVALID_ARGUMENT). Device pointers; asynchronous on `stream`. CUDA builds only. */
VLM_API int vlm_w4a16_gemv_repack(const void* packed_weight, void* out, int32_t n, int32_t k, void* stream);
VLM_API int vlm_w4a16_gemv_k_parts(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* k_parts);
VLM_API int vlm_w4a16_gemv(const void* a, const void* gemv_weight, const void* packed_scale_zero, const void* residual,
                           void* c, int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                           int32_t a_is_gate_up, int32_t k_parts, void* stream);
/* The same with A from the fp32 residual stream, as vlm_w4a16_gemm_rms_norm. */
VLM_API int vlm_w4a16_gemv_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps,
                                    float* h_out, const void* gemv_weight, const void* packed_scale_zero, void* c,
                                    int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                                    int32_t k_parts, void* stream);

/* C[M][N] = A[M][K] · W[N][K]ᵀ for dense weights at decode sizes (1 <= M <= 4, K a
 * multiple of 8), A, W and C row-major in act_dtype (F16 or BF16), fp32 sums: the
 * kernel the engine runs for unquantized models' decode steps (cuBLAS elsewhere).
 * a_is_gate_up: A is [M][2K] ([gate | up] rows) and the GEMM reads silu(gate) * up.
 * a and w 16-byte aligned. Device pointers; asynchronous on `stream`. CUDA builds
 * only (else VLM_ERR_UNSUPPORTED); VLM_ERR_UNSUPPORTED also where M, K or the GPU's
 * shared memory rule the kernel out. */
VLM_API int vlm_dense_decode_gemm(const void* a, const void* w, void* c, int32_t m, int32_t n, int32_t k,
                                  int32_t act_dtype, int32_t a_is_gate_up, void* stream);

/* The same GEMM with fp32 C (no rounding to act_dtype): the lm head's logits at
 * decode sizes. l2_evict_first != 0: W's loads carry an L2 evict_first policy (the
 * same bits either way). With argmax_index, argmax_value and argmax_workspace (all
 * three or none; m = 1 only) the kernel also writes the row's greedy token and its
 * logit, as vlm_argmax_rows would: workspace of
 * vlm_dense_decode_argmax_workspace_bytes(), 16-byte aligned. */
VLM_API int vlm_dense_decode_logits(const void* a, const void* w, float* c, int32_t m, int32_t n, int32_t k,
                                    int32_t act_dtype, int32_t l2_evict_first, int32_t* argmax_index,
                                    float* argmax_value, void* argmax_workspace, void* stream);
VLM_API int vlm_dense_decode_argmax_workspace_bytes(int64_t* bytes);

/* The same GEMM with A from an fp32 residual stream, as in vlm_w4a16_gemm_rms_norm:
 * A[r] = rms_norm(h[r] + delta[r]) * norm_weight, h + delta written to h_out (if not
 * NULL; not h). h, h_out and norm_weight 16-byte aligned, delta 8. */
VLM_API int vlm_dense_decode_gemm_rms_norm(const float* h, const void* delta, const float* norm_weight, float eps,
                                           float* h_out, const void* w, void* c, int32_t m, int32_t n, int32_t k,
                                           int32_t act_dtype, void* stream);

/* The engine's residual update and RMSNorm: h[r] += delta[r] (delta in
 * act_dtype, or NULL: h unchanged), then out[r] = rms_norm(h[r]) * weight in
 * act_dtype; h and weight fp32 ([rows][hidden], [hidden]). Device pointers;
 * asynchronous on `stream`. CUDA builds only. */
VLM_API int vlm_add_rms_norm(float* h, const void* delta, const float* weight, float eps, void* out, int32_t rows,
                             int32_t hidden, int32_t act_dtype, void* stream);

/* Greedy decoding's argmax: for each of `rows` rows of fp32 logits [rows][vocab],
 * the first index of the largest value and that value (NaNs never win; a row of
 * NaNs only gives index 0 and -inf). Device pointers; workspace (16-byte
 * aligned) of vlm_argmax_rows_workspace_bytes, any contents. Asynchronous on
 * `stream`; CUDA builds only (else VLM_ERR_UNSUPPORTED). */
VLM_API int vlm_argmax_rows_workspace_bytes(int32_t rows, int32_t vocab, int64_t* bytes);
VLM_API int vlm_argmax_rows(const float* logits, int32_t rows, int32_t vocab, int32_t* index, float* value,
                            void* workspace, void* stream);

/* W[N][K] row-major in act_dtype (F16 or BF16) from the packed layout: exactly
 * the values vlm_w4a16_gemm multiplies (the engine feeds them to a dense GEMM
 * for large M). Device pointers; asynchronous on `stream`. CUDA builds only. */
VLM_API int vlm_w4a16_dequantize(const void* packed_weight, const void* packed_scale_zero, void* out, int32_t n,
                                 int32_t k, int32_t group_size, int32_t act_dtype, void* stream);

/* The prefill-size w4a16 GEMM through CUTLASS's mixed-input kernel (Hopper, builds that found CUTLASS's
 * headers): *built is 1 where it exists. It reads its own copy of a layer ("prepared": the codes reordered
 * for the kernel, scales and offsets -s*z), *bytes long, made on the device from the packed layout by
 * vlm_w4a16_cutlass_prepare (scratch: n*k/2 bytes). Then C [M][N] = A [M][K] · dequant(W)^T in act_dtype,
 * computed as s*q + (-s*z) per weight (the offset rounded to act_dtype), n a multiple of 128, with a workspace of
 * vlm_w4a16_cutlass_workspace_bytes (the stream-K scheduler's partial tiles; may be 0 bytes). Device pointers;
 * asynchronous on `stream`. */
VLM_API int vlm_w4a16_cutlass_built(int32_t* built);
VLM_API int vlm_w4a16_cutlass_prepared_bytes(int32_t n, int32_t k, int32_t group_size, int64_t* bytes);
VLM_API int vlm_w4a16_cutlass_prepare(const void* packed_weight, const void* packed_scale_zero, void* prepared,
                                      void* scratch, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                                      void* stream);
VLM_API int vlm_w4a16_cutlass_workspace_bytes(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t act_dtype,
                                              int64_t* bytes);
VLM_API int vlm_w4a16_cutlass_gemm(const void* a, const void* prepared, void* c, int32_t m, int32_t n, int32_t k,
                                   int32_t group_size, int32_t act_dtype, void* workspace, int64_t workspace_bytes,
                                   void* stream);

/* Whether the engine runs a tensor-core w4a16 layer of this shape at m rows through the CUTLASS GEMM on the
 * current device: VLM_W4A16_CUTLASS on (the default), built, a compute capability 9.0 GPU, a shape it takes and
 * rows in its window (VLM_W4A16_CUTLASS_MIN_ROWS, _WIDE_MIN_ROWS, _MAX_ROWS). The engine also needs the layer's
 * copy, which it leaves out where memory is short or VLM_PREFILL_DENSE_WEIGHTS=1 keeps dequantized copies
 * instead. 0 in builds without CUDA. For benchmarks that report the engine's path. */
VLM_API int vlm_w4a16_cutlass_engine_takes(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t* takes);

/* The tiles the CUTLASS GEMM runs a call of this shape with: *tile_m weight rows, *tile_n tokens and *tile_k of K
 * a tile, *stream_k 1 under the stream-K scheduler (0: data-parallel), as the layer's shape and the
 * VLM_W4A16_CUTLASS_TILE_* / _STREAMK settings choose them. num_sms 0: on this device, all 0 where the kernel does
 * not run here (no CUTLASS build, no compute capability 9.0 GPU); num_sms > 0: on a compute capability 9.0 GPU of
 * that many SMs, answered without one (all 0 in builds without the kernel). All 0 where the kernel does not take
 * the shape, and in builds without CUDA. Bad shapes are refused as by vlm_w4a16_gemm, a negative num_sms as an
 * invalid argument. For benchmarks that report what they measured, and checks. */
VLM_API int vlm_w4a16_cutlass_tiles(int32_t m, int32_t n, int32_t k, int32_t group_size, int32_t num_sms,
                                    int32_t* tile_m, int32_t* tile_n, int32_t* tile_k, int32_t* stream_k);

/* Sampled decoding's draw on the GPU, as the engine makes it with VLM_DEVICE_SAMPLING=1: for each of `rows`
 * fp32 rows of `vocab` logits, x = logit / temperature[row]; the top_k[row] tokens by x (0: off; ties by lower
 * index); within them the smallest prefix of that order holding top_p[row] of their weight (1: off); tokens
 * below min_p[row] of the largest weight dropped (0: off); then the first token, in vocabulary order, at which
 * the running weight exceeds u[row] (in [0, 1)) times the kept weight, into tokens[row]. Weights are
 * exp(x - max x) in integer units of 2^-40 (exact sums: the same token every run). A row whose temperature is
 * not > 0 keeps what tokens[row] held. Device pointers (u: doubles); asynchronous on `stream`; CUDA builds only. */
VLM_API int vlm_draw_rows(const float* logits, int32_t rows, int32_t vocab, const float* temperature,
                          const int32_t* top_k, const float* top_p, const float* min_p, const double* u,
                          int32_t* tokens, void* stream);

/* Reads `bytes` (a positive multiple of 16) at `p` (16-byte aligned) once in one
 * kernel, with the loads the weight kernels stream with: for benchmarks, the
 * floor a kernel reading those bytes cannot beat (launch, ramp and tail
 * included). Each block writes one word of what it read to `sink` (device, room
 * for vlm_stream_read_sink_words words), so no load can be left out.
 * Asynchronous on `stream`; CUDA builds only (else VLM_ERR_UNSUPPORTED). */
VLM_API int vlm_stream_read_sink_words(int32_t* words);
VLM_API int vlm_stream_read(const void* p, int64_t bytes, uint32_t* sink, void* stream);

/* The step-streaming probe (for benchmarks): the bytes of `phases` phases laid out
 * back to back from `p` (16-byte aligned; phase_bytes on the host, each a positive
 * multiple of 512) read once, as a chain of dependent kernels (mode 0), one
 * persistent launch whose blocks wait for every block to finish a phase before
 * consuming the next (1), the same launch without the waits (2), or the chain
 * with each kernel's blocks alone on their SMs (3: the next kernel's blocks
 * start only as these exit); blocks_per_sm
 * blocks an SM of 8 warps, each streaming through a ring of ring_stages (4, 8 or
 * 16) 512-byte cp.async stages. Each block XORs what it read into sink[block]
 * (vlm_step_probe_grid words); counters: `phases` device words the persistent
 * form counts in (zeroed on the stream first). At most 256 phases. With
 * row_halves > 0 (a multiple of 8, at most 65536) modes 0, 1 and 3 also model
 * the dependent work around a GEMM's weights: after its wait every block reads
 * the whole fp16 row the previous phase wrote and reduces its sum of squares (a
 * fused RMSNorm's statistics), after its weights it writes its share of its own
 * phase's row (rows: 2 * row_halves halves of device memory, 16-byte aligned).
 * Asynchronous on `stream`, capturable in a CUDA graph; CUDA builds only. */
VLM_API int vlm_step_probe_grid(int32_t blocks_per_sm, int32_t ring_stages, int32_t* grid);
VLM_API int vlm_step_stream_probe(const void* p, const int64_t* phase_bytes, int32_t phases, int32_t mode,
                                  int32_t blocks_per_sm, int32_t ring_stages, uint32_t* sink, uint32_t* counters,
                                  void* rows, int32_t row_halves, void* stream);

/* Prefill attention: several consecutive query rows per request, each attending
 * causally to its request's cache as in vlm_decode_attention (same layouts and
 * dtypes; a row at position p sees [max(0, p - window + 1), p]). Request i owns
 * the next request_rows[i] rows of q (a host array of num_requests counts,
 * summing to rows) at consecutive ascending positions, and the block table
 * block_tables[i * max_blocks ...]. workspace (device, 16-byte aligned) of
 * vlm_prefill_attention_workspace_bytes. Asynchronous on `stream`; CUDA builds
 * only (else VLM_ERR_UNSUPPORTED). */
VLM_API int vlm_prefill_attention_workspace_bytes(int32_t rows, int32_t num_requests, int64_t* bytes);
VLM_API int vlm_prefill_attention(const void* q, void* out, int32_t rows, int32_t num_heads, int32_t kv_heads,
                                  int32_t head_dim, int32_t act_dtype, int32_t kv_dtype, int32_t block_size,
                                  const void* k_cache, const void* v_cache, const void* k_scale_zero,
                                  const void* v_scale_zero, const int32_t* positions, const int32_t* block_tables,
                                  int32_t max_blocks, const int32_t* request_rows, int32_t num_requests,
                                  int32_t sliding_window, void* workspace, void* stream);

/* Decode attention: one query row per request over a paged KV cache in the
 * engine's layout. Cache rows are [block][kv_head][slot], each head_dim
 * elements of kv_dtype (F32, F16, BF16, I8 or I4: I4 packs element d in byte
 * d/2, low nibble first); for I8/I4, k/v_scale_zero hold an fp16 (scale, zero)
 * pair per row, x = code * scale + zero. block_size (slots per block) is a
 * power of two, as the engine's. q and out are [rows][num_heads *
 * head_dim] in act_dtype (F16 or BF16). Row r attends to positions
 * [max(0, positions[r] - window + 1), positions[r]] (window 0: no limit) through
 * block_tables[r * max_blocks ...]. All pointers are device pointers; workspace
 * (16-byte aligned) of vlm_decode_attention_workspace_bytes, zero-filled before
 * its first use.
 * Asynchronous on `stream`. CUDA builds only (else VLM_ERR_UNSUPPORTED). */
VLM_API int vlm_decode_attention_workspace_bytes(int32_t rows, int32_t num_heads, int32_t kv_heads,
                                                 int32_t head_dim, int32_t max_context, int64_t* bytes);
/* Which kernel vlm_decode_attention runs for this shape on this GPU and build:
 * *form 2 the tensor-core form, 1 the CUDA-core kernel, 0 another (a shape
 * neither takes); 0 in builds without CUDA. VLM_DECODE_ATTENTION_MMA and
 * VLM_DECODE_ATTENTION_MMA_INT4 are read once per process. For tests that must
 * know which kernel they checked. */
VLM_API int vlm_decode_attention_form(int32_t num_heads, int32_t kv_heads, int32_t head_dim, int32_t act_dtype,
                                      int32_t kv_dtype, int32_t block_size, int32_t* form);
VLM_API int vlm_decode_attention(const void* q, void* out, int32_t rows, int32_t num_heads, int32_t kv_heads,
                                 int32_t head_dim, int32_t act_dtype, int32_t kv_dtype, int32_t block_size,
                                 const void* k_cache, const void* v_cache, const void* k_scale_zero,
                                 const void* v_scale_zero, const int32_t* positions, const int32_t* block_tables,
                                 int32_t max_blocks, int32_t sliding_window, int32_t max_context, void* workspace,
                                 void* stream);

#ifdef __cplusplus
}
#endif
#endif /* VLMCORE_KERNELS_H */
