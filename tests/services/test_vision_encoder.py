"""The vision runner against the full transformers model: same embeddings as its
get_image_features (the path its forward takes), the layout the LM needs, and only
the vision tower and projector loaded."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import IMAGES
from vlmserve.errors import ModelLoadError, UnsupportedError
from vlmserve.vision import VisionConfig, VisionEncoder

FULL_CLASSES = {"llava": "LlavaForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration",
                "smolvlm": "SmolVLMForConditionalGeneration", "internvl": "InternVLForConditionalGeneration"}
TEST_IMAGES = ("rocket.jpg", "chelsea.png", "camera.png")


def _images():
    return [Image.open(IMAGES / n).convert("RGB") for n in TEST_IMAGES]


def _encoder(directory) -> VisionEncoder:
    enc = VisionEncoder(directory, VisionConfig(device="cpu"))
    enc.warmup()
    return enc


def _reference(directory, family, encoder, image):
    """The full model's own features for the image, through the family's processor defaults."""
    full = getattr(transformers, FULL_CLASSES[family]).from_pretrained(directory, dtype=torch.float32).eval()
    out = encoder.image_processor(images=[image], return_tensors="pt", **encoder.family.processor_defaults())
    inputs = {k: out[k] for k in ("pixel_values", "pixel_attention_mask") if k in out}
    with torch.no_grad():
        feats = full.get_image_features(**inputs).pooler_output
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1]), out


@pytest.mark.parametrize("family", ["llava", "idefics3", "smolvlm", "internvl"])
def test_embeddings_equal_the_full_model(vlm_dir, family):
    d = vlm_dir(family)
    enc = _encoder(d)
    for image in _images():
        got = enc.encode([image])[0]
        want, _ = _reference(d, family, enc, image)
        assert got.embeddings.shape == want.shape == (got.layout.num_tokens, enc.hidden_size)
        torch.testing.assert_close(got.embeddings, want, atol=1e-6, rtol=1e-6)


def test_processor_defaults_come_from_the_family_processor():
    from vlmserve.vision.families import FAMILIES

    assert FAMILIES["idefics3"].processor_defaults() == {"return_row_col_info": True}
    assert FAMILIES["internvl"].processor_defaults() == {"crop_to_patches": True}
    assert FAMILIES["llava"].processor_defaults() == {}


def test_llava_layout(vlm_dir):
    enc = _encoder(vlm_dir("llava"))
    lay = enc.encode([_images()[0]])[0].layout
    # 32x32 image, 8x8 patches, CLS dropped ("default" strategy): 16 tokens in one tile.
    assert (lay.num_tiles, lay.tokens_per_tile, lay.num_tokens) == (1, 16, 16)
    assert (lay.grid_rows, lay.grid_cols, lay.has_global_tile) == (0, 0, False)
    assert (lay.image_width, lay.image_height) == (640, 427)


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_idefics3_layout_is_the_processors_split(vlm_dir, family):
    d = vlm_dir(family)
    enc = _encoder(d)
    wide = Image.open(IMAGES / "rocket.jpg").convert("RGB").resize((128, 40))
    small = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((24, 20))  # upscaled to longest_edge
    for image in (_images()[0], wide, small):
        lay = enc.encode([image])[0].layout
        _, out = _reference(d, family, enc, image)
        rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
        assert (lay.grid_rows, lay.grid_cols) == (rows, cols)
        assert lay.num_tiles == (rows * cols + 1 if rows else 1) and lay.has_global_tile
        # 16 patches per 32x32 tile, pixel shuffle by 2: 4 tokens (the processor's image_seq_len).
        assert lay.tokens_per_tile == 4 and lay.num_tokens == 4 * lay.num_tiles
    wide_layout = enc.encode([wide])[0].layout
    assert (wide_layout.grid_rows, wide_layout.grid_cols) == (1, 2)


def test_internvl_layout_is_the_dynamic_tiling(vlm_dir):
    enc = _encoder(vlm_dir("internvl"))
    wide = Image.open(IMAGES / "rocket.jpg").convert("RGB").resize((400, 100))
    lay = enc.encode([wide])[0].layout
    # Aspect 4: the 4x1 canvas (max_patches=4) plus the thumbnail.
    assert (lay.grid_rows, lay.grid_cols, lay.num_tiles, lay.has_global_tile) == (1, 4, 5, True)
    assert lay.tokens_per_tile == 4 and lay.num_tokens == 20


def test_only_the_vision_tower_and_projector_are_loaded(vlm_dir):
    enc = _encoder(vlm_dir("llava"))
    assert [n for n, _ in enc.model.named_children()] == ["vision_tower", "multi_modal_projector"]
    full = transformers.LlavaForConditionalGeneration.from_pretrained(vlm_dir("llava"))
    want = sum(p.numel() for m in (full.model.vision_tower, full.model.multi_modal_projector) for p in m.parameters())
    assert sum(p.numel() for p in enc.model.parameters()) == want


def test_legacy_llava_hf_layout_loads(vlm_dir, tmp_path):
    """llava-hf checkpoints keep CLIPVisionModel's 'vision_model.' level: transformers' key mapping applies."""
    src = vlm_dir("llava")
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = load_file(str(src / "model.safetensors"))
    legacy = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
    assert any(k.startswith("vision_tower.vision_model.encoder.") for k in legacy)
    save_file(legacy, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    image = _images()[1]
    torch.testing.assert_close(_encoder(tmp_path).encode([image])[0].embeddings,
                               _encoder(src).encode([image])[0].embeddings, atol=0, rtol=0)


def test_pickled_weights_are_refused(vlm_dir, tmp_path):
    src = vlm_dir("llava")
    for f in src.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, tmp_path / f.name)
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        VisionEncoder(tmp_path, VisionConfig(device="cpu"))


def test_missing_vision_weights_are_a_load_error(vlm_dir, tmp_path):
    src = vlm_dir("internvl")
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = {k: v for k, v in load_file(str(src / "model.safetensors")).items()
               if not k.startswith("multi_modal_projector.linear_2")}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="multi_modal_projector"):
        VisionEncoder(tmp_path, VisionConfig(device="cpu"))


def test_text_only_checkpoint_is_unsupported(tiny_model_dir, vlm_dir):
    d = tiny_model_dir("llama_tied")
    shutil.copy(vlm_dir("llava") / "preprocessor_config.json", d / "preprocessor_config.json")
    with pytest.raises(UnsupportedError, match="model_type 'llama'"):
        VisionEncoder(d, VisionConfig(device="cpu"))


def test_dtype_auto_is_float32_on_cpu(vlm_dir):
    d = vlm_dir("smolvlm")
    assert json.loads((d / "config.json").read_text())["model_type"] == "smolvlm"
    enc = VisionEncoder(d, VisionConfig(device="cpu"))
    assert enc.dtype == torch.float32 and all(p.dtype == torch.float32 for p in enc.model.parameters())
    half = VisionEncoder(d, VisionConfig(device="cpu", dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())


def test_bf16_checkpoint_with_a_stale_position_ids_buffer(vlm_dir, tmp_path):
    """bf16 weights are widened like from_pretrained does; the int64 position_ids that old CLIP
    checkpoints saved (a non-persistent buffer today) is ignored, as from_pretrained ignores it."""
    src = vlm_dir("llava")
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(src / "model.safetensors")).items()}
    tensors["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    enc = _encoder(tmp_path)
    image = _images()[0]
    want, _ = _reference(tmp_path, "llava", enc, image)
    torch.testing.assert_close(enc.encode([image])[0].embeddings, want, atol=1e-6, rtol=1e-6)
