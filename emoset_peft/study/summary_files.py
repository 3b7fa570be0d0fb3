"""``summary.json`` (everything a report shows, JSON-ready) and ``summary.csv`` (the per-cell
table), written atomically beside report.md."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from emoset_peft.utils.io import atomic_write_json, atomic_write_text

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


def write_summary(directory: Path, summary: Mapping) -> tuple[Path, Path]:
    """summary.json (everything) and summary.csv (the per-cell table), written atomically."""
    json_path, csv_path = directory / "summary.json", directory / "summary.csv"
    atomic_write_json(json_path, _clean(summary))
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for entry in summary["cells"]:
        writer.writerow({key: "" if entry.get(key) is None else entry[key] for key in CSV_COLUMNS})
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


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
