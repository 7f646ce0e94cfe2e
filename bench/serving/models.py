"""Seeded random-weight VLMs for the serving benchmark, built locally (nothing is downloaded).

internvl-2b: the size class of Mini-InternVL-Chat-2B: an InternViT-300M-shaped vision tower at 448 px
  (one tile for a 512×512 image, 256 image tokens after the 0.5 pixel shuffle) and a 1.8B
  LLaMA-architecture LM with InternLM2-1.8B's dims (ANCHORS.md), in the Hugging Face InternVL layout.
internvl-tiny: the same code path at toy sizes (the CPU smoke run).
llava-7b: the shape of LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 image tokens) and a Llama-2-7B-shaped LM
  (vocabulary 32,000), in the Hugging Face LLaVA layout.
llava-tiny: the same code path at toy sizes.

The tokenizer is a byte-level BPE trained here on the shipped WikiText-2 validation text, with the
family's special tokens; the LM's vocabulary keeps the real model's size (92,544 or 32,000 rows) so
the embedding and lm_head cost what they would."""
from __future__ import annotations

from pathlib import Path

import torch

# The toy LM both tiny families share (CPU smoke runs).
TINY_TEXT = dict(vocab_size=1536, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)
SIZES = {
    "llava-7b": dict(family="llava",
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=336, patch_size=14, projection_dim=768),
                     text=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
                     image=336, dtype=torch.float16),
    "llava-tiny": dict(family="llava",
                       vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=32, patch_size=8, projection_dim=64),
                       text=TINY_TEXT,
                       image=32, dtype=torch.float32),
    "internvl-2b": dict(family="internvl",
                        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                    num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14]),
                        text=dict(vocab_size=92544, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                                  num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096),
                        image=448, dtype=torch.float16),
    "internvl-tiny": dict(family="internvl",
                          vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, image_size=[32, 32], patch_size=[8, 8]),
                          text=TINY_TEXT,
                          image=32, dtype=torch.float32),
}
SPECIAL = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
           "video_token": "<video>", "image_token": "<image>"}
PLACEHOLDER = {"internvl": "<IMG_CONTEXT>", "llava": "<image>"}  # what the chat template writes for an image
TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ 'PLACEHOLDER' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}")


def add_model_args(ap) -> None:
    """--model-name and --work (where generated and quantized checkpoints are kept), shared by the benchmarks
    that build these models."""
    from vlmserve.default_model import cache_dir

    ap.add_argument("--model-name", default="internvl-2b", choices=sorted(SIZES))
    ap.add_argument("--work", type=Path, default=cache_dir() / "bench" / "serve")


def describe(name: str) -> str:
    s = SIZES[name]
    v, t = s["vision"], s["text"]
    return (f"{name}: {s['family']} layout, vision tower hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, "
            f"{s['image']} px; LM hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, "
            f"{t['num_attention_heads']}/{t['num_key_value_heads']} heads, ffn {t['intermediate_size']}, vocab "
            f"{t['vocab_size']}; seeded random weights ({str(s['dtype']).replace('torch.', '')})")


def _tokenizer(vocab: int, family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vlmserve.lite.datasets import builtin_path

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *SPECIAL.values()]
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 4096), special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")
    tok.train_from_iterator([text[i:i + 10000] for i in range(0, len(text), 10000)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=SPECIAL)
    fast.chat_template = TEMPLATE.replace("PLACEHOLDER", PLACEHOLDER[family])
    return fast


def write_model(directory: Path, name: str, seed: int = 0) -> Path:
    """Writes the checkpoint once (reused when directory/config.json exists)."""
    import transformers as t
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    if (directory / "config.json").is_file():
        return directory
    s = SIZES[name]
    tok = _tokenizer(s["text"]["vocab_size"], s["family"])
    torch.manual_seed(seed)
    text = t.LlamaConfig(**s["text"], rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, head_dim=s["text"]["hidden_size"] // s["text"]["num_attention_heads"])
    if s["family"] == "internvl":
        cfg = t.InternVLConfig(vision_config=InternVLVisionConfig(**s["vision"]).to_dict(), text_config=text.to_dict(),
                               image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                               tie_word_embeddings=False)
        model_cls = t.InternVLForConditionalGeneration
        processor = t.GotOcr2ImageProcessor(size={"height": s["image"], "width": s["image"]}, crop_to_patches=False)
    else:
        cfg = t.LlavaConfig(vision_config=t.CLIPVisionConfig(**s["vision"]), text_config=text,
                            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                            vision_feature_select_strategy="default", tie_word_embeddings=False)
        model_cls = t.LlavaForConditionalGeneration
        ip = t.CLIPImageProcessor(size={"shortest_edge": s["image"]},
                                  crop_size={"height": s["image"], "width": s["image"]})
        processor = t.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=s["vision"]["patch_size"],
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                     image_token="<image>", chat_template=tok.chat_template)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = model_cls(cfg)
    g = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():  # weights large enough that activations do not vanish layer after layer
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in pname or "lambda" in pname else 0.0)
                        + 0.02 * torch.randn(p.shape, generator=g, device=p.device))
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=p.device) / p.shape[-1] ** 0.5)
    model = model.to(s["dtype"])
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
