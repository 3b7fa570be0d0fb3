"""Per-image test predictions of every finished study cell, as arrays for image-level statistics.

Each finished cell keeps ``<study>/<run_dir>/predictions_test.csv`` (``image_id``, ``label``,
``predicted``, one ``prob_<class>`` column per class; see ``engine.metrics.write_predictions``).
All cells of a study are scored on the same test images, which is what lets the statistics pair
cells image by image and resample the test images jointly. ``load_predictions`` reads those files
for the rows of ``results.csv``:

- rows with ``status = failed`` and rows whose prediction file is missing or unreadable are left
  out, each with one line in ``StudyPredictions.problems`` saying which and why;
- a file whose test images (ids, or their labels) or class list differ from the first file read is
  an ``EmoSetError`` naming both files: such cells cannot be compared image by image.

Images are held in one fixed order (sorted by ``image_id``); ``predictions[r, i]`` is replicate
``r``'s predicted class index for image ``i``, indices into ``class_names``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoset_peft.errors import EmoSetError
from emoset_peft.study.per_class import parse_per_class, per_class_sort_key

PREDICTIONS_FILE = "predictions_test.csv"
PROB_PREFIX = "prob_"


@dataclass
class CellPredictions:
    """One (method, k) cell: a row of the arrays per replicate (seed pair)."""

    method: str
    per_class: int | str  # int k or "all"; 0 = zero-shot
    replicates: list[tuple[int, int]]  # (data_seed, train_seed) per row of the arrays
    predictions: np.ndarray  # int16 [R, n]
    probabilities: np.ndarray | None  # float32 [R, n, C]

    def correct(self, labels: np.ndarray) -> np.ndarray:
        """Boolean [R, n]: did replicate r classify image i correctly."""
        return self.predictions == np.asarray(labels)[None, :]


@dataclass
class StudyPredictions:
    image_ids: list[str]  # n test images, fixed order (sorted by image_id)
    labels: np.ndarray  # int64 [n]
    class_names: list[str]
    cells: dict[tuple[str, int | str], CellPredictions]
    attributes: dict[str, list] | None = None  # per-image attributes for slices if available
    problems: list[str] = field(default_factory=list)  # rows skipped and why


@dataclass
class _File:
    path: Path
    image_ids: list[str]
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]


def replicate_key(row: Mapping) -> tuple[int, int]:
    """(data_seed, train_seed) of a results row; either falls back to ``seed`` when empty."""
    seed = row.get("seed")
    return _seed(row.get("data_seed"), seed), _seed(row.get("train_seed"), seed)


def _seed(value, fallback) -> int:
    for candidate in (value, fallback):
        if candidate not in (None, ""):
            try:
                return int(float(candidate))
            except ValueError:
                pass
    return 0


def load_predictions(
    study_dir: str | Path, rows: Sequence[Mapping], *, probabilities: bool = True
) -> StudyPredictions:
    """Read the prediction files of ``rows`` (results.csv rows) into one ``StudyPredictions``.

    ``probabilities=False`` skips the probability arrays (saves memory when only the predicted
    classes are needed). Cells are ordered by method (first appearance) then k ("all" last);
    the replicates of a cell by their (data_seed, train_seed) key.
    """
    study_dir = Path(study_dir)
    problems: list[str] = []
    reference: _File | None = None
    by_cell: dict[tuple[str, int | str], dict[tuple[int, int], _File]] = {}
    for row in rows:
        name = _describe(row)
        status = str(row.get("status") or "ok").strip().lower()
        if status == "failed":
            error = str(row.get("error") or "no error recorded")
            problems.append(f"{name}: the run failed ({error}); left out")
            continue
        try:
            cell_key = (str(row["method"]), parse_per_class(row["per_class"]))
        except (KeyError, ValueError) as err:
            problems.append(f"{name}: no usable method/per_class ({err}); left out")
            continue
        run_dir = str(row.get("run_dir") or "")
        if not run_dir:
            problems.append(f"{name}: no run_dir, so no predictions; left out")
            continue
        path = study_dir / run_dir / PREDICTIONS_FILE
        shown = path.relative_to(study_dir) if path.is_relative_to(study_dir) else path
        if not path.is_file():
            problems.append(f"{shown} is missing ({name}); left out of the image-level statistics")
            continue
        try:
            loaded = _read_file(path)
        except (OSError, ValueError, csv.Error) as err:
            problems.append(f"{shown} could not be read ({name}: {err}); left out")
            continue
        if reference is None:
            reference = loaded
        else:
            _check_same_images(reference, loaded, study_dir)
        replicates = by_cell.setdefault(cell_key, {})
        key = replicate_key(row)
        if key in replicates:
            problems.append(f"{name}: a second row for replicate {key}; the later row is used")
        replicates[key] = loaded

    if reference is None:
        return StudyPredictions([], np.zeros(0, np.int64), [], {}, None, problems)
    order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in by_cell))}  # row order
    cells = {}
    for cell_key in sorted(by_cell, key=lambda c: (order[c[0]], per_class_sort_key(c[1]))):
        replicates = by_cell[cell_key]
        keys = sorted(replicates)
        files = [replicates[key] for key in keys]
        cells[cell_key] = CellPredictions(
            method=cell_key[0],
            per_class=cell_key[1],
            replicates=keys,
            predictions=np.stack([f.predictions for f in files]).astype(np.int16),
            probabilities=np.stack([f.probabilities for f in files]) if probabilities else None,
        )
    return StudyPredictions(
        reference.image_ids, reference.labels, reference.class_names, cells, None, problems
    )


def _describe(row: Mapping) -> str:
    return (
        f"{row.get('method', '?')} k={row.get('per_class', '?')} "
        f"seed={row.get('seed', '?')} ({row.get('run_dir') or 'no run_dir'})"
    )


def _read_file(path: Path) -> _File:
    """One predictions_test.csv, images sorted by id. Raises ValueError when malformed."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        prob_columns = [c for c in columns if c.startswith(PROB_PREFIX)]
        missing = [c for c in ("image_id", "label") if c not in columns]
        if missing or not prob_columns:
            raise ValueError(f"no {', '.join(missing) or 'prob_<class>'} column")
        class_names = [c[len(PROB_PREFIX) :] for c in prob_columns]
        predicted_column = next((c for c in ("predicted", "prediction") if c in columns), None)
        records = list(reader)
    if not records:
        raise ValueError("no images")
    index = {name: i for i, name in enumerate(class_names)}
    records.sort(key=lambda r: str(r["image_id"]))
    image_ids = [str(r["image_id"]) for r in records]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("an image_id appears twice")
    probs = np.array([[_number(r[c], c) for c in prob_columns] for r in records], np.float32)
    labels = np.array([_class_index(r["label"], index, "label") for r in records], np.int64)
    if predicted_column is None:
        predictions = probs.argmax(axis=1)
    else:
        predictions = np.array(
            [_class_index(r[predicted_column], index, predicted_column) for r in records]
        )
    return _File(path, image_ids, labels, predictions.astype(np.int16), probs, class_names)


def _number(text, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{column} holds {text!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{column} holds {text!r}")
    return value


def _class_index(text, index: Mapping[str, int], column: str) -> int:
    """A class name (as written by write_predictions) or an integer class index."""
    text = str(text).strip()
    if text in index:
        return index[text]
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(index):
        return int(text)
    raise ValueError(f"{column} {text!r} is not one of the classes {list(index)}")


def _check_same_images(reference: _File, other: _File, study_dir: Path) -> None:
    def shown(path: Path):
        return path.relative_to(study_dir) if path.is_relative_to(study_dir) else path

    what = None
    if other.class_names != reference.class_names:
        what = f"classes {other.class_names} (expected {reference.class_names})"
    elif other.image_ids != reference.image_ids:
        extra = sorted(set(other.image_ids) - set(reference.image_ids))[:3]
        absent = sorted(set(reference.image_ids) - set(other.image_ids))[:3]
        what = (
            f"{len(other.image_ids)} test images (expected {len(reference.image_ids)}; "
            f"not in the first: {extra}, missing: {absent})"
        )
    elif not np.array_equal(other.labels, reference.labels):
        first = int(np.flatnonzero(other.labels != reference.labels)[0])
        what = f"a different label for image {other.image_ids[first]!r}"
    if what is not None:
        raise EmoSetError(
            f"{shown(other.path)} has {what} than {shown(reference.path)}: all cells of a study "
            "must be scored on the same test images; rerun that cell or remove its row"
        )
