"""The toolkit's ``macro_f1``, loadable with ``evaluate.load(<path of this file>)`` (see metrics/module.py)."""

from emoset_peft.metrics import module


class MacroF1(module.EmotionMetric):
    METRIC = "macro_f1"
