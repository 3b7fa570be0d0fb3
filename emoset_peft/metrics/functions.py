"""The emotion metrics as plain numpy functions of (probabilities, labels, class names).

Plain numpy so that the trainer's per-evaluation metrics cost microseconds (the ``evaluate``
modules in this package wrap these same functions for research code). Every function returns a
Python float and never NaN: an undefined ratio (a class that is never predicted, a class with no
images, an empty split) is 0.0, as scikit-learn's ``zero_division=0``. The conventions match
scikit-learn's defaults so the numbers can be compared directly:

- ``macro_f1`` averages over the classes that occur in the labels or in the predictions;
- ``balanced_accuracy`` averages recall over the classes that occur in the labels;
- ``top2_accuracy`` ranks classes as ``sklearn.metrics.top_k_accuracy_score`` does;
- ``expected_calibration_error`` uses equal-width confidence bins (i/bins, (i+1)/bins].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emoset_peft.labels import valence_of

ECE_BINS = 15


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0 (sklearn's zero_division=0)."""
    return float(numerator / denominator) if denominator else 0.0


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator with 0.0 where the denominator is 0."""
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def predictions(probs: np.ndarray) -> np.ndarray:
    """The predicted class of each row (argmax; the first class wins ties, as numpy's)."""
    return probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of images, row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class from a confusion matrix."""
    true_positives = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": predicted,
    }


def _scores(probs, labels) -> dict[str, np.ndarray]:
    return per_class_scores(confusion_matrix(predictions(probs), labels, probs.shape[1]))


def accuracy(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    return ratio(float((predictions(probs) == labels).sum()), len(labels))


def macro_f1(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    scores = _scores(probs, labels)
    seen = (scores["support"] > 0) | (scores["predicted"] > 0)
    return float(scores["f1"][seen].mean()) if seen.any() else 0.0


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    scores = _scores(probs, labels)
    present = scores["support"] > 0
    return float(scores["recall"][present].mean()) if present.any() else 0.0


def top2_accuracy(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """The true class is among the two highest scores (ties ranked as sklearn ranks them)."""
    top_k = min(2, probs.shape[1])
    ranked = np.argsort(probs, axis=1, kind="mergesort")[:, ::-1][:, :top_k]
    return ratio(float((ranked == labels[:, None]).any(axis=1).sum()), len(labels))


def valence_accuracy(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """The 8-class argmax mapped to positive/negative valence (by class name, not position)."""
    valence = np.array([valence_of(str(name)) for name in class_names])
    correct = valence[predictions(probs)] == valence[labels]
    return ratio(float(correct.sum()), len(labels))


def normalised(probabilities) -> np.ndarray:
    """Rows rescaled to sum to 1 (a CSV keeps a few decimals, so sums drift by ~1e-6)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> np.ndarray:
    """ECE with ``bins`` equal-width confidence bins (i/bins, (i+1)/bins], per leading index
    of ``probabilities`` ([..., n, C]).

    Confidence is the largest probability and the prediction its class; ECE is the image-share
    weighted mean over bins of |accuracy - mean confidence|.
    """
    probabilities = normalised(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=-1)
    correct = (probabilities.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    one_hot = which[..., None] == np.arange(bins)  # [..., n, bins]
    gap = ((correct - confidence)[..., None] * one_hot).sum(axis=-2)  # summed per bin
    return np.abs(gap).sum(axis=-1) / confidence.shape[-1]


def ece(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> float:
    """Expected calibration error of one split, 15 bins; needs probabilities, not logits."""
    return float(expected_calibration_error(probs, labels)) if len(labels) else 0.0
