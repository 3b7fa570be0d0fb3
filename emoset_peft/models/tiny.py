"""Tiny random backbones saved like Hub checkpoints, for tests and the CPU demo.

``save_tiny_backbone("clip", path)`` writes what ``openai/clip-vit-base-patch16`` has (config.json,
model.safetensors, preprocessor_config.json and a tokenizer), only ~100 KB of it, so that
``build_model(path, ...)`` loads it through ``from_pretrained`` exactly as it loads a Hub id.
Random weights: useful for plumbing, not for accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("vit", "clip", "clip_vision", "dinov2", "siglip")


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: a printable stand-in character for each of the 256 bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), 256),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(others))]


def _save_tiny_clip_tokenizer(path: Path) -> int:
    """A CLIP tokenizer with no merges: every character is a token. Returns its vocabulary size."""
    from transformers import CLIPTokenizer

    symbols = _byte_alphabet()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tokenizer.save_pretrained(path)
    return len(vocab)


def save_tiny_backbone(
    kind: str,
    path: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    processor_size: int | None = None,
) -> Path:
    """Write a tiny random ``kind`` checkpoint to ``path``; returns the folder.

    vit: a ``ViTModel`` with pooler (like google/vit-base-patch16-224-in21k); clip: a full
    ``CLIPModel`` + tokenizer (like openai/clip-vit-base-patch16); clip_vision: a ``CLIPVisionModel``
    (no projection, no text tower); dinov2: a ``Dinov2Model``; siglip: a full ``SiglipModel``
    (no tokenizer, no preprocessor_config.json: exercises the fallbacks).

    ``processor_size`` (dinov2 only) also writes a preprocessor_config.json as facebook/dinov2-*
    have: resize the short side to ``processor_size / 0.875``, centre-crop ``processor_size``,
    while config.json keeps ``image_size`` (518 against 224 on the Hub: the input size must come
    from the preprocessor, the model interpolates its position embeddings).
    """
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        SiglipConfig,
        SiglipModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if processor_size is not None and kind != "dinov2":
        raise ValueError("processor_size= is for kind='dinov2' (the other kinds write their own)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    shape = {
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 2 * hidden_size,
    }
    vision = {**shape, "image_size": image_size, "patch_size": patch_size}
    if kind in ("dinov2", "siglip"):
        from emoset_peft.models.backbones import quiet_transformers

        text = {**shape, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        # Saving a SigLIP config warns about the token ids of its default text config.
        with quiet_transformers():
            if kind == "dinov2":
                model = Dinov2Model(Dinov2Config(**vision))
            else:
                model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
            model.save_pretrained(path)
        if processor_size is not None:
            _save_dinov2_processor(path, processor_size)
        return path
    if kind == "vit":
        model = ViTModel(ViTConfig(**vision))
        processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    else:
        processor = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        if kind == "clip_vision":
            model = CLIPVisionModel(CLIPVisionConfig(**vision))
        else:
            vocab_size = _save_tiny_clip_tokenizer(path)
            text = {
                **shape,
                "vocab_size": vocab_size,
                "max_position_embeddings": 77,
                "bos_token_id": vocab_size - 2,
                "eos_token_id": vocab_size - 1,
                "pad_token_id": vocab_size - 1,
            }
            projection = hidden_size // 2  # != hidden_size, so a forgotten projection shows up
            model = CLIPModel(
                CLIPConfig(
                    text_config=text,
                    vision_config={**vision, "projection_dim": projection},
                    projection_dim=projection,
                )
            )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _save_dinov2_processor(path: Path, crop: int) -> None:
    from transformers import BitImageProcessor

    BitImageProcessor(
        size={"shortest_edge": round(crop / 0.875)},
        crop_size={"height": crop, "width": crop},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
