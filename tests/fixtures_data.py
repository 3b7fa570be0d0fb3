"""Data fixtures: synthetic EmoSet trees and the official label map."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The official EmoSet info.json, as distributed with the dataset (emotion order, attribute
# vocabularies), shipped with the tests so every clone runs the same tests; the package never
# reads it (it must work on any tree, with or without info.json).
OFFICIAL_INFO_JSON = Path(__file__).parent / "data" / "emoset_info.json"


@pytest.fixture(scope="session", autouse=True)
def emoset_cache_dir(tmp_path_factory) -> Path:
    """The index cache of every load_emoset in the suite: a temporary folder, never ~/.cache."""
    path = tmp_path_factory.mktemp("emoset_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("EMOSET_PEFT_CACHE", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic EmoSet tree shared by the session: 8 classes x (8 train, 4 val, 4 test)
    images of 28-40 px. Do not modify it; use ``synthetic_copy`` for that."""
    from emoset_peft.data.synthetic import make_synthetic_emoset

    return make_synthetic_emoset(
        tmp_path_factory.mktemp("synthetic") / "EmoSet",
        seed=0,
        train_per_class=8,
        val_per_class=4,
        test_per_class=4,
        size_range=(28, 40),
    )


@pytest.fixture
def synthetic_copy(synthetic_root, tmp_path) -> Path:
    """A private, writable copy of ``synthetic_root`` for tests that edit or break the tree."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "EmoSet"))


@pytest.fixture
def official_info_json() -> Path:
    """The official EmoSet info.json (tests/data/emoset_info.json)."""
    return OFFICIAL_INFO_JSON
