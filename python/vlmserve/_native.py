"""Every ctypes declaration of libvlmcore, mirroring native/include/vlmcore.h.

The library is found, in order, at $VLMSERVE_LIB, inside the installed
package (vlmserve/lib/), or in the source tree's build/ folder.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

ABI_VERSION = 6
MAX_TOP_LOGPROBS = 20
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_LEN = 16
MAX_EOS_IDS = 8

# vlm_dtype
DTYPE_AUTO, DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_I32, DTYPE_I8, DTYPE_I4 = range(7)
# vlm_device
DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA = range(3)
# vlm_rope_scaling
ROPE_NONE, ROPE_LINEAR, ROPE_LLAMA3 = range(3)
# vlm_event_kind
EVENT_TOKEN, EVENT_PROMPT_LOGPROBS, EVENT_LOGITS, EVENT_FINISH = 1, 2, 3, 4
# vlm_finish_reason
FINISH_NONE, FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = range(5)


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("vocab_size", ctypes.c_int32),
        ("hidden_size", ctypes.c_int32),
        ("intermediate_size", ctypes.c_int32),
        ("num_layers", ctypes.c_int32),
        ("num_heads", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("rms_norm_eps", ctypes.c_float),
        ("rope_theta", ctypes.c_float),
        ("rope_scaling", ctypes.c_int32),
        ("rope_factor", ctypes.c_float),
        ("rope_low_freq_factor", ctypes.c_float),
        ("rope_high_freq_factor", ctypes.c_float),
        ("rope_original_max_position", ctypes.c_int32),
        ("max_position_embeddings", ctypes.c_int32),
        ("sliding_window", ctypes.c_int32),
        ("attention_bias", ctypes.c_int32),
        ("tie_word_embeddings", ctypes.c_int32),
        ("awq_group_size", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
    ]


class EngineParams(ctypes.Structure):
    _fields_ = [
        ("kv_dtype", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("num_blocks", ctypes.c_int64),
        ("cache_max_entry_count", ctypes.c_float),
        ("max_batch_size", ctypes.c_int32),
        ("max_num_batched_tokens", ctypes.c_int32),
        ("max_model_len", ctypes.c_int32),
        ("tensor_parallel", ctypes.c_int32),
        ("prefill_hold_steps", ctypes.c_int32),
    ]


class EmbeddingSpan(ctypes.Structure):
    _fields_ = [
        ("position", ctypes.c_int32),
        ("num_rows", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("data", ctypes.c_void_p),
    ]


class SamplingParams(ctypes.Structure):
    _fields_ = [
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repetition_penalty", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("has_seed", ctypes.c_int32),
    ]


class RequestParams(ctypes.Structure):
    _fields_ = [
        ("prompt", ctypes.POINTER(ctypes.c_int32)),
        ("prompt_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("sampling", SamplingParams),
        ("eos_ids", ctypes.c_int32 * MAX_EOS_IDS),
        ("num_eos_ids", ctypes.c_int32),
        ("ignore_eos", ctypes.c_int32),
        ("stop_sequences", (ctypes.c_int32 * MAX_STOP_SEQUENCE_LEN) * MAX_STOP_SEQUENCES),
        ("stop_sequence_lens", ctypes.c_int32 * MAX_STOP_SEQUENCES),
        ("num_stop_sequences", ctypes.c_int32),
        ("logprobs", ctypes.c_int32),
        ("prompt_logprobs", ctypes.c_int32),
        ("return_logits", ctypes.c_int32),
        ("spans", ctypes.POINTER(EmbeddingSpan)),
        ("num_spans", ctypes.c_int32),
    ]


class Event(ctypes.Structure):
    _fields_ = [
        ("request_id", ctypes.c_uint64),
        ("kind", ctypes.c_int32),
        ("token", ctypes.c_int32),
        ("logprob", ctypes.c_float),
        ("num_top", ctypes.c_int32),
        ("top_tokens", ctypes.c_int32 * MAX_TOP_LOGPROBS),
        ("top_logprobs", ctypes.c_float * MAX_TOP_LOGPROBS),
        ("finish_reason", ctypes.c_int32),
        ("stop_len", ctypes.c_int32),
        ("prompt_tokens", ctypes.c_int32),
        ("output_tokens", ctypes.c_int32),
        ("num_preemptions", ctypes.c_int32),
        ("queue_ns", ctypes.c_int64),
        ("prefill_ns", ctypes.c_int64),
        ("decode_ns", ctypes.c_int64),
        ("data", ctypes.POINTER(ctypes.c_float)),
        ("data_len", ctypes.c_int64),
        ("error", ctypes.c_char_p),
    ]


class EngineStats(ctypes.Structure):
    _fields_ = [
        ("running_requests", ctypes.c_int32),
        ("waiting_requests", ctypes.c_int32),
        ("total_blocks", ctypes.c_int64),
        ("free_blocks", ctypes.c_int64),
        ("block_size", ctypes.c_int32),
        ("max_model_len", ctypes.c_int32),
        ("steps", ctypes.c_int64),
        ("preemptions", ctypes.c_int64),
        ("kv_cache_bytes", ctypes.c_int64),
        ("overlapped_steps", ctypes.c_int64),
        ("dense_prefill_weight_bytes", ctypes.c_int64),
        ("cutlass_weight_bytes", ctypes.c_int64),
        ("gemv_weight_bytes", ctypes.c_int64),
    ]


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found = []
    if os.environ.get("VLMSERVE_LIB"):
        found.append(Path(os.environ["VLMSERVE_LIB"]))
    found.append(here / "lib" / "libvlmcore.so")
    found.append(here.parents[1] / "build" / "libvlmcore.so")
    return found


def _point_at_nccl() -> None:
    """Tensor parallelism on CUDA opens NCCL at run time: name pip's copy (the one
    torch uses) in VLM_NCCL_LIBRARY unless the caller already chose one."""
    if os.environ.get("VLM_NCCL_LIBRARY"):
        return
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "nccl" / "lib" / "libnccl.so.2"
        if candidate.is_file():
            os.environ["VLM_NCCL_LIBRARY"] = str(candidate)
            return


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    sigs = {
        "vlm_abi_version": (c.c_int, []),
        "vlm_last_error": (c.c_char_p, []),
        "vlm_status_name": (c.c_char_p, [c.c_int]),
        "vlm_cuda_device_count": (c.c_int, []),
        "vlm_kv_quantize": (c.c_int, [c.c_void_p, c.c_int32, c.c_int32, c.c_void_p, c.POINTER(c.c_uint16),
                                      c.POINTER(c.c_uint16)]),
        "vlm_model_default_params": (ModelParams, []),
        "vlm_model_create": (c.c_int, [c.POINTER(ModelParams), c.POINTER(c.c_void_p)]),
        "vlm_model_free": (None, [c.c_void_p]),
        "vlm_model_set_tensor": (c.c_int, [c.c_void_p, c.c_char_p, c.c_int, c.c_int,
                                           c.POINTER(c.c_int64), c.c_void_p]),
        "vlm_model_finalize": (c.c_int, [c.c_void_p]),
        "vlm_model_weight_bytes": (c.c_int, [c.c_void_p, c.POINTER(c.c_int64)]),
        "vlm_engine_default_params": (EngineParams, []),
        "vlm_engine_create": (c.c_int, [c.c_void_p, c.POINTER(EngineParams), c.POINTER(c.c_void_p)]),
        "vlm_engine_free": (None, [c.c_void_p]),
        "vlm_request_default_params": (RequestParams, []),
        "vlm_engine_enqueue": (c.c_int, [c.c_void_p, c.POINTER(RequestParams), c.POINTER(c.c_uint64)]),
        "vlm_engine_enqueue_batch": (c.c_int, [c.c_void_p, c.POINTER(RequestParams), c.c_int32,
                                               c.POINTER(c.c_uint64)]),
        "vlm_engine_cancel": (c.c_int, [c.c_void_p, c.c_uint64]),
        "vlm_engine_poll": (c.c_int, [c.c_void_p, c.c_int32, c.POINTER(Event), c.c_int32,
                                      c.POINTER(c.c_int32)]),
        "vlm_engine_get_stats": (c.c_int, [c.c_void_p, c.POINTER(EngineStats)]),
        # vlmcore_kernels.h: single kernels for tests and benchmarks
        "vlm_w4a16_packed_sizes": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.POINTER(c.c_int64),
                                             c.POINTER(c.c_int64)]),
        "vlm_w4a16_pack": (c.c_int, [c.c_void_p, c.c_void_p, c.c_void_p, c.c_int32, c.c_int32, c.c_int32,
                                     c.c_int32, c.c_void_p, c.c_void_p]),
        "vlm_w4a16_workspace_bytes": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.c_int32,
                                                c.POINTER(c.c_int64)]),
        "vlm_w4a16_wgmma_form": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.c_int32, c.POINTER(c.c_int32)]),
        "vlm_w4a16_wgmma_plan": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.c_int32, c.POINTER(c.c_int32),
                                           c.POINTER(c.c_int32)]),
        "vlm_w4a16_decode_plan": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.c_int32]
                                  + [c.POINTER(c.c_int32)] * 4),
        "vlm_w4a16_dequant_gemm_min_rows": (c.c_int, [c.POINTER(c.c_int32)]),
        "vlm_w4a16_gemm": (c.c_int, [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_int32,
                                     c.c_int32, c.c_int32, c.c_int32, c.c_int32, c.c_void_p, c.c_void_p]),
        "vlm_w4a16_gemm_rms_norm": (c.c_int, [c.c_void_p] * 3 + [c.c_float] + [c.c_void_p] * 4 + [c.c_int32] * 5
                                    + [c.c_void_p]),
        "vlm_w4a16_gemv_repack": (c.c_int, [c.c_void_p, c.c_void_p, c.c_int32, c.c_int32, c.c_void_p]),
        "vlm_w4a16_gemv_k_parts": (c.c_int, [c.c_int32] * 4 + [c.POINTER(c.c_int32)]),
        "vlm_w4a16_gemv": (c.c_int, [c.c_void_p] * 5 + [c.c_int32] * 7 + [c.c_void_p]),
        "vlm_w4a16_gemv_rms_norm": (c.c_int, [c.c_void_p] * 3 + [c.c_float] + [c.c_void_p] * 4 + [c.c_int32] * 6
                                    + [c.c_void_p]),
        "vlm_dense_decode_gemm": (c.c_int, [c.c_void_p] * 3 + [c.c_int32] * 5 + [c.c_void_p]),
        "vlm_dense_decode_logits": (c.c_int, [c.c_void_p] * 3 + [c.c_int32] * 5 + [c.c_void_p] * 4),
        "vlm_dense_decode_argmax_workspace_bytes": (c.c_int, [c.POINTER(c.c_int64)]),
        "vlm_dense_decode_gemm_rms_norm": (c.c_int, [c.c_void_p] * 3 + [c.c_float] + [c.c_void_p] * 3
                                           + [c.c_int32] * 4 + [c.c_void_p]),
        "vlm_add_rms_norm": (c.c_int, [c.c_void_p] * 3 + [c.c_float, c.c_void_p] + [c.c_int32] * 3 + [c.c_void_p]),
        "vlm_argmax_rows_workspace_bytes": (c.c_int, [c.c_int32, c.c_int32, c.POINTER(c.c_int64)]),
        "vlm_argmax_rows": (c.c_int, [c.c_void_p, c.c_int32, c.c_int32, c.c_void_p, c.c_void_p, c.c_void_p,
                                      c.c_void_p]),
        "vlm_w4a16_dequantize": (c.c_int, [c.c_void_p, c.c_void_p, c.c_void_p, c.c_int32, c.c_int32, c.c_int32,
                                           c.c_int32, c.c_void_p]),
        "vlm_w4a16_cutlass_built": (c.c_int, [c.POINTER(c.c_int32)]),
        "vlm_w4a16_cutlass_prepared_bytes": (c.c_int, [c.c_int32, c.c_int32, c.c_int32, c.POINTER(c.c_int64)]),
        "vlm_w4a16_cutlass_prepare": (c.c_int, [c.c_void_p] * 4 + [c.c_int32] * 4 + [c.c_void_p]),
        "vlm_w4a16_cutlass_workspace_bytes": (c.c_int, [c.c_int32] * 5 + [c.POINTER(c.c_int64)]),
        "vlm_w4a16_cutlass_gemm": (c.c_int, [c.c_void_p] * 3 + [c.c_int32] * 5 + [c.c_void_p, c.c_int64, c.c_void_p]),
        "vlm_w4a16_cutlass_engine_takes": (c.c_int, [c.c_int32] * 4 + [c.POINTER(c.c_int32)]),
        "vlm_w4a16_cutlass_tiles": (c.c_int, [c.c_int32] * 5 + [c.POINTER(c.c_int32)] * 4),
        "vlm_draw_rows": (c.c_int, [c.c_void_p, c.c_int32, c.c_int32] + [c.c_void_p] * 7),
        "vlm_stream_read_sink_words": (c.c_int, [c.POINTER(c.c_int32)]),
        "vlm_stream_read": (c.c_int, [c.c_void_p, c.c_int64, c.c_void_p, c.c_void_p]),
        "vlm_step_probe_grid": (c.c_int, [c.c_int32, c.c_int32, c.POINTER(c.c_int32)]),
        "vlm_step_stream_probe": (c.c_int, [c.c_void_p, c.POINTER(c.c_int64), c.c_int32, c.c_int32, c.c_int32,
                                            c.c_int32, c.c_void_p, c.c_void_p, c.c_void_p, c.c_int32, c.c_void_p]),
        "vlm_prefill_attention_workspace_bytes": (c.c_int, [c.c_int32, c.c_int32, c.POINTER(c.c_int64)]),
        "vlm_prefill_attention": (c.c_int, [c.c_void_p, c.c_void_p] + [c.c_int32] * 7 + [c.c_void_p] * 6
                                  + [c.c_int32, c.c_void_p, c.c_int32, c.c_int32, c.c_void_p, c.c_void_p]),
        "vlm_decode_attention_workspace_bytes": (c.c_int, [c.c_int32] * 5 + [c.POINTER(c.c_int64)]),
        "vlm_decode_attention_form": (c.c_int, [c.c_int32] * 6 + [c.POINTER(c.c_int32)]),
        "vlm_decode_attention": (c.c_int, [c.c_void_p, c.c_void_p] + [c.c_int32] * 7
                                 + [c.c_void_p] * 6 + [c.c_int32] * 3 + [c.c_void_p, c.c_void_p]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """The loaded library (CDLL: every call releases the GIL while it runs)."""
    global _lib
    if _lib is not None:
        return _lib
    tried = []
    _point_at_nccl()
    for path in _candidates():
        if path.is_file():
            loaded = ctypes.CDLL(str(path))
            _declare(loaded)
            version = loaded.vlm_abi_version()
            if version != ABI_VERSION:
                raise RuntimeError(f"{path} has ABI version {version}, this package needs {ABI_VERSION}")
            _lib = loaded
            return _lib
        tried.append(str(path))
    raise RuntimeError("libvlmcore.so not found; build it with `make native` or set VLMSERVE_LIB. Tried: "
                       + ", ".join(tried))
