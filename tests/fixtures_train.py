"""Training fixtures: a recipe's overrides that make any run tiny (synthetic data, tiny backbone)."""

import pytest


@pytest.fixture
def tiny_run(synthetic_root, tiny_vit_dir, tmp_path):
    """Overrides for a seconds-long run: k=4, 12 steps, evaluation on 4 images per class."""
    def overrides(output="run", backbone=None, **extra):
        items = {
            "data.root": str(synthetic_root), "data.per_class": 4, "data.selection_per_class": 4,
            "data.test_limit_per_class": 6, "model.backbone": str(backbone or tiny_vit_dir),
            "train.batch_size": 8, "train.min_steps": 12, "train.max_steps": 12,
            "train.eval_every": 6, "train.lr": 1e-2, "output_dir": str(tmp_path / output),
        }
        items.update(extra)
        return [f"{key}={value}" for key, value in items.items()]
    return overrides
