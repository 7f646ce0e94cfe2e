"""The whole engine on CUDA against the CPU backend (the reference), in one process:
every tiny family, AWQ weights on both GEMM paths, int8/int4 KV, image-embedding
spans, batching and chunked prefill, and SmolLM2-135M real weights.

The CPU computes in fp32; the GPU keeps activations in fp16 (the residual
stream in fp32). Logits are held to a tolerance relative to their largest
magnitude; greedy tokens must be identical, except that a run may part ways
at a step where the CPU itself saw a near tie (its two best logits closer
than twice that tolerance): after that the two runs feed different tokens
and are no longer comparable."""
from __future__ import annotations

import numpy as np
import pytest

from greedy_compare import assert_same_greedy as compare_greedy
from vlmserve import Embeddings, Engine, EngineConfig, GenerationConfig

STEPS = 16
# Largest logit error / largest |logit|: fp16 activations (2^-11 per rounding)
# through two layers; int8 KV codes may round the other way for fp16-rounded keys.
TOL = {"auto": 1e-2, "int8": 1.5e-2}


def config(device: str, **kw) -> EngineConfig:
    return EngineConfig(**dict(dict(device=device, num_kv_blocks=64, block_size=16, max_batch_size=8), **kw))


def prompt_for(seed: int, n: int = 23, vocab: int = 320) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, size=n).tolist()


def run(model, device: str, prompt, spans=None, steps: int = STEPS, **kw):
    with Engine(model, config(device, **kw)) as eng:
        return eng.generate(prompt, GenerationConfig(max_new_tokens=steps, ignore_eos=True, return_logits=True),
                            spans or ())


def assert_same_greedy(ref, got, prompt_len: int, rel_tol: float, min_steps: int = STEPS // 2) -> int:
    return compare_greedy(ref, got, prompt_len, rel_tol, min_steps, ("cpu", "gpu"))


pytestmark = pytest.mark.gpu

FAMILIES = ["llama_mha_hd64", "llama_gqa_hd128", "llama_mqa", "llama3_rope_scaling", "llama_tied",
            "mistral_sliding", "qwen2_bias_tied"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_the_cpu_backend(tiny_model_dir, family):
    d = tiny_model_dir(family)
    prompt = prompt_for(len(family))
    assert_same_greedy(run(d, "cpu", prompt), run(d, "cuda", prompt), len(prompt), TOL["auto"])


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_mqa", "mistral_sliding"])
def test_int8_kv_matches_the_cpu_backend(tiny_model_dir, family):
    d = tiny_model_dir(family)
    prompt = prompt_for(7, n=40)
    # Codes that round the other way turn near ties into flips, after which the runs
    # feed different tokens; the 40 teacher-forced prompt rows carry the comparison.
    assert_same_greedy(run(d, "cpu", prompt, kv_cache_dtype="int8"), run(d, "cuda", prompt, kv_cache_dtype="int8"),
                       len(prompt), TOL["int8"], min_steps=0)


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_mqa", "mistral_sliding"])
def test_int4_kv_is_as_accurate_as_on_the_cpu(tiny_model_dir, family):
    """With 16 levels per row, an fp16-rounded key that lands on the other side of a
    rounding boundary moves by a whole step, so the two backends' int4 runs are not
    close to each other token for token. What must hold: the GPU's int4 cache costs
    no more accuracy than the CPU's, measured on the prompt rows against the CPU's
    unquantized run (a wrong nibble order or scale would cost far more)."""
    d = tiny_model_dir(family)
    prompt = prompt_for(7, n=40)
    n = len(prompt)
    exact = run(d, "cpu", prompt, steps=1).logits[:n]
    cpu_err = float(np.abs(run(d, "cpu", prompt, steps=1, kv_cache_dtype="int4").logits[:n] - exact).mean())
    gpu_err = float(np.abs(run(d, "cuda", prompt, steps=1, kv_cache_dtype="int4").logits[:n] - exact).mean())
    fp16_err = float(np.abs(run(d, "cuda", prompt, steps=1).logits[:n] - exact).mean())
    print(f"mean |logit error| vs CPU fp32 KV: cpu int4 {cpu_err:.4g}, gpu int4 {gpu_err:.4g}, gpu fp16 {fp16_err:.4g}")
    assert cpu_err > 4 * fp16_err  # int4 is the dominant error: the comparison means something
    assert gpu_err <= 1.25 * cpu_err + fp16_err


@pytest.mark.parametrize("family,group", [("llama_mha_hd64", 128), ("llama_mha_hd64", 64),
                                          ("llama_mha_hd64", 32), ("qwen2_bias_tied", 64), ("llama_mqa", 64)])
def test_awq_weights_match_the_cpu_backend(tiny_model_dir, tmp_path, family, group):
    """hidden 256 with group 64/128 runs the tensor-core w4a16 kernel; group 32 and
    hidden 128 run the CUDA-core 4-bit kernel."""
    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    dst = write_awq_checkpoint(tiny_model_dir(family), tmp_path / "awq", group, lambda k, w: quantize_rtn(w, group))
    prompt = prompt_for(group)
    assert_same_greedy(run(dst, "cpu", prompt), run(dst, "cuda", prompt), len(prompt), TOL["auto"])


@pytest.mark.parametrize("family,group", [("llama_mha_hd64", 128), ("llama_gqa_hd128", 64), ("qwen2_bias_tied", 64)])
def test_awq_long_prefill_matches_the_cpu_backend(tiny_model_dir, tmp_path, family, group):
    """A 300-token prompt: its prefill step (>= 129 rows) runs the CUTLASS mixed-input GEMM on the tensor-core w4a16
    layers of whole 128-row tiles where the library has it and the GPU runs it (VLM_W4A16_CUTLASS, on by default),
    else dequantizes each layer into a dense matrix for cuBLAS (test_awq_prefill_through_dequantization_matches_the_
    cpu_backend checks that path everywhere); the decode steps after it use the w4a16 kernel."""
    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    dst = write_awq_checkpoint(tiny_model_dir(family), tmp_path / "awq", group, lambda k, w: quantize_rtn(w, group))
    prompt = prompt_for(group + 1, n=300)
    assert_same_greedy(run(dst, "cpu", prompt), run(dst, "cuda", prompt), len(prompt), TOL["auto"])


def test_awq_long_prefill_in_dequantized_stretches_matches_the_cpu_backend():
    """The same long prefills with each layer dequantized and multiplied 192 columns at a time
    (VLM_DEQUANT_CHUNK_COLUMNS; VLM_DEQUANT_CHUNK_MB's stretches in the engine's own loop: packed weight and
    scale/zero offsets of whole strips, each stretch's output columns within the rows), the CUTLASS GEMM off: the
    tiny layers are 256-768 columns wide, so several stretches and ragged last ones, groups 64 and 128, with bias.
    The settings are read once per process, hence a process of its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", __file__,
                           "-k", "test_awq_long_prefill_matches_the_cpu_backend"], cwd=root, capture_output=True,
                          text=True, timeout=900,
                          env=dict(os.environ, VLM_DEQUANT_CHUNK_COLUMNS="192", VLM_W4A16_CUTLASS="0"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout, done.stdout[-2000:]


_DENSE_PREFILL_RUN = """
import sys
import numpy as np
from vlmserve import Engine, EngineConfig, GenerationConfig
model, out = sys.argv[1], sys.argv[2]
# Prompts of 300 and 140 tokens prefill in steps of well over the rows where 4-bit GEMMs go through cuBLAS; the
# short ones and the decode steps stay on the 4-bit kernels.
prompts = [np.random.default_rng(700 + i).integers(3, 320, size=n).tolist() for i, n in enumerate((300, 140, 9, 40))]
gen = GenerationConfig(max_new_tokens=12, ignore_eos=True, return_logits=True)
cfg = EngineConfig(device="cuda", num_kv_blocks=128, block_size=16, max_batch_size=8)
with Engine(model, cfg) as eng:
    res = [s.wait(timeout=300) for s in eng.add_requests([(p, gen) for p in prompts])]
    dense = eng.stats().dense_prefill_weight_bytes
np.savez(out, dense=np.array(dense), **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res)})
"""


@pytest.mark.parametrize("family,group", [("llama_gqa_hd128", 64), ("qwen2_bias_tied", 128)])
def test_dense_prefill_weights_change_no_bits(tiny_model_dir, tmp_path, family, group):
    """VLM_PREFILL_DENSE_WEIGHTS=1 keeps each 4-bit layer dequantized from load on, and prefill-sized GEMMs
    multiply that copy instead of dequantizing the layer per call: the same matrix and the same cuBLAS call, so
    the same tokens and logits, bit for bit, as without it (the CUTLASS GEMM off in both); the engine reports the
    copies' bytes (every 4-bit layer's weights at 2 bytes each) and none without the setting. Read once per
    process: processes of their own."""
    import json
    import os
    import subprocess
    import sys

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    dst = write_awq_checkpoint(tiny_model_dir(family), tmp_path / "awq", group, lambda k, w: quantize_rtn(w, group))
    runs = {}
    for setting in ("0", "1"):
        out = tmp_path / f"dense{setting}.npz"
        done = subprocess.run([sys.executable, "-c", _DENSE_PREFILL_RUN, str(dst), str(out)], capture_output=True,
                              text=True, timeout=600,
                              env=dict(os.environ, VLM_PREFILL_DENSE_WEIGHTS=setting, VLM_W4A16_CUTLASS="0"))
        assert done.returncode == 0, done.stderr[-4000:]
        runs[setting] = np.load(out)
    cfg = json.loads((tiny_model_dir(family) / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // heads
    per_layer = h * (heads + 2 * kv_heads) * hd + heads * hd * h + 2 * inter * h + inter * h
    assert int(runs["0"]["dense"]) == 0
    assert int(runs["1"]["dense"]) == 2 * layers * per_layer
    for name in runs["0"].files:
        if name != "dense":
            np.testing.assert_array_equal(runs["1"][name], runs["0"][name], err_msg=name)


def test_dense_copies_from_few_rows_match_the_cpu_backend():
    """VLM_PREFILL_DENSE_MIN_ROWS lowers the rows from which a layer's dequantized copy is multiplied through
    cuBLAS into the 4-bit kernels' range: at 2, the AWQ families' prompt steps (23 and 300 rows) take the copies,
    the batch-1 decode steps the decode kernel, all against the CPU backend as in the default runs (a different
    GEMM from the default at 23 rows, so a tolerance, not bits). A process of its own (settings read once)."""
    _awq_comparisons_pass_with(VLM_PREFILL_DENSE_WEIGHTS="1", VLM_PREFILL_DENSE_MIN_ROWS="2")


def test_cutlass_prefill_gemms_match_the_cpu_backend():
    """VLM_W4A16_CUTLASS=2 (required) makes a copy of each 4-bit layer for CUTLASS's mixed-input GEMM at load
    (layers whose N is a multiple of 128) and multiplies prefill-sized steps through it; with
    VLM_W4A16_CUTLASS_MIN_ROWS=2 the AWQ families' prompt steps (23 and 300 rows) and the o/down GEMMs of multi-row
    steps take it, against the CPU backend as in the default runs (each weight rounded as s q + (-s z): a
    tolerance, not bits). A process of its own (settings read once)."""
    from vlmserve.kernels import w4a16_cutlass_built

    if not w4a16_cutlass_built():
        pytest.skip("this library has no CUTLASS w4a16 GEMM (built without CUTLASS's headers or without sm_90a)")
    _awq_comparisons_pass_with(VLM_W4A16_CUTLASS="2", VLM_W4A16_CUTLASS_MIN_ROWS="2")


def test_awq_prefill_through_dequantization_matches_the_cpu_backend():
    """The AWQ comparisons with the CUTLASS GEMM off (VLM_W4A16_CUTLASS=0): prefill-sized steps dequantize each
    layer whole for cuBLAS, the path of GPUs and builds without that kernel. A process of its own (settings read
    once)."""
    _awq_comparisons_pass_with(VLM_W4A16_CUTLASS="0")


_COPY_BYTES_RUN = """
import sys
from vlmserve import Engine, EngineConfig
with Engine(sys.argv[1], EngineConfig(device="cuda", num_kv_blocks=16, block_size=16)) as eng:
    print(eng.stats().cutlass_weight_bytes)
"""


def test_the_cutlass_copies_are_counted_in_the_engine_stats(tiny_model_dir, tmp_path):
    """The engine's stats report the device memory of the CUTLASS GEMM's copies: every 4-bit layer's prepared
    bytes with it required (VLM_W4A16_CUTLASS=2), none with it off. A process each (settings read once)."""
    import ctypes
    import json
    import os
    import subprocess
    import sys

    from vlmserve import _native
    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn
    from vlmserve.kernels import w4a16_cutlass_built

    if not w4a16_cutlass_built():
        pytest.skip("this library has no CUTLASS w4a16 GEMM (built without CUTLASS's headers or without sm_90a)")
    group = 64
    family = "llama_gqa_hd128"  # every layer's N a multiple of 128: all of them get a copy
    dst = write_awq_checkpoint(tiny_model_dir(family), tmp_path / "awq", group, lambda k, w: quantize_rtn(w, group))
    cfg = json.loads((tiny_model_dir(family) / "config.json").read_text())
    h, inter, heads, kv = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                           cfg["num_key_value_heads"])
    hd = cfg["head_dim"]

    def prepared(n, k):
        out = ctypes.c_int64()
        assert _native.lib().vlm_w4a16_cutlass_prepared_bytes(n, k, group, ctypes.byref(out)) == 0
        return out.value

    per_layer = (prepared((heads + 2 * kv) * hd, h) + prepared(h, heads * hd) + prepared(2 * inter, h)
                 + prepared(h, inter))
    seen = {}
    for setting in ("2", "0"):
        done = subprocess.run([sys.executable, "-c", _COPY_BYTES_RUN, str(dst)], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, VLM_W4A16_CUTLASS=setting))
        assert done.returncode == 0, done.stderr[-4000:]
        seen[setting] = int(done.stdout.split()[-1])
    assert seen == {"2": cfg["num_hidden_layers"] * per_layer, "0": 0}


def test_column_tile_decode_gemms_match_the_cpu_backend():
    """VLM_W4A16_GEMV=4 makes a copy of each layer's 4-bit q/k/v, o and gate_up in the column-tile kernel's layout
    at load, and decode steps of up to 4 rows multiply through them (w4a16_gemv.cu; their norms fused into it),
    against the CPU backend as in the default runs (another summation order than the strip kernel's: a tolerance,
    not bits). A process of its own (settings read once)."""
    _awq_comparisons_pass_with(VLM_W4A16_GEMV="4")


def test_column_tile_decode_gemms_with_the_shared_ring_on_every_layer_match_the_cpu_backend():
    """The same with the kernel's chunks in flight in shared memory (VLM_W4A16_GEMV_SHARED_RING=8: other
    instantiations, cp.async) and on each layer where it pays alone, down too (VLM_W4A16_GEMV_EACH=1)."""
    _awq_comparisons_pass_with(VLM_W4A16_GEMV="4", VLM_W4A16_GEMV_SHARED_RING="8", VLM_W4A16_GEMV_EACH="1")


def test_the_attention_latency_cuts_match_the_cpu_backend():
    """The batch-1 attention latency cuts, off by default until measured (VLM_ATTENTION_RELEASE_MERGE=1: the key
    slices' merge through one release-acquire addition, the last slice's loads in one trip; VLM_ATTENTION_Q_FIRST=1;
    VLM_ATTENTION_ONE_WAVE=1: no more slices than one wave of resident blocks), on the AWQ families' batch-1
    decodes against the CPU backend, whichever attention kernel their heads take."""
    _awq_comparisons_pass_with(VLM_ATTENTION_RELEASE_MERGE="1", VLM_ATTENTION_Q_FIRST="1", VLM_ATTENTION_ONE_WAVE="1")


def test_column_tile_o_alone_on_the_shared_ring_matches_the_cpu_backend():
    """o alone through the column-tile kernel, launched with the shared ring whatever the process's setting
    (VLM_W4A16_GEMV_ALONE=1; the chain kept off by VLM_W4A16_GEMV_LAYERS=2, as on the 7B, where q/k/v and gate_up
    do not pay), against the CPU backend at up to 4 rows."""
    _awq_comparisons_pass_with(VLM_W4A16_GEMV="4", VLM_W4A16_GEMV_ALONE="1", VLM_W4A16_GEMV_LAYERS="2")


_GEMV_BYTES_RUN = """
import sys
from vlmserve import Engine, EngineConfig
with Engine(sys.argv[1], EngineConfig(device="cuda", num_kv_blocks=16, block_size=16)) as eng:
    print(eng.stats().gemv_weight_bytes)
"""


def test_the_column_tile_copies_are_counted_in_the_engine_stats(tiny_model_dir, tmp_path):
    """The engine's stats report the column-tile kernel's copies: the packed bytes of every layer's q/k/v, o and
    gate_up again with VLM_W4A16_GEMV=1 (down stays on the strip kernel), down's too with VLM_W4A16_GEMV_EACH=1,
    o's alone where the chain is kept off (VLM_W4A16_GEMV_LAYERS=2) and VLM_W4A16_GEMV_ALONE=1, none with
    VLM_W4A16_GEMV_LAYERS=2 alone or with 0. A process each (settings read once)."""
    import json
    import os
    import subprocess
    import sys

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    group = 64
    family = "llama_gqa_hd128"  # hidden 256: every layer on the tensor-core path, N and K multiples of 64
    dst = write_awq_checkpoint(tiny_model_dir(family), tmp_path / "awq", group, lambda k, w: quantize_rtn(w, group))
    cfg = json.loads((tiny_model_dir(family) / "config.json").read_text())
    h, inter, heads, kv = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                           cfg["num_key_value_heads"])
    hd = cfg["head_dim"]
    chain = ((heads + 2 * kv) * hd * h + h * heads * hd + 2 * inter * h) // 2  # q/k/v, o, gate_up: 4 bits a weight
    down = inter * h // 2
    o = h * heads * hd // 2
    settings = {"chain": {"VLM_W4A16_GEMV": "1"}, "each": {"VLM_W4A16_GEMV": "1", "VLM_W4A16_GEMV_EACH": "1"},
                "alone": {"VLM_W4A16_GEMV": "1", "VLM_W4A16_GEMV_LAYERS": "2", "VLM_W4A16_GEMV_ALONE": "1"},
                "no chain": {"VLM_W4A16_GEMV": "1", "VLM_W4A16_GEMV_LAYERS": "2"}, "off": {"VLM_W4A16_GEMV": "0"}}
    seen = {}
    for name, setting in settings.items():
        done = subprocess.run([sys.executable, "-c", _GEMV_BYTES_RUN, str(dst)], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, **setting))
        assert done.returncode == 0, done.stderr[-4000:]
        seen[name] = int(done.stdout.split()[-1])
    layers = cfg["num_hidden_layers"]
    assert seen == {"chain": layers * chain, "each": layers * (chain + down), "alone": layers * o, "no chain": 0,
                    "off": 0}


def _awq_comparisons_pass_with(**settings):
    """The AWQ families' comparisons with the CPU backend (short and long prompts: 8 tests) in a process of its own
    with these settings (the library reads them once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", __file__,
                           "-k", "test_awq_weights_match_the_cpu_backend or test_awq_long_prefill_matches_the_cpu_backend"],
                          cwd=root, capture_output=True, text=True, timeout=900, env=dict(os.environ, **settings))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout, done.stdout[-2000:]


_LAYER_TAIL_RUN = """
import sys
import numpy as np
from vlmserve import Engine, EngineConfig, GenerationConfig
model, out = sys.argv[1], sys.argv[2]
# Four requests that end after 5, 8, 11 and 14 tokens: decode steps of 4, 3, 2 and 1 rows.
prompts = [np.random.default_rng(900 + i).integers(3, 300, size=n).tolist() for i, n in enumerate((7, 19, 33, 12))]
gens = [GenerationConfig(max_new_tokens=n, ignore_eos=True, return_logits=True) for n in (5, 8, 11, 14)]
cfg = EngineConfig(device="cuda", num_kv_blocks=64, block_size=16, max_batch_size=4)
with Engine(model, cfg) as eng:
    res = [s.wait(timeout=300) for s in eng.add_requests(list(zip(prompts, gens)))]
np.savez(out, **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res)})
"""


# Tiny families (one K slice a GEMM, biased q/k/v; one layer: the first is also the last) and layers of the 2B
# model's shapes (K cut into slices whose partials are summed through global memory, several items a block).
_LAYER_TAIL_MODELS = {
    "llama_gqa_hd128-64": ("llama_gqa_hd128", 64, {}),
    "llama_gqa_hd128-64-one_layer": ("llama_gqa_hd128", 64, dict(num_hidden_layers=1)),
    "qwen2_bias_tied-128": ("qwen2_bias_tied", 128, {}),
    "llama_2b_layers-128": ("llama_gqa_hd128", 128,
                            dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=16,
                                 num_key_value_heads=8, head_dim=128)),
}


def _profiled_phases(stderr: str) -> dict[str, str]:
    """The step profiler's report (VLM_CUDA_PROFILE=1) as {step kind: its phase lines}."""
    kinds: dict[str, str] = {}
    kind = None
    for line in stderr.splitlines():
        if not line.startswith("[vlm profile]"):
            continue
        body = line[len("[vlm profile]"):]
        if not body.startswith("  "):
            kind = body.strip().split(":")[0]
            kinds[kind] = ""
        elif kind is not None:
            kinds[kind] += body + "\n"
    return kinds


def _assert_tail_ran(stderr: str, rows, layers: int, wide: bool = False) -> None:
    """Every decode step of each row count in `rows` ran the tail, cut the chain's way or its own (`wide`): the
    last layer's form, and with more than one layer the form that also computes the next layer's q/k/v."""
    phases = _profiled_phases(stderr)
    tail = "layer tail, wide cut" if wide else "layer tail"
    for r in rows:
        kind = phases.get(f"decode, {r} rows", "")
        assert f"{tail} (o, gate_up, down)" in kind, f"{r} rows: {kind or stderr[-4000:]}"
        if layers > 1:
            assert f"{tail} (o, gate_up, down, next qkv)" in kind, f"{r} rows: {kind}"
        assert "o proj" not in kind, f"{r} rows: the chain's o GEMM ran beside the tail: {kind}"


@pytest.mark.parametrize("name", sorted(_LAYER_TAIL_MODELS))
def test_layer_tail_changes_no_bits(tiny_model_dir, tmp_path, name):
    """VLM_LAYER_TAIL=1 runs each layer's GEMMs after its attention (o, norm + gate_up, silu * up + down, the
    next layer's norm + q/k/v) as one persistent launch that cuts and sums every GEMM as the decode kernel does:
    decode steps of 1-4 rows give the same tokens and logits, bit for bit, as the kernel chain on the strip kernel
    (VLM_W4A16_GEMV=0), in captured graphs (the default) and in eager steps under the step profiler, whose report
    shows the tail ran in the steps of every row count. Settings are read once per process: processes of their
    own."""
    import os
    import subprocess
    import sys

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    family, group, overrides = _LAYER_TAIL_MODELS[name]
    dst = write_awq_checkpoint(tiny_model_dir(family, **overrides), tmp_path / "awq", group,
                               lambda k, w: quantize_rtn(w, group))
    runs = {}
    # The tail's own cut is not the chain's sum order, nor is the column-tile kernel's (the chain's default at 1-2
    # rows): the chain on the strip kernel, whose cut the tail repeats, and the same for the layers before the tail.
    chain_cut = {"VLM_LAYER_TAIL_WIDE": "0", "VLM_W4A16_GEMV": "0"}
    for label, env in (("chain", {"VLM_LAYER_TAIL": "0", "VLM_W4A16_GEMV": "0"}),
                       ("tail", {"VLM_LAYER_TAIL": "1", **chain_cut}),
                       ("tail_eager", {"VLM_LAYER_TAIL": "1", "VLM_CUDA_PROFILE": "1", **chain_cut})):
        out = tmp_path / f"{label}.npz"
        done = subprocess.run([sys.executable, "-c", _LAYER_TAIL_RUN, str(dst), str(out)], capture_output=True,
                              text=True, timeout=600, env=dict(os.environ, **env))
        assert done.returncode == 0, done.stderr[-4000:]
        assert "could not be launched" not in done.stderr, done.stderr[-4000:]
        if label == "tail_eager":
            _assert_tail_ran(done.stderr, (4, 3, 2, 1), overrides.get("num_hidden_layers", 2))
        runs[label] = np.load(out)
    for label in ("tail", "tail_eager"):
        for key in runs["chain"].files:
            np.testing.assert_array_equal(runs[label][key], runs["chain"][key], err_msg=f"{label}: {key}")


_LAYER_TAIL_WIDE_RUN = """
import sys
import numpy as np
from vlmserve import Engine, EngineConfig, GenerationConfig
model, out, prompts = sys.argv[1], sys.argv[2], eval(sys.argv[3])
# Sixteen requests that end after 9, 11, ..., 39 tokens: decode steps of 16 rows down to 1, two of each row count
# (a shape runs eagerly first, then from its captured graph; every context stays in one graph bucket, under 64).
gens = [GenerationConfig(max_new_tokens=9 + 2 * i, ignore_eos=True, return_logits=True) for i in range(len(prompts))]
cfg = EngineConfig(device="cuda", num_kv_blocks=128, block_size=16, max_batch_size=16)
with Engine(model, cfg) as eng:
    res = [s.wait(timeout=300) for s in eng.add_requests(list(zip(prompts, gens)))]
np.savez(out, **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res)})
"""


@pytest.mark.parametrize("cut", ["chain", "wide"])
@pytest.mark.parametrize("name", sorted(_LAYER_TAIL_MODELS))
def test_layer_tail_at_up_to_sixteen_rows_matches_the_cpu_backend(tiny_model_dir, tmp_path, name, cut):
    """The persistent layer tail at decode steps of 5-16 rows (where the chain runs the general kernel, so not
    the chain's bits; two 8-row tiles past 8) and 1-4: sixteen requests ending after 9..39 tokens, each against
    its own greedy run on the CPU backend within the engine's tolerance; in graphs and in eager steps (the same
    bits), the profiler's report showing the tail in the steps of every row count. With each GEMM cut as the
    decode kernel cuts it, and with the tail's own cut (VLM_LAYER_TAIL_WIDE=1: about one long K slice a block; on
    the 2B-shaped layers several slices summed through global memory, on the tiny ones one slice a column block)."""
    import os
    import subprocess
    import sys

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    family, group, overrides = _LAYER_TAIL_MODELS[name]
    dst = write_awq_checkpoint(tiny_model_dir(family, **overrides), tmp_path / "awq", group,
                               lambda k, w: quantize_rtn(w, group))
    prompts = [prompt_for(1000 + i, n=5 + i, vocab=300) for i in range(16)]
    runs = {}
    tail_env = {"VLM_LAYER_TAIL": "1", "VLM_LAYER_TAIL_WIDE": "1" if cut == "wide" else "0"}
    for label, env in (("graphs", tail_env), ("eager", dict(tail_env, VLM_CUDA_PROFILE="1"))):
        out = tmp_path / f"{label}.npz"
        done = subprocess.run([sys.executable, "-c", _LAYER_TAIL_WIDE_RUN, str(dst), str(out), repr(prompts)],
                              capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))
        assert done.returncode == 0, done.stderr[-4000:]
        assert "could not be launched" not in done.stderr, done.stderr[-4000:]
        if label == "eager":
            _assert_tail_ran(done.stderr, range(1, 17), overrides.get("num_hidden_layers", 2), cut == "wide")
        runs[label] = np.load(out)
    for key in runs["graphs"].files:
        np.testing.assert_array_equal(runs["eager"][key], runs["graphs"][key], err_msg=key)

    class Result:
        def __init__(self, tokens, logits):
            self.token_ids, self.logits = tokens.tolist(), logits

    # A request may part from its CPU run early only at a near tie of the CPU's own logits (checked for each);
    # across the sixteen, most steps must still be compared, or the comparison would say little.
    agreed = total = 0
    for i, prompt in enumerate(prompts):
        n = 9 + 2 * i
        got = Result(runs["graphs"][f"tokens{i}"], runs["graphs"][f"logits{i}"])
        agreed += assert_same_greedy(run(dst, "cpu", prompt, steps=n), got, len(prompt), TOL["auto"], min_steps=0)
        total += n
    assert agreed >= total // 2, f"greedy agreed for {agreed} of {total} steps"


def test_embedding_spans_match_the_cpu_backend(tiny_model_dir):
    d = tiny_model_dir("llama_gqa_hd128")
    rng = np.random.default_rng(17)
    spans = [Embeddings(4, rng.normal(size=(5, 256)).astype(np.float16)),
             Embeddings(12, rng.normal(size=(3, 256)).astype(np.float32))]
    prompt = prompt_for(3)
    cpu, gpu = run(d, "cpu", prompt, spans), run(d, "cuda", prompt, spans)
    assert_same_greedy(cpu, gpu, len(prompt), TOL["auto"])
    assert gpu.token_ids != run(d, "cuda", prompt).token_ids  # the spans took effect


def test_batching_and_chunking_do_not_change_results(tiny_model_dir):
    """Eight requests in flight together, and prompts split into 5-token chunks,
    give the logits each request gets alone (rows never mix)."""
    d = tiny_model_dir("llama_gqa_hd128")
    prompts = [prompt_for(100 + i, n=10 + 7 * i) for i in range(8)]
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True, return_logits=True)
    with Engine(d, config("cuda")) as eng:
        alone = [eng.generate(p, gen) for p in prompts]
        streams = [eng.add_request(p, gen) for p in prompts]
        together = [s.wait(timeout=120) for s in streams]
    with Engine(d, config("cuda", max_num_batched_tokens=5)) as eng:
        chunked = [eng.generate(p, gen) for p in prompts[:3]]
    for a, t in zip(alone, together):
        assert a.token_ids == t.token_ids
        np.testing.assert_allclose(t.logits, a.logits, atol=2e-3 * np.abs(a.logits).max())
    for a, c in zip(alone, chunked):
        assert a.token_ids == c.token_ids
        np.testing.assert_allclose(c.logits, a.logits, atol=2e-3 * np.abs(a.logits).max())


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_tied"])
def test_the_lm_head_kernel_against_cublas(tiny_model_dir, monkeypatch, family):
    """At one row the lm head runs the decode-size dense kernel (fp32 logits, its weights read under
    an L2 evict_first policy: VLM_LM_HEAD_DECODE=1, the default); 2 is the same kernel with plain
    loads, 0 cuBLAS. The policy changes no bits; against cuBLAS only the order of the fp32 sums
    differs (the activations are the same until the tokens part). Tied embeddings read the
    embedding table as the head."""
    d = tiny_model_dir(family)
    prompt = prompt_for(11, n=30)
    res = {}
    for mode in ("1", "2", "0"):
        monkeypatch.setenv("VLM_LM_HEAD_DECODE", mode)
        res[mode] = run(d, "cuda", prompt, steps=24)  # graph-replayed decode steps from the second on
    assert res["1"].token_ids == res["2"].token_ids
    np.testing.assert_array_equal(res["1"].logits, res["2"].logits)
    compare_greedy(res["0"], res["1"], len(prompt), 1e-4, 12, ("cublas", "kernel"))


def one_row_runs_off_and_on(model_dir, monkeypatch, setting: str, prompts: list[list[int]]) -> dict:
    """Each prompt generated alone (every decode step one row; 20 tokens, graph-replayed steps among them,
    every other one returning its logits) with the setting 0 and then 1; asserts the same tokens and logits bit
    for bit and returns the runs by setting."""
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(setting, flag)
        with Engine(model_dir, config("cuda")) as eng:
            results[flag] = [eng.generate(p, GenerationConfig(max_new_tokens=20, ignore_eos=True,
                                                              return_logits=i % 2 == 0))
                             for i, p in enumerate(prompts)]
    for off, on in zip(results["0"], results["1"]):
        assert off.token_ids == on.token_ids
        if off.logits is not None:
            np.testing.assert_array_equal(off.logits, on.logits)
    return results


def test_the_greedy_token_taken_in_the_lm_head_changes_no_bits(tiny_model_dir, monkeypatch):
    """At one row the lm head's kernel also takes the greedy token (the default, VLM_LM_HEAD_ARGMAX=1), and no
    argmax kernel runs after it. The same tokens and logits as with the argmax kernel (=0): requests one at a time
    (every step one row), with and without logits returned, graph-replayed steps among them."""
    one_row_runs_off_and_on(tiny_model_dir("llama_gqa_hd128"), monkeypatch, "VLM_LM_HEAD_ARGMAX",
                            [prompt_for(900 + i, n=12 + 7 * i) for i in range(3)])


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "qwen2_bias_tied"])
def test_the_final_norm_in_the_lm_head_changes_no_bits(tiny_model_dir, monkeypatch, capfd, family):
    """VLM_LM_HEAD_NORM=1: in steps of one row the lm head's kernel also computes the final norm of the residual
    stream (no norm kernel before it). The same tokens and logits as with the norm kernel: requests one at a
    time (every decode step one row; the prompts' steps keep the norm kernel), with and without logits returned,
    graph-replayed steps among them; tied embeddings in one family. A profiled run (VLM_CUDA_PROFILE=1, eager
    steps) shows that the fused form ran."""
    d = tiny_model_dir(family)
    prompts = [prompt_for(950 + i, n=11 + 6 * i) for i in range(3)]
    results = one_row_runs_off_and_on(d, monkeypatch, "VLM_LM_HEAD_NORM", prompts)
    monkeypatch.setenv("VLM_CUDA_PROFILE", "1")  # VLM_LM_HEAD_NORM is still 1
    capfd.readouterr()
    with Engine(d, config("cuda")) as eng:
        profiled = eng.generate(prompts[0], GenerationConfig(max_new_tokens=8, ignore_eos=True))
    err = capfd.readouterr().err
    assert "final norm + lm head" in err, err[-2000:]
    assert profiled.token_ids == results["0"][0].token_ids[:8]


@pytest.mark.parametrize("kv", ["auto", "int8"])
def test_decode_graphs_replay_exactly_what_eager_steps_compute(tiny_model_dir, monkeypatch, kv):
    """Decode steps replay CUDA graphs (captured per batch size and context bound) from their
    second occurrence on; VLM_CUDA_GRAPHS=0 launches the same kernels one by one. Both must give
    the same bits, across batch sizes that change as requests finish and contexts that cross a
    bound (64 -> 128)."""
    d = tiny_model_dir("llama_gqa_hd128")
    prompts = [prompt_for(300 + i, n=20 + 9 * i) for i in range(5)]
    gens = [GenerationConfig(max_new_tokens=30 + 7 * i, ignore_eos=True, return_logits=True) for i in range(5)]
    results = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("VLM_CUDA_GRAPHS", graphs)
        with Engine(d, config("cuda", kv_cache_dtype=kv)) as eng:
            # Queued together, so the steps hold the same rows in both runs (requests queued one by one
            # land in steps by timing, and a step's row count picks the GEMMs' plans).
            streams = eng.add_requests(list(zip(prompts, gens)))
            results[graphs] = [s.wait(timeout=120) for s in streams]
    for g, e in zip(results["1"], results["0"]):
        assert g.token_ids == e.token_ids
        np.testing.assert_array_equal(g.logits, e.logits)


_DECODE_IN_SUBPROCESS = """
import sys
import numpy as np
from vlmserve import Engine, EngineConfig, GenerationConfig
model, out, kv = sys.argv[1], sys.argv[2], sys.argv[3]
prompts = [np.random.default_rng(700 + i).integers(3, 320, size=20 + 9 * i).tolist() for i in range(5)]
cfg = EngineConfig(device="cuda", num_kv_blocks=64, block_size=16, max_batch_size=8, kv_cache_dtype=kv)
with Engine(model, cfg) as eng:  # one request at a time: batches that depend on timing would change the bits
    res = [eng.generate(p, GenerationConfig(max_new_tokens=30 + 7 * i, ignore_eos=True, return_logits=True))
           for i, p in enumerate(prompts)]
np.savez(out, **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res)})
"""


@pytest.mark.parametrize("kv", ["auto", "int8"])
def test_dependent_launch_changes_no_bits(tiny_model_dir, tmp_path, kv):
    """On Hopper the decoder's kernels start while the previous one finishes (programmatic dependent
    launch: each waits for its inputs after prefetching its weights). VLM_DEPENDENT_LAUNCH=0 (read once
    per process, hence the subprocesses) launches them one after the other. Same arithmetic, so the same
    bits: AWQ weights (the w4a16 kernel with its in-kernel split-K sum at one row, the separate sum
    for the 20-56-row prefills), eager and graph-replayed decode steps, contexts crossing a graph bound."""
    import os
    import subprocess
    import sys

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    dst = write_awq_checkpoint(tiny_model_dir("llama_gqa_hd128"), tmp_path / "awq", 64,
                               lambda k, w: quantize_rtn(w, 64))
    runs = {}
    for flag in ("1", "0"):
        out = tmp_path / f"pdl{flag}.npz"
        env = dict(os.environ, VLM_DEPENDENT_LAUNCH=flag)
        done = subprocess.run([sys.executable, "-c", _DECODE_IN_SUBPROCESS, str(dst), str(out), kv], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        runs[flag] = np.load(out)
    assert sorted(runs["1"].files) == sorted(runs["0"].files) and len(runs["1"].files) == 10
    for name in runs["1"].files:
        np.testing.assert_array_equal(runs["1"][name], runs["0"][name], err_msg=name)


_WHOLE_ROWS_RUN = """
import sys
import numpy as np
from vlmserve import Embeddings, Engine, EngineConfig, GenerationConfig
model, out = sys.argv[1], sys.argv[2]
prompts = [np.random.default_rng(800 + i).integers(3, 320, size=40 + 30 * i).tolist() for i in range(4)]
cfg = EngineConfig(device="cuda", num_kv_blocks=64, block_size=16, max_batch_size=8, kv_cache_dtype="int8")
res = []
with Engine(model, cfg) as eng:  # one request at a time: batches that depend on timing would change the bits
    for i, p in enumerate(prompts):
        res.append(eng.generate(p, GenerationConfig(max_new_tokens=12, ignore_eos=True, prompt_logprobs=True,
                                                    logprobs=3, return_logits=True)))
        res.append(eng.generate(p, GenerationConfig(max_new_tokens=12, ignore_eos=True, temperature=0.8,
                                                    top_p=0.9, repetition_penalty=1.1, seed=5 + i)))
        # image-like rows spliced over the prompt's embeddings (uploaded through the same limit)
        rows = np.random.default_rng(850 + i).normal(size=(20 + 10 * i, 256)).astype(np.float16)
        res.append(eng.generate(p, GenerationConfig(max_new_tokens=12, ignore_eos=True, return_logits=True),
                                [Embeddings(3, rows)]))
np.savez(out, **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res) if r.logits is not None},
         **{f"prompt_logprobs{i}": r.prompt_logprobs for i, r in enumerate(res) if r.prompt_logprobs is not None})
"""


def test_whole_rows_through_ordinary_memory_change_no_bits(tiny_model_dir, tmp_path):
    """Whole logit rows (prompt logprobs, returned logits, host-drawn requests) of a launched step come down
    through a page-locked buffer, or, past VLM_PINNED_ROWS_MAX_MB, through ordinary memory handed over when the
    step is collected (so a long prompt's scoring does not keep that much memory page-locked); spliced
    embedding rows go up the same two ways. 0 sends every such step the second way: the same tokens, logits and
    prompt logprobs, bit for bit, as the default, with overlapped steps (the default) and one step at a time
    (VLM_OVERLAP_STEPS=0, whose steps copy straight into the output)."""
    import os
    import subprocess
    import sys

    runs = {}
    for overlap in ("1", "0"):
        for mb in ("128", "0"):
            out = tmp_path / f"rows{overlap}_{mb}.npz"
            env = dict(os.environ, VLM_PINNED_ROWS_MAX_MB=mb, VLM_OVERLAP_STEPS=overlap)
            done = subprocess.run([sys.executable, "-c", _WHOLE_ROWS_RUN, str(tiny_model_dir("llama_gqa_hd128")),
                                   str(out)], env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-4000:]
            runs[overlap, mb] = np.load(out)
    base = runs["1", "128"]
    assert len([f for f in base.files if f.startswith("prompt_logprobs")]) == 4
    assert len([f for f in base.files if f.startswith("logits")]) == 8
    for key, run in runs.items():
        assert sorted(run.files) == sorted(base.files), key
        for name in base.files:
            np.testing.assert_array_equal(run[name], base[name], err_msg=f"{key} {name}")


_ROPE_RUN = """
import sys
import numpy as np
from vlmserve import Engine, EngineConfig, GenerationConfig
model, out, kv = sys.argv[1], sys.argv[2], sys.argv[3]
prompts = [np.random.default_rng(900 + i).integers(3, 320, size=15 + 5 * i).tolist() for i in range(20)]
gens = [GenerationConfig(max_new_tokens=20 + 4 * i, ignore_eos=True, return_logits=True) for i in range(20)]
cfg = EngineConfig(device="cuda", num_kv_blocks=320, block_size=16, max_batch_size=32, kv_cache_dtype=kv)
with Engine(model, cfg) as eng:  # queued together: the steps hold the same rows in every run
    res = [s.wait(timeout=300) for s in eng.add_requests(list(zip(prompts, gens)))]
np.savez(out, **{f"tokens{i}": np.array(r.token_ids) for i, r in enumerate(res)},
         **{f"logits{i}": r.logits for i, r in enumerate(res)})
"""

# 128-dim heads with query groups of 2, 4, 8 and 1, a sliding window, and llama3 RoPE scaling; int8 cache,
# and int4 (the kernel's nibble form) and fp16 (its fp16 form) for two of them.
_ROPE_SHAPES = {
    "group2": ("llama_gqa_hd128", {}, "int8"),
    "group4": ("llama_gqa_hd128", dict(num_attention_heads=8, num_key_value_heads=2), "int8"),
    "group8": ("llama_gqa_hd128", dict(num_attention_heads=8, num_key_value_heads=1), "int8"),
    "mha": ("llama_gqa_hd128", dict(num_attention_heads=2, num_key_value_heads=2), "int8"),
    "sliding": ("mistral_sliding", dict(head_dim=128), "int8"),
    "llama3_scaling": ("llama3_rope_scaling", dict(head_dim=128), "int8"),
    "group2_int4": ("llama_gqa_hd128", {}, "int4"),
    "sliding_int4": ("mistral_sliding", dict(head_dim=128), "int4"),
    "group2_fp16": ("llama_gqa_hd128", {}, "fp16"),
    "sliding_fp16": ("mistral_sliding", dict(head_dim=128), "fp16"),
}


@pytest.mark.parametrize("shape", list(_ROPE_SHAPES))
def test_rope_inside_the_decode_attention_changes_no_bits(tiny_model_dir, tmp_path, shape):
    """With an int8, int4 or fp16 cache, fp16 activations and 128-dim heads, decode steps
    rotate q and write the step's K/V rows inside the tensor-core attention instead of in a RoPE kernel before
    it (VLM_ROPE_IN_ATTENTION=0 keeps the kernel; read once per process, hence the subprocesses). Same
    functions for the rotation and the quantization (or fp16 rounding), so the same bits: twenty requests
    queued together (decode batches from 20 rows, where the engine keeps the RoPE kernel, down to 1 as they finish;
    contexts crossing tiles, key slices and graph bounds). The profiled runs (eager, VLM_CUDA_PROFILE=1)
    show which form each one ran. The attention's first tiles loaded before it waits for the q/k/v GEMM
    (the default) or after (VLM_ATTENTION_EARLY_LOADS=0): the same bits too, as with the batch-1 latency cuts
    (VLM_ATTENTION_RELEASE_MERGE=1: the slices' merge through one release-acquire addition, its loads in one trip;
    VLM_ATTENTION_Q_FIRST=1: q loaded beside the row's write; both off by default). The int4 shapes run the
    tensor-core form (VLM_DECODE_ATTENTION_MMA_INT4=1, the default, pinned) in every run, the fp16 ones its fp16
    form (VLM_DECODE_ATTENTION_MMA_FP16=1, the default, pinned)."""
    import os
    import subprocess
    import sys

    family, overrides, kv = _ROPE_SHAPES[shape]
    d = tiny_model_dir(family, **overrides)
    runs = {}
    for name, env in {"inside": {"VLM_ROPE_IN_ATTENTION": "1"},
                      "inside_profiled": {"VLM_ROPE_IN_ATTENTION": "1", "VLM_CUDA_PROFILE": "1"},
                      "kernel_profiled": {"VLM_ROPE_IN_ATTENTION": "0", "VLM_CUDA_PROFILE": "1"},
                      "inside_late_loads": {"VLM_ROPE_IN_ATTENTION": "1", "VLM_ATTENTION_EARLY_LOADS": "0"},
                      "inside_latency_cuts": {"VLM_ROPE_IN_ATTENTION": "1", "VLM_ATTENTION_RELEASE_MERGE": "1",
                                              "VLM_ATTENTION_Q_FIRST": "1"}}.items():
        if kv == "int4":
            env = dict(env, VLM_DECODE_ATTENTION_MMA_INT4="1")
        if kv == "fp16":
            env = dict(env, VLM_DECODE_ATTENTION_MMA_FP16="1")
        out = tmp_path / f"{name}.npz"
        done = subprocess.run([sys.executable, "-c", _ROPE_RUN, str(d), str(out), kv], env=dict(os.environ, **env),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        runs[name] = (np.load(out), done.stderr)
    assert "gpu  rope + kv write + attention" in runs["inside_profiled"][1]
    assert "gpu  rope + kv write + attention" not in runs["kernel_profiled"][1]
    assert "gpu  rope + kv write" in runs["kernel_profiled"][1]
    ref = runs["kernel_profiled"][0]
    assert len(ref.files) == 40
    for name in ("inside", "inside_profiled", "inside_late_loads", "inside_latency_cuts"):
        got = runs[name][0]
        assert sorted(got.files) == sorted(ref.files)
        for key in ref.files:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}: {key}")


def test_greedy_tokens_from_the_device_argmax_equal_the_host_sampler(tiny_model_dir):
    """Greedy requests without logprobs take their token from a device argmax and copy no logits
    row; with logprobs the whole row comes back and the host sampler picks. Mixed in one batch with
    sampled requests (whole rows between argmax-only rows), both give the same tokens."""
    d = tiny_model_dir("qwen2_bias_tied")
    prompts = [prompt_for(500 + i, n=15 + 3 * i) for i in range(6)]
    plain = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    with_rows = GenerationConfig(max_new_tokens=12, ignore_eos=True, logprobs=0)
    sampled = GenerationConfig(max_new_tokens=12, ignore_eos=True, temperature=0.9, seed=3)
    with Engine(d, config("cuda")) as eng:
        streams = []
        for p in prompts:
            streams += [eng.add_request(p, plain), eng.add_request(p, with_rows), eng.add_request(p, sampled)]
        outs = [s.wait(timeout=120) for s in streams]
    for i in range(len(prompts)):
        assert outs[3 * i].token_ids == outs[3 * i + 1].token_ids
        assert len(outs[3 * i + 2].token_ids) == 12


def test_cache_capacity_comes_from_free_device_memory(tiny_model_dir):
    d = tiny_model_dir("llama_mqa")
    with Engine(d, EngineConfig(device="cuda", num_kv_blocks=0, cache_max_entry_count=0.01,
                                max_model_len=256)) as eng:
        stats = eng.stats()
        assert stats.kv_cache_bytes > 0 and stats.free_blocks > 0
        assert eng.generate(prompt_for(1), GenerationConfig(max_new_tokens=4)).token_ids


@pytest.mark.gpu
def test_a_kv_cache_larger_than_the_device_is_refused_before_any_allocation(tiny_model_dir):
    import torch

    from vlmserve.errors import OutOfMemoryError

    d = tiny_model_dir("llama_mqa")
    with Engine(d, EngineConfig(device="cuda", num_kv_blocks=64, max_model_len=256)) as eng:
        per_block = eng.stats().kv_cache_bytes // 64
    _, total = torch.cuda.mem_get_info()
    too_many = 2 * total // per_block
    with pytest.raises(OutOfMemoryError, match=rf"a KV cache of {too_many} blocks of \d+ tokens needs \d+ MiB"):
        Engine(d, EngineConfig(device="cuda", num_kv_blocks=too_many, max_model_len=256))
    # Nothing of the refused cache stays behind: an engine of the right size still loads and runs.
    with Engine(d, EngineConfig(device="cuda", num_kv_blocks=64, max_model_len=256)) as eng:
        assert eng.generate(prompt_for(1), GenerationConfig(max_new_tokens=4)).token_ids


@pytest.mark.slow
def test_smollm2_real_weights_match_the_cpu_backend(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a short poem about the sea."}],
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    cpu = run(smollm2_dir, "cpu", ids, steps=32, num_kv_blocks=16, block_size=64)
    gpu = run(smollm2_dir, "cuda", ids, steps=32, num_kv_blocks=16, block_size=64)
    print("cpu:", tok.decode(cpu.token_ids))
    print("gpu:", tok.decode(gpu.token_ids))
    assert_same_greedy(cpu, gpu, len(ids), TOL["auto"], min_steps=32)
