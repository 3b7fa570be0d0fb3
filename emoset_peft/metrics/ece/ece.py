"""The toolkit's ``ece``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class Ece(module.EmotionMetric):
    METRIC = "ece"
