"""Tiny seeded-random VLM checkpoints (vision tower + projector + LM) in each
family's real on-disk layout."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiny_models import randomize_, text_config


def _save(model, directory: Path, seed: int) -> Path:
    randomize_(model, seed)
    model.save_pretrained(directory)
    return directory


def write_llava(directory: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=64)
    cfg = LlavaConfig(vision_config=vision, text_config=text_config("llama_gqa_hd128"), image_token_index=300,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(cfg), directory, seed)


def write_idefics3(directory: Path, seed: int = 0, smolvlm: bool = False) -> Path:
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig,
                              SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig)

    vcls, ccls, mcls = ((SmolVLMVisionConfig, SmolVLMConfig, SmolVLMForConditionalGeneration) if smolvlm else
                        (Idefics3VisionConfig, Idefics3Config, Idefics3ForConditionalGeneration))
    vision = vcls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = ccls(vision_config=vision.to_dict(), text_config=text_config("llama_tied").to_dict(),
               image_token_id=300, scale_factor=2)
    torch.manual_seed(seed)
    return _save(mcls(cfg), directory, seed)


def write_internvl_hf(directory: Path, seed: int = 0) -> Path:
    """transformers' own InternVL layout (model.language_model.*), Qwen2 LM."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    vision = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[32, 32], patch_size=[8, 8])
    cfg = InternVLConfig(vision_config=vision.to_dict(), text_config=text_config("qwen2_bias_tied").to_dict(),
                         image_token_id=300, downsample_ratio=0.5)
    torch.manual_seed(seed)
    return _save(InternVLForConditionalGeneration(cfg), directory, seed)


def write_internvl_chat(directory: Path, qwen2_dir: Path) -> Path:
    """OpenGVLab's remote-code layout (InternVLChatModel): language_model.model.*,
    language_model.lm_head, llm_config. The vision tensors are placeholders: the
    engine never reads them, and only their names matter for this layout."""
    directory.mkdir(parents=True, exist_ok=True)
    lm = load_file(str(qwen2_dir / "model.safetensors"))
    tensors = {("language_model." + k): v for k, v in lm.items()}
    g = torch.Generator().manual_seed(0)
    tensors["vision_model.embeddings.patch_embedding.weight"] = torch.randn(64, 3, 14, 14, generator=g)
    tensors["mlp1.1.weight"] = torch.randn(128, 256, generator=g)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    llm = json.loads((qwen2_dir / "config.json").read_text())
    cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "llm_config": llm,
           "vision_config": {"model_type": "intern_vit_6b", "hidden_size": 64}, "downsample_ratio": 0.5,
           "template": "internvl2_5"}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory
