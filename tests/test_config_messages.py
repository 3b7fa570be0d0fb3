"""Messages that name what the user can actually type: the config key or flag of each context,
one line for a broken YAML file, the keys a resume changed, a backbone that is neither a folder
nor reachable on the Hub."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from emoset_peft.cli import main
from emoset_peft.config import DataConfig, load_config, validate
from emoset_peft.errors import EmoSetError


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_missing_image_names_the_switch_of_every_command(synthetic_copy, tmp_path):
    from emoset_peft.data.emoset import load_emoset

    next((synthetic_copy / "image").rglob("*.jpg")).unlink()
    with pytest.raises(EmoSetError) as err:
        load_emoset(synthetic_copy, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "data.skip_missing=true (train, eval, study)" in message
    assert "--skip-missing (emoset-peft data inspect/subset)" in message
    assert "CLI: --skip-missing" not in message  # train and eval have no such flag


def test_a_small_validation_split_warning_names_data_selection_per_class(synthetic_root, caplog):
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.run_data import select_splits

    data = DataConfig(root=str(synthetic_root), per_class=2)  # selection_per_class=20 > 4
    with caplog.at_level(logging.WARNING, logger="emoset_peft.data.subsets"):
        select_splits(data, load_emoset(synthetic_root))
    assert "data.selection_per_class=20: taking all images of the validation classes" in (
        caplog.text
    )


def test_a_recipes_options_left_for_another_method_say_how_to_clear_them(capsys):
    args = ["train", "--config", "vit_lora", "model.method=linear", "data.root=/nowhere"]
    assert main(args) == 2
    err = _error(capsys)
    assert "has no option(s) alpha, dropout, r" in err and "model.options={}" in err
    validate(load_config("vit_lora", ["model.method=linear", "model.options={}", "data.root=x"]))


def test_broken_yaml_is_one_line_naming_file_line_and_column(tmp_path, capsys):
    recipe = tmp_path / "y1.yaml"
    recipe.write_text("train:\n  lr: [1\n")
    assert main(["train", "--config", str(recipe), "data.root=data"]) == 2
    err = _error(capsys)
    assert f"recipe {recipe} is not valid YAML: line 3, column 1: expected ',' or ']'" in err
    assert "flow sequence that starts at line 2, column 7" in err


def test_a_folder_given_as_config_is_named_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("man").mkdir()
    assert main(["train", "--config", "man", "data.root=data"]) == 2
    assert "recipe man is a folder, not a file" in _error(capsys)


def test_train_eval_every_zero_is_refused():
    config = load_config(None, ["data.root=x", "train.eval_every=0"])
    with pytest.raises(EmoSetError, match=r"train.eval_every=0 must be >= 1 steps; leave it unset"):
        validate(config)


def test_a_backbone_name_that_is_no_folder_says_so_offline(tmp_path, monkeypatch):
    from emoset_peft.models import build_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EmoSetError) as err:
        build_model("nope_dir", "lora")
    message = str(err.value)
    assert f"no local folder {tmp_path / 'nope_dir'}, and as a Hub id: could not load" in message
    assert "\n" not in message


def test_a_resume_with_another_config_names_the_changed_keys(
    training_root, tiny_vit_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    overrides = [
        f"data.root={training_root}",
        "data.per_class=2",
        "data.selection_per_class=2",
        f"model.backbone={tiny_vit_dir}",
        "train.batch_size=8",
        "train.min_steps=3",
        "train.max_steps=3",
        "train.checkpoint_every=1",
        "cpu=true",
        f"output_dir={run}",
    ]
    assert main(["train", *overrides]) == 0
    # The run as a kill after its step-2 checkpoint leaves it: results gone, checkpoints kept.
    for name in ("metrics.json", "predictions_test.csv"):
        (run / name).unlink()
    shutil.rmtree(run / "adapter")
    capsys.readouterr()
    assert main(["train", *overrides, "train.lr=0.5", "data.per_class=3", "resume=true"]) == 2
    err = _error(capsys)
    assert "written by a different config (data.per_class: 2 -> 3, train.lr: " in err
    assert "-> 0.5)" in err
