"""AWQ 4-bit quantization of a (vision-)language model's language model, layer by layer.

    plan = prepare(model_dir, work_dir, AwqOptions(...))   # every check; fast
    summary = quantize(plan)                               # the long part

prepare() reads configs, indexes the checkpoint and tokenizes the calibration
text, and refuses bad input with a VlmError before any weight is loaded.
quantize() moves one decoder layer at a time to the device (lite/layer.py),
then writes an AutoAWQ "gemm" directory with awq_checkpoint (temp dir,
renamed when complete). Only q/k/v/o/gate/up/down of the language model are
quantized; norms take the smoothing scales; everything else is copied."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmserve.awq_checkpoint import quantizable_linear_keys, write_awq_checkpoint
from vlmserve.checkpoint import Checkpoint
from vlmserve.errors import FailedPreconditionError, InvalidArgumentError, ModelLoadError, UnsupportedError
from vlmserve.lite.calibration import CalibrationSet, calibration_set
from vlmserve.lite.datasets import load_text, load_tokenizer
from vlmserve.lite.decoder import capture_layer_inputs, load_decoder, to_device
from vlmserve.lite.layer import LayerQuantizer, LayerSettings
from vlmserve.lite.report import AwqSummary, peak_device_bytes, peak_rss_bytes
from vlmserve.lite.smoothing import HeadLayout
from vlmserve.model_spec import ModelSpec, load_spec, read_config

GROUP_SIZES = (32, 64, 128)  # what the engine's AWQ kernels take
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class AwqOptions:
    calib_dataset: str = "wikitext2"
    calib_samples: int = 128
    calib_seqlen: int = 2048
    w_bits: int = 4
    w_group_size: int = 128
    batch_size: int = 1
    search_scale: bool = False
    search_clip: bool = False
    search_samples: int = 8    # windows used by the alpha grid and the clipping search
    n_grid: int = 20
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("calib_samples", "calib_seqlen", "batch_size", "search_samples", "n_grid"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.calib_seqlen < 2:
            raise InvalidArgumentError("--calib-seqlen must be at least 2")
        if self.w_bits != 4:
            raise UnsupportedError(f"--w-bits {self.w_bits}: only 4-bit weights are supported")
        if self.w_group_size not in GROUP_SIZES:
            raise UnsupportedError(f"--w-group-size {self.w_group_size}: the engine takes {GROUP_SIZES}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise InvalidArgumentError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")


@dataclass
class Plan:
    model: Path
    work_dir: Path
    options: AwqOptions
    spec: ModelSpec
    heads: HeadLayout
    calibration: CalibrationSet
    device: torch.device
    dtype: torch.dtype


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InvalidArgumentError(f"--device {name!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"--device {name}: torch sees no CUDA device on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise InvalidArgumentError(f"--device {name!r}: use cpu or cuda")
    return dev


def _dtype(name: str, device: torch.device, spec: ModelSpec) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # half-precision matmuls are slow on CPUs
    stored = str(spec.text_config.get("dtype") or spec.text_config.get("torch_dtype")
                 or spec.config.get("dtype") or spec.config.get("torch_dtype") or "float16")
    return torch.bfloat16 if stored == "bfloat16" else torch.float16


def _check_not_quantized(model: Path) -> None:
    cfg = read_config(model)
    for where in (cfg, cfg.get("text_config") or {}, cfg.get("llm_config") or {}):
        q = where.get("quantization_config")
        if q:
            raise FailedPreconditionError(
                f"{model} is already quantized ({q.get('quant_method', '?')}, {q.get('bits', q.get('w_bit', '?'))}-bit): "
                f"quantize its full-precision checkpoint")


def _check_engine_support(spec: ModelSpec) -> None:
    """The engine's own checks (activation, biases, RoPE scaling), where the library is built."""
    from vlmserve import _native
    from vlmserve.model_spec import model_params

    try:
        model_params(spec, _native.DEVICE_CPU, 1)
    except RuntimeError as e:
        if "libvlmcore.so not found" not in str(e):
            raise


def _heads(spec: ModelSpec) -> HeadLayout:
    t = spec.text_config
    heads = int(t["num_attention_heads"])
    return HeadLayout(heads, int(t.get("num_key_value_heads") or heads),
                      int(t.get("head_dim") or spec.hidden_size // heads))


def _check_shapes(spec: ModelSpec, heads: HeadLayout, group: int) -> None:
    inter = int(spec.text_config["intermediate_size"])
    ins = {"hidden_size (q/k/v/gate/up inputs)": spec.hidden_size,
           "num_attention_heads * head_dim (o_proj input)": heads.num_heads * heads.head_dim,
           "intermediate_size (down_proj input)": inter}
    bad = {k: v for k, v in ins.items() if v % group}
    if bad:
        fits = [g for g in GROUP_SIZES if all(v % g == 0 for v in ins.values())]
        raise InvalidArgumentError(
            f"--w-group-size {group} does not divide the input size K of every linear layer: "
            + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + (f"; group sizes that fit: {fits}" if fits else "; no supported group size fits"))
    outs = {"q_proj": heads.num_heads * heads.head_dim, "k/v_proj": heads.num_kv_heads * heads.head_dim,
            "o/down_proj": spec.hidden_size, "gate/up_proj": inter}
    bad = {k: v for k, v in outs.items() if v % 8}
    if bad:
        raise UnsupportedError(f"AWQ packs 8 output features per int32; not a multiple of 8: {bad}")


def _check_work_dir(model: Path, work_dir: Path) -> None:
    if work_dir.resolve() == model.resolve():
        raise InvalidArgumentError("--work-dir must differ from the model directory")
    if work_dir.exists():
        if not work_dir.is_dir():
            raise InvalidArgumentError(f"--work-dir {work_dir} exists and is not a directory")
        if any(work_dir.iterdir()) and not (work_dir / "config.json").is_file():
            raise InvalidArgumentError(f"--work-dir {work_dir} is not empty and holds no model: "
                                       f"refusing to replace it")
    parent = work_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{work_dir.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise InvalidArgumentError(f"--work-dir {work_dir} is not writable: {e}") from None


def _check_space(model: Path, work_dir: Path, checkpoint: Checkpoint, linear: list[str]) -> None:
    total = sum(checkpoint.ref(k).end - checkpoint.ref(k).begin for k in checkpoint.keys())
    dense = sum(checkpoint.ref(k).end - checkpoint.ref(k).begin for k in linear)
    params = sum(int(torch.Size(checkpoint.ref(k).shape).numel()) for k in linear)
    need = total - dense + params * 0.6  # 4-bit codes, zeros and fp16 scales: about 0.53 bytes a weight
    free = shutil.disk_usage(work_dir.parent).free
    if free < need:
        raise FailedPreconditionError(f"--work-dir {work_dir}: {free / 2**30:.2f} GiB free, the quantized model "
                                      f"needs about {need / 2**30:.2f} GiB")


def prepare(model: str | Path, work_dir: str | Path, options: AwqOptions) -> Plan:
    """Every check that can fail, before any weight is loaded."""
    model, work_dir = Path(model), Path(work_dir)
    _check_not_quantized(model)
    checkpoint = Checkpoint(model)
    try:
        spec = load_spec(model, checkpoint)
        _check_engine_support(spec)
        heads = _heads(spec)
        _check_shapes(spec, heads, options.w_group_size)
        linear = quantizable_linear_keys(model, checkpoint)
        missing = [k for k in linear if k not in checkpoint]
        if missing:
            raise ModelLoadError(f"{model} lacks linear weights {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        max_pos = int(spec.text_config.get("max_position_embeddings") or 0)
        if max_pos and options.calib_seqlen > max_pos:
            raise InvalidArgumentError(f"--calib-seqlen {options.calib_seqlen} exceeds the model's "
                                       f"max_position_embeddings {max_pos}")
        device = _device(options.device)
        dtype = _dtype(options.dtype, device, spec)
        _check_work_dir(model, work_dir)
        _check_space(model, work_dir, checkpoint, linear)
    finally:
        checkpoint.close()
    text = load_text(options.calib_dataset, "calibration")
    tokenizer = load_tokenizer(model) if text.documents else None
    cal = calibration_set(text, tokenizer, options.calib_samples, options.calib_seqlen, options.seed,
                          spec.vocab_size)
    return Plan(model, work_dir, options, spec, heads, cal, device, dtype)


def quantize(plan: Plan) -> AwqSummary:
    o = plan.options
    start = time.perf_counter()
    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(plan.device)
    summary = AwqSummary(str(plan.model), str(plan.work_dir), plan.spec.family, o.w_group_size, o.search_scale,
                         o.search_clip, plan.calibration.source, o.calib_samples, o.calib_seqlen,
                         plan.calibration.note, str(plan.device), str(plan.dtype).replace("torch.", ""))
    checkpoint = Checkpoint(plan.model)
    try:
        decoder = load_decoder(plan.spec, checkpoint, plan.dtype)
    finally:
        checkpoint.close()
    with torch.no_grad():
        inputs, calls = capture_layer_inputs(decoder, plan.calibration.input_ids, o.batch_size)
    summary.seconds_load = time.perf_counter() - start

    settings = LayerSettings(o.w_group_size, o.batch_size, o.search_scale, o.search_clip,
                             min(o.search_samples, o.calib_samples), o.n_grid, plan.device, plan.dtype)
    worker = LayerQuantizer(settings, plan.heads)
    prefix = f"{plan.spec.decoder_prefix}layers."
    quantized, replaced = {}, {}
    bar = tqdm(range(len(decoder.layers)), desc="AWQ", unit="layer", disable=not o.progress)
    for i in bar:
        args, kwargs = to_device(calls[i], plan.device)
        layer = decoder.layers[i]
        result, inputs = worker.run(layer, i, inputs, (args, kwargs))
        decoder.layers[i] = torch.nn.Module()  # the host copy is no longer needed
        del layer
        quantized.update({f"{prefix}{i}.{name}.weight": t for name, t in result.quantized.items()})
        replaced.update({f"{prefix}{i}.{key}": v for key, v in result.replaced.items()})
        result.quantized, result.replaced = {}, {}
        summary.layers.append(result)
        bar.set_postfix(err=f"{result.error:.4f}")
    del inputs, decoder
    summary.seconds_layers = time.perf_counter() - start - summary.seconds_load

    t = time.perf_counter()
    write_awq_checkpoint(plan.model, plan.work_dir, o.w_group_size, quantized=quantized, replace=replaced)
    summary.seconds_write = time.perf_counter() - t
    summary.seconds_total = time.perf_counter() - start
    summary.peak_rss_bytes = peak_rss_bytes()
    summary.peak_device_bytes = peak_device_bytes(plan.device)
    return summary


def auto_awq(model: str | Path, work_dir: str | Path, options: AwqOptions | None = None) -> AwqSummary:
    return quantize(prepare(model, work_dir, options or AwqOptions()))
