"""The toolkit's ``accuracy``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class Accuracy(module.EmotionMetric):
    METRIC = "accuracy"
