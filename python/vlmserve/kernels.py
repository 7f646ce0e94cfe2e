"""Single kernels of libvlmcore on torch tensors, for kernel tests and
benchmarks (vlmcore_kernels.h). Serving code goes through Engine instead."""
from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np

from vlmserve import _native
from vlmserve.errors import InvalidArgumentError, check


def _act_dtype(bf16: bool) -> int:
    """The library's code for the activation dtype."""
    return _native.DTYPE_BF16 if bf16 else _native.DTYPE_F16


def _stream(device) -> ctypes.c_void_p:
    """torch's current CUDA stream on `device`, for the library's stream arguments."""
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def pack_w4a16(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int,
               bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """AutoAWQ tensors -> (packed weights uint8, packed scales/zeros uint16) in the tensor-core layout."""
    k, n8 = qweight.shape
    n = n8 * 8
    wb, szb = ctypes.c_int64(), ctypes.c_int64()
    check(_native.lib().vlm_w4a16_packed_sizes(n, k, group_size, ctypes.byref(wb), ctypes.byref(szb)))
    packed = np.zeros(wb.value, dtype=np.uint8)
    sz = np.zeros(szb.value // 2, dtype=np.uint16)
    qweight = np.ascontiguousarray(qweight, dtype=np.int32)
    qzeros = np.ascontiguousarray(qzeros, dtype=np.int32)
    scales = np.ascontiguousarray(scales, dtype=np.float16)
    dtype = _act_dtype(bf16)
    check(_native.lib().vlm_w4a16_pack(qweight.ctypes.data, qzeros.ctypes.data, scales.ctypes.data, n, k,
                                       group_size, dtype, packed.ctypes.data, sz.ctypes.data))
    return packed, sz


def w4a16_workspace_bytes(m: int, n: int, k: int, group_size: int) -> int:
    out = ctypes.c_int64()
    check(_native.lib().vlm_w4a16_workspace_bytes(m, n, k, group_size, ctypes.byref(out)))
    return out.value


def w4a16_wgmma_form(m: int, n: int, k: int, group_size: int) -> int:
    """The Hopper wgmma form w4a16_gemm runs at this shape here: 0 none, 1 block form, 2 strip form."""
    out = ctypes.c_int32()
    check(_native.lib().vlm_w4a16_wgmma_form(m, n, k, group_size, ctypes.byref(out)))
    return out.value


def w4a16_wgmma_plan(m: int, n: int, k: int, group_size: int) -> tuple[int, bool]:
    """(K slices, summed in thread-block clusters) of the wgmma form at this shape here; (0, False) if none."""
    splits, cluster = ctypes.c_int32(), ctypes.c_int32()
    check(_native.lib().vlm_w4a16_wgmma_plan(m, n, k, group_size, ctypes.byref(splits), ctypes.byref(cluster)))
    return splits.value, bool(cluster.value)


def w4a16_decode_plan(m: int, n: int, k: int, group_size: int) -> tuple[int, int, int, int]:
    """(strips of 64 columns a block, K slices a cluster, k16 steps a unit, ring stages a warp) of the decode-size
    kernel at this shape here; (0, 0, 0, 0) where that kernel does not run it."""
    out = [ctypes.c_int32() for _ in range(4)]
    check(_native.lib().vlm_w4a16_decode_plan(m, n, k, group_size, *(ctypes.byref(o) for o in out)))
    return tuple(o.value for o in out)


def w4a16_dequant_gemm_min_rows() -> int:
    """Rows from which the engine dequantizes a w4a16 layer and multiplies it with cuBLAS (no wgmma form)."""
    out = ctypes.c_int32()
    check(_native.lib().vlm_w4a16_dequant_gemm_min_rows(ctypes.byref(out)))
    return out.value


def w4a16_gemm(a, packed, scale_zero, n: int, group_size: int, residual=None, out=None, workspace=None):
    """a [M, K] fp16/bf16 CUDA tensor -> [M, N] on torch's current stream."""
    import torch

    m, k = a.shape
    bf16 = a.dtype == torch.bfloat16
    if out is None:
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if workspace is None:
        ws = w4a16_workspace_bytes(m, n, k, group_size)
        workspace = torch.zeros(max(ws, 1), dtype=torch.uint8, device=a.device)
    check(_native.lib().vlm_w4a16_gemm(
        a.data_ptr(), packed.data_ptr(), scale_zero.data_ptr(),
        residual.data_ptr() if residual is not None else None, out.data_ptr(), m, n, k, group_size,
        _act_dtype(bf16), workspace.data_ptr(),
        _stream(a.device)))
    return out


def w4a16_gemm_rms_norm(h, delta, norm_weight, eps: float, packed, scale_zero, n: int, group_size: int,
                        h_out=None, out=None, dtype=None):
    """rms_norm(h + delta) * norm_weight · dequant(W)ᵀ in one launch (vlm_w4a16_gemm_rms_norm): h and
    norm_weight float32 CUDA tensors ([M, K], [K]), delta [M, K] in the act dtype or None; h + delta is
    written to h_out where given. The act dtype is delta's, else `dtype` (default float16). Returns
    out [M, N]."""
    import torch

    m, k = h.shape
    dtype = delta.dtype if delta is not None else (dtype or torch.float16)
    if out is None:
        out = torch.empty(m, n, dtype=dtype, device=h.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_w4a16_gemm_rms_norm(
        h.data_ptr(), ptr(delta), norm_weight.data_ptr(), eps, ptr(h_out), packed.data_ptr(), scale_zero.data_ptr(),
        out.data_ptr(), m, n, k, group_size, _act_dtype(dtype == torch.bfloat16),
        _stream(h.device)))
    return out


def _require_cuda(name: str, **tensors) -> None:
    """Refuses anything but contiguous CUDA tensors (a host pointer handed to a kernel faults on the device)."""
    for arg, t in tensors.items():
        if t is not None and not (getattr(t, "is_cuda", False) and t.is_contiguous()):
            raise InvalidArgumentError(f"{name}: {arg} must be a contiguous CUDA tensor")


def w4a16_gemv_repack(packed, n: int, k: int):
    """The column-tile kernel's copy of a packed layer (vlm_w4a16_gemv_repack): a uint8 CUDA tensor of the same
    size, on torch's current stream."""
    import torch

    _require_cuda("w4a16_gemv_repack", packed=packed)
    out = torch.empty_like(packed)
    check(_native.lib().vlm_w4a16_gemv_repack(packed.data_ptr(), out.data_ptr(), n, k, _stream(packed.device)))
    return out


def w4a16_gemv_k_parts(m: int, n: int, k: int, group_size: int) -> int:
    """Warps a 16-column tile of the column-tile kernel at this shape here (0: it does not run the shape)."""
    out = ctypes.c_int32()
    check(_native.lib().vlm_w4a16_gemv_k_parts(m, n, k, group_size, ctypes.byref(out)))
    return out.value


def w4a16_gemv(a, gemv_weight, scale_zero, n: int, group_size: int, residual=None, out=None,
               gate_up_input: bool = False, k_parts: int = 0):
    """The column-tile kernel (vlm_w4a16_gemv): a [M, K] (or [M, 2K] of [gate | up] rows with gate_up_input)
    fp16/bf16 CUDA tensor, the layer from w4a16_gemv_repack and its packed scales and zeros -> [M, N]. k_parts:
    warps a tile, 0 for the kernel's own choice (w4a16_gemv_k_parts) or 1, 2, 4, 8 to pin it."""
    import torch

    _require_cuda("w4a16_gemv", a=a, gemv_weight=gemv_weight, scale_zero=scale_zero, residual=residual, out=out)
    m = a.shape[0]
    k = a.shape[1] // 2 if gate_up_input else a.shape[1]
    if out is None:
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    check(_native.lib().vlm_w4a16_gemv(
        a.data_ptr(), gemv_weight.data_ptr(), scale_zero.data_ptr(),
        residual.data_ptr() if residual is not None else None, out.data_ptr(), m, n, k, group_size,
        _act_dtype(a.dtype == torch.bfloat16), int(gate_up_input), k_parts, _stream(a.device)))
    return out


def w4a16_gemv_rms_norm(h, delta, norm_weight, eps: float, gemv_weight, scale_zero, n: int, group_size: int,
                        h_out=None, out=None, dtype=None, k_parts: int = 0):
    """w4a16_gemm_rms_norm's contract through the column-tile kernel (vlm_w4a16_gemv_rms_norm); k_parts as
    w4a16_gemv's."""
    import torch

    _require_cuda("w4a16_gemv_rms_norm", h=h, delta=delta, norm_weight=norm_weight, gemv_weight=gemv_weight,
                  scale_zero=scale_zero, h_out=h_out, out=out)
    m, k = h.shape
    dtype = delta.dtype if delta is not None else (dtype or torch.float16)
    if out is None:
        out = torch.empty(m, n, dtype=dtype, device=h.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_w4a16_gemv_rms_norm(
        h.data_ptr(), ptr(delta), norm_weight.data_ptr(), eps, ptr(h_out), gemv_weight.data_ptr(),
        scale_zero.data_ptr(), out.data_ptr(), m, n, k, group_size, _act_dtype(dtype == torch.bfloat16), k_parts,
        _stream(h.device)))
    return out


def dense_decode_gemm(a, w, gate_up_input: bool = False, out=None):
    """a [M, K] (or [M, 2K] of [gate | up] rows with gate_up_input: the GEMM reads silu(gate) * up) and
    w [N, K], fp16/bf16 CUDA tensors, M <= 4 -> a · wᵀ [M, N] on torch's current stream
    (vlm_dense_decode_gemm, the unquantized models' decode-size GEMM)."""
    import torch

    m, n, k = a.shape[0], w.shape[0], w.shape[1]
    if a.dtype != w.dtype or a.shape[1] != (2 * k if gate_up_input else k) or not (a.is_contiguous() and
                                                                                  w.is_contiguous()):
        raise InvalidArgumentError(f"dense_decode_gemm takes contiguous a [M, {'2K' if gate_up_input else 'K'}] and "
                                   f"w [N, K] of one dtype, got a {tuple(a.shape)} {a.dtype}, w {tuple(w.shape)} "
                                   f"{w.dtype}")
    if out is None:
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    check(_native.lib().vlm_dense_decode_gemm(a.data_ptr(), w.data_ptr(), out.data_ptr(), m, n, k,
                                              _act_dtype(a.dtype == torch.bfloat16), int(gate_up_input),
                                              _stream(a.device)))
    return out


def dense_decode_logits(a, w, l2_evict_first: bool = True, out=None, argmax: bool = False):
    """a [M, K] and w [N, K], fp16/bf16 CUDA tensors, M <= 4 -> a · wᵀ as float32 [M, N] on torch's
    current stream (vlm_dense_decode_logits, the lm head at decode sizes); l2_evict_first: w's loads
    carry an L2 evict_first policy. argmax (M = 1): returns (logits, index int32 [1], value float32 [1]),
    the greedy token taken by the same kernel."""
    import torch

    m, n, k = a.shape[0], w.shape[0], w.shape[1]
    if a.dtype != w.dtype or a.shape[1] != k or not (a.is_contiguous() and w.is_contiguous()):
        raise InvalidArgumentError(f"dense_decode_logits takes contiguous a [M, K] and w [N, K] of one dtype, got a "
                                   f"{tuple(a.shape)} {a.dtype}, w {tuple(w.shape)} {w.dtype}")
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32, device=a.device)
    elif out.dtype != torch.float32 or tuple(out.shape) != (m, n) or not out.is_contiguous():
        raise InvalidArgumentError(f"dense_decode_logits writes a contiguous float32 out [{m}, {n}], got "
                                   f"{tuple(out.shape)} {out.dtype}")
    index = value = workspace = None
    if argmax:
        ws = ctypes.c_int64()
        check(_native.lib().vlm_dense_decode_argmax_workspace_bytes(ctypes.byref(ws)))
        workspace = torch.empty(ws.value, dtype=torch.uint8, device=a.device)
        index = torch.full((1,), -1, dtype=torch.int32, device=a.device)  # poisoned
        value = torch.full((1,), float("nan"), dtype=torch.float32, device=a.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_dense_decode_logits(a.data_ptr(), w.data_ptr(), out.data_ptr(), m, n, k,
                                                _act_dtype(a.dtype == torch.bfloat16), int(l2_evict_first),
                                                ptr(index), ptr(value), ptr(workspace), _stream(a.device)))
    return (out, index, value) if argmax else out


def dense_decode_gemm_rms_norm(h, delta, norm_weight, eps: float, w, h_out=None, out=None):
    """rms_norm(h + delta) * norm_weight · wᵀ in one launch (vlm_dense_decode_gemm_rms_norm): h and
    norm_weight float32 CUDA tensors ([M, K], [K]), delta [M, K] in w's dtype or None, w [N, K];
    h + delta is written to h_out where given. Returns out [M, N] in w's dtype."""
    import torch

    m, k = h.shape
    n = w.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=w.dtype, device=h.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_dense_decode_gemm_rms_norm(
        h.data_ptr(), ptr(delta), norm_weight.data_ptr(), eps, ptr(h_out), w.data_ptr(), out.data_ptr(), m, n, k,
        _act_dtype(w.dtype == torch.bfloat16), _stream(h.device)))
    return out


def add_rms_norm(h, delta, weight, eps: float, out=None, dtype=None):
    """The engine's residual update and norm (vlm_add_rms_norm): h float32 [rows, hidden] CUDA tensor,
    updated in place to h + delta (delta in the act dtype, or None); returns rms_norm(h) * weight in the
    act dtype (delta's, else `dtype`, default float16)."""
    import torch

    rows, hidden = h.shape
    dtype = delta.dtype if delta is not None else (dtype or torch.float16)
    if out is None:
        out = torch.empty(rows, hidden, dtype=dtype, device=h.device)
    check(_native.lib().vlm_add_rms_norm(
        h.data_ptr(), None if delta is None else delta.data_ptr(), weight.data_ptr(), eps, out.data_ptr(), rows,
        hidden, _act_dtype(dtype == torch.bfloat16),
        _stream(h.device)))
    return out


def argmax_rows(logits):
    """(index int32 [rows], value float32 [rows]) of a float32 [rows, vocab] CUDA tensor: the first index of
    each row's largest value, NaNs never winning (vlm_argmax_rows, the engine's greedy token)."""
    import torch

    if logits.dim() != 2 or logits.dtype != torch.float32 or not logits.is_contiguous():
        raise InvalidArgumentError(f"argmax_rows takes a contiguous float32 [rows, vocab] tensor, got "
                                   f"{logits.dtype} {tuple(logits.shape)}")
    rows, vocab = logits.shape
    ws = ctypes.c_int64()
    check(_native.lib().vlm_argmax_rows_workspace_bytes(rows, vocab, ctypes.byref(ws)))
    workspace = torch.empty(ws.value, dtype=torch.uint8, device=logits.device)
    index = torch.full((rows,), -1, dtype=torch.int32, device=logits.device)  # poisoned
    value = torch.full((rows,), float("nan"), dtype=torch.float32, device=logits.device)
    check(_native.lib().vlm_argmax_rows(logits.data_ptr(), rows, vocab, index.data_ptr(), value.data_ptr(),
                                        workspace.data_ptr(), _stream(logits.device)))
    return index, value


def w4a16_dequantize(packed, scale_zero, n: int, k: int, group_size: int, bf16: bool = False, out=None):
    """The packed layer as W [N, K] fp16/bf16 on the device of `packed` (vlm_w4a16_dequantize)."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float16
    if out is None:
        out = torch.empty(n, k, dtype=dtype, device=packed.device)
    check(_native.lib().vlm_w4a16_dequantize(
        packed.data_ptr(), scale_zero.data_ptr(), out.data_ptr(), n, k, group_size,
        _act_dtype(bf16),
        _stream(packed.device)))
    return out


def w4a16_cutlass_built() -> bool:
    """Whether this library has the CUTLASS prefill-size w4a16 GEMM (Hopper builds that found CUTLASS)."""
    out = ctypes.c_int32()
    check(_native.lib().vlm_w4a16_cutlass_built(ctypes.byref(out)))
    return bool(out.value)


def w4a16_cutlass_prepare(packed, scale_zero, n: int, k: int, group_size: int, bf16: bool = False):
    """The layer's copy for the CUTLASS GEMM (uint8 CUDA tensor), made on the device of `packed`."""
    import torch

    size = ctypes.c_int64()
    check(_native.lib().vlm_w4a16_cutlass_prepared_bytes(n, k, group_size, ctypes.byref(size)))
    prepared = torch.empty(size.value, dtype=torch.uint8, device=packed.device)
    scratch = torch.empty(n * k // 2, dtype=torch.uint8, device=packed.device)
    check(_native.lib().vlm_w4a16_cutlass_prepare(
        packed.data_ptr(), scale_zero.data_ptr(), prepared.data_ptr(), scratch.data_ptr(), n, k, group_size,
        _act_dtype(bf16), _stream(packed.device)))
    return prepared


def w4a16_cutlass_workspace_bytes(m: int, n: int, k: int, group_size: int, bf16: bool = False) -> int:
    """Workspace bytes the CUTLASS GEMM needs for this shape (0 where it splits no tile)."""
    out = ctypes.c_int64()
    check(_native.lib().vlm_w4a16_cutlass_workspace_bytes(m, n, k, group_size, _act_dtype(bf16), ctypes.byref(out)))
    return out.value


def w4a16_cutlass_gemm(a, prepared, n: int, group_size: int, out=None, workspace=None):
    """a [M, K] fp16/bf16 CUDA tensor · dequant(W)ᵀ -> [M, N] through the CUTLASS GEMM, on torch's current
    stream; `prepared` from w4a16_cutlass_prepare with the same dtype; `workspace` (a CUDA tensor of at least
    w4a16_cutlass_workspace_bytes bytes) is made when not given."""
    import torch

    m, k = a.shape
    bf16 = a.dtype == torch.bfloat16
    if out is None:
        out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if workspace is None:
        workspace = torch.empty(max(1, w4a16_cutlass_workspace_bytes(m, n, k, group_size, bf16)), dtype=torch.uint8,
                                device=a.device)
    check(_native.lib().vlm_w4a16_cutlass_gemm(
        a.data_ptr(), prepared.data_ptr(), out.data_ptr(), m, n, k, group_size, _act_dtype(bf16),
        workspace.data_ptr(), workspace.numel() * workspace.element_size(), _stream(a.device)))
    return out


def w4a16_cutlass_engine_takes(m: int, n: int, k: int, group_size: int) -> bool:
    """Whether the engine runs a tensor-core w4a16 layer of this shape at m rows through the CUTLASS GEMM here
    (VLM_W4A16_CUTLASS on, built, a Hopper GPU, a shape it takes, rows in its window); False without CUDA."""
    out = ctypes.c_int32()
    check(_native.lib().vlm_w4a16_cutlass_engine_takes(m, n, k, group_size, ctypes.byref(out)))
    return bool(out.value)


class CutlassTiles(NamedTuple):
    """The tiles of one CUTLASS GEMM call: weight rows, tokens and K a tile, and its tile scheduler."""

    tile_m: int
    tile_n: int
    tile_k: int
    stream_k: bool


def w4a16_cutlass_tiles(m: int, n: int, k: int, group_size: int, num_sms: int = 0) -> CutlassTiles | None:
    """The tiles the CUTLASS GEMM runs this shape with (chosen by the layer and the VLM_W4A16_CUTLASS_TILE_* /
    _STREAMK settings, read once per process): on this device (num_sms 0), or on a compute capability 9.0 GPU of
    num_sms SMs, answered without one. None where it does not run here (num_sms 0), is not built, or does not take
    the shape. Bad shapes and a negative num_sms raise InvalidArgumentError."""
    out = [ctypes.c_int32() for _ in range(4)]
    check(_native.lib().vlm_w4a16_cutlass_tiles(m, n, k, group_size, num_sms, *(ctypes.byref(o) for o in out)))
    tm, tn, tk, sk = (o.value for o in out)
    return CutlassTiles(tm, tn, tk, bool(sk)) if tm else None


def draw_rows(logits, temperature, top_k, top_p, min_p, u, tokens):
    """Sampled rows' tokens drawn on the GPU (vlm_draw_rows) into `tokens` (int32 [rows], left alone where the
    temperature is not > 0): logits float32 [rows, vocab]; temperature, top_p, min_p float32 [rows]; top_k int32
    [rows]; u float64 [rows] in [0, 1); all CUDA tensors. Returns tokens."""
    import torch

    if logits.dim() != 2:
        raise InvalidArgumentError(f"draw_rows: logits must be [rows, vocab], got shape {tuple(logits.shape)}")
    rows, vocab = logits.shape
    want = [(logits, torch.float32), (temperature, torch.float32), (top_k, torch.int32), (top_p, torch.float32),
            (min_p, torch.float32), (u, torch.float64), (tokens, torch.int32)]
    for i, (t, dtype) in enumerate(want):
        if t.dtype != dtype or not t.is_contiguous() or not t.is_cuda or (i > 0 and tuple(t.shape) != (rows,)):
            raise InvalidArgumentError(f"draw_rows: argument {i} must be a contiguous {dtype} CUDA tensor"
                                       + ("" if i == 0 else f" of shape ({rows},)"))
    check(_native.lib().vlm_draw_rows(logits.data_ptr(), rows, vocab, temperature.data_ptr(), top_k.data_ptr(),
                                      top_p.data_ptr(), min_p.data_ptr(), u.data_ptr(), tokens.data_ptr(),
                                      _stream(logits.device)))
    return tokens


def stream_read_sink(device):
    """A device buffer for stream_read()'s per-block words (vlm_stream_read_sink_words of them)."""
    import torch

    words = ctypes.c_int32()
    check(_native.lib().vlm_stream_read_sink_words(ctypes.byref(words)))
    return torch.empty(words.value, dtype=torch.int32, device=device)


def stream_read(buf, sink) -> None:
    """Reads the bytes of `buf` (a contiguous CUDA tensor, a multiple of 16 bytes) once in one kernel
    (vlm_stream_read), on torch's current stream: the floor a kernel reading those bytes cannot beat."""
    if not buf.is_contiguous() or not buf.is_cuda:
        raise InvalidArgumentError("stream_read: the buffer must be a contiguous CUDA tensor")
    check(_native.lib().vlm_stream_read(buf.data_ptr(), buf.numel() * buf.element_size(), sink.data_ptr(),
                                        _stream(buf.device)))


STEP_PROBE_MODES = {"chain": 0, "persistent": 1, "persistent_no_waits": 2, "chain_exclusive": 3}


def step_probe_grid(blocks_per_sm: int, ring_stages: int) -> int:
    """Blocks of the step-streaming probe's grid on the current GPU (0: that many blocks an SM do not fit at once);
    its sink takes one int32 word a block."""
    grid = ctypes.c_int32()
    check(_native.lib().vlm_step_probe_grid(blocks_per_sm, ring_stages, ctypes.byref(grid)))
    return grid.value


def step_stream_probe(buf, phase_bytes: list[int], mode: str, blocks_per_sm: int, ring_stages: int, sink,
                      counters, rows=None) -> None:
    """Reads the phases laid out back to back at the start of `buf` (a contiguous CUDA tensor) once, as a chain of
    dependent kernels (their blocks sharing SMs with the next kernel's, or alone on them: chain_exclusive) or one
    persistent launch with or without a wait between phases (vlm_step_stream_probe), on
    torch's current stream; each block XORs what it read into its word of `sink`; `counters` holds one int32 a
    phase. `rows` (two fp16 rows, as one contiguous CUDA tensor) adds the work that depends on the phase before: every
    block reads the whole row the previous phase wrote and reduces its sum of squares, then writes its share of its
    own phase's row."""
    if not buf.is_contiguous() or not buf.is_cuda:
        raise InvalidArgumentError("step_stream_probe: the buffer must be a contiguous CUDA tensor")
    if mode not in STEP_PROBE_MODES:
        raise InvalidArgumentError(f"step_stream_probe: mode must be one of {sorted(STEP_PROBE_MODES)}, got {mode!r}")
    if sum(phase_bytes) > buf.numel() * buf.element_size():
        raise InvalidArgumentError(f"step_stream_probe: the phases take {sum(phase_bytes)} bytes, the buffer has "
                                   f"{buf.numel() * buf.element_size()}")
    grid = step_probe_grid(blocks_per_sm, ring_stages)
    if grid and sink.numel() < grid:
        raise InvalidArgumentError(f"step_stream_probe: the sink needs {grid} words, it has {sink.numel()}")
    if counters.numel() < len(phase_bytes):
        raise InvalidArgumentError(f"step_stream_probe: counters needs {len(phase_bytes)} words, it has "
                                   f"{counters.numel()}")
    row_halves = 0
    if rows is not None:
        import torch

        if rows.dtype != torch.float16 or not rows.is_contiguous() or not rows.is_cuda or rows.numel() % 16:
            raise InvalidArgumentError("step_stream_probe: rows must be a contiguous CUDA float16 tensor of two rows "
                                       "of a multiple of 8 halves")
        row_halves = rows.numel() // 2
    sizes = (ctypes.c_int64 * len(phase_bytes))(*phase_bytes)
    check(_native.lib().vlm_step_stream_probe(buf.data_ptr(), sizes, len(phase_bytes), STEP_PROBE_MODES[mode],
                                              blocks_per_sm, ring_stages, sink.data_ptr(), counters.data_ptr(),
                                              rows.data_ptr() if rows is not None else None, row_halves,
                                              _stream(buf.device)))


KV_DTYPES = {"float32": _native.DTYPE_F32, "float16": _native.DTYPE_F16, "bfloat16": _native.DTYPE_BF16,
             "int8": _native.DTYPE_I8, "int4": _native.DTYPE_I4}


def decode_attention_workspace_bytes(rows: int, num_heads: int, kv_heads: int, head_dim: int, max_context: int) -> int:
    out = ctypes.c_int64()
    check(_native.lib().vlm_decode_attention_workspace_bytes(rows, num_heads, kv_heads, head_dim, max_context,
                                                             ctypes.byref(out)))
    return out.value


def decode_attention_form(num_heads: int, kv_heads: int, head_dim: int, *, kv_dtype: str, act_dtype: str = "float16",
                          block_size: int = 16) -> str:
    """Which kernel decode_attention() runs for this shape here: "tensor cores", "cuda cores" or "other"."""
    form = ctypes.c_int32()
    if act_dtype not in ("float16", "bfloat16") or kv_dtype not in KV_DTYPES:
        raise InvalidArgumentError(f"act_dtype must be float16 or bfloat16 and kv_dtype one of {sorted(KV_DTYPES)}; "
                                   f"got {act_dtype!r}, {kv_dtype!r}")
    check(_native.lib().vlm_decode_attention_form(num_heads, kv_heads, head_dim, _act_dtype(act_dtype == "bfloat16"),
                                                  KV_DTYPES[kv_dtype], block_size, ctypes.byref(form)))
    return {2: "tensor cores", 1: "cuda cores"}.get(form.value, "other")


def decode_attention(q, k_cache, v_cache, positions, block_tables, *, kv_dtype: str, kv_heads: int, head_dim: int,
                     block_size: int, k_scale_zero=None, v_scale_zero=None, sliding_window: int = 0,
                     max_context: int | None = None, out=None, workspace=None):
    """One query row per request over a paged cache (vlm_decode_attention); q [rows, heads * head_dim]
    fp16/bf16 CUDA tensor, positions int32 [rows], block_tables int32 [rows, max_blocks]."""
    import torch

    rows, width = q.shape
    num_heads = width // head_dim
    max_context = max_context or int(positions.max().item()) + 1
    if out is None:
        out = torch.empty_like(q)
    if workspace is None:
        ws = decode_attention_workspace_bytes(rows, num_heads, kv_heads, head_dim, max_context)
        workspace = torch.zeros(max(ws, 1), dtype=torch.uint8, device=q.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_decode_attention(
        q.data_ptr(), out.data_ptr(), rows, num_heads, kv_heads, head_dim,
        _act_dtype(q.dtype == torch.bfloat16), KV_DTYPES[kv_dtype], block_size,
        k_cache.data_ptr(), v_cache.data_ptr(), ptr(k_scale_zero), ptr(v_scale_zero), positions.data_ptr(),
        block_tables.data_ptr(), block_tables.shape[1], sliding_window, max_context, workspace.data_ptr(),
        _stream(q.device)))
    return out


def prefill_attention(q, k_cache, v_cache, positions, block_tables, request_rows: list[int], *, kv_dtype: str,
                      kv_heads: int, head_dim: int, block_size: int, k_scale_zero=None, v_scale_zero=None,
                      sliding_window: int = 0, out=None):
    """Causal attention of several rows per request over a paged cache (vlm_prefill_attention): request i
    owns the next request_rows[i] rows of q [rows, heads * head_dim] (fp16/bf16 CUDA tensor) at
    consecutive positions (positions int32 [rows]) and block_tables[i] (int32 [requests, max_blocks])."""
    import torch

    rows, width = q.shape
    if out is None:
        out = torch.empty_like(q)
    counts = (ctypes.c_int32 * len(request_rows))(*request_rows)
    ws = ctypes.c_int64()
    check(_native.lib().vlm_prefill_attention_workspace_bytes(rows, len(request_rows), ctypes.byref(ws)))
    workspace = torch.empty(max(ws.value, 1), dtype=torch.uint8, device=q.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    check(_native.lib().vlm_prefill_attention(
        q.data_ptr(), out.data_ptr(), rows, width // head_dim, kv_heads, head_dim,
        _act_dtype(q.dtype == torch.bfloat16), KV_DTYPES[kv_dtype], block_size,
        k_cache.data_ptr(), v_cache.data_ptr(), ptr(k_scale_zero), ptr(v_scale_zero), positions.data_ptr(),
        block_tables.data_ptr(), block_tables.shape[1], counts, len(request_rows), sliding_window,
        workspace.data_ptr(), _stream(q.device)))
    return out
