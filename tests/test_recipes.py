"""Every shipped recipe parses, starts with its launch command, and runs two steps on tiny data."""

import json

import pytest
import yaml

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.study.grid import expand, load_study_config
from emoset_peft.utils.recipes import recipes_folder

RECIPES = recipes_folder()  # emoset_peft/recipes/, found as the installed package finds it
TRAINING = sorted(RECIPES.glob("*.yaml"))
STUDIES = sorted((RECIPES / "study").glob("*.yaml"))
LAUNCH = sorted((RECIPES / "accelerate").glob("*.yaml"))


def test_recipe_folders_are_not_empty():
    assert len(TRAINING) >= 8 and len(STUDIES) >= 2 and len(LAUNCH) >= 5


@pytest.mark.parametrize("recipe", TRAINING + STUDIES + LAUNCH, ids=lambda p: p.name)
def test_first_line_is_the_launch_command(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and "emoset_peft" in first or "emoset-peft" in first
    name = recipe.relative_to(RECIPES).with_suffix("").as_posix()  # what --config takes
    assert f" {name} " in first


@pytest.mark.parametrize("recipe", TRAINING, ids=lambda p: p.stem)
def test_training_recipe_runs_two_steps(recipe, tiny_run, tiny_vit_dir, tiny_clip_dir, tmp_path):
    config = load_config(recipe)  # parses as written
    backbone = tiny_clip_dir if "clip" in config.model.backbone else tiny_vit_dir
    overrides = tiny_run(
        "run",
        backbone=backbone,
        **{"train.max_steps": 2, "train.min_steps": 2, "train.eval_every": 2},
    )
    if config.data.per_class == 0:
        overrides.append("data.per_class=0")
    assert main(["train", "--config", str(recipe), *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == (0 if config.model.method == "zeroshot" else 2)
    assert metrics["test"]["num_images"] > 0


@pytest.mark.parametrize("recipe", STUDIES, ids=lambda p: p.stem)
def test_study_recipe_expands(recipe):
    cells = expand(load_study_config(recipe, ["data.root=/data/EmoSet-118K"]))
    methods = yaml.safe_load(recipe.read_text())["methods"]
    assert {cell.method for cell in cells} == set(methods)


@pytest.mark.parametrize("recipe", LAUNCH, ids=lambda p: p.stem)
def test_launch_config_is_an_accelerate_config(recipe):
    content = yaml.safe_load(recipe.read_text())
    assert content["distributed_type"] in ("NO", "MULTI_GPU", "FSDP")
    assert content["num_processes"] >= 1
