"""The captured layer inputs and arguments reproduce transformers' own forward,
and smoothing leaves a layer's function unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import load_hf
from vlmserve.checkpoint import Checkpoint
from vlmserve.lite.auto_awq import _heads
from vlmserve.lite.decoder import capture_layer_inputs, layer_output, load_decoder
from vlmserve.lite.smoothing import GROUPS, scaled_tensors
from vlmserve.model_spec import load_spec


def _decoder(directory):
    ck = Checkpoint(directory)
    try:
        spec = load_spec(directory, ck)
        return spec, load_decoder(spec, ck, torch.float32)
    finally:
        ck.close()


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "mistral_sliding", "qwen2_bias_tied", "llama3_rope_scaling"])
def test_chained_layers_equal_the_model(tiny_model_dir, family):
    d = tiny_model_dir(family)
    spec, decoder = _decoder(d)
    ids = np.random.default_rng(0).integers(3, 320, size=(3, 40))  # 40 > mistral's sliding window of 12
    with torch.no_grad():
        x, calls = capture_layer_inputs(decoder, ids, batch_size=2)  # a partial last batch too
        for layer, (args, kwargs) in zip(decoder.layers, calls):
            x = layer_output(layer(x, *args, **kwargs))
        ours = decoder.norm(x)
        ref = load_hf(d).model(input_ids=torch.from_numpy(ids)).last_hidden_state
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama_mha_hd64", "llama_gqa_hd128", "llama_mqa", "qwen2_bias_tied"])
def test_smoothing_preserves_the_layer_function(tiny_model_dir, family):
    """Folding any positive scales into the layer (norms, v_proj rows and bias, up_proj rows),
    with the scales of o tied across the query heads sharing a KV head, changes nothing."""
    spec, decoder = _decoder(tiny_model_dir(family))
    heads = _heads(spec)
    layer = decoder.layers[0]
    g = torch.Generator().manual_seed(0)
    sizes = {"qkv": spec.hidden_size, "o": heads.num_kv_heads * heads.head_dim,
             "gate_up": spec.hidden_size, "down": int(spec.text_config["intermediate_size"])}
    scales = {grp.name: torch.exp(torch.randn(sizes[grp.name], generator=g)) for grp in GROUPS}
    ids = np.random.default_rng(1).integers(3, 320, size=(2, 24))
    with torch.no_grad():
        x, calls = capture_layer_inputs(decoder, ids, batch_size=2)
        args, kwargs = calls[0]
        before = layer_output(layer(x, *args, **kwargs))
        for key, value in scaled_tensors(layer.state_dict(), scales, heads).items():
            layer.get_parameter(key).copy_(value)
        after = layer_output(layer(x, *args, **kwargs))
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
