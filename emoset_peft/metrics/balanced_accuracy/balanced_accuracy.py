"""The toolkit's ``balanced_accuracy``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class BalancedAccuracy(module.EmotionMetric):
    METRIC = "balanced_accuracy"
