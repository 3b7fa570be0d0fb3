"""Per-cell calibration (NLL, ECE) and attribute slices with Wilson intervals, from the saved
test predictions of a study (``study/predictions.py``).

Both are computed per replicate and then averaged over the replicates of a cell, so a cell with
one odd seed shows it in the spread. Everything returns JSON-serialisable dicts; a quantity the
data cannot give (no probabilities saved, no attributes) is ``None`` with a reason in words.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from emoset_peft.engine.metrics import attribute_slices

# One ECE for the trainer's metrics.json and the report (the registry's ``ece``).
from emoset_peft.metrics.functions import ECE_BINS, expected_calibration_error
from emoset_peft.metrics.functions import normalised as _normalised

SMALL_SLICE = 30  # fewer test images than this: a slice's accuracy moves by >= 3 pp per image
CONFIDENCE = 0.95


def negative_log_likelihood(probabilities, labels) -> np.ndarray:
    """Mean -log p(true class) per leading index of ``probabilities`` ([..., n, C]).

    Probabilities are clipped to [eps, 1 - eps] (float64 eps), as sklearn's log_loss does, so a
    confidently wrong 0 gives a large finite loss instead of infinity.
    """
    probabilities = _normalised(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    eps = np.finfo(np.float64).eps
    chosen = np.take_along_axis(
        probabilities, np.broadcast_to(labels[:, None], probabilities.shape[:-1] + (1,)), axis=-1
    )[..., 0]
    return -np.log(np.clip(chosen, eps, 1 - eps)).mean(axis=-1)


def cell_calibration(cell, labels, bins: int = ECE_BINS) -> dict:
    """NLL and ECE of one cell: per replicate, their mean and SD over replicates."""
    entry = {
        "method": cell.method,
        "per_class": cell.per_class,
        "n_replicates": len(cell.replicates),
        "nll": None,
        "ece": None,
        "nll_sd": None,
        "ece_sd": None,
        "replicates": {},
        "bins": bins,
        "reason": None,
    }
    if cell.probabilities is None:
        entry["reason"] = "no class probabilities were saved for this cell"
        return entry
    nll = negative_log_likelihood(cell.probabilities, labels)
    ece = expected_calibration_error(cell.probabilities, labels, bins)
    entry.update(
        nll=float(nll.mean()),
        ece=float(ece.mean()),
        nll_sd=float(nll.std(ddof=1)) if nll.size > 1 else None,
        ece_sd=float(ece.std(ddof=1)) if ece.size > 1 else None,
        replicates={
            _key_text(key): {"nll": float(n), "ece": float(e)}
            for key, n, e in zip(cell.replicates, nll, ece)
        },
    )
    if nll.size == 1:
        entry["reason"] = "1 replicate: no spread between seeds"
    return entry


def calibration_table(study, bins: int = ECE_BINS) -> list[dict]:
    """:func:`cell_calibration` of every cell of a ``StudyPredictions``, in its cell order."""
    return [cell_calibration(cell, study.labels, bins) for cell in study.cells.values()]


def _key_text(key) -> str:
    if isinstance(key, (tuple, list)):
        return "/".join(str(part) for part in key)
    return str(key)


# ---------------------------------------------------------------------------------------------
# Slices


def wilson_interval(accuracy: float, n: int, confidence: float = CONFIDENCE):
    """Wilson score interval for a proportion ``accuracy`` of ``n`` trials; (None, None) if n=0.

    Also defined for a proportion that is not a whole count over n (a mean over replicates).
    """
    if n <= 0:
        return None, None
    z = stats.norm.ppf(0.5 + confidence / 2)
    denominator = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def cell_slices(study, method: str, per_class, attribute_labels=None) -> dict:
    """Accuracy per attribute value for one cell, with Wilson intervals over its images.

    Slices are those of ``engine.metrics.attribute_slices`` (facial_expression and human_action
    present/absent, brightness low/mid/high, the five most frequent scenes). ``accuracy`` is the
    mean over replicates; the interval is the Wilson interval for that accuracy on the slice's
    ``n`` test images (test-image noise only: the seed spread is ``sd`` over replicates).
    Slices of fewer than 30 images carry ``small: True``.
    """
    result = {"method": method, "per_class": per_class, "reason": None, "attributes": {}}
    if not study.attributes:
        result["reason"] = "the test images carry no attributes (facial expression, scene, ...)"
        return result
    cell = study.cells.get((method, per_class))
    if cell is None:
        result["reason"] = f"no cell {method} at k = {per_class}"
        return result
    per_replicate = [
        attribute_slices(row == study.labels, study.attributes, attribute_labels)
        for row in np.asarray(cell.predictions)
    ]
    result["attributes"] = slice_table(per_replicate)
    return result


def slice_table(per_replicate: list[dict]) -> dict:
    """Slices of a cell from each replicate's ``{attribute: {slice: {n, accuracy}}}``.

    The per-replicate form is what ``engine.metrics.attribute_slices`` returns and what every
    run's ``metrics.json`` keeps under ``test.slices``, so a report can call this without the
    per-image attributes. A slice missing from some replicates is averaged over those that
    have it (``n_replicates`` says how many).
    """
    table: dict[str, dict] = {}
    for replicate in per_replicate:
        for attribute, by_slice in (replicate or {}).items():
            for name, entry in by_slice.items():
                table.setdefault(attribute, {}).setdefault(str(name), []).append(entry)
    result: dict[str, dict] = {}
    for attribute, by_slice in table.items():
        for name, entries in by_slice.items():
            values = np.array([float(entry["accuracy"]) for entry in entries])
            n = int(np.rint(np.mean([float(entry["n"]) for entry in entries])))
            low, high = wilson_interval(float(values.mean()), n)
            result.setdefault(attribute, {})[name] = {
                "n": n,
                "accuracy": float(values.mean()),
                "ci_low": low,
                "ci_high": high,
                "sd": float(values.std(ddof=1)) if values.size > 1 else None,
                "n_replicates": int(values.size),
                "small": n < SMALL_SLICE,
            }
    return result
