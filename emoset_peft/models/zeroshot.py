"""CLIP zero-shot head: class weights from text embeddings of prompt templates.

For each class, every template is filled with the class name, encoded by CLIP's text tower and
projected, L2-normalised, averaged over templates and normalised again (the CLIP paper's prompt
ensembling). Zero-shot logits are ``logit_scale * cos(image_embed, text_embed)``. The classifier in
``clip_classifier.EmoSetCLIPForImageClassification`` reads the image embedding scaled to unit RMS
(``normalize(e) * sqrt(dim)``), so the same logits come from a linear head with weights
``text_embeds * logit_scale / sqrt(dim)`` and zero bias. That head is the k=0 point of a learning
curve (``method="zeroshot"``) and the starting point of any CLIP method with ``head_init="text"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emoset_peft.errors import EmoSetError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo that evokes {}.",
    "a photo that makes people feel {}.",
    "an image expressing {}.",
    "a picture full of {}.",
    "a photo of {}.",
)


@torch.no_grad()
def class_text_embeddings(
    source: str, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> tuple[torch.Tensor, float]:
    """([classes, projection_dim] unit-norm text embeddings, exp(logit_scale)) from a CLIP checkpoint.

    The tokenizer is loaded from the same folder or Hub id as the model. Inside
    ``reuse_loaded_backbones()`` the result is computed once per process (the text tower is
    frozen, so every cell of a study would compute the same embeddings).
    """
    from emoset_peft.models import backbones

    cache = backbones.loaded_cache()
    key = ("text", source, tuple(class_names), tuple(templates))
    if cache is not None and key in cache:
        embeds, scale = cache[key]
        return embeds.clone(), scale
    embeds, scale = _compute_text_embeddings(source, class_names, templates)
    if cache is not None:
        cache[key] = (embeds.clone(), scale)
    return embeds, scale


def _compute_text_embeddings(source, class_names, templates) -> tuple[torch.Tensor, float]:
    from transformers import AutoTokenizer, CLIPModel

    from emoset_peft.models.backbones import quiet_transformers

    if not templates or any("{}" not in t for t in templates):
        raise EmoSetError(
            f"zero-shot templates must each contain '{{}}' for the class name, got {list(templates)}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        with quiet_transformers():
            clip = CLIPModel.from_pretrained(
                source, trust_remote_code=False, use_safetensors=True
            ).eval()
    except (OSError, ValueError) as err:
        raise EmoSetError(
            f"backbone {source!r}: the zero-shot head needs CLIP's text tower and tokenizer, "
            f"which could not be loaded ({type(err).__name__}: {err})"
        ) from err
    rows = []
    for name in class_names:
        texts = [t.format(name.replace("_", " ")) for t in templates]
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = clip.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        # transformers 5 returns a model output whose pooler_output is projected; 4.x a tensor.
        embeds = out if isinstance(out, torch.Tensor) else out.pooler_output
        rows.append(F.normalize(F.normalize(embeds.float(), dim=-1).mean(dim=0), dim=-1))
    return torch.stack(rows), float(clip.logit_scale.exp())


@torch.no_grad()
def set_text_head(
    classifier: torch.nn.Linear, text_embeds: torch.Tensor, logit_scale: float
) -> None:
    """Make ``classifier`` (on unit-RMS image embeddings) compute logit_scale * cosine similarity."""
    if tuple(classifier.weight.shape) != tuple(text_embeds.shape):
        raise EmoSetError(
            f"text head: the classifier reads {classifier.weight.shape[1]}-d features but the text "
            f"embeddings are {text_embeds.shape[1]}-d; the checkpoint needs its visual_projection"
        )
    dim = text_embeds.shape[-1]
    classifier.weight.copy_(text_embeds * (logit_scale / math.sqrt(dim)))
    if classifier.bias is not None:
        classifier.bias.zero_()
