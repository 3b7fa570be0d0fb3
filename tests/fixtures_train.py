"""Training fixtures: a recipe's overrides that make any run tiny (synthetic data, tiny backbone)."""

from pathlib import Path

import pytest


def train_two_steps(root, backbone, out: Path, per_class: int, selection_per_class: int) -> Path:
    """Train a finished 2-step run through the CLI (what predict/eval tests score again)."""
    from emoset_peft.cli import main

    overrides = {
        "data.root": root,
        "data.per_class": per_class,
        "data.selection_per_class": selection_per_class,
        "model.backbone": backbone,
        "train.batch_size": 8,
        "train.min_steps": 2,
        "train.max_steps": 2,
        "train.eval_every": 2,
        "train.lr": 1e-2,
        "cpu": "true",
        "output_dir": out,
    }
    assert main(["train", *(f"{k}={v}" for k, v in overrides.items())]) == 0
    return out


@pytest.fixture(scope="session")
def training_root(tmp_path_factory):
    """8 classes x (12 train, 4 validation, 6 test) synthetic images of 28-40 px."""
    from emoset_peft.data.synthetic import make_synthetic_emoset

    return make_synthetic_emoset(
        tmp_path_factory.mktemp("training") / "EmoSet",
        seed=3,
        train_per_class=12,
        val_per_class=4,
        test_per_class=6,
        size_range=(28, 40),
    )


@pytest.fixture
def tiny_run(training_root, tiny_vit_dir, tmp_path):
    """Overrides for a seconds-long run: k=4, 12 steps, selection on 4 images per class."""

    def overrides(output="run", backbone=None, **extra):
        items = {
            "data.root": str(training_root),
            "data.per_class": 4,
            "data.selection_per_class": 4,
            "model.backbone": str(backbone or tiny_vit_dir),
            "train.batch_size": 8,
            "train.min_steps": 12,
            "train.max_steps": 12,
            "train.eval_every": 6,
            "train.lr": 1e-2,
            "output_dir": str(tmp_path / output),
        }
        items.update(extra)
        return [f"{key}={value}" for key, value in items.items()]

    return overrides
