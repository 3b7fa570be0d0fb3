"""The metric registry: each metric is declared once here, and everything else derives from it.

From ``METRICS`` come: the scalar entries of ``metrics.json`` (``classification_metrics``), the
``train.select_metric`` choices (plus ``loss``), the ``val_<name>`` keys of each evaluation's
``log.jsonl`` line, the ``test_<name>`` columns of a study's ``results.csv``, the report's metric
columns, and the ``evaluate`` modules under ``emoset_peft/metrics/<name>/<name>.py``.

Adding a metric is one ``Metric(...)`` entry below (plus, to load it with ``evaluate``, a
three-line ``<name>/<name>.py`` like the others). Its name is a JSON key and part of a CSV column
name: never rename an existing one, or old studies' ``results.csv`` stop matching. Values are
fractions in [0, 1] (``study/results.py`` rejects others in results.csv).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoset_peft.metrics import functions

SELECTION_LOSS = "loss"  # selectable too, but computed from the logits by engine/evaluate.py


@dataclass(frozen=True)
class Metric:
    name: str  # key in metrics.json; results.csv column test_<name>; log key val_<name>
    # (probs [N, C], labels [N] class indices, class names) -> a float, never NaN
    compute: Callable[[np.ndarray, np.ndarray, Sequence[str]], float]
    higher_is_better: bool
    display: str  # in tables and printed lines, e.g. "macro-F1"
    description: str  # one sentence, for reports and the evaluate module's card
    fmt: str = ".4f"  # format spec of the value in printed lines

    def format(self, value: float) -> str:
        return f"{self.display} {value:{self.fmt}}"

    def module_path(self) -> Path:
        """The ``evaluate`` module script of this metric (``evaluate.load(str(path))``)."""
        return Path(__file__).resolve().parent / self.name / f"{self.name}.py"


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in METRICS or metric.name == SELECTION_LOSS:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


# The order is the order of metrics.json, log lines and results.csv columns.
register(
    Metric(
        "accuracy",
        functions.accuracy,
        True,
        "accuracy",
        "Share of images whose highest-scoring emotion is the true one.",
    )
)
register(
    Metric(
        "macro_f1",
        functions.macro_f1,
        True,
        "macro-F1",
        "Unweighted mean F1 over the emotions that occur in labels or predictions.",
    )
)
register(
    Metric(
        "balanced_accuracy",
        functions.balanced_accuracy,
        True,
        "balanced accuracy",
        "Unweighted mean recall over the emotions that occur in the labels.",
    )
)
register(
    Metric(
        "valence_accuracy",
        functions.valence_accuracy,
        True,
        "valence accuracy (2-class)",
        "Accuracy after mapping true and predicted emotion to positive/negative valence.",
    )
)
register(
    Metric(
        "top2_accuracy",
        functions.top2_accuracy,
        True,
        "top-2 accuracy",
        "Share of images whose true emotion is among the two highest scores.",
    )
)
register(
    Metric(
        "ece",
        functions.ece,
        False,
        "ECE",
        f"Expected calibration error, {functions.ECE_BINS} equal-width confidence bins.",
    )
)


def get(name: str) -> Metric:
    return METRICS[name]


def compute_all(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """{name: value} of every registered metric, in registry order."""
    return {name: metric.compute(probs, labels, class_names) for name, metric in METRICS.items()}


def selection_choices() -> tuple[str, ...]:
    """The values ``train.select_metric`` accepts."""
    return (*METRICS, SELECTION_LOSS)


def selection_score(metrics: Mapping, name: str) -> float:
    """The score of one evaluation under ``train.select_metric``: higher is better for all."""
    if name == SELECTION_LOSS:
        return -metrics[SELECTION_LOSS]
    return metrics[name] if METRICS[name].higher_is_better else -metrics[name]


def prefixed(metrics: Mapping, prefix: str) -> dict:
    """``{<prefix>_<name>: value}`` of every registered metric of one evaluation (a results.csv
    row's ``test_*`` columns)."""
    return {f"{prefix}_{name}": metrics[name] for name in METRICS}


def log_entry(metrics: Mapping, prefix: str = "val") -> dict:
    """One evaluation's loss and metrics for log.jsonl and trackers: ``val_loss``, ``val_accuracy``,
    ..."""
    loss = {f"{prefix}_loss": metrics["loss"]} if "loss" in metrics else {}
    return {**loss, **prefixed(metrics, prefix)}


def result_columns(split: str = "test") -> tuple[str, ...]:
    """The results.csv columns of one split's metrics: ``test_accuracy``, ..."""
    return tuple(f"{split}_{name}" for name in METRICS)


def summary_line(metrics: Mapping) -> str:
    """One evaluation's metrics in words, e.g. ``accuracy 0.4000  macro-F1 0.3810  ...``."""
    return "  ".join(
        metric.format(metrics[name]) for name, metric in METRICS.items() if name in metrics
    )
