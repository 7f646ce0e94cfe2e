"""Bad input to the C ABI and to Engine: a clear error with the right type,
no crash, and the other requests of the same engine carry on untouched."""
from __future__ import annotations

import ctypes
import json
import shutil

import numpy as np
import pytest

from vlmserve import Embeddings, Engine, EngineConfig, GenerationConfig, _native
from vlmserve.errors import (InvalidArgumentError, InvalidHandleError, ModelLoadError, NotFoundError,
                             OutOfMemoryError, OutOfRangeError, UnsupportedError, check)

PROMPT = np.random.default_rng(31).integers(3, 320, size=12).tolist()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama_mha_hd64")


def cfg(**kw):
    return EngineConfig(**dict(dict(device="cpu", num_kv_blocks=32, block_size=16, max_model_len=64), **kw))


def test_c_abi_handles():
    lib = _native.lib()
    assert lib.vlm_model_finalize(None) == 7
    assert b"NULL" in lib.vlm_last_error()
    bogus = ctypes.c_void_p(0xDEADBEE0)
    assert lib.vlm_engine_cancel(bogus, 1) == 7
    assert b"not live" in lib.vlm_last_error()
    with pytest.raises(InvalidHandleError):
        check(lib.vlm_engine_get_stats(bogus, ctypes.byref(_native.EngineStats())))
    # a freed model handle
    p = lib.vlm_model_default_params()
    m = ctypes.c_void_p()
    check(lib.vlm_model_create(ctypes.byref(p), ctypes.byref(m)))
    lib.vlm_model_free(m)
    assert lib.vlm_model_finalize(m) == 7
    lib.vlm_model_free(m)  # double free: ignored


def test_c_abi_rejects_invalid_sampling_directly(model):
    """Without the Python validation in front, the library itself refuses."""
    with Engine(model, cfg()) as eng:
        lib = _native.lib()
        prompt = (ctypes.c_int32 * 3)(5, 6, 7)
        for field, value in [("temperature", -1.0), ("top_p", 1.5), ("min_p", 1.0), ("repetition_penalty", 0.0),
                             ("top_k", -2), ("temperature", float("nan"))]:
            p = lib.vlm_request_default_params()
            p.prompt, p.prompt_len = prompt, 3
            setattr(p.sampling, field, value)
            rid = ctypes.c_uint64()
            assert lib.vlm_engine_enqueue(eng._engine, ctypes.byref(p), ctypes.byref(rid)) == 1, field
            assert field.encode() in lib.vlm_last_error()
        p = lib.vlm_request_default_params()
        p.prompt, p.prompt_len, p.max_new_tokens = prompt, 3, 0
        assert lib.vlm_engine_enqueue(eng._engine, ctypes.byref(p), ctypes.byref(rid)) == 1
        p.prompt_len = 0
        p.max_new_tokens = 4
        assert lib.vlm_engine_enqueue(eng._engine, ctypes.byref(p), ctypes.byref(rid)) == 1


def test_bad_requests_do_not_disturb_a_running_one(model):
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True)
    with Engine(model, cfg(max_model_len=128)) as eng:
        expected = eng.generate(PROMPT, gen).token_ids
        good = eng.add_request(PROMPT, gen)
        bad = [
            (OutOfRangeError, "outside the vocabulary", lambda: eng.add_request([1, 2, 320])),
            (OutOfRangeError, "outside the vocabulary", lambda: eng.add_request([-1, 5])),
            (OutOfRangeError, "max_model_len", lambda: eng.add_request(list(range(3, 200)))),
            (InvalidArgumentError, "non-empty", lambda: eng.add_request([])),
            (InvalidArgumentError, "integers", lambda: eng.add_request([1.5, 2.0])),
            (InvalidArgumentError, "int32", lambda: eng.add_request([2**40])),
            (InvalidArgumentError, "shape", lambda: eng.add_request(PROMPT, None, [Embeddings(0, np.zeros((2, 7)))])),
            (OutOfRangeError, "outside the prompt", lambda: eng.add_request(
                PROMPT, None, [Embeddings(10, np.zeros((5, 256), np.float32))])),
            (InvalidArgumentError, "overlap", lambda: eng.add_request(PROMPT, None, [
                Embeddings(0, np.zeros((3, 256), np.float32)), Embeddings(2, np.zeros((3, 256), np.float32))])),
            (InvalidArgumentError, "floating", lambda: eng.add_request(PROMPT, None, [Embeddings(0, np.zeros((1, 256), int))])),
            (InvalidArgumentError, "top_p", lambda: GenerationConfig(top_p=0)),
            (InvalidArgumentError, "temperature", lambda: GenerationConfig(temperature=-0.1)),
            (InvalidArgumentError, "seed", lambda: GenerationConfig(seed=-1)),
            (InvalidArgumentError, "stop sequence", lambda: GenerationConfig(stop_token_ids=[[]])),
            (InvalidArgumentError, "logprobs", lambda: GenerationConfig(logprobs=50)),
        ]
        for exc, msg, call in bad:
            with pytest.raises(exc, match=msg):
                call()
        assert good.wait().token_ids == expected
        s = eng.stats()
        assert s.free_blocks == s.total_blocks


def test_request_too_big_for_the_whole_cache(model):
    with Engine(model, cfg(num_kv_blocks=2, block_size=16, max_model_len=64)) as eng:
        with pytest.raises(OutOfMemoryError, match="KV cache"):
            eng.add_request(PROMPT, GenerationConfig(max_new_tokens=40))
        assert len(eng.generate(PROMPT, GenerationConfig(max_new_tokens=8, ignore_eos=True)).token_ids) == 8


def test_a_kv_cache_larger_than_the_host_is_refused_before_any_allocation(model):
    # 2**41 bytes (2 TiB) of cache: more than any machine that runs this; refused in the engine's words, not
    # granted by the system's lazy mapping and killed later.
    with Engine(model, cfg()) as eng:
        per_block = eng.stats().kv_cache_bytes // 32
    too_many = 2**41 // per_block
    refusal = rf"a KV cache of {too_many} blocks of 16 tokens needs \d+ MiB of host memory"
    with pytest.raises(OutOfMemoryError, match=refusal):
        Engine(model, cfg(num_kv_blocks=too_many))
    with Engine(model, cfg()) as eng:  # nothing of it stays behind
        assert len(eng.generate(PROMPT, GenerationConfig(max_new_tokens=4, ignore_eos=True)).token_ids) == 4


def test_engine_config_validation():
    for kw, msg in [(dict(kv_cache_dtype="int3"), "kv_cache_dtype"), (dict(block_size=12), "block_size"),
                    (dict(max_batch_size=0), "max_batch_size"), (dict(cache_max_entry_count=1.5), "cache_max"),
                    (dict(device="tpu"), "device"), (dict(model_format="gguf"), "model_format"),
                    (dict(quant_policy=3), "quant_policy"), (dict(max_model_len=1), "max_model_len")]:
        with pytest.raises(InvalidArgumentError, match=msg):
            EngineConfig(**kw)


def test_closed_engine_refuses(model):
    eng = Engine(model, cfg())
    eng.close()
    with pytest.raises(InvalidHandleError):
        eng.add_request(PROMPT)
    eng.close()  # idempotent


def _copy(model, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(model, d)
    return d


def test_missing_and_corrupt_weight_files(model, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine(tmp_path / "nope", cfg())
    d = _copy(model, tmp_path)
    st = d / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        Engine(d, cfg())
    st.write_bytes(b"\xff" * 8 + data[8:100])
    with pytest.raises(ModelLoadError, match="corrupt"):
        Engine(d, cfg())
    st.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(ModelLoadError, match="corrupt"):
        Engine(d, cfg())
    st.unlink()
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        Engine(d, cfg())


def test_missing_tensor_and_bad_config(model, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(model, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="down_proj"):
        Engine(d, cfg())
    (d / "config.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        Engine(d, cfg())
    cfgj = json.loads((model / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfgj, model_type="gpt2")))
    with pytest.raises(UnsupportedError, match="gpt2"):
        Engine(d, cfg())
    (d / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        Engine(d, cfg())


def test_wrong_tensor_shapes(model, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(model, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:, :100].copy()
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(InvalidArgumentError, match=r"q_proj.weight' has shape \[256, 100\], expected \[256, 256\]"):
        Engine(d, cfg())


def test_awq_tensors_of_the_wrong_shape(model, tmp_path):
    from safetensors.numpy import load_file, save_file

    from vlmserve.awq_checkpoint import write_awq_checkpoint
    from vlmserve.awq_format import quantize_rtn

    d = write_awq_checkpoint(model, tmp_path / "awq", 64, lambda k, w: quantize_rtn(w, 64))
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.qweight"] = tensors["model.layers.0.mlp.up_proj.qweight"][:, :-1].copy()
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(InvalidArgumentError, match=r"up_proj.qweight' has shape \[256, 31\], expected \[256, 32\]"):
        Engine(d, cfg())
    tensors["model.layers.0.mlp.up_proj.qweight"] = np.zeros((256, 32), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(InvalidArgumentError, match="must be int32"):
        Engine(d, cfg())
    cfgj = json.loads((d / "config.json").read_text())
    cfgj["quantization_config"]["quant_method"] = "gptq"
    (d / "config.json").write_text(json.dumps(cfgj))
    with pytest.raises(UnsupportedError, match="gptq"):
        Engine(d, cfg())


def test_set_tensor_unknown_name_is_not_found():
    lib = _native.lib()
    p = lib.vlm_model_default_params()
    m = ctypes.c_void_p()
    check(lib.vlm_model_create(ctypes.byref(p), ctypes.byref(m)))
    try:
        shape = (ctypes.c_int64 * 1)(4)
        buf = (ctypes.c_float * 4)()
        with pytest.raises(NotFoundError, match="unknown tensor"):
            check(lib.vlm_model_set_tensor(m, b"layers.0.attn.weird", 1, 1, shape, buf))
        with pytest.raises(Exception, match="never set"):
            check(lib.vlm_model_finalize(m))
    finally:
        lib.vlm_model_free(m)


def test_cuda_device_without_a_gpu_is_refused(model):
    from vlmserve import _native
    from vlmserve.errors import UnsupportedError

    if _native.lib().vlm_cuda_device_count() > 0:
        pytest.skip("a CUDA GPU is visible: device=cuda is served here (tests/engine/test_cuda_backend.py)")
    with pytest.raises(UnsupportedError, match="no CUDA GPU is visible.*device=cpu"):
        Engine(model, cfg(device="cuda"))


def test_kernel_entry_points_check_their_arguments_before_the_device():
    """The single-kernel entry points (vlmcore_kernels.h) refuse bad sizes and arguments with a clear
    message before touching any device pointer (those below point nowhere), so this runs without a GPU."""
    lib = _native.lib()
    dev = ctypes.c_void_p(0x1000)  # never dereferenced: every call below fails its checks first
    rows = (ctypes.c_int32 * 2)(1, 2)
    args = [dev, dev, 4, 1, 1, 64, _native.DTYPE_F16, _native.DTYPE_F16, 16, dev, dev, None, None, dev, dev, 1]
    with pytest.raises(InvalidArgumentError, match="sum to 3, not rows = 4"):
        check(lib.vlm_prefill_attention(*args, rows, 2, 0, dev, None))
    args[8] = 12
    with pytest.raises(InvalidArgumentError, match="power of two"):
        check(lib.vlm_prefill_attention(*args, (ctypes.c_int32 * 2)(2, 2), 2, 0, dev, None))
    with pytest.raises(InvalidArgumentError, match="power of two"):
        check(lib.vlm_decode_attention(dev, dev, 1, 1, 1, 64, _native.DTYPE_F16, _native.DTYPE_F16, 24, dev, dev,
                                       None, None, dev, dev, 1, 0, 8, dev, None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_decode_attention(dev, dev, 1, 1, 1, 64, _native.DTYPE_F16, _native.DTYPE_F16, 16, dev, dev,
                                       None, None, dev, dev, 1, 0, 8, ctypes.c_void_p(0x1008), None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_prefill_attention(*args, (ctypes.c_int32 * 2)(2, 2), 2, 0, ctypes.c_void_p(0x1004), None))
    with pytest.raises(InvalidArgumentError, match="rows and vocab must be positive"):
        check(lib.vlm_argmax_rows(dev, 0, 100, dev, dev, dev, None))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_argmax_rows(dev, 1, 100, None, dev, dev, None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_argmax_rows(dev, 1, 100, dev, dev, ctypes.c_void_p(0x1004), None))
    with pytest.raises(InvalidArgumentError, match="must not be h"):
        check(lib.vlm_w4a16_gemm_rms_norm(dev, None, dev, 1e-6, dev, dev, dev, dev, 1, 128, 256, 128,
                                          _native.DTYPE_F16, None))
    with pytest.raises(InvalidArgumentError, match="eps"):
        check(lib.vlm_add_rms_norm(dev, None, dev, -1.0, dev, 1, 64, _native.DTYPE_F16, None))
    F16 = _native.DTYPE_F16
    with pytest.raises(InvalidArgumentError, match="m must be 1..4, got 5"):
        check(lib.vlm_dense_decode_gemm(dev, dev, dev, 5, 64, 256, F16, 0, None))
    with pytest.raises(InvalidArgumentError, match="multiple of 8, got n = 64, k = 250"):
        check(lib.vlm_dense_decode_gemm(dev, dev, dev, 1, 64, 250, F16, 0, None))
    with pytest.raises(InvalidArgumentError, match="act_dtype"):
        check(lib.vlm_dense_decode_gemm(dev, dev, dev, 1, 64, 256, 99, 0, None))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_dense_decode_gemm(dev, None, dev, 1, 64, 256, F16, 0, None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_dense_decode_gemm(ctypes.c_void_p(0x1002), dev, dev, 1, 64, 256, F16, 0, None))
    with pytest.raises(InvalidArgumentError, match="m must be 1..4, got 0"):
        check(lib.vlm_dense_decode_logits(dev, dev, dev, 0, 64, 256, F16, 1, None, None, None, None))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_dense_decode_logits(dev, dev, None, 1, 64, 256, F16, 1, None, None, None, None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_dense_decode_logits(dev, ctypes.c_void_p(0x1008), dev, 1, 64, 256, F16, 1, None, None, None,
                                          None))
    with pytest.raises(InvalidArgumentError, match="argmax: one row only, got m = 2"):
        check(lib.vlm_dense_decode_logits(dev, dev, dev, 2, 64, 256, F16, 1, dev, dev, dev, None))
    with pytest.raises(InvalidArgumentError, match="index, value and workspace go together"):
        check(lib.vlm_dense_decode_logits(dev, dev, dev, 1, 64, 256, F16, 1, dev, None, dev, None))
    with pytest.raises(InvalidArgumentError, match="workspace must be 16-byte aligned"):
        check(lib.vlm_dense_decode_logits(dev, dev, dev, 1, 64, 256, F16, 1, dev, dev, ctypes.c_void_p(0x1008),
                                          None))
    with pytest.raises(InvalidArgumentError, match="must not be h"):
        check(lib.vlm_dense_decode_gemm_rms_norm(dev, None, dev, 1e-6, dev, dev, dev, 1, 64, 256, F16, None))
    with pytest.raises(InvalidArgumentError, match="delta 8"):
        check(lib.vlm_dense_decode_gemm_rms_norm(dev, ctypes.c_void_p(0x1004), dev, 1e-6, None, dev, dev, 1, 64,
                                                 256, F16, None))
    with pytest.raises(InvalidArgumentError, match="positive multiple of 16, got 24"):
        check(lib.vlm_stream_read(dev, 24, dev, None))
    with pytest.raises(InvalidArgumentError, match="positive multiple of 16, got 0"):
        check(lib.vlm_stream_read(dev, 0, dev, None))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_stream_read(dev, 64, None, None))
    with pytest.raises(InvalidArgumentError, match="16-byte aligned"):
        check(lib.vlm_stream_read(ctypes.c_void_p(0x1008), 64, dev, None))
    with pytest.raises(InvalidArgumentError, match="NULL output"):
        check(lib.vlm_stream_read_sink_words(None))
    with pytest.raises(InvalidArgumentError, match="rows and vocab must be positive, got 0 and 8"):
        check(lib.vlm_draw_rows(dev, 0, 8, dev, dev, dev, dev, dev, dev, None))
    with pytest.raises(InvalidArgumentError, match="NULL device pointer"):
        check(lib.vlm_draw_rows(dev, 2, 8, dev, dev, dev, dev, None, dev, None))
