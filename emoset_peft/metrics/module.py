"""The ``evaluate.Metric`` base of the toolkit's metric modules (``<name>/<name>.py``).

Each module is one subclass naming its registry entry, so ``evaluate`` computes exactly the
function the trainer uses. Inputs: ``predictions`` = one row of class scores per image
(probabilities for ``ece``; any monotone scores for the others), ``references`` = true class
indices, and optionally ``class_names`` (default: EmoSet's eight emotions in their official
order), which ``valence_accuracy`` needs to know each class's valence.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from emoset_peft.labels import EMOTIONS
from emoset_peft.metrics.registry import get

_INPUTS = """
Args:
    predictions: class scores, one row [num_classes] per image (probabilities for ECE).
    references: the true class index of each image.
    class_names: the name of each class column (default: EmoSet's eight emotions).
Returns:
    {name: value}, a float in [0, 1].
"""


class EmotionMetric(evaluate.Metric):
    METRIC = ""  # the registry name, set by each module's subclass

    def _info(self):
        metric = get(self.METRIC)
        return evaluate.MetricInfo(
            description=metric.description,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, class_names=EMOTIONS):
        probs = np.asarray(predictions, dtype=np.float64).reshape(len(references), -1)
        labels = np.asarray(references, dtype=np.int64)
        return {self.METRIC: get(self.METRIC).compute(probs, labels, list(class_names))}
