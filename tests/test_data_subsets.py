"""Low-data subsets: stratified, nested, deterministic across processes; manifests."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import datasets
import pytest

from emoset_peft.data import (
    load_emoset,
    low_data_subset,
    read_manifest,
    selection_subset,
    subset_from_manifest,
    subset_manifest,
    write_manifest,
)
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS


@pytest.fixture(scope="module")
def emoset(synthetic_root):
    return load_emoset(synthetic_root)


def _imbalanced_split(counts: list[int]) -> datasets.Dataset:
    """An in-memory split with ``counts[c]`` rows of class c (ids are not in class order)."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    ids = [f"{EMOTIONS[c]}_{(i * 7919) % 100000:05d}" for i, c in enumerate(labels)]
    features = datasets.Features(
        {"label": datasets.ClassLabel(names=list(EMOTIONS)), "image_id": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {"label": labels, "image_id": ids}, features=features, split=datasets.Split.TRAIN
    )


def _per_class(subset) -> list[int]:
    return [subset["label"].count(c) for c in range(len(EMOTIONS))]


def test_per_class_is_stratified_ordered_and_nested(emoset):
    train = emoset["train"]
    previous: set[str] = set()
    for k in range(1, 9):
        subset = low_data_subset(train, per_class=k, seed=3)
        assert _per_class(subset) == [k] * 8
        assert list(subset["label"]) == sorted(subset["label"])  # class order, then rank
        ids = set(subset["image_id"])
        assert previous <= ids  # nested: k-1 inside k
        previous = ids
        # Within a class, the first j rows of subset k are subset j.
        assert (
            subset.filter(lambda r: r["label"] == 0)["image_id"][:1]
            == low_data_subset(train, per_class=1, seed=3).filter(lambda r: r["label"] == 0)[
                "image_id"
            ]
        )


def test_seed_changes_the_choice_and_input_order_does_not(emoset):
    train = emoset["train"]
    base = low_data_subset(train, per_class=3, seed=0)["image_id"]
    assert low_data_subset(train, per_class=3, seed=1)["image_id"] != base
    shuffled = train.shuffle(seed=123)
    assert shuffled["image_id"] != train["image_id"]
    assert low_data_subset(shuffled, per_class=3, seed=0)["image_id"] == base


_CHILD = """
import json, sys
from emoset_peft.data import load_emoset, low_data_subset
train = load_emoset(sys.argv[1], cache_dir=sys.argv[2])["train"]
print(json.dumps(list(low_data_subset(train, per_class=5, seed=7)["image_id"])))
"""


@pytest.mark.slow
def test_same_subset_in_processes_with_different_hash_seeds(emoset, synthetic_root, tmp_path):
    expected = low_data_subset(emoset["train"], per_class=5, seed=7)["image_id"]
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(synthetic_root), str(tmp_path / hash_seed)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert json.loads(out.strip().splitlines()[-1]) == expected


def test_fraction_keeps_proportions_and_nests():
    split = _imbalanced_split([100, 50, 20, 10, 40, 30, 7, 3])
    quarter = low_data_subset(split, fraction=0.25, seed=0)
    assert _per_class(quarter) == [25, 13, 5, 3, 10, 8, 2, 1]  # round half up, at least 1
    half = low_data_subset(split, fraction=0.5, seed=0)
    assert set(quarter["image_id"]) <= set(half["image_id"])
    assert len(low_data_subset(split, fraction=1.0, seed=0)) == len(split)


def test_too_few_images_names_the_class(caplog):
    split = _imbalanced_split([10, 10, 10, 10, 10, 10, 4, 10])
    with pytest.raises(EmoSetError, match="fear has 4"):
        low_data_subset(split, per_class=6, seed=0)
    with caplog.at_level(logging.WARNING, logger="emoset_peft.data.subsets"):
        subset = low_data_subset(split, per_class=6, seed=0, allow_fewer=True)
    assert _per_class(subset) == [6, 6, 6, 6, 6, 6, 4, 6]
    assert "fear has 4" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"per_class": 2, "fraction": 0.5},
        {"per_class": 0},
        {"fraction": 1.5},
        {"per_class": True},
    ],
)
def test_bad_arguments(kwargs, emoset):
    with pytest.raises(EmoSetError):
        low_data_subset(emoset["train"], **kwargs)


def test_manifest_round_trip(emoset, tmp_path):
    train = emoset["train"]
    subset = low_data_subset(train, per_class=4, seed=2)
    path = tmp_path / "runs" / "manifest.json"
    written = write_manifest(path, subset, split_size=len(train), per_class=4, seed=2)
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp file left
    manifest = read_manifest(path)
    assert (
        manifest == written == subset_manifest(subset, split_size=len(train), per_class=4, seed=2)
    )
    assert manifest["image_ids"] == subset["image_id"]
    assert manifest["split"] == "train" and manifest["split_size"] == 64
    assert manifest["args"] == {"per_class": 4, "seed": 2}
    assert manifest["per_class_counts"] == {name: 4 for name in EMOTIONS}
    again = subset_from_manifest(train.shuffle(seed=5), path)
    assert again["image_id"] == subset["image_id"] and again["label"] == subset["label"]


def test_manifest_checks(emoset, tmp_path):
    subset = low_data_subset(emoset["train"], per_class=2, seed=0)
    path = tmp_path / "m.json"
    manifest = write_manifest(path, subset)
    edited = {**manifest, "image_ids": manifest["image_ids"][:-1]}
    path.write_text(json.dumps(edited))
    with pytest.raises(EmoSetError, match="sha256 does not match"):
        read_manifest(path)
    with pytest.raises(EmoSetError, match="not in the validation split"):
        subset_from_manifest(emoset["validation"], manifest)
    path.write_text("{")
    with pytest.raises(EmoSetError, match="not valid JSON"):
        read_manifest(path)
    with pytest.raises(EmoSetError, match="not found"):
        read_manifest(tmp_path / "absent.json")


def test_selection_subset_uses_validation_and_refuses_test(emoset):
    chosen = selection_subset(emoset["validation"], per_class=2, seed=0)
    assert _per_class(chosen) == [2] * 8 and str(chosen.split) == "validation"
    assert (
        chosen["image_id"] == low_data_subset(emoset["validation"], per_class=2, seed=0)["image_id"]
    )
    with pytest.raises(EmoSetError, match="test split"):
        selection_subset(emoset["test"], per_class=2, seed=0)


def test_a_dataset_dict_or_a_bad_seed_is_one_line():
    split = _imbalanced_split([3] * len(EMOTIONS))
    with pytest.raises(
        EmoSetError, match=r"got a DatasetDict of splits \(train, test\); .*ds\['train'\]"
    ):
        low_data_subset(datasets.DatasetDict(train=split, test=split), per_class=2)
    with pytest.raises(EmoSetError, match="takes one split of load_emoset"):
        low_data_subset([1, 2], per_class=2)
    for seed in ("a", -1, 1.5, True):
        with pytest.raises(EmoSetError, match="seed must be a non-negative integer"):
            low_data_subset(split, per_class=2, seed=seed)
