"""Bad input to build_model / load_adapter: one clear EmoSetError that names what to fix."""

import json

import pytest

from emoset_peft.errors import EmoSetError
from emoset_peft.models import METHODS, build_model, load_adapter


def test_unknown_method_lists_the_methods(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="unknown method 'lorra'.*" + ", ".join(METHODS)):
        build_model(tiny_vit_dir, "lorra")


def test_unknown_option_names_it_and_the_valid_ones(tiny_vit_dir):
    with pytest.raises(
        EmoSetError, match="no option.*rank.*its options: r, alpha, dropout, rslora"
    ):
        build_model(tiny_vit_dir, "lora", rank=4)
    with pytest.raises(EmoSetError, match="'linear' has no option.*its options: none"):
        build_model(tiny_vit_dir, "linear", r=4)


def test_option_of_the_wrong_type(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="num_prompts"):
        build_model(tiny_vit_dir, "vpt", num_prompts=2.5)
    with pytest.raises(EmoSetError, match="deep"):
        build_model(tiny_vit_dir, "vpt", deep="yes")


def test_unsupported_architecture_names_its_model_type(tmp_path):
    from transformers import BertConfig

    BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(tmp_path)
    with pytest.raises(
        EmoSetError, match=r"model_type 'bert'; supported model types: vit, dinov2, clip"
    ):
        build_model(tmp_path, "lora")


@pytest.mark.parametrize("backbone", ["./no/such/folder", "/no/such/folder", "a/b/c", "../up"])
def test_missing_folder_that_is_no_hub_id(backbone):
    with pytest.raises(EmoSetError, match="no such folder, and not a Hugging Face Hub id"):
        build_model(backbone, "lora")


def test_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(EmoSetError, match="could not load config.json"):
        build_model(tmp_path, "lora")


def test_options_that_do_not_fit_the_method(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="targets= only applies to the PEFT methods"):
        build_model(tiny_vit_dir, "prefix", targets=["q"])
    with pytest.raises(EmoSetError, match="layers= applies to"):
        build_model(tiny_vit_dir, "vpt", layers=[0])
    with pytest.raises(EmoSetError, match="needs total_steps"):
        build_model(tiny_vit_dir, "adalora")
    with pytest.raises(EmoSetError, match="unknown target role"):
        build_model(tiny_vit_dir, "lora", targets=["query"])
    with pytest.raises(EmoSetError, match="head_init='xavier'"):
        build_model(tiny_vit_dir, "lora", head_init="xavier")


def test_label_maps(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="num_labels=3: give id2label"):
        build_model(tiny_vit_dir, "linear", num_labels=3)
    with pytest.raises(EmoSetError, match="classes 0..2"):
        build_model(tiny_vit_dir, "linear", num_labels=3, id2label=["a", "b"])
    model = build_model(tiny_vit_dir, "linear", num_labels=2)
    assert model.config.id2label == {0: "positive", 1: "negative"}


def test_load_adapter_rejects_foreign_folders(tmp_path, tiny_vit_dir):
    with pytest.raises(EmoSetError, match="no emoset_peft.json"):
        load_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(EmoSetError, match="plain PEFT folder"):
        load_adapter(tmp_path)
    (tmp_path / "emoset_peft.json").write_text(json.dumps({"format_version": 99, "method": "lora"}))
    with pytest.raises(EmoSetError, match="format_version 99"):
        load_adapter(tmp_path)


def test_load_adapter_onto_another_architecture(tmp_path, tiny_vit_dir, tiny_clip_dir):
    build_model(tiny_vit_dir, "linear").save_pretrained(tmp_path)
    with pytest.raises(EmoSetError, match="saved on a 'vit' backbone"):
        load_adapter(tmp_path, backbone=tiny_clip_dir)


def test_a_string_is_one_target_role(tiny_vit_dir):
    model = build_model(tiny_vit_dir, "lora", targets="mlp_in")
    assert model.record["targets"] == ["mlp_in"]
    assert all(name.endswith(".mlp.fc1") for name in model.record["target_modules"])
    with pytest.raises(EmoSetError, match=r"unknown target role\(s\) \['qv'\]"):
        build_model(tiny_vit_dir, "lora", targets="qv")  # not q and v
    with pytest.raises(EmoSetError, match="targets= takes a role or a list of roles"):
        build_model(tiny_vit_dir, "lora", targets=5)


def test_a_backbone_that_is_no_id_or_folder(tiny_vit_dir):
    from transformers import ViTModel

    with pytest.raises(
        EmoSetError, match="expected a Hugging Face Hub id or a local folder, got NoneType"
    ):
        build_model(None, "lora")
    with pytest.raises(EmoSetError, match=r"got ViTModel; .*save_pretrained\(folder\)"):
        build_model(ViTModel.from_pretrained(tiny_vit_dir), "lora")


def test_bad_num_labels_and_class_names(tiny_vit_dir):
    cases = [
        (dict(num_labels="8"), "num_labels='8' must be an integer"),
        (dict(num_labels=0), "num_labels=0 must be >= 2"),
        (dict(num_labels=-1), "num_labels=-1 must be >= 2"),
        (dict(num_labels=0, id2label=[]), "num_labels=0 must be >= 2"),
        (dict(num_labels=2, id2label=["a", "a"]), "id2label repeats ['a']"),
        (dict(num_labels=2, id2label=["a", ""]), "id2label has an empty name"),
        (dict(id2label=["a", "b", "c"]), "pass num_labels=3"),
        (dict(num_labels=2, id2label={"x": "a", 1: "b"}), "key 'x' is not a class index"),
        (dict(num_labels=2, id2label="ab"), "id2label= takes a list of class names"),
    ]
    for kwargs, message in cases:
        with pytest.raises(EmoSetError) as caught:
            build_model(tiny_vit_dir, "linear", **kwargs)
        assert message in str(caught.value), (kwargs, str(caught.value))
    model = build_model(tiny_vit_dir, "linear", num_labels=2, id2label={"0": "calm", 1: "tense"})
    assert model.id2label == {0: "calm", 1: "tense"}


def test_an_oft_block_size_that_does_not_divide_the_layers_is_refused(tiny_vit_dir):
    """peft would use another block size (with a warning) than the folder and card record."""
    import warnings

    from emoset_peft.models.adapters import check_build

    for size in (5, 64):  # the tiny ViT's q and v layers are 32 wide
        with pytest.raises(EmoSetError) as caught:
            build_model(tiny_vit_dir, "oft", block_size=size)
        message = str(caught.value)
        assert f"model.options.block_size={size} (method 'oft') must divide" in message
        assert "(32); block sizes that fit: 2, 4, 8, 16, 32" in message
        with pytest.raises(EmoSetError, match="must divide"):
            check_build(tiny_vit_dir, "oft", block_size=size)  # train's preflight, meta device
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(tiny_vit_dir, "oft", block_size=16)
    assert not [w for w in caught if "oft_block_size" in str(w.message)]
    assert model.record["options"]["block_size"] == 16
