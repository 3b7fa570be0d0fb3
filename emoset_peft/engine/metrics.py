"""Classification metrics for one evaluation pass, and per-image prediction files.

The scalar metrics come from the registry (``emoset_peft/metrics/``, plain numpy, checked
against scikit-learn with its conventions); this module adds per-class scores, the confusion
matrix and attribute slices. All results are JSON-serialisable (Python floats and ints, lists,
dicts) and never NaN: an undefined ratio is 0.0, as scikit-learn's ``zero_division=0``.
``per_class`` lists every class name, with ``support`` = number of true images.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from emoset_peft.metrics.functions import (
    confusion_matrix,
    per_class_scores,
    predictions,
    ratio,
)
from emoset_peft.metrics.registry import compute_all

# Brightness is annotated as a float in 0.0..1.0 (steps of 0.1); these are the bin edges.
BRIGHTNESS_LOW_BELOW = 0.4
BRIGHTNESS_HIGH_FROM = 0.7
TOP_SCENES = 5  # the scene slices report the most frequent scenes only


def _check_inputs(probs, labels, class_names) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(
            f"probs must have shape [num_images, {len(class_names)}] (one column per class "
            f"name), got {probs.shape}"
        )
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in 0..{len(class_names) - 1}")
    return probs, labels


def _is_missing(value) -> bool:
    """An absent annotation: None, NaN, or -1 (how datasets' ClassLabel columns store None)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isnan(number) or number == -1


def _slice(correct: np.ndarray, mask: np.ndarray) -> dict:
    n = int(mask.sum())
    return {"n": n, "accuracy": ratio(float(correct[mask].sum()), n)}


def attribute_slices(
    correct: np.ndarray,
    attributes: Mapping[str, Sequence],
    attribute_labels: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Accuracy on slices of the images defined by their EmoSet attributes.

    ``correct`` is a boolean vector (one entry per image); ``attributes`` maps an attribute name
    to one value per image (missing = None, NaN or -1). Returns ``{attribute: {slice: {n,
    accuracy}}}`` for the attributes present: ``facial_expression`` and ``human_action`` ->
    present/absent, ``brightness`` -> low (<0.4) / mid / high (>=0.7) with missing values left
    out, ``scene`` -> the five most frequent scenes. Empty slices are left out.
    ``attribute_labels`` optionally maps integer (ClassLabel) values to names, per attribute.
    """
    correct = np.asarray(correct, dtype=bool)
    attribute_labels = attribute_labels or {}
    slices: dict[str, dict] = {}

    for name in ("facial_expression", "human_action"):
        if name not in attributes:
            continue
        present = np.array([not _is_missing(v) for v in _values(attributes, name, correct)])
        entry = {"present": _slice(correct, present), "absent": _slice(correct, ~present)}
        slices[name] = {key: value for key, value in entry.items() if value["n"]}

    if "brightness" in attributes:
        values = _values(attributes, "brightness", correct)
        level = np.array([np.nan if _is_missing(v) else float(v) for v in values])
        known = ~np.isnan(level)
        level = np.where(known, level, 0.0)  # placeholder, masked out below
        bins = {
            "low": known & (level < BRIGHTNESS_LOW_BELOW),
            "mid": known & (level >= BRIGHTNESS_LOW_BELOW) & (level < BRIGHTNESS_HIGH_FROM),
            "high": known & (level >= BRIGHTNESS_HIGH_FROM),
        }
        entry = {key: _slice(correct, mask) for key, mask in bins.items()}
        slices["brightness"] = {key: value for key, value in entry.items() if value["n"]}

    if "scene" in attributes:
        values = _values(attributes, "scene", correct)
        names = [_label_name(v, attribute_labels.get("scene")) for v in values]
        counts = Counter(name for name in names if name is not None)
        # Most frequent first; ties broken by name so the choice is deterministic.
        top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_SCENES]
        names_array = np.array([name if name is not None else "" for name in names], dtype=object)
        slices["scene"] = {scene: _slice(correct, names_array == scene) for scene, _ in top}

    return slices


def _values(attributes: Mapping[str, Sequence], name: str, correct: np.ndarray) -> list:
    values = list(attributes[name])
    if len(values) != len(correct):
        raise ValueError(
            f"attribute {name!r} has {len(values)} values but there are {len(correct)} images"
        )
    return values


def _label_name(value, names: Sequence[str] | None) -> str | None:
    if _is_missing(value):
        return None
    if names is not None and isinstance(value, (int, np.integer)):
        return str(names[int(value)])
    return str(value)


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    attributes: Mapping[str, Sequence] | None = None,
    attribute_labels: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """All the metrics of one evaluation pass, as a JSON-serialisable dict.

    ``probs`` is [N, C] class probabilities (the registry's ``ece`` needs probabilities; the
    other metrics use only their ranking), ``labels`` [N] class indices into ``class_names``.
    Returns every metric of ``emoset_peft.metrics.METRICS`` by name (accuracy, macro_f1,
    balanced_accuracy, valence_accuracy, top2_accuracy, ece, ...), per_class {name: precision,
    recall, f1, support}, confusion_matrix (rows = true class, columns = predicted), num_images,
    class_names and ``slices`` (see ``attribute_slices``; empty without ``attributes``).
    """
    class_names = [str(name) for name in class_names]
    probs, labels = _check_inputs(probs, labels, class_names)
    preds = predictions(probs)
    confusion = confusion_matrix(preds, labels, len(class_names))
    scores = per_class_scores(confusion)
    per_class = {
        name: {
            "precision": float(scores["precision"][index]),
            "recall": float(scores["recall"][index]),
            "f1": float(scores["f1"][index]),
            "support": int(scores["support"][index]),
        }
        for index, name in enumerate(class_names)
    }
    correct = preds == labels
    return {
        **compute_all(probs, labels, class_names),
        "per_class": per_class,
        "confusion_matrix": confusion.astype(int).tolist(),
        "class_names": class_names,
        "num_images": int(labels.shape[0]),
        "slices": attribute_slices(correct, attributes, attribute_labels) if attributes else {},
    }


def predictions_table(
    image_ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[int] | None = None,
) -> list[dict]:
    """One dict per image: image_id, label (true class name, when ``labels`` is given),
    predicted (class name) and ``prob_<class>`` for each class."""
    class_names = [str(name) for name in class_names]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(image_ids), len(class_names)):
        raise ValueError(
            f"probs must have shape [{len(image_ids)} images, {len(class_names)} classes], "
            f"got {probs.shape}"
        )
    preds = probs.argmax(axis=1) if len(image_ids) else []
    rows = []
    for index, image_id in enumerate(image_ids):
        row = {"image_id": str(image_id)}
        if labels is not None:
            row["label"] = class_names[int(labels[index])]
        row["predicted"] = class_names[int(preds[index])]
        for column, name in enumerate(class_names):
            row[f"prob_{name}"] = float(probs[index, column])
        rows.append(row)
    return rows


def write_predictions(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    labels: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Write per-image predictions as CSV (image_id, label, predicted, prob_<class>...).

    The file is written to a temporary name in the same folder and renamed into place, so a
    crash never leaves a half-written file behind. Returns the path.
    """
    path = Path(path)
    rows = predictions_table(image_ids, probs, class_names, labels=labels)
    fieldnames = ["image_id", "label", "predicted"] + [f"prob_{name}" for name in class_names]
    from emoset_peft.utils.io import atomic_open

    with atomic_open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            # 6 significant digits: enough to rank classes, small files for 17k test images.
            writer.writerow(
                {
                    key: f"{value:.6g}" if isinstance(value, float) else value
                    for key, value in row.items()
                }
            )
    return path
