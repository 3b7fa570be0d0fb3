"""Recipes and overrides: types are checked, unknown keys are named, the result is hashable."""

import pytest

from emoset_peft.config import RunConfig, load_config, save_config, validate
from emoset_peft.errors import EmoSetError


def test_overrides_are_typed_and_nested(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "# emoset-peft train --config r.yaml\nmodel:\n  method: ia3\ntrain:\n  lr: 0.001\n"
    )
    config = load_config(
        recipe,
        [
            "train.lr=3e-4",
            "model.options.r=16",
            "model.targets=[q, v]",
            "data.per_class=all",
            "train.patience=null",
            "data.root=/x",
        ],
    )
    assert config.model.method == "ia3"
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.options == {"r": 16}
    assert config.model.targets == ["q", "v"]
    assert config.data.per_class == "all"
    assert config.train.patience is None
    validate(config)


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(EmoSetError, match=r"train\.lrr.*did you mean lr"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(EmoSetError, match="unknown key config.modle"):
        load_config(None, ["modle.method=lora"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=fast", "train.lr must be a number"),
        ("train.batch_size=2.5", "train.batch_size must be an integer"),
        ("overwrite=maybe", "overwrite must be true or false"),
        ("train", "is not key=value"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(EmoSetError, match=message):
        load_config(None, [override])


def test_validate_catches_cross_field_mistakes():
    with pytest.raises(EmoSetError, match="mixed_precision"):
        validate(load_config(None, ["data.root=/x", "train.mixed_precision=fp8"]))
    with pytest.raises(EmoSetError, match="data.root is not set"):
        validate(load_config(None, []))
    with pytest.raises(EmoSetError, match="per_class"):
        validate(load_config(None, ["data.root=/x", "data.per_class=many"]))


def test_fingerprint_ignores_where_not_what(tmp_path):
    a = load_config(None, ["data.root=/x", "output_dir=a"])
    b = load_config(None, ["data.root=/x", "output_dir=b", "resume=true"])
    c = load_config(None, ["data.root=/x", "train.lr=0.5"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    save_config(a, tmp_path / "config.yaml")
    assert a.fingerprint() in (tmp_path / "config.yaml").read_text().splitlines()[0]
    assert load_config(tmp_path / "config.yaml").to_dict() == a.to_dict()


def test_missing_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(EmoSetError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    assert isinstance(RunConfig().train.lr, float)
