"""The toolkit's emotion metrics, defined once (``registry``) as numpy functions (``functions``)
and shipped as ``evaluate`` modules, one folder per metric::

    import evaluate
    from emoset_peft.metrics import module_path
    macro_f1 = evaluate.load(str(module_path("macro_f1")))  # offline: a local script
    macro_f1.compute(predictions=probs, references=labels)  # probs [N, 8], EmoSet's class order

Importing this package does not import ``evaluate`` (seconds); only the module scripts do.
"""

from emoset_peft.metrics.registry import (
    METRICS,
    Metric,
    compute_all,
    get,
    log_entry,
    prefixed,
    register,
    result_columns,
    selection_choices,
    selection_score,
    summary_line,
)


def module_path(name: str):
    """The ``evaluate`` module script of metric ``name``."""
    return get(name).module_path()


__all__ = [
    "METRICS",
    "Metric",
    "compute_all",
    "get",
    "log_entry",
    "module_path",
    "prefixed",
    "register",
    "result_columns",
    "selection_choices",
    "selection_score",
    "summary_line",
]
