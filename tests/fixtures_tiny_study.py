"""A real study recipe of ~1 s cells (tiny ViT, synthetic tree), written to a YAML file."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_tiny_study(folder: Path, root: Path, backbone: Path, name="study", **changes) -> Path:
    """``folder/<name>.yaml``: lora x k in {2, 4} x seed 0 into ``folder/<name>``, no report;
    ``changes`` replace top-level study keys (``methods=``, ``seeds=``, ``report=``...)."""
    recipe = {
        "output_dir": str(folder / name),
        "base": {
            "data": {"root": str(root), "selection_per_class": 4},
            "model": {"backbone": str(backbone)},
            "train": {"batch_size": 8, "min_steps": 6, "max_steps": 6, "eval_every": 3},
        },
        "methods": {"lora": {"model": {"options": {"r": 4}}, "train": {"lr": 1e-2}}},
        "per_class": [2, 4],
        "seeds": [0],
        "report": False,
    }
    recipe.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
