"""CLIP zero-shot head: shape, normalisation, agreement with CLIP's own similarity, text init."""

import math

import pytest
import torch
import torch.nn.functional as F

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.models import build_model
from emoset_peft.models.zeroshot import DEFAULT_TEMPLATES


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def clip_reference_logits(folder, images, templates=DEFAULT_TEMPLATES):
    """logit_scale * cos(image, class text) computed with transformers' CLIPModel directly."""
    from transformers import AutoTokenizer, CLIPModel

    clip, tokenizer = (
        CLIPModel.from_pretrained(folder).eval(),
        AutoTokenizer.from_pretrained(folder),
    )
    with torch.no_grad():
        rows = []
        for name in EMOTIONS:
            tokens = tokenizer(
                [t.format(name) for t in templates], padding=True, return_tensors="pt"
            )
            text = clip.get_text_features(**tokens).pooler_output
            rows.append(F.normalize(F.normalize(text, dim=-1).mean(0), dim=-1))
        image = F.normalize(clip.get_image_features(pixel_values=images).pooler_output, dim=-1)
        return clip.logit_scale.exp() * image @ torch.stack(rows).T


def test_zeroshot_head_shape_and_normalisation(tiny_clip_dir):
    model = build_model(tiny_clip_dir, "zeroshot")
    head = model.network.classifier
    assert head.weight.shape == (8, 16)  # 8 emotions x the tiny CLIP's 16-d projection
    assert torch.count_nonzero(head.bias) == 0
    norms = head.weight.norm(dim=1)
    scale = math.exp(2.6592)  # CLIP's initial logit_scale, saved in the tiny checkpoint
    torch.testing.assert_close(norms, torch.full((8,), scale / math.sqrt(16)), rtol=1e-4, atol=1e-5)
    assert model.config.id2label == dict(enumerate(EMOTIONS))


def test_zeroshot_logits_are_clips_scaled_cosine_similarities(tiny_clip_dir, images):
    model = build_model(tiny_clip_dir, "zeroshot").eval()
    with torch.no_grad():
        logits = model(pixel_values=images).logits
    torch.testing.assert_close(
        logits, clip_reference_logits(tiny_clip_dir, images), rtol=1e-4, atol=1e-4
    )


def test_custom_templates_change_the_head(tiny_clip_dir, images):
    default = build_model(tiny_clip_dir, "zeroshot").network.classifier.weight
    custom = build_model(tiny_clip_dir, "zeroshot", templates=["{}"]).network.classifier.weight
    assert not torch.allclose(default, custom)
    with pytest.raises(EmoSetError, match="must each contain"):
        build_model(tiny_clip_dir, "zeroshot", templates=["no slot"])


def test_a_string_is_one_template(tiny_clip_dir):
    one = build_model(tiny_clip_dir, "zeroshot", templates="a photo of {}")
    listed = build_model(tiny_clip_dir, "zeroshot", templates=["a photo of {}"])
    assert one.record["options"]["templates"] == listed.record["options"]["templates"]
    assert torch.equal(one.network.classifier.weight, listed.network.classifier.weight)
    with pytest.raises(EmoSetError, match="option templates=3 should be a string"):
        build_model(tiny_clip_dir, "zeroshot", templates=3)


@pytest.mark.parametrize("method", ["lora", "linear", "vpt"])
def test_head_init_text_starts_from_the_zero_shot_head(method, tiny_clip_dir, images):
    zero = build_model(tiny_clip_dir, "zeroshot").eval()
    model = build_model(tiny_clip_dir, method, head_init="text").eval()
    with torch.no_grad():
        if method == "vpt":  # prompts change the features; the head itself must match
            head = model.network.classifier
            assert torch.equal(head.weight, zero.network.classifier.weight)
        else:  # LoRA starts as the identity (B = 0), linear has nothing else
            assert torch.allclose(
                model(pixel_values=images).logits, zero(pixel_values=images).logits, atol=1e-6
            )


def test_zeroshot_needs_clip_with_a_text_tower(tiny_vit_dir, tiny_clip_vision_dir):
    with pytest.raises(EmoSetError, match="full CLIP checkpoint.*'vit'"):
        build_model(tiny_vit_dir, "zeroshot")
    with pytest.raises(EmoSetError, match="full CLIP checkpoint.*'clip_vision_model'"):
        build_model(tiny_clip_vision_dir, "zeroshot")
    with pytest.raises(EmoSetError, match="head_init='text'"):
        build_model(tiny_vit_dir, "lora", head_init="text")


def test_clip_vision_checkpoint_without_projection_uses_the_pooled_features(tiny_clip_vision_dir):
    model = build_model(tiny_clip_vision_dir, "linear")
    assert isinstance(model.network.visual_projection, torch.nn.Identity)
    assert model.network.classifier.in_features == 32  # the hidden size, no 16-d projection


def test_text_embeddings_are_computed_once_per_reuse_block(tiny_clip_dir):
    from emoset_peft.models.backbones import loaded_cache, reuse_loaded_backbones
    from emoset_peft.models.zeroshot import class_text_embeddings

    assert loaded_cache() is None
    with reuse_loaded_backbones() as cache:
        assert loaded_cache() is cache
        first, _ = class_text_embeddings(str(tiny_clip_dir), EMOTIONS)
        (key,) = [k for k in cache if k[0] == "text"]
        first.zero_()  # the caller's copy; the cached one stays intact
        again, _ = class_text_embeddings(str(tiny_clip_dir), EMOTIONS)
        assert torch.equal(again, cache[key][0]) and again.abs().sum() > 0
    assert loaded_cache() is None
