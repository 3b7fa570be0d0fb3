"""The toolkit's ``top2_accuracy``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class Top2Accuracy(module.EmotionMetric):
    METRIC = "top2_accuracy"
