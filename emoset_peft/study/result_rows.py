"""What a validated ``results.csv`` is made of: its columns and their types, the notes on rows
that were ignored or corrected, failed cells, and the table ``study/results.py`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emoset_peft.metrics.registry import METRICS, result_columns

RESULTS_FILE = "results.csv"
REQUIRED_COLUMNS = ("method", "per_class", "test_accuracy")
# Fractions in [0, 1]; the test ones are also in the cell's metrics.json under "test".
# The test_<name> columns are those of the metric registry (emoset_peft/metrics/registry.py).
METRIC_COLUMNS = {**dict(zip(result_columns("test"), METRICS)), "val_accuracy": None}
INT_COLUMNS = (
    "seed",
    "data_seed",
    "train_seed",
    "trainable_params",
    "total_params",
    "train_images",
    "steps",
    "best_step",
    "num_processes",
    "process_index",
)
# results.csv column -> part of metrics.json "seconds" (engine/recipe.py run_training).
# train_seconds counts optimizer steps without the selection evaluations (before the
# selection_eval_seconds column existed it included them).
TIME_PARTS = {
    "decode_seconds": "decode",
    "feature_seconds": "features",
    "train_seconds": "train",
    "selection_eval_seconds": "selection_eval",
    "test_eval_seconds": "test_eval",
}
TIME_COLUMNS = tuple(TIME_PARTS)
FLOAT_COLUMNS = (*TIME_COLUMNS, "cell_seconds")
# Columns renamed since: an older results.csv is read (and rewritten) under the new name.
RENAMED_COLUMNS = {"eval_seconds": "test_eval_seconds"}
STATUSES = ("ok", "failed")
# csv writes floats with repr (exact); a metrics.json value differing by more than this was edited.
AGREEMENT_TOLERANCE = 5e-7


@dataclass
class RowNote:
    """One row (or one value of a row) of results.csv that was ignored or corrected, and why."""

    line: int  # line of results.csv where the row starts; the header is line 1
    cell: str  # "lora k=8 seed=1", or "?" when the row is too broken to say
    column: str  # the column concerned, or "row" for the whole row
    reason: str
    action: str  # "row ignored" | "value left out" | "corrected from metrics.json" | ...

    def text(self) -> str:
        where = "" if self.column == "row" else f"{self.column}: "
        return f"{RESULTS_FILE} line {self.line} ({self.cell}): {where}{self.reason}; {self.action}"


@dataclass
class FailedCell:
    line: int
    cell: str
    method: str
    per_class: int | str
    seed: str
    error: str
    run_dir: str


@dataclass
class ResultsTable:
    """The usable rows of results.csv and everything that was set aside.

    ``rows``: status-ok rows, one per cell (the latest), values converted: ``per_class`` an int k
    or ``"all"``, metric and timing columns floats (NaN when left out), integer columns ints (None
    when empty), everything else the CSV text. ``run_metrics[i]`` is the metrics.json of
    ``rows[i]`` (None when there is none or the table was read without a study folder).
    """

    path: Path
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    run_metrics: list[dict | None] = field(default_factory=list)
    failed: list[FailedCell] = field(default_factory=list)
    notes: list[RowNote] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # file-level gaps (missing metrics.json...)


def cell_label(row: dict) -> str:
    """``method k=K seed=S`` (with data/train seeds when they differ) for messages."""
    method, k = row.get("method") or "?", row.get("per_class") or "?"
    seed, data_seed, train_seed = (
        "" if row.get(c) is None else str(row[c]).strip()
        for c in ("seed", "data_seed", "train_seed")
    )
    if data_seed and train_seed and data_seed != train_seed:
        return f"{method} k={k} data_seed={data_seed} train_seed={train_seed}"
    return f"{method} k={k} seed={seed or data_seed or train_seed or '?'}"


def shown_path(path: Path, study: Path) -> Path:
    """``path`` as messages show it: relative to the study folder when inside it (a row's
    ``run_dir`` may also be absolute, or point elsewhere)."""
    return path.relative_to(study) if path.is_relative_to(study) else path


def time_columns(seconds: dict) -> dict:
    """The results.csv time columns of a cell from its metrics.json ``seconds``."""
    return {column: seconds.get(part, "") for column, part in TIME_PARTS.items()}


def renamed_columns(names: list[str]) -> list[str]:
    """A header with its old column names replaced (unless the new one is there too)."""
    return [
        RENAMED_COLUMNS[name]
        if name in RENAMED_COLUMNS and RENAMED_COLUMNS[name] not in names
        else name
        for name in names
    ]
