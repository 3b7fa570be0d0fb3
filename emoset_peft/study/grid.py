"""A scaling study's grid: methods x images per class x seeds, expanded once into cells.

A study recipe (``emoset_peft/recipes/study/*.yaml``)::

    # emoset-peft study --config study/vit_methods data.root=/data/EmoSet-118K
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

Zero-shot methods get one cell (k=0, the first seed): they see no training images.

Crossed seeds: ``data_seeds: [0, 1, 2]`` and/or ``train_seeds: [0, 1]`` (each defaults to
``seeds``) make every (data seed, training seed) pair a cell, so the spread over data subsets
and the spread over training randomness can be told apart. Such cells are named
``lora_k4_d0_t1`` (paired cells keep ``lora_k4_s0``), and their ``seed`` in results.csv is the
pair's number in the grid (data seed major), the same for every method and k.
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
    apply_override,
    deep_merge,
    from_dict,
    read_yaml,
    validate,
)
from emoset_peft.errors import EmoSetError
from emoset_peft.models import methods


@dataclass
class StudyConfig:
    output_dir: str = "studies/study"
    base: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=lambda: {"lora": {}})
    per_class: list[int | str] = field(default_factory=lambda: [1, 4, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data_seeds: list[int] | None = None  # with train_seeds: crossed seeds; None = seeds
    train_seeds: list[int] | None = None
    large_per_class: list[int | str] = field(default_factory=list)
    report: bool = True  # write report.md when the grid is done
    allow_grid_change: bool = (
        False  # reuse a folder whose grid differs (finished cells still count)
    )


@dataclass(frozen=True)
class Cell:
    method: str
    per_class: int | str
    seed: int  # paired grids: the seed; crossed: the (data seed, training seed) pair's number
    config: RunConfig = field(compare=False, hash=False)
    large: bool = False
    crossed: bool = False

    @property
    def data_seed(self) -> int:
        return self.config.data.data_seed

    @property
    def train_seed(self) -> int:
        return self.config.train.seed

    @property
    def name(self) -> str:
        if self.crossed:
            return f"{self.method}_k{self.per_class}_d{self.data_seed}_t{self.train_seed}"
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
            apply_override(raw, item)
        else:
            raw.setdefault("base", {})
            apply_override(raw["base"], item)
    study = from_dict(StudyConfig, raw, where="study")
    if not study.methods:
        raise EmoSetError("study.methods is empty: name at least one method")
    return study


def seed_pairs(study: StudyConfig) -> tuple[list[tuple[int, int, int]], bool]:
    """([(seed column, data seed, training seed)], crossed?) in grid order."""
    used = ["data_seeds", "train_seeds"]
    if study.data_seeds is None or study.train_seeds is None:
        used.append("seeds")
    for key in used:
        values = getattr(study, key)
        if values is not None and (not values or len(set(values)) != len(values)):
            raise EmoSetError(f"study.{key}={values} must be a non-empty list without repeats")
    if study.data_seeds is None and study.train_seeds is None:
        return [(seed, seed, seed) for seed in study.seeds], False
    data_seeds = study.data_seeds if study.data_seeds is not None else study.seeds
    train_seeds = study.train_seeds if study.train_seeds is not None else study.seeds
    pairs = [(d, t) for d in data_seeds for t in train_seeds]
    return [(index, d, t) for index, (d, t) in enumerate(pairs)], True


def expand(study: StudyConfig) -> list[Cell]:
    """Every cell of the grid, in a fixed order (method, k, seed) that every process agrees on."""
    pairs, crossed = seed_pairs(study)
    cells = []
    for method, overrides in study.methods.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise EmoSetError(
                f"study.methods.{method} must be a mapping of overrides, got {overrides!r}"
            )
        zero_shot = not methods.trains(overrides.get("model", {}).get("method", method))
        ks = [0] if zero_shot else [k for k in study.per_class if k != 0]
        for k in ks:
            for seed, data_seed, train_seed in pairs[:1] if zero_shot else pairs:
                raw = deep_merge(copy.deepcopy(study.base), copy.deepcopy(overrides))
                raw.setdefault("model", {}).setdefault("method", method)
                raw.setdefault("data", {}).update(per_class=k, data_seed=data_seed)
                raw.setdefault("train", {})["seed"] = train_seed
                config = from_dict(RunConfig, raw, where=f"study.methods.{method}")
                cell = Cell(
                    method, k, seed, config, large=k in study.large_per_class, crossed=crossed
                )
                config.output_dir = str(Path(study.output_dir) / "cells" / cell.name)
                validate(config)
                cells.append(cell)
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
