"""Tiny seeded-random VLMs that are complete enough to serve: weights, image
processor, tokenizer with the family's special tokens, processor and chat
template. The tokenizer is SmolLM2's (real, offline), so text round-trips."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import randomize_

TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ IMAGE }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}


def _tokenizer(extra: list[str], named: dict | None = None):
    from transformers import AutoTokenizer

    from vlmserve.default_model import smollm2_checkpoint

    tok = AutoTokenizer.from_pretrained(smollm2_checkpoint(), extra_special_tokens=named or {})
    tok.add_special_tokens({"additional_special_tokens": extra + list((named or {}).values())})
    return tok


def _text_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def write_stack(directory: Path, family: str, seed: int = 0) -> Path:
    import transformers as t

    torch.manual_seed(seed)
    if family == "llava":
        tok = _tokenizer(["<image>"])
        vision = t.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=8, projection_dim=64)
        cfg = t.LlavaConfig(vision_config=vision, text_config=_text_config(len(tok)),
                            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                            vision_feature_select_strategy="default", tie_word_embeddings=True)
        model = t.LlavaForConditionalGeneration(cfg)
        ip = t.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        proc = t.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, image_token="<image>",
                                chat_template=TEMPLATE.replace("IMAGE", "'<image>'"))
    elif family == "idefics3":
        tok = _tokenizer(IDEFICS3_TOKENS)
        vision = t.Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8)
        cfg = t.Idefics3Config(vision_config=vision.to_dict(), text_config=_text_config(len(tok)).to_dict(),
                               image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
                               tie_word_embeddings=True)
        model = t.Idefics3ForConditionalGeneration(cfg)
        ip = t.Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        proc = t.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                                   chat_template=TEMPLATE.replace("IMAGE", "'<image>'"))
    elif family == "internvl":
        from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

        tok = _tokenizer([], INTERNVL_TOKENS)
        vision = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, image_size=[32, 32], patch_size=[8, 8])
        cfg = t.InternVLConfig(vision_config=vision.to_dict(), text_config=_text_config(len(tok)).to_dict(),
                               image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                               tie_word_embeddings=True)
        model = t.InternVLForConditionalGeneration(cfg)
        ip = t.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
                                     max_patches=4)
        # InternVLProcessor needs a video processor (torchvision), absent here: the checkpoint carries the
        # image processor and a tokenizer whose template writes <IMG_CONTEXT>, as the LM service needs.
        proc = ip
        tok.chat_template = TEMPLATE.replace("IMAGE", "'<IMG_CONTEXT>'")
    else:
        raise ValueError(family)
    randomize_(model, seed)
    if getattr(proc, "chat_template", None):
        tok.chat_template = proc.chat_template  # saved last, the tokenizer's template must be the same one
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
