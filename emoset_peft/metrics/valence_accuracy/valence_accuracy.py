"""The toolkit's ``valence_accuracy``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class ValenceAccuracy(module.EmotionMetric):
    METRIC = "valence_accuracy"
