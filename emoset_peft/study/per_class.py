"""The images-per-class value of a study cell: an int k >= 0 (0 = zero-shot) or ``"all"`` (the
whole training split). One parser and one sort order for every table, figure and file."""

from __future__ import annotations

import math

ALL = "all"


def parse_per_class(value) -> int | str:
    """``per_class`` as an int k >= 0 or ``"all"``; ValueError for anything else."""
    text = str(value).strip().lower()
    if text == ALL:
        return ALL
    number = float(text)
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise ValueError(f"per_class must be an integer >= 0 or 'all', got {value!r}")
    return int(number)


def per_class_sort_key(k: int | str) -> tuple[int, int]:
    """Ascending k with ``"all"`` last."""
    return (1, 0) if k == ALL else (0, int(k))
