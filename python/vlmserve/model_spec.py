"""What a Hugging Face checkpoint holds, in the engine's terms: which family
it is, the language model's architecture, where its tensors are, and whether
its linear layers are AWQ-quantized."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlmserve import _native
from vlmserve.checkpoint import Checkpoint
from vlmserve.errors import ModelLoadError, UnsupportedError

TEXT_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Where a family keeps its language model's decoder and lm_head, newest layout first.
DECODER_PREFIXES = ("model.", "model.language_model.", "language_model.model.", "model.text_model.")
LM_HEAD_KEYS = ("lm_head.weight", "language_model.lm_head.weight")
PROJECTIONS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


@dataclass
class ModelSpec:
    directory: Path
    config: dict            # the whole config.json
    text_config: dict       # the language model's part
    family: str             # "causal_lm", "llava", "internvl", "idefics3"
    decoder_prefix: str
    lm_head_key: str | None  # None: tied to the embeddings (no lm_head tensor in the checkpoint)
    awq_group_size: int     # 0: dense
    eos_token_ids: list[int]

    @property
    def num_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])

    @property
    def vocab_size(self) -> int:
        return int(self.text_config["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None


def _family(cfg: dict) -> tuple[str, dict]:
    model_type = cfg.get("model_type", "")
    if model_type in TEXT_MODEL_TYPES:
        return "causal_lm", cfg
    if model_type == "llava" or model_type == "llava_next":
        return "llava", cfg.get("text_config") or {}
    if model_type in ("internvl", "internvl_chat"):
        return "internvl", cfg.get("text_config") or cfg.get("llm_config") or {}
    if model_type in ("idefics3", "smolvlm"):
        return "idefics3", cfg.get("text_config") or {}
    raise UnsupportedError(f"model_type {model_type!r} is not supported; supported: "
                           f"{', '.join(TEXT_MODEL_TYPES)}, llava, internvl, idefics3, smolvlm")


def _eos_ids(directory: Path, cfg: dict, text: dict) -> list[int]:
    ids: list[int] = []
    gen_path = directory / "generation_config.json"
    sources = [text.get("eos_token_id"), cfg.get("eos_token_id")]
    if gen_path.is_file():
        try:
            sources.insert(0, json.loads(gen_path.read_text()).get("eos_token_id"))
        except ValueError:
            pass
    for s in sources:
        for t in (s if isinstance(s, list) else [s]):
            if isinstance(t, int) and t not in ids:
                ids.append(t)
    return ids[: _native.MAX_EOS_IDS]


def _awq_group_size(cfg: dict, text: dict) -> int:
    q = cfg.get("quantization_config") or text.get("quantization_config")
    if not q:
        return 0
    method = q.get("quant_method")
    if method != "awq":
        raise UnsupportedError(f"quantization method {method!r} is not supported (only AWQ)")
    if q.get("bits", q.get("w_bit", 4)) != 4:
        raise UnsupportedError("only 4-bit AWQ checkpoints are supported")
    if str(q.get("version", "gemm")).lower() != "gemm":
        raise UnsupportedError(f"AWQ version {q.get('version')!r} is not supported (only 'gemm')")
    if not q.get("zero_point", True):
        raise UnsupportedError("AWQ without zero point is not supported")
    group = int(q.get("group_size", q.get("q_group_size", 128)))
    if group not in (32, 64, 128):
        raise UnsupportedError(f"AWQ group size {group} is not supported (32, 64 or 128)")
    return group


def load_spec(directory: str | Path, checkpoint: Checkpoint, model_format: str = "auto") -> ModelSpec:
    directory = Path(directory)
    cfg = read_config(directory)
    family, text = _family(cfg)
    if text.get("model_type", "llama") not in TEXT_MODEL_TYPES:
        raise UnsupportedError(f"language model type {text.get('model_type')!r} is not supported; "
                               f"supported: {', '.join(TEXT_MODEL_TYPES)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(text.get(key), int):
            raise ModelLoadError(f"config.json of {directory} lacks an integer {key!r} for the language model")
    prefix = next((p for p in DECODER_PREFIXES if p + "embed_tokens.weight" in checkpoint), None)
    if prefix is None:
        raise ModelLoadError(f"no language-model embeddings found in {directory} (looked for "
                             f"{[p + 'embed_tokens.weight' for p in DECODER_PREFIXES]})")
    # save_pretrained leaves a tied lm_head out, so its presence decides (configs of
    # composite models disagree on which level's tie_word_embeddings counts).
    lm_head = next((k for k in LM_HEAD_KEYS if k in checkpoint), None)
    group = _awq_group_size(cfg, text)
    if model_format == "awq" and not group:
        raise ModelLoadError(f"model_format='awq' but {directory} has no AWQ quantization_config")
    if model_format == "hf" and group:
        raise ModelLoadError(f"model_format='hf' but {directory} is an AWQ checkpoint")
    return ModelSpec(directory, cfg, text, family, prefix, lm_head, group, _eos_ids(directory, cfg, text))


def _rope(text: dict) -> dict:
    params = text.get("rope_parameters") or {}
    scaling = text.get("rope_scaling") or params or {}
    theta = text.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    out = {"rope_theta": float(theta), "rope_scaling": _native.ROPE_NONE, "rope_factor": 1.0,
           "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0, "rope_original_max_position": 8192}
    if kind == "default":
        return out
    if kind == "linear":
        out.update(rope_scaling=_native.ROPE_LINEAR, rope_factor=float(scaling["factor"]))
        return out
    if kind == "llama3":
        out.update(rope_scaling=_native.ROPE_LLAMA3, rope_factor=float(scaling["factor"]),
                   rope_low_freq_factor=float(scaling["low_freq_factor"]),
                   rope_high_freq_factor=float(scaling["high_freq_factor"]),
                   rope_original_max_position=int(scaling["original_max_position_embeddings"]))
        return out
    raise UnsupportedError(f"RoPE scaling {kind!r} is not supported (default, linear, llama3)")


def model_params(spec: ModelSpec, device: int, threads: int) -> _native.ModelParams:
    t = spec.text_config
    model_type = t.get("model_type", "llama")
    if t.get("hidden_act", "silu") != "silu":
        raise UnsupportedError(f"activation {t.get('hidden_act')!r} is not supported (silu)")
    if t.get("mlp_bias"):
        raise UnsupportedError("MLP biases are not supported")
    if model_type == "llama" and t.get("attention_bias"):
        raise UnsupportedError("Llama attention_bias (which also biases o_proj) is not supported")
    heads = int(t["num_attention_heads"])
    sliding = 0
    if model_type == "mistral":
        sliding = int(t.get("sliding_window") or 0)
    elif model_type == "qwen2" and t.get("use_sliding_window"):
        sliding = int(t.get("sliding_window") or 0)
    p = _native.lib().vlm_model_default_params()
    p.vocab_size = spec.vocab_size
    p.hidden_size = spec.hidden_size
    p.intermediate_size = int(t["intermediate_size"])
    p.num_layers = spec.num_layers
    p.num_heads = heads
    p.num_kv_heads = int(t.get("num_key_value_heads") or heads)
    p.head_dim = int(t.get("head_dim") or spec.hidden_size // heads)
    p.rms_norm_eps = float(t.get("rms_norm_eps", 1e-6))
    for k, v in _rope(t).items():
        setattr(p, k, v)
    p.max_position_embeddings = int(t.get("max_position_embeddings", 2048))
    p.sliding_window = sliding
    p.attention_bias = 1 if model_type == "qwen2" else 0
    p.tie_word_embeddings = 1 if spec.lm_head_key is None else 0
    p.awq_group_size = spec.awq_group_size
    p.device = device
    p.num_threads = threads
    return p


def tensor_names(spec: ModelSpec) -> list[tuple[str, str]]:
    """(engine name, checkpoint key) for every tensor the engine needs."""
    pre = spec.decoder_prefix
    names = [("embed_tokens", pre + "embed_tokens.weight"), ("norm", pre + "norm.weight")]
    if spec.lm_head_key:
        names.append(("lm_head", spec.lm_head_key))
    parts = ("qweight", "qzeros", "scales") if spec.awq_group_size else ("weight",)
    has_bias = spec.text_config.get("model_type") == "qwen2"
    for i in range(spec.num_layers):
        lp = f"{pre}layers.{i}."
        names.append((f"layers.{i}.input_layernorm", lp + "input_layernorm.weight"))
        names.append((f"layers.{i}.post_attention_layernorm", lp + "post_attention_layernorm.weight"))
        for block, projs in PROJECTIONS.items():
            for proj in projs:
                for part in parts:
                    names.append((f"layers.{i}.{proj}.{part}", f"{lp}{block}.{proj}.{part}"))
                if has_bias and proj in ("q_proj", "k_proj", "v_proj"):
                    names.append((f"layers.{i}.{proj}.bias", f"{lp}{block}.{proj}.bias"))
    return names
