"""Low-data subsets of a split: stratified, deterministic, nested; and manifests that pin them.

How rows are chosen (the same in every process, machine and PYTHONHASHSEED):
    1. the split's rows are sorted by ``image_id`` (so the input order does not matter);
    2. within class ``c`` those rows are permuted by ``numpy.random.default_rng([seed, c])``
       (``c`` is the class index of the ``label`` column);
    3. the first ``k_c`` rows of that permutation are taken.
So for a fixed seed the subset for k images per class is inside the subset for every larger k
(nested), and the same holds for fractions. Rows come out sorted by class index, then by their
rank in the permutation: ``subset[:k]`` of one class is that class's subset for k.

A manifest is a small JSON file that records which ``image_id`` s were chosen, the arguments, a
sha256 of the sorted ids and the size of the split they came from, so a run can be repeated
exactly even if the selection code changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emoset_peft.errors import EmoSetError
from emoset_peft.utils.io import atomic_write_text

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "emoset-peft/subset-manifest/1"
# Every way to say "take all images of a class that has fewer" (each one tested as advised).
ALLOW_FEWER_ADVICE = (
    "data.allow_fewer=true (train, study), --allow-fewer (emoset-peft data subset), "
    "allow_fewer=True (low_data_subset)"
)
_EXAMPLES = 5


def low_data_subset(
    split: datasets.Dataset,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    allow_fewer: bool = False,
    name: str = "per_class",
) -> datasets.Dataset:
    """Pick ``per_class`` images of every class (or ``fraction`` of each class) from ``split``.

    Exactly one of ``per_class`` and ``fraction`` is given. With ``fraction`` each class keeps
    ``round(fraction * n_c)`` images (at least 1), so class proportions are kept. A class with
    fewer than ``per_class`` images raises :class:`EmoSetError`, or, with ``allow_fewer=True``,
    contributes all of its images (and a warning is logged). See the module docstring for how
    rows are chosen and ordered. ``name``: what the caller calls ``per_class`` in messages (a
    config key such as ``data.selection_per_class``).
    """
    _check_split(split, "low_data_subset")
    _check_seed(seed)
    counts = _counts_per_class(split, per_class, fraction, allow_fewer, name)
    ranked = _ranked_rows_per_class(split, seed)
    indices = np.concatenate([rows[:count] for rows, count in zip(ranked, counts)])
    return split.select(indices.tolist())


def selection_subset(
    validation_split: datasets.Dataset,
    per_class: int,
    seed: int = 0,
    *,
    allow_fewer: bool = False,
    name: str = "per_class",
) -> datasets.Dataset:
    """The model-selection set: ``per_class`` images per class from the validation split.

    Chosen exactly like :func:`low_data_subset`. Refuses the test split: choosing a model on the
    test images would make the test score optimistic.
    """
    if str(getattr(validation_split, "split", "")) == "test":
        raise EmoSetError(
            "selection_subset got the test split; select models on the "
            "validation split (ds['validation']) and keep test for the final score"
        )
    return low_data_subset(
        validation_split, per_class=per_class, seed=seed, allow_fewer=allow_fewer, name=name
    )


def subset_manifest(
    subset: datasets.Dataset, *, split_size: int | None = None, **args: Any
) -> dict:
    """A manifest (a JSON-ready dict) for ``subset``; ``args`` records how it was made.

    ``split_size`` is the number of rows in the split the subset came from (a check that the
    dataset has not changed when the manifest is used again).
    """
    ids = _image_ids(subset)
    names = _label_names(subset)
    counts = np.bincount(_labels(subset), minlength=len(names))
    per_class = {name: int(n) for name, n in zip(names, counts)}
    return {
        "format": MANIFEST_FORMAT,
        "split": str(subset.split) if subset.split is not None else None,
        "split_size": split_size,
        "num_images": len(ids),
        "per_class_counts": per_class,
        "args": args,
        "sha256": ids_sha256(ids),
        "image_ids": ids,  # in the subset's row order
    }


def write_manifest(path: str | os.PathLike, subset: datasets.Dataset, **info: Any) -> dict:
    """Write :func:`subset_manifest` (``info`` as its keyword arguments) to ``path`` atomically.

    The file is written beside ``path`` under a temporary name and renamed into place, so a
    killed process never leaves half a manifest. Returns the manifest.
    """
    manifest = subset_manifest(subset, **info)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and check a manifest written by :func:`write_manifest`."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EmoSetError(f"subset manifest {path} not found") from None
    except ValueError as err:
        raise EmoSetError(
            f"subset manifest {path} is not valid JSON ({err}); write it again "
            "with `emoset-peft data subset`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise EmoSetError(
            f"{path} is not a subset manifest (expected format "
            f"{MANIFEST_FORMAT!r}); write it with `emoset-peft data subset`"
        )
    ids = manifest.get("image_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise EmoSetError(f"{path}: 'image_ids' must be a list of strings")
    if ids_sha256(ids) != manifest.get("sha256"):
        raise EmoSetError(
            f"{path}: the sha256 does not match the image ids; the file was edited "
            "or damaged. Write it again with `emoset-peft data subset`."
        )
    return manifest


def subset_from_manifest(
    split: datasets.Dataset,
    manifest: dict | str | os.PathLike,
    *,
    source: str | None = None,
) -> datasets.Dataset:
    """The rows of ``split`` named by a manifest (a dict, or a path to read), in manifest order.

    Raises :class:`EmoSetError` naming the first id of the manifest that is not in the split
    and the manifest (``source``: how to name a dict manifest in that message).
    """
    _check_split(split, "subset_from_manifest")
    if not isinstance(manifest, dict):
        source = source or str(manifest)
        manifest = read_manifest(manifest)
    source = source or "manifest"
    ids = manifest["image_ids"]
    row_of = {image_id: row for row, image_id in enumerate(_image_ids(split))}
    absent = [image_id for image_id in ids if image_id not in row_of]
    if absent:
        more = f" (and {len(absent) - 1} more of its {len(ids)} ids)" if len(absent) > 1 else ""
        raise EmoSetError(
            f"{source}: image id {absent[0]!r} is not in the {split.split} split{more}; "
            "was the manifest made from another split or another copy of EmoSet?"
        )
    expected = manifest.get("split_size")
    if expected is not None and expected != len(split):
        log.warning(
            "%s was made from a split of %d images; this one has %d", source, expected, len(split)
        )
    return split.select([row_of[image_id] for image_id in ids])


def ids_sha256(ids: list[str]) -> str:
    """sha256 of the sorted ids, one per line: the identity of a subset, whatever its order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------


def _check_split(split, caller: str) -> None:
    """EmoSetError unless ``split`` is one split (a ``datasets.Dataset``)."""
    import datasets

    if isinstance(split, datasets.Dataset):
        return
    if isinstance(split, (datasets.DatasetDict, dict)):
        names = ", ".join(map(str, split)) or "none"
        first = next(iter(split), "train")
        raise EmoSetError(
            f"{caller} takes one split, got a {type(split).__name__} of splits ({names}); "
            f"pass one of them, e.g. ds[{first!r}]"
        )
    raise EmoSetError(
        f"{caller} takes one split of load_emoset (a datasets.Dataset, e.g. ds['train']), "
        f"got {type(split).__name__}"
    )


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EmoSetError(f"seed must be a non-negative integer; got {seed!r}")


def _counts_per_class(split, per_class, fraction, allow_fewer, name="per_class") -> list[int]:
    """How many images to take from each class, after checking the arguments."""
    if (per_class is None) == (fraction is None):
        raise EmoSetError("give exactly one of per_class= (images per class) and fraction=")
    names = _label_names(split)
    available = np.bincount(_labels(split), minlength=len(names))[: len(names)]
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise EmoSetError(f"fraction must be in (0, 1]; got {fraction}")
        # floor(x + 0.5): rounding half up, monotone in fraction, so fractions nest too.
        return [min(n, max(1, math.floor(fraction * n + 0.5))) for n in available.tolist()]
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise EmoSetError(f"per_class must be a positive integer; got {per_class!r}")
    short = [(name, int(n)) for name, n in zip(names, available) if n < per_class]
    if short:
        listed = ", ".join(f"{name} has {n}" for name, n in short)
        if not allow_fewer:
            raise EmoSetError(
                f"{name}={per_class} but the {split.split} split has fewer "
                f"images in some classes ({listed}); lower {name}, or take all images "
                f"of those classes: {ALLOW_FEWER_ADVICE}"
            )
        log.warning(
            "%s=%d: taking all images of the %s classes with fewer (%s)",
            name,
            per_class,
            split.split,
            listed,
        )
    return [min(int(n), int(per_class)) for n in available]


def _ranked_rows_per_class(split, seed: int) -> list[np.ndarray]:
    """For each class, its row indices in the seeded order (independent of the input order)."""
    ids = np.asarray(_image_ids(split), dtype=object)
    labels = _labels(split)
    by_id = np.argsort(ids, kind="stable")  # stable: duplicated ids keep their input order
    ranked = []
    for c in range(len(_label_names(split))):
        rows = by_id[labels[by_id] == c]
        rng = np.random.default_rng([seed, c])
        ranked.append(rows[rng.permutation(len(rows))])
    return ranked


def _label_names(split) -> list[str]:
    feature = split.features.get("label")
    if feature is None or not hasattr(feature, "names"):
        raise EmoSetError(
            "the dataset needs a ClassLabel 'label' column (load it with load_emoset)"
        )
    return list(feature.names)


def _image_ids(split) -> list[str]:
    if "image_id" not in split.column_names:
        raise EmoSetError("the dataset needs an 'image_id' column (load it with load_emoset)")
    return _column(split, "image_id").to_pylist()


def _labels(split) -> np.ndarray:
    _label_names(split)
    return _column(split, "label").to_numpy(zero_copy_only=False).astype(np.int64)


def _column(split, name: str):
    """One column as a pyarrow array, honouring a ``select``ed view (no image decoding)."""
    return split.with_format("arrow")[name]
