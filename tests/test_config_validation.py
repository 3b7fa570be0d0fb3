"""Config validation refuses non-finite and out-of-range numbers, naming the key."""

import pytest

from emoset_peft.config import load_config, validate
from emoset_peft.engine.trainer import step_budget
from emoset_peft.errors import EmoSetError


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-3", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.lr=1e999", "train.lr"),
        ("train.head_lr=0", "train.head_lr"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio"),
        ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
        ("train.weight_decay=-0.01", "train.weight_decay"),
        ("train.label_smoothing=1", "train.label_smoothing"),
        ("train.label_smoothing=2", "train.label_smoothing"),
        ("train.max_grad_norm=-1", "train.max_grad_norm"),
        ("train.max_grad_norm=0", "train.max_grad_norm"),
        ("train.patience=0", "train.patience"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-5", "train.max_steps"),
        ("train.epochs=-1", "train.epochs"),
        ("train.min_steps=-1", "train.min_steps"),
        ("data.fraction=0", "data.fraction"),
        ("data.fraction=inf", "data.fraction"),
        ("train.report_to=bogus", "train.report_to"),
        ("train.report_to=tensorboard,bogus", "bogus"),
    ],
)
def test_out_of_range_numbers_are_named(override, key):
    with pytest.raises(EmoSetError, match=key.replace(".", r"\.")):
        validate(load_config(None, ["data.root=/x", override]))


def test_yaml_nan_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: .nan\n")
    with pytest.raises(EmoSetError, match=r"train\.lr=.*finite"):
        load_config(recipe, ["data.root=/x"])


def test_a_budget_of_zero_steps_is_refused_and_epochs_zero_means_exactly_max_steps():
    with pytest.raises(EmoSetError, match="trains no steps"):
        validate(load_config(None, ["data.root=/x", "train.epochs=0", "train.min_steps=0"]))
    exact = load_config(None, ["data.root=/x", "train.epochs=0", "train.max_steps=100"])
    validate(exact)
    assert step_budget(32, 8, 1, exact.train) == 100  # min_steps=60 does not cap or raise it
    exact = load_config(None, ["train.epochs=0", "train.min_steps=0", "train.max_steps=7"])
    assert step_budget(32, 8, 1, exact.train) == 7


@pytest.mark.parametrize(
    "override",
    [
        "train.max_grad_norm=null",
        "train.report_to=none",
        "train.report_to=tensorboard,wandb",
        "train.patience=1",
        "train.label_smoothing=0",
        "train.warmup_ratio=1",
    ],
)
def test_valid_edges_pass(override):
    validate(load_config(None, ["data.root=/x", override]))


@pytest.mark.parametrize("word", ["no", "No", "off", "false"])
def test_mixed_precision_no_as_yaml_reads_it_is_no(word, tmp_path):
    # YAML reads these words as False; the key takes strings, and "no" is one of its values.
    assert load_config(None, [f"train.mixed_precision={word}"]).train.mixed_precision == "no"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train:\n  mixed_precision: {word}\n")
    assert load_config(recipe).train.mixed_precision == "no"
