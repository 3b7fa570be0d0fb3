"""Model fixtures: tiny ViT and CLIP backbones saved to a temporary folder.

They are loaded by path through ``from_pretrained``, the same code path as a Hub id.
"""

import pytest


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory):
    """A tiny ``ViTModel`` checkpoint (32 px images, 8 px patches, 2 layers, hidden 32)."""
    from emoset_peft.models.tiny import save_tiny_backbone

    return save_tiny_backbone("vit", tmp_path_factory.mktemp("tiny_vit"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny full ``CLIPModel`` checkpoint with tokenizer (projection 16-d)."""
    from emoset_peft.models.tiny import save_tiny_backbone

    return save_tiny_backbone("clip", tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip_vision_dir(tmp_path_factory):
    """A tiny ``CLIPVisionModel`` checkpoint: no projection, no text tower."""
    from emoset_peft.models.tiny import save_tiny_backbone

    return save_tiny_backbone("clip_vision", tmp_path_factory.mktemp("tiny_clip_vision"))


@pytest.fixture(scope="session")
def tiny_backbones(tiny_vit_dir, tiny_clip_dir):
    """{"vit": folder, "clip": folder}: the two backbones of the method matrix."""
    return {"vit": tiny_vit_dir, "clip": tiny_clip_dir}
