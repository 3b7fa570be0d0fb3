"""Role resolution on module-name lists: transformers 4.x and 5.x layouts, tower scoping, errors."""

import pytest

from emoset_peft.errors import EmoSetError
from emoset_peft.models.roles import ROLES, architecture_for, layer_names, resolve_targets, roles_of


def vit4_names(layers=3):
    """ViTForImageClassification module names as transformers 4.x has them."""
    names = [
        "",
        "vit",
        "vit.embeddings",
        "vit.embeddings.patch_embeddings.projection",
        "vit.encoder",
    ]
    for i in range(layers):
        p = f"vit.encoder.layer.{i}"
        names += [
            p,
            f"{p}.attention.attention.query",
            f"{p}.attention.attention.key",
            f"{p}.attention.attention.value",
            f"{p}.attention.output.dense",
            f"{p}.intermediate.dense",
            f"{p}.output.dense",
        ]
    return names + ["vit.layernorm", "classifier"]


def vit5_names(layers=3):
    names = ["", "vit", "vit.embeddings.patch_embeddings.projection"]
    for i in range(layers):
        p = f"vit.layers.{i}"
        names += (
            [p] + [f"{p}.attention.{x}_proj" for x in "qkvo"] + [f"{p}.mlp.fc1", f"{p}.mlp.fc2"]
        )
    return names + ["classifier"]


def clip_full_names(layers=2):
    """A full CLIPModel: the text tower has the same layer names as the vision tower."""
    names = []
    for tower in ("text_model", "vision_model"):
        for i in range(layers):
            p = f"{tower}.encoder.layers.{i}"
            names += [p] + [f"{p}.self_attn.{x}_proj" for x in ("q", "k", "v", "out")]
            names += [f"{p}.mlp.fc1", f"{p}.mlp.fc2"]
    return names + ["visual_projection", "text_projection"]


def test_vit_4x_names_resolve_by_role():
    got = resolve_targets(vit4_names(), "vit", ["q", "v"])
    assert got == [
        f"vit.encoder.layer.{i}.attention.attention.{x}"
        for i in range(3)
        for x in ("query", "value")
    ]


def test_vit_4x_out_and_mlp_out_are_told_apart():
    # "attention.output.dense" (out) and "output.dense" (mlp_out) share a suffix.
    assert resolve_targets(vit4_names(1), "vit", ["out"]) == [
        "vit.encoder.layer.0.attention.output.dense"
    ]
    assert resolve_targets(vit4_names(1), "vit", ["mlp_out"]) == [
        "vit.encoder.layer.0.output.dense"
    ]
    assert resolve_targets(vit4_names(1), "vit", ["mlp_in"]) == [
        "vit.encoder.layer.0.intermediate.dense"
    ]


def test_vit_5x_names_and_all_roles():
    got = resolve_targets(vit5_names(2), "vit", list(ROLES))
    assert len(got) == 2 * 6
    assert roles_of(got, "vit")["vit.layers.1.attention.o_proj"] == "out"
    assert roles_of(got, "vit")["vit.layers.0.mlp.fc2"] == "mlp_out"


def test_clip_targets_are_scoped_to_the_vision_tower():
    got = resolve_targets(clip_full_names(), "clip", ["q", "k", "v", "out", "mlp_in", "mlp_out"])
    assert got and all(name.startswith("vision_model.") for name in got)
    assert len(got) == 2 * 6


def test_bare_clip_vision_model_5x_names():
    names = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.q_proj"]
    assert resolve_targets(names, "clip_vision_model", ["q"]) == names


def test_dinov2_4x_names():
    names = [f"dinov2.encoder.layer.{i}.attention.attention.query" for i in range(2)]
    names += [f"dinov2.encoder.layer.{i}.mlp.fc2" for i in range(2)]
    assert resolve_targets(names, "dinov2", ["q"]) == names[:2]
    assert resolve_targets(names, "dinov2", ["mlp_out"]) == names[2:]


def test_layers_restrict_depth_with_negative_indices():
    got = resolve_targets(vit4_names(4), "vit", ["q"], layers=[0, -1])
    assert got == [
        "vit.encoder.layer.0.attention.attention.query",
        "vit.encoder.layer.3.attention.attention.query",
    ]
    assert layer_names(vit4_names(4), "vit")[-1] == "vit.encoder.layer.3"


def test_layers_out_of_range():
    with pytest.raises(EmoSetError, match="out of range"):
        resolve_targets(vit4_names(2), "vit", ["q"], layers=[5])


def test_unknown_role_lists_the_valid_ones():
    with pytest.raises(EmoSetError, match="mlp_out"):
        resolve_targets(vit5_names(), "vit", ["query"])


def test_role_that_matches_nothing_lists_existing_modules():
    names = [n for n in vit5_names(1) if "mlp" not in n]
    with pytest.raises(EmoSetError, match=r"'mlp_in'.*attention\.q_proj"):
        resolve_targets(names, "vit", ["mlp_in"])


def test_names_of_another_architecture_match_no_layer():
    with pytest.raises(EmoSetError, match="no encoder layers"):
        resolve_targets(vit5_names(), "clip", ["q"])


def test_unsupported_model_type_names_the_supported_ones():
    with pytest.raises(EmoSetError, match=r"'bert'.*vit.*clip"):
        architecture_for("bert")
