/*
 * vlmcore.h — the only public interface of libvlmcore.
 *
 * Conventions
 *  - Every fallible call returns a vlm_status (VLM_OK == 0). On failure a
 *    human-readable message is stored per thread and read with
 *    vlm_last_error(); it stays valid until the next failing call on the same
 *    thread. No C++ exception ever crosses this interface.
 *  - Handles are opaque. Each *_create has a matching *_free; freeing NULL is a
 *    no-op. Passing a freed handle is a caller bug the library detects where it
 *    can (handles carry a magic number) and reports as VLM_ERR_INVALID_HANDLE.
 *  - Sizes are element counts unless the name says bytes; times are
 *    nanoseconds; token ids are int32.
 *  - Threading: a vlm_model is immutable once finalized and may be shared by
 *    several engines. A vlm_engine is thread-safe for enqueue / cancel / stats
 *    from any thread; vlm_engine_poll must not be called by two threads at once
 *    (one poller, as a service would run).
 */
#ifndef VLMCORE_H
#define VLMCORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define VLM_API __declspec(dllexport)
#else
#define VLM_API __attribute__((visibility("default")))
#endif

/* Bumped on any change to a struct layout or a signature below or in vlmcore_kernels.h. */
#define VLM_ABI_VERSION 6
#define VLM_MAX_TOP_LOGPROBS 20
#define VLM_MAX_STOP_SEQUENCES 16
#define VLM_MAX_STOP_SEQUENCE_LEN 16
#define VLM_MAX_EOS_IDS 8

typedef enum vlm_status {
  VLM_OK = 0,
  VLM_ERR_INVALID_ARGUMENT = 1, /* bad value, shape, dtype or sampling parameter */
  VLM_ERR_OUT_OF_RANGE = 2,     /* token id outside vocab, prompt longer than max_model_len */
  VLM_ERR_NOT_FOUND = 3,        /* unknown request id or tensor name */
  VLM_ERR_OUT_OF_MEMORY = 4,    /* allocation failed or the KV cache can never hold the request */
  VLM_ERR_UNSUPPORTED = 5,      /* valid but not implemented here (e.g. CUDA in a CPU-only build) */
  VLM_ERR_FAILED_PRECONDITION = 6, /* call order: e.g. enqueue on an unfinalized model */
  VLM_ERR_INVALID_HANDLE = 7,   /* NULL, freed or foreign handle */
  VLM_ERR_INTERNAL = 99
} vlm_status;

typedef enum vlm_dtype {
  VLM_DTYPE_AUTO = 0, /* KV cache only: the compute precision of the backend (fp32 on CPU, fp16 or bf16 on CUDA) */
  VLM_DTYPE_F32 = 1,
  VLM_DTYPE_F16 = 2,
  VLM_DTYPE_BF16 = 3,
  VLM_DTYPE_I32 = 4,
  VLM_DTYPE_I8 = 5, /* KV cache: asymmetric uint8 with an fp16 (scale, zero) per token and KV head */
  VLM_DTYPE_I4 = 6  /* KV cache: the same with 4 bits */
} vlm_dtype;

typedef enum vlm_device {
  VLM_DEVICE_AUTO = 0, /* CUDA (device 0) when a GPU is visible to a CUDA build, else the CPU */
  VLM_DEVICE_CPU = 1,
  VLM_DEVICE_CUDA = 2
} vlm_device;

typedef enum vlm_rope_scaling {
  VLM_ROPE_NONE = 0,
  VLM_ROPE_LINEAR = 1, /* positions divided by factor */
  VLM_ROPE_LLAMA3 = 2  /* Llama 3.1 frequency-dependent scaling */
} vlm_rope_scaling;

/* ------------------------------------------------------------------ library */

/* VLM_ABI_VERSION of the loaded library. Callers compare it to their own. */
VLM_API int vlm_abi_version(void);
/* Message of the last failed call on this thread ("" if none). Owned by the
 * library; valid until the next failing call on this thread. */
VLM_API const char* vlm_last_error(void);
/* Static string naming a status code. */
VLM_API const char* vlm_status_name(int status);
/* Number of CUDA devices usable by this build (0 if built without CUDA or no
 * GPU present). Never fails. */
VLM_API int vlm_cuda_device_count(void);

/* The KV cache's quantizer, exposed so clients and tests can reproduce it
 * bit for bit: x[n] -> codes with x ~= code * scale + zero, where
 * scale = fp16((max - min) / (2^bits - 1)) (1.0 if that rounds to 0),
 * zero = fp16(min), code = clamp(rint((x - zero) * (1 / scale)), 0, 2^bits - 1).
 * bits 8: `codes` holds n bytes; bits 4: (n + 1) / 2 bytes, element 2i in the
 * low nibble of byte i. scale and zero are fp16 bit patterns. */
VLM_API int vlm_kv_quantize(const float* x, int32_t n, int32_t bits, uint8_t* codes,
                            uint16_t* scale_f16, uint16_t* zero_f16);

/* -------------------------------------------------------------------- model */

typedef struct vlm_model vlm_model;

/* Architecture of a LLaMA-family decoder. All sizes in elements. */
typedef struct vlm_model_params {
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t intermediate_size;
  int32_t num_layers;
  int32_t num_heads;
  int32_t num_kv_heads;     /* == num_heads: MHA; 1: MQA; else GQA (must divide num_heads) */
  int32_t head_dim;         /* even; usually hidden_size / num_heads */
  float rms_norm_eps;
  float rope_theta;
  int32_t rope_scaling;     /* vlm_rope_scaling */
  float rope_factor;        /* LINEAR and LLAMA3 */
  float rope_low_freq_factor;   /* LLAMA3 */
  float rope_high_freq_factor;  /* LLAMA3 */
  int32_t rope_original_max_position; /* LLAMA3 */
  int32_t max_position_embeddings;
  int32_t sliding_window;   /* 0: full attention; else attend to the last N positions (Mistral) */
  int32_t attention_bias;   /* 1: q/k/v projections have biases (Qwen2) */
  int32_t tie_word_embeddings; /* 1: lm_head shares embed_tokens */
  int32_t awq_group_size;   /* 0: dense weights; 64 or 128: AutoAWQ 4-bit linear layers */
  int32_t device;           /* vlm_device */
  int32_t num_threads;      /* CPU compute threads; 0: all cores */
} vlm_model_params;

/* Defaults: a 1-layer toy shape, rope_theta 10000, eps 1e-6, CPU, no AWQ. */
VLM_API vlm_model_params vlm_model_default_params(void);

/* Validates params and creates an empty model. *out receives the handle,
 * owned by the caller, released with vlm_model_free. */
VLM_API int vlm_model_create(const vlm_model_params* params, vlm_model** out);
VLM_API void vlm_model_free(vlm_model* model);

/* Copies one tensor into the model, converting it to the backend's layout
 * (dense weights are kept in their storage precision; AWQ tensors are
 * repacked once all three of a layer's qweight/qzeros/scales are set).
 * `data` is read during the call only (it may point into a memory-mapped
 * file). Names (i = layer index):
 *   embed_tokens [vocab, hidden]          norm [hidden]       lm_head [vocab, hidden]
 *   layers.i.input_layernorm [hidden]     layers.i.post_attention_layernorm [hidden]
 *   layers.i.{q,k,v,o,gate,up,down}_proj.weight   [out, in]        (dense)
 *   layers.i.{q,k,v,o,gate,up,down}_proj.qweight  int32 [in, out/8] (AWQ)
 *   layers.i.{q,k,v,o,gate,up,down}_proj.qzeros   int32 [in/g, out/8]
 *   layers.i.{q,k,v,o,gate,up,down}_proj.scales   f16 [in/g, out]
 *   layers.i.{q,k,v}_proj.bias [out]      (attention_bias only)
 * Float tensors may be F32, F16 or BF16. Wrong name, shape or dtype:
 * VLM_ERR_NOT_FOUND / VLM_ERR_INVALID_ARGUMENT with the expected shape. */
VLM_API int vlm_model_set_tensor(vlm_model* model, const char* name, int dtype,
                                 int ndim, const int64_t* shape, const void* data);

/* Checks that every tensor was set and makes the model usable by engines.
 * Missing tensors: VLM_ERR_FAILED_PRECONDITION naming the first one. */
VLM_API int vlm_model_finalize(vlm_model* model);

/* Bytes of weight memory the model holds. */
VLM_API int vlm_model_weight_bytes(const vlm_model* model, int64_t* out_bytes);

/* ------------------------------------------------------------------- engine */

typedef struct vlm_engine vlm_engine;

typedef struct vlm_engine_params {
  int32_t kv_dtype;              /* vlm_dtype: AUTO, F32, F16, BF16, I8, I4 */
  int32_t block_size;            /* tokens per KV block (power of two, 1..1024) */
  int64_t num_blocks;            /* >0: exact KV block count; 0: from cache_max_entry_count */
  float cache_max_entry_count;   /* fraction (0,1] of free memory given to the KV cache */
  int32_t max_batch_size;        /* most requests running at once */
  int32_t max_num_batched_tokens;/* per-step token budget (decode + prefill chunks) */
  int32_t max_model_len;         /* prompt + generated tokens per request; 0: model's max */
  int32_t tensor_parallel;       /* ranks (1..8) the model is split over: CUDA devices 0..tp-1, or
                                    CPU threads with a host all-reduce; heads, KV heads and the FFN
                                    must divide evenly (and AWQ groups stay whole) */
  int32_t prefill_hold_steps;    /* 0: a new request joins the next step. >0: while requests run, new ones
                                    wait to enter together, up to this many steps for the oldest (sooner
                                    when their prompts fill the step's token budget or the batch): fewer,
                                    fuller prefill steps. Requests back from preemption never wait */
} vlm_engine_params;

VLM_API vlm_engine_params vlm_engine_default_params(void);

/* Creates an engine on a finalized model and starts its decoding thread. The
 * engine borrows the model: free the engine before the model. */
VLM_API int vlm_engine_create(vlm_model* model, const vlm_engine_params* params,
                              vlm_engine** out);
/* Stops the decoding thread, drops every request (no events are delivered
 * afterwards) and frees all memory. */
VLM_API void vlm_engine_free(vlm_engine* engine);

/* One span of input embeddings written over placeholder tokens' embeddings:
 * rows [0, num_rows) replace the embeddings of prompt positions
 * [position, position + num_rows). `data` is [num_rows, hidden_size] of
 * `dtype` (F32, F16 or BF16); copied during vlm_engine_enqueue. */
typedef struct vlm_embedding_span {
  int32_t position;
  int32_t num_rows;
  int32_t dtype;
  const void* data;
} vlm_embedding_span;

typedef struct vlm_sampling_params {
  float temperature;        /* 0: greedy. >= 0 */
  int32_t top_k;            /* 0: off; else keep the k most likely */
  float top_p;              /* (0,1]; 1: off */
  float min_p;              /* [0,1); 0: off */
  float repetition_penalty; /* > 0; 1: off; HF semantics over prompt and output */
  uint64_t seed;            /* used when has_seed; same seed, same output */
  int32_t has_seed;
} vlm_sampling_params;

typedef struct vlm_request_params {
  const int32_t* prompt;    /* token ids, copied during enqueue */
  int32_t prompt_len;       /* >= 1 */
  int32_t max_new_tokens;   /* >= 1 */
  vlm_sampling_params sampling;
  int32_t eos_ids[VLM_MAX_EOS_IDS];  /* tokens that end generation */
  int32_t num_eos_ids;
  int32_t ignore_eos;       /* 1: generate max_new_tokens regardless of EOS */
  int32_t stop_sequences[VLM_MAX_STOP_SEQUENCES][VLM_MAX_STOP_SEQUENCE_LEN];
  int32_t stop_sequence_lens[VLM_MAX_STOP_SEQUENCES];
  int32_t num_stop_sequences;
  int32_t logprobs;         /* -1: none; 0: the sampled token's; n>0: also the top n (<= 20) */
  int32_t prompt_logprobs;  /* 1: one event with log p(prompt[i] | prompt[:i]) for i >= 1 */
  int32_t return_logits;    /* 1: raw logits rows for every prompt position and every output token */
  const vlm_embedding_span* spans;
  int32_t num_spans;
} vlm_request_params;

/* Defaults: greedy, max_new_tokens 16, no stops, no logprobs. */
VLM_API vlm_request_params vlm_request_default_params(void);

/* Validates and queues a request; it joins the running batch at the next
 * step. *out_id receives its id (> 0). Everything pointed to is copied. */
VLM_API int vlm_engine_enqueue(vlm_engine* engine, const vlm_request_params* params,
                               uint64_t* out_id);

/* Validates and queues num_requests requests together: all of them or, where
 * one is invalid, none (its error is returned, the message naming its index). They reach the scheduler at
 * once, so they start in the same step (as far as the token budget allows).
 * out_ids[i] receives request i's id. */
VLM_API int vlm_engine_enqueue_batch(vlm_engine* engine, const vlm_request_params* params,
                                     int32_t num_requests, uint64_t* out_ids);

/* Asks the engine to stop a request. Its KV blocks are freed before the next
 * step and a FINISH event with VLM_FINISH_CANCELLED follows. Unknown or
 * already finished id: VLM_ERR_NOT_FOUND. */
VLM_API int vlm_engine_cancel(vlm_engine* engine, uint64_t request_id);

typedef enum vlm_event_kind {
  VLM_EVENT_TOKEN = 1,          /* one generated token */
  VLM_EVENT_PROMPT_LOGPROBS = 2,/* data: prompt_len - 1 floats */
  VLM_EVENT_LOGITS = 3,         /* data: rows of vocab_size floats (token == row count) */
  VLM_EVENT_FINISH = 4          /* last event of a request */
} vlm_event_kind;

typedef enum vlm_finish_reason {
  VLM_FINISH_NONE = 0,
  VLM_FINISH_STOP = 1,      /* EOS or a stop sequence; stop_len trailing tokens belong to it */
  VLM_FINISH_LENGTH = 2,    /* max_new_tokens or max_model_len reached */
  VLM_FINISH_CANCELLED = 3,
  VLM_FINISH_ERROR = 4      /* message in `error` */
} vlm_finish_reason;

typedef struct vlm_event {
  uint64_t request_id;
  int32_t kind;             /* vlm_event_kind */
  int32_t token;            /* TOKEN: the id; LOGITS: number of rows */
  float logprob;            /* TOKEN with logprobs >= 0 */
  int32_t num_top;
  int32_t top_tokens[VLM_MAX_TOP_LOGPROBS];
  float top_logprobs[VLM_MAX_TOP_LOGPROBS];
  int32_t finish_reason;    /* FINISH */
  int32_t stop_len;         /* FINISH/STOP: trailing output tokens that matched the stop */
  int32_t prompt_tokens;    /* FINISH: usage */
  int32_t output_tokens;
  int32_t num_preemptions;
  int64_t queue_ns;         /* FINISH: enqueue -> first scheduled */
  int64_t prefill_ns;       /* first scheduled -> first token */
  int64_t decode_ns;        /* first token -> finish */
  const float* data;        /* PROMPT_LOGPROBS / LOGITS; owned by the engine */
  int64_t data_len;         /* floats in data */
  const char* error;        /* FINISH/ERROR message; owned by the engine */
} vlm_event;

/* Waits up to timeout_ms (0: don't wait, <0: forever) for events, then copies
 * up to max_events of them into `events` and sets *num_events. `data` and
 * `error` pointers stay valid until the next vlm_engine_poll on this engine.
 * Blocking here holds no Python lock (ctypes releases the GIL). */
VLM_API int vlm_engine_poll(vlm_engine* engine, int32_t timeout_ms, vlm_event* events,
                            int32_t max_events, int32_t* num_events);

typedef struct vlm_engine_stats {
  int32_t running_requests;
  int32_t waiting_requests;
  int64_t total_blocks;
  int64_t free_blocks;
  int32_t block_size;
  int32_t max_model_len;
  int64_t steps;
  int64_t preemptions;
  int64_t kv_cache_bytes;
  int64_t overlapped_steps; /* steps launched while the step before was still running (VLM_OVERLAP_STEPS) */
  int64_t dense_prefill_weight_bytes; /* device memory of 4-bit layers kept dequantized for prefill-sized GEMMs
                                         (VLM_PREFILL_DENSE_WEIGHTS=1 on CUDA); 0 otherwise */
  int64_t cutlass_weight_bytes; /* device memory of 4-bit layers' copies for the CUTLASS GEMM (VLM_W4A16_CUTLASS,
                                   on by default on Hopper builds that have it); 0 otherwise */
  int64_t gemv_weight_bytes; /* device memory of 4-bit layers' copies for the column-tile decode GEMM
                                (VLM_W4A16_GEMV, at one and two rows by default on Hopper GPUs, where a layer's q/k/v, o
                                and gate_up pay); 0 otherwise */
} vlm_engine_stats;

VLM_API int vlm_engine_get_stats(vlm_engine* engine, vlm_engine_stats* out);

#ifdef __cplusplus
}
#endif
#endif /* VLMCORE_H */
