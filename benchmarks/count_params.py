"""Trainable parameters of every method on ViT-B/16 and CLIP ViT-B/16, as a markdown table.

    python benchmarks/count_params.py

The backbones are random-init models built on the meta device from hand-written configs of
google/vit-base-patch16-224-in21k and the vision tower of openai/clip-vit-base-patch16: no
download, no memory. Each method uses its default options and targets with 8 classes; "% of total"
is trainable / all parameters of the model as built (backbone + head + adapter).
"""

from __future__ import annotations

import logging

import torch
from transformers import CLIPConfig, ViTConfig

from emoset_peft.errors import EmoSetError
from emoset_peft.models import METHODS, build_model_from_config, count_parameters

# google/vit-base-patch16-224-in21k
VIT_B16 = ViTConfig(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
    qkv_bias=True,
)
# openai/clip-vit-base-patch16 (the text tower is not part of the classifier)
CLIP_B16 = CLIPConfig(
    vision_config={
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
        "projection_dim": 512,
    },
    text_config={
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    projection_dim=512,
)
BACKBONES = {"ViT-B/16": VIT_B16, "CLIP ViT-B/16": CLIP_B16}
TOTAL_STEPS = 1000  # AdaLoRA needs a schedule; its parameter count does not depend on it


def count(config, method: str) -> tuple[int, int] | None:
    """(trainable, total), or None where the method does not apply (zeroshot needs CLIP)."""
    try:
        with torch.device("meta"):
            model = build_model_from_config(config, method, total_steps=TOTAL_STEPS)
    except EmoSetError:
        return None
    return count_parameters(model)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    header = (
        "| method | " + " | ".join(f"{name} trainable | % of total" for name in BACKBONES) + " |"
    )
    print(header)
    print("|---|" + "---:|---:|" * len(BACKBONES))
    for method in METHODS:
        cells = []
        for config in BACKBONES.values():
            counts = count(config, method)
            if counts is None:
                cells += ["n/a", "n/a"]
                continue
            trainable, total = counts
            cells += [f"{trainable:,}", f"{100 * trainable / total:.3f}%"]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
