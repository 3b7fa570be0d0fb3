"""``summary.json`` (everything a report shows, JSON-ready) and ``summary.csv`` (the per-cell
table), as the texts the report writes beside report.md."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from emoset_peft.utils.io import json_text

CSV_COLUMNS = (
    "method",
    "per_class",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "seed_sd",
    "test_se",
    "n_seeds",
    "n_test",
    "reliable",
)


def summary_files(summary: Mapping) -> dict[str, str]:
    """``{file name: text}`` of summary.json (everything) and summary.csv (the per-cell table)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for entry in summary["cells"]:
        writer.writerow({key: "" if entry.get(key) is None else entry[key] for key in CSV_COLUMNS})
    return {
        "summary.json": json_text(_clean(summary)),
        "summary.csv": buffer.getvalue(),
    }


def _clean(value):
    """JSON-ready: tuples become lists, NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value
