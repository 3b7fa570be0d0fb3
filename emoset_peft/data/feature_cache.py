"""The frozen-feature cache: one ``<key>.npy`` (float32 [N, D]) + ``<key>.json`` per split and model.

A linear probe or a zero-shot head never changes the backbone, so the pooled feature each image
gives the head is the same in every cell, seed and k that uses that backbone, image geometry and
precision. ``engine/features.py`` computes it once; this module keeps it on disk, beside the
decode cache (``<cache root>/features``), with the decode cache's rules: the array is written to
a temp file and renamed, the meta (written last) records the key, shape, dtype and a CRC-32 of
the whole array, and an entry whose check fails is removed with one warning and computed again.

The key covers the backbone's fingerprint (a hash of its frozen weights as run: dtype and
quantization included), the decoded split's cache key (image paths, sizes, mtimes, resolution),
the crop size, the precision the forward ran in and the stored dtype.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from emoset_peft.data.decode_cache import row_hash
from emoset_peft.utils.storage import (
    disk_full_is_user_error,
    fallback_cache_dir,
    remove_stale_temps,
    temp_path,
    writable_cache_dir,
)

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1  # bump when what an entry holds changes
SUBFOLDER = "features"
DTYPE = np.float32  # bf16 features are stored exactly in float32
CLEAR_HINT = (
    "free space with `emoset-peft cache clear`, point data.cache_dir / EMOSET_PEFT_CACHE to a "
    "larger disk, or pass train.frozen_features=off"
)


def feature_key(model_key: str, split_key: str, image_size: int, precision: str) -> str:
    """The entry name for one split's features under one backbone, geometry and precision."""
    text = f"v{FEATURE_FORMAT}:{model_key}:{split_key}:{image_size}:{precision}:{np.dtype(DTYPE)}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_features(cache_dir, key: str, count: int) -> np.ndarray | None:
    """The cached features of ``key`` ([count, D] float32, in memory), or None (a miss, or a
    damaged entry: then one warning and the entry is removed)."""
    from emoset_peft.data.emoset import default_cache_dir

    root = default_cache_dir(cache_dir)
    for folder in dict.fromkeys([root / SUBFOLDER, fallback_cache_dir() / SUBFOLDER]):
        found = _open_entry(folder, key, count)
        if found is not None:
            return found
    return None


def _open_entry(folder: Path, key: str, count: int) -> np.ndarray | None:
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not meta_path.exists():  # none yet, or a writer between its two renames
        return None
    try:
        meta = json.loads(meta_path.read_text())
        features = np.load(array_path)
        problem = _check(meta, features, key, count)
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        log.warning(
            "the feature cache %s is damaged (%s); computing the features again",
            array_path,
            problem,
        )
        for path in (meta_path, array_path):
            with contextlib.suppress(OSError):  # a read-only cache: the rebuild goes elsewhere
                path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):  # "last used", for `cache ls` / `cache clear --older-than`
        os.utime(meta_path)
    return features


def _check(meta, features: np.ndarray, key: str, count: int) -> str | None:
    if meta.get("format") != FEATURE_FORMAT or meta.get("key") != key:
        return f"meta format/key {meta.get('format')}/{meta.get('key')}, expected {FEATURE_FORMAT}/{key}"
    if (
        features.dtype != DTYPE
        or features.ndim != 2
        or features.shape[0] != count
        or list(features.shape) != meta["shape"]
    ):
        return f"array {features.dtype}{list(features.shape)}, expected float32[{count}, D]"
    if row_hash(features) != meta["crc32"]:
        return "the array does not match its CRC-32"
    return None


def save_features(cache_dir, key: str, features: np.ndarray, label: str = "") -> None:
    """Write an entry atomically (array, then meta); a full disk is one EmoSetError line."""
    from emoset_peft.data.emoset import default_cache_dir

    features = np.ascontiguousarray(features, dtype=DTYPE)
    folder = writable_cache_dir(default_cache_dir(cache_dir), "frozen-feature cache", SUBFOLDER)
    remove_stale_temps(folder)
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    tmp_array, tmp_meta = temp_path(array_path, ".npy"), temp_path(meta_path)
    meta = {
        "format": FEATURE_FORMAT,
        "key": key,
        "shape": list(features.shape),
        "dtype": np.dtype(DTYPE).name,
        "crc32": row_hash(features),
        "label": label,
        "created": time.time(),
    }
    try:
        with disk_full_is_user_error(
            folder, f"{features.shape[0]} images' features ({features.nbytes >> 20} MB)", CLEAR_HINT
        ):
            with open(tmp_array, "wb") as stream:
                np.save(stream, features)
            tmp_meta.write_text(json.dumps(meta))
            meta_path.unlink(missing_ok=True)  # readers never pair the new array with old meta
            os.replace(tmp_array, array_path)
            os.replace(tmp_meta, meta_path)
    finally:
        tmp_array.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
