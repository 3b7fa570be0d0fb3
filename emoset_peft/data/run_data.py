"""The three image sets one run needs, decoded once: training subset, selection set, test set.

Every process computes the same subsets from the data seed (the subset functions are
deterministic by construction); ``subset_digest`` lets the trainer check that across ranks.

The selection set follows ``data.selection``: "fixed" takes ``selection_per_class`` validation
images per class whatever k is; "k_tied" takes min(k, 4) per class (CoOp's few-shot protocol:
a validation set no larger than a few-shot user would have); "none" takes none (train the whole
step budget, keep the last step, as CLIP-LoRA does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emoset_peft.config import DataConfig
from emoset_peft.data.pipeline import EVAL_CROP_RATIO, DecodedImages, decode_split
from emoset_peft.errors import EmoSetError
from emoset_peft.utils.cpus import default_decode_workers


@dataclass
class RunData:
    class_names: list[str]
    train: DecodedImages | None  # None for zero-shot (k = 0)
    selection: DecodedImages | None  # None: data.selection=none (or k_tied at k = 0)
    test: DecodedImages
    train_manifest: dict[str, Any] | None


def select_splits(data: DataConfig, emoset) -> tuple[Any, Any, Any, dict | None]:
    """(train subset or None, selection set, test set, train manifest) as ``datasets`` splits."""
    from emoset_peft.data.manifests import training_manifest
    from emoset_peft.data.subsets import (
        low_data_subset,
        selection_subset,
        subset_from_manifest,
        subset_manifest,
    )

    _require_records(emoset, data.root, needs_validation=data.selection != "none")
    train = emoset["train"]
    given = training_manifest(data)  # None without data.manifest (or at k = 0)
    if given is not None:
        path, chosen = given
        train = subset_from_manifest(train, chosen, source=f"data.manifest {path}")
        # what it was made with, so a later study can match it again, and where it came from
        made = chosen.get("args") if isinstance(chosen.get("args"), dict) else {}
        args = {**made, "manifest": str(path)}
    elif data.fraction is not None:
        args = {"fraction": data.fraction, "seed": data.data_seed}
        train = low_data_subset(train, **args, allow_fewer=data.allow_fewer)
    elif data.per_class == "all":
        args = {"per_class": "all", "seed": data.data_seed}
    elif data.per_class == 0:
        train, args = None, {"per_class": 0}
    else:
        args = {"per_class": int(data.per_class), "seed": data.data_seed}
        train = low_data_subset(train, **args, allow_fewer=data.allow_fewer, name="data.per_class")
    manifest = (
        subset_manifest(train, split_size=len(emoset["train"]), **args)
        if train is not None
        else None
    )

    selection = emoset["validation"]
    per_class = selection_images_per_class(data)
    if per_class == 0:
        selection = None
    elif per_class is not None:
        # A small validation split (or class) gives all it has: selection needs no exact count.
        name = (
            "data.selection_per_class"
            if data.selection == "fixed"
            else "data.selection=k_tied: validation images per class"
        )
        selection = selection_subset(
            selection, per_class=per_class, seed=data.data_seed, allow_fewer=True, name=name
        )
    test = emoset["test"]
    if data.test_limit_per_class is not None:
        test = low_data_subset(
            test,
            per_class=data.test_limit_per_class,
            seed=0,
            allow_fewer=True,
            name="data.test_limit_per_class",
        )
    return train, selection, test, manifest


K_TIED_CAP = 4  # k_tied: min(k, 4) validation images per class, as CoOp's few-shot runs


def selection_images_per_class(data: DataConfig) -> int | None:
    """Validation images per class that ``data.selection`` asks for; None = the whole split."""
    if data.selection == "none":
        return 0
    if data.selection == "k_tied" and data.manifest is not None and data.per_class != 0:
        from emoset_peft.data.manifests import training_manifest

        counts = training_manifest(data)[1]["per_class_counts"].values()
        return min([K_TIED_CAP, *(n for n in counts if n > 0)])  # k: the manifest's smallest class
    if data.selection == "k_tied":
        if data.fraction is None and isinstance(data.per_class, int):
            return min(data.per_class, K_TIED_CAP)
        return K_TIED_CAP  # "all" or a fraction: beyond the few-shot range
    return data.selection_per_class


def selection_record(
    data: DataConfig, selection: DecodedImages | None, best_step: int, evaluations: int
) -> dict[str, Any]:
    """metrics.json's "selection" entry: how the kept step was chosen, on how many images.
    ``images_per_class`` is what was used: a validation split smaller than asked gives all it
    has, and then ``requested_per_class`` says what was asked (a number, or "4-6" when the
    classes got different counts)."""
    requested = selection_images_per_class(data)
    used = requested
    if requested and selection is not None:
        counts = np.bincount(np.asarray(selection.labels))
        counts = counts[counts > 0]
        low, high = int(counts.min()), int(counts.max())
        used = low if low == high else f"{low}-{high}"
    record = {
        "mode": data.selection,
        "images_per_class": used,
        "images": len(selection) if selection is not None else 0,
        "best_step": best_step,
        "evaluations": evaluations,
    }
    if used != requested:
        record["requested_per_class"] = requested
    return record


def _require_records(emoset, root: str, needs_validation: bool = True) -> None:
    """An empty val.json or test.json stops the run before it trains, not after (val.json may
    be empty with data.selection=none, which never reads it)."""
    from pathlib import Path

    from emoset_peft.data.emoset import SPLIT_FILES

    for split, why in (("validation", "selects the checkpoint"), ("test", "scores the run")):
        if split == "validation" and not needs_validation:
            continue
        if len(emoset[split]) == 0:
            raise EmoSetError(
                f"{Path(root) / SPLIT_FILES[split]} holds no records, but the run "
                f"needs it ({split} {why}); restore it from the EmoSet download"
            )


def load_run_data(
    data: DataConfig,
    image_size: int,
    *,
    crop_ratio: float = EVAL_CROP_RATIO,
    emoset=None,
    show_progress: bool = True,
) -> RunData:
    """Load EmoSet (unless given), pick the subsets and decode them (cached across runs).
    ``image_size`` and ``crop_ratio``: the backbone's ``input_spec_for``."""
    if emoset is None:
        from emoset_peft.data.emoset import load_emoset

        emoset = load_emoset(
            data.root,
            cache_dir=data.cache_dir,
            skip_missing=data.skip_missing,
            follow_symlinks=data.follow_symlinks,
        )
    train, selection, test, manifest = select_splits(data, emoset)

    def decode(split, desc):
        return decode_split(
            split,
            image_size,
            crop_ratio=crop_ratio,
            cache_dir=data.cache_dir,
            skip_corrupt=data.skip_corrupt,
            workers=data.decode_workers or default_decode_workers(),
            desc=desc,
            show_progress=show_progress,
        )

    return RunData(
        class_names=list(emoset["train"].features["label"].names),
        train=decode(train, "decoding train") if train is not None else None,
        selection=decode(selection, "decoding validation") if selection is not None else None,
        test=decode(test, "decoding test"),
        train_manifest=manifest,
    )
