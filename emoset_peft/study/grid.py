"""A scaling study's grid: methods x images per class x seeds, expanded once into cells.

A study recipe (``recipes/study/*.yaml``)::

    # emoset-peft study --config recipes/study/vit_methods.yaml data.root=/data/EmoSet-118K
    output_dir: studies/vit_methods
    base:                      # a training recipe applied to every cell (data / model / train)
      model: {backbone: google/vit-base-patch16-224-in21k}
      train: {batch_size: 32, epochs: 30}
    methods:                   # method -> overrides of base for that method
      lora: {model: {options: {r: 8}}, train: {lr: 5.0e-3}}
      ia3: {train: {lr: 3.0e-3}}
    per_class: [1, 2, 4, 8, 16, all]   # 0 is the zero-shot point (CLIP, method zeroshot)
    seeds: [0, 1, 2]                   # each seed picks the data subset AND seeds training
    large_per_class: [all]             # cells that all processes train together (DDP)

Zero-shot methods get one cell (k=0, seed 0): they see no training images.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoset_peft.config import (
    RunConfig,
    _apply_override,
    _deep_merge,
    from_dict,
    read_yaml,
    validate,
)
from emoset_peft.errors import EmoSetError

ZERO_SHOT_METHODS = ("zeroshot",)


@dataclass
class StudyConfig:
    output_dir: str = "studies/study"
    base: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=lambda: {"lora": {}})
    per_class: list[int | str] = field(default_factory=lambda: [1, 4, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    large_per_class: list[int | str] = field(default_factory=list)
    report: bool = True  # write report.md when the grid is done
    allow_grid_change: bool = False  # reuse a folder whose grid differs (finished cells still count)


@dataclass(frozen=True)
class Cell:
    method: str
    per_class: int | str
    seed: int
    config: RunConfig = field(compare=False, hash=False)
    large: bool = False

    @property
    def name(self) -> str:
        return f"{self.method}_k{self.per_class}_s{self.seed}"

    @property
    def config_hash(self) -> str:
        return self.config.fingerprint()


def load_study_config(path: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """Read a study recipe; overrides address the study (``seeds=[0,1]``) or the base recipe
    (``data.root=...``, ``train.lr=...``: anything that is not a study key goes to ``base``)."""
    raw = read_yaml(path) if path is not None else {}
    study_keys = {f for f in StudyConfig.__dataclass_fields__}
    for item in overrides or []:
        key = item.split("=", 1)[0].split(".")[0]
        if key in study_keys:
            _apply_override(raw, item)
        else:
            raw.setdefault("base", {})
            _apply_override(raw["base"], item)
    study = from_dict(StudyConfig, raw, where="study")
    if not study.methods:
        raise EmoSetError("study.methods is empty: name at least one method")
    return study


def expand(study: StudyConfig) -> list[Cell]:
    """Every cell of the grid, in a fixed order (method, k, seed) that every process agrees on."""
    cells = []
    for method, overrides in study.methods.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise EmoSetError(f"study.methods.{method} must be a mapping of overrides, got {overrides!r}")
        zero_shot = overrides.get("model", {}).get("method", method) in ZERO_SHOT_METHODS
        ks = [0] if zero_shot else [k for k in study.per_class if k != 0]
        seeds = study.seeds[:1] if zero_shot else study.seeds
        for k in ks:
            for seed in seeds:
                raw = _deep_merge(copy.deepcopy(study.base), copy.deepcopy(overrides))
                raw.setdefault("model", {}).setdefault("method", method)
                raw.setdefault("data", {}).update(per_class=k, data_seed=seed)
                raw.setdefault("train", {})["seed"] = seed
                raw["output_dir"] = str(Path(study.output_dir) / "cells" / f"{method}_k{k}_s{seed}")
                config = validate(from_dict(RunConfig, raw, where=f"study.methods.{method}"))
                cells.append(Cell(method, k, seed, config, large=k in study.large_per_class))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise EmoSetError("the grid has duplicate cells; check study.per_class and study.seeds")
    return cells


def grid_fingerprint(cells: list[Cell]) -> str:
    blob = json.dumps(sorted((c.name, c.config_hash) for c in cells)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def shard(cells: list[Cell], rank: int, world_size: int) -> list[Cell]:
    """Round-robin share of this process; together the shards cover every cell exactly once."""
    return [cell for index, cell in enumerate(cells) if index % world_size == rank]
