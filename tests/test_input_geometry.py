"""One input geometry per backbone: the data is decoded for the size the model takes, and
``emoset-peft eval`` scores a finished run exactly as training did, for every tiny family."""

import json

import pytest

from emoset_peft.cli import main
from emoset_peft.data.pipeline import cache_resolution
from emoset_peft.models import input_spec, load_adapter
from emoset_peft.models.tiny import save_tiny_backbone

# name -> save_tiny_backbone arguments. "dinov2_hub" is laid out as facebook/dinov2-* are:
# config.json says 48 px (518 on the Hub), the preprocessor centre-crops 32 px (224).
FAMILIES = {
    "vit": {"kind": "vit"},
    "clip": {"kind": "clip"},
    "clip_vision": {"kind": "clip_vision"},
    "dinov2": {"kind": "dinov2"},
    "siglip": {"kind": "siglip"},
    "dinov2_hub": {"kind": "dinov2", "image_size": 48, "processor_size": 32},
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory):
    return save_tiny_backbone(
        **FAMILIES[request.param], path=tmp_path_factory.mktemp(request.param)
    )


def test_dinov2_input_size_comes_from_its_preprocessor(tmp_path):
    folder = save_tiny_backbone("dinov2", tmp_path, image_size=48, processor_size=32)
    assert json.loads((folder / "config.json").read_text())["image_size"] == 48
    assert input_spec(folder).image_size == 32


def test_decoded_size_is_the_input_size_and_eval_reproduces_the_run(
    family_dir, tiny_run, tmp_path, capsys
):
    cache = tmp_path / "cache"
    args = tiny_run(
        "run",
        backbone=family_dir,
        **{
            "model.method": "lora",
            "data.cache_dir": cache,
            "train.min_steps": 4,
            "train.max_steps": 4,
            "train.eval_every": 2,
            "data.test_limit_per_class": 3,
        },
    )
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    spec = input_spec(load_adapter(run / "adapter"))
    assert spec == input_spec(family_dir)
    side = cache_resolution(spec.image_size, spec.crop_ratio)
    shapes = {
        tuple(json.loads(meta.read_text())["shape"][1:])
        for meta in (cache / "decoded").glob("*.json")
    }
    assert shapes == {(side, side, 3)}, f"decoded {shapes}, the model takes {spec.image_size} px"

    assert main(["eval", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    again.pop("num_processes")
    assert again == json.loads((run / "metrics.json").read_text())["test"]


def test_every_family_has_a_tiny_checkpoint_and_one_entry_per_model_type(tmp_path):
    from emoset_peft.models.backbones import describe_backbone
    from emoset_peft.models.families import FAMILIES, SUPPORTED_MODEL_TYPES
    from emoset_peft.models.tiny import KINDS

    covered = {
        describe_backbone(save_tiny_backbone(kind, tmp_path / kind))[0].architecture.name
        for kind in KINDS
    }
    assert covered == set(FAMILIES), "a new family needs a tiny kind in models/tiny.py"
    assert len(SUPPORTED_MODEL_TYPES) == len(set(SUPPORTED_MODEL_TYPES))


def test_fixed_position_families_take_the_size_their_config_was_built_for(tiny_vit_dir, tmp_path):
    """ViT, CLIP and SigLIP cannot take another size without interpolating their position
    embeddings, so a preprocessor asking for one does not change the input size."""
    import shutil

    import torch
    from transformers import ViTImageProcessor

    from emoset_peft.models import build_model

    folder = tmp_path / "vit"
    shutil.copytree(tiny_vit_dir, folder)
    ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.1] * 3).save_pretrained(
        folder
    )
    spec = input_spec(folder)
    assert spec.image_size == 32 and spec.mean == (0.1, 0.1, 0.1)
    model = build_model(folder, "linear")
    assert model(pixel_values=torch.zeros(1, 3, spec.image_size, spec.image_size)).logits.shape == (
        1,
        8,
    )


def test_a_record_saved_without_crop_ratio_reads_as_the_default():
    from emoset_peft.models.families import DEFAULT_EVAL_CROP_RATIO, InputSpec

    spec = InputSpec.from_dict({"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert spec.crop_ratio == DEFAULT_EVAL_CROP_RATIO
    assert InputSpec.from_dict(spec.to_dict()) == spec
