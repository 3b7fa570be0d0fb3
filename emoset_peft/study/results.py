"""``results.csv`` read once, validated row by row: the one reader of the study runner and the report.

results.csv is written by the runner (atomically, under a lock) but it is a plain text file that
people open, edit, copy half of and sync between machines, so nothing in it is trusted:

- a file that is not a results table (binary garbage, no header line) is one ``EmoSetError`` line
  naming the file and what to do -- never a traceback, and the runner never overwrites it;
- a row that cannot be used (truncated, wrong field count, bytes that are not UTF-8, no method, a
  per_class that is not a k, an unknown status) is ignored, and named;
- a value that is not a number where a number belongs (``abc``, ``nan``, an accuracy of 85.3
  instead of 0.853) is left out of that row, and named; a row without a usable test accuracy is
  ignored unless its cell's ``metrics.json`` has one;
- the cell's ``metrics.json`` is the source of truth: when a test metric of the row disagrees with
  it, the metrics.json value is used, and the correction is named;
- ``status=failed`` rows are failed cells: listed with their error, kept out of every statistic;
- a cell that appears twice (a re-run) keeps its later row; the earlier one is named.

Every note says the line of results.csv (the header is line 1), the cell, the column and why.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from emoset_peft.errors import EmoSetError
from emoset_peft.study.per_class import parse_per_class
from emoset_peft.study.result_rows import (
    AGREEMENT_TOLERANCE,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    METRIC_COLUMNS,
    REQUIRED_COLUMNS,
    STATUSES,
    FailedCell,
    ResultsTable,
    RowNote,
    cell_label,
    renamed_columns,
    shown_path,
)

# ---------------------------------------------------------------------------------------------
# Reading the file


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EmoSetError(
            f"{path} could not be read ({err.strerror or err}); check its permissions"
        ) from None
    # Undecodable bytes become lone surrogates, so one bad row is found and named instead of
    # failing the whole file.
    return data.decode("utf-8", errors="surrogateescape")


def _bad_text(value: str) -> bool:
    return "\x00" in value or any("\udc80" <= ch <= "\udcff" for ch in value)


def _parse(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], bool]:
    """(header, [(line, fields)], ends with a newline). Raises EmoSetError for a non-table."""
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    records, start = [], 1
    try:
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        # An unterminated quote or a huge unquoted field: the rows before it are fine.
        records.append((start, str(err)))
        if not records[:-1]:
            raise EmoSetError(
                f"{path} is not a CSV table ({err}); move it away and rerun "
                "`emoset-peft study` (finished cells are then trained again)"
            ) from None
    records = [(line, fields) for line, fields in records if fields != []]  # blank lines
    if not records:
        return [], [], True
    header = records[0][1]
    header = [name.strip() for name in header] if isinstance(header, list) else []
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise EmoSetError(_not_a_table(path, header, missing))
    return renamed_columns(header), records[1:], text.endswith(("\n", "\r"))


def _not_a_table(path: Path, header: list[str], missing: list[str]) -> str:
    if any(_bad_text(name) for name in header) or not header:
        return (
            f"{path} is not a results table (its first line is not text with the columns "
            f"{', '.join(REQUIRED_COLUMNS)}); move it away (e.g. to {path.name}.bad) and "
            "rerun `emoset-peft study` with the same recipe: cells missing from results.csv "
            "are trained again"
        )
    try:
        first = str(parse_per_class(header[1])) if len(header) > 1 else None
    except ValueError:
        first = None
    if first is not None:  # "lora,8,0,..." where "method,per_class,..." belongs
        # Imported here: the runner imports this module, and loads tqdm and the grid.
        from emoset_peft.study.runner import RESULT_COLUMNS

        return (
            f"{path} has no header line (line 1 is a data row: "
            f"{','.join(header[:3])},...); put the column names back as line 1 "
            f"({','.join(RESULT_COLUMNS[:4])},... in the order the values are written)"
        )
    shown = ascii(",".join(header))[:80]  # ascii(): one line, whatever the bytes were
    return (
        f"{path} is not a results table: its first line {shown} lacks the column(s) "
        f"{', '.join(missing)}; pass the study folder that holds the study's results.csv, "
        f"or move this file away (e.g. to {path.name}.bad) and rerun `emoset-peft study` "
        "with the same recipe: cells missing from results.csv are trained again"
    )


def read_result_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of ``path`` that are whole (right field count, UTF-8), as CSV text, including failed
    ones: what the runner resumes from and writes back. ``[]`` when the file does not exist.
    Raises EmoSetError when the file is not a results table (never overwrite it then)."""
    path = Path(path)
    if not path.exists():
        return []
    header, records, ends_with_newline = _parse(path)
    rows = []
    for index, (_, fields) in enumerate(records):
        if (
            isinstance(fields, str)
            or len(fields) != len(header)
            or any(_bad_text(value) for value in fields)
        ):
            continue
        row = dict(zip(header, fields))
        if index == len(records) - 1 and not ends_with_newline and _looks_cut(row, None):
            continue
        rows.append(row)
    return rows


def read_results_table(
    path: str | os.PathLike, study_dir: str | os.PathLike | None = None
) -> ResultsTable:
    """Read and validate results.csv; with ``study_dir``, check every row against its cell's
    metrics.json (``run_dir`` is relative to ``study_dir``). Raises EmoSetError when the file is
    missing or not a results table; every row-level problem becomes a ``RowNote``."""
    path = Path(path)
    if not path.is_file():
        raise EmoSetError(
            f"{path} not found: run `emoset-peft study` first, or pass the folder "
            "that holds results.csv"
        )
    header, records, ends_with_newline = _parse(path)
    table = ResultsTable(path, header)
    study = Path(study_dir) if study_dir is not None else None
    kept: dict[tuple, tuple[int, dict, str]] = {}  # cell key -> (line, row, status)
    for index, (line, fields) in enumerate(records):
        last = index == len(records) - 1
        row = _whole_row(table, header, line, fields, last and not ends_with_newline, study)
        if row is None:
            continue
        status = _status(table, line, row)
        if status is None:
            continue
        row = _typed(table, line, row)
        if row is None:
            continue
        key = (
            row["method"],
            row["per_class"],
            *(row.get(c) for c in ("seed", "data_seed", "train_seed")),
        )
        if key in kept:
            earlier = kept[key][0]
            table.notes.append(
                RowNote(
                    earlier,
                    cell_label(kept[key][1]),
                    "row",
                    f"the same cell again on line {line} (a re-run)",
                    "earlier row ignored",
                )
            )
        kept[key] = (line, row, status)
    for line, row, status in sorted(kept.values(), key=lambda item: item[0]):
        if status == "failed":
            table.failed.append(
                FailedCell(
                    line,
                    cell_label(row),
                    row["method"],
                    row["per_class"],
                    str(row.get("seed") or ""),
                    str(row.get("error") or "no error recorded"),
                    str(row.get("run_dir") or ""),
                )
            )
            continue
        metrics = _check_metrics(table, study, line, row) if study is not None else None
        if not _usable(row["test_accuracy"]):
            table.notes.append(
                RowNote(
                    line,
                    cell_label(row),
                    "test_accuracy",
                    "no usable value here or in metrics.json",
                    "row ignored",
                )
            )
            continue
        table.rows.append(row)
        table.run_metrics.append(metrics)
    table.notes.sort(key=lambda note: note.line)
    return table


def _whole_row(
    table: ResultsTable,
    header: list[str],
    line: int,
    fields: list[str] | str,
    unterminated_last: bool,
    study: Path | None,
) -> dict | None:
    if isinstance(fields, str):
        table.notes.append(
            RowNote(
                line,
                "?",
                "row",
                f"not CSV from here on ({fields})",
                "this and any later lines ignored",
            )
        )
        return None
    raw = dict(zip(header, fields))
    cell = cell_label(raw) if not any(_bad_text(v) for v in fields) else "?"
    if len(fields) < len(header):
        why = "truncated (the file ends inside this row)" if unterminated_last else "truncated"
        table.notes.append(
            RowNote(
                line, cell, "row", f"{why}: {len(fields)} of {len(header)} fields", "row ignored"
            )
        )
        return None
    if len(fields) > len(header):
        table.notes.append(
            RowNote(
                line,
                cell,
                "row",
                f"{len(fields)} fields but the header has {len(header)}",
                "row ignored",
            )
        )
        return None
    bad = [name for name, value in raw.items() if _bad_text(value)]
    if bad:
        table.notes.append(
            RowNote(
                line, cell, bad[0], "bytes that are not UTF-8 text (or NUL bytes)", "row ignored"
            )
        )
        return None
    if unterminated_last and _looks_cut(raw, study):
        table.notes.append(
            RowNote(
                line,
                cell,
                "row",
                "truncated (the file ends inside this row without a line end)",
                "row ignored",
            )
        )
        return None
    return raw


def _looks_cut(raw: dict, study: Path | None) -> bool:
    """Whether a last row without a line end (the runner ends every row with one) stopped
    inside its last value: a number column that holds no number, or a run_dir that names no
    folder of the study."""
    last_column, value = list(raw.items())[-1]
    if last_column in (*METRIC_COLUMNS, *INT_COLUMNS, *FLOAT_COLUMNS):
        return not _is_number(value)
    if last_column == "run_dir" and study is not None:
        return not (value and (study / value).is_dir())
    return False


def _status(table: ResultsTable, line: int, row: dict) -> str | None:
    status = (row.get("status") or "ok").strip().lower()
    if status not in STATUSES:
        table.notes.append(
            RowNote(
                line,
                cell_label(row),
                "status",
                f"unknown status {row['status']!r} (expected ok or failed)",
                "row ignored",
            )
        )
        return None
    return status


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _usable(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _typed(table: ResultsTable, line: int, raw: dict) -> dict | None:
    """The row with per_class parsed and numbers converted; bad values left out and noted."""
    cell = cell_label(raw)
    if not raw["method"].strip():
        table.notes.append(RowNote(line, cell, "method", "empty", "row ignored"))
        return None
    try:
        per_class = parse_per_class(raw["per_class"])
    except ValueError:
        table.notes.append(
            RowNote(
                line,
                cell,
                "per_class",
                f"{raw['per_class']!r} is neither an integer >= 0 nor 'all'",
                "row ignored",
            )
        )
        return None
    row: dict = {**raw, "method": raw["method"].strip(), "per_class": per_class}
    for column in (*METRIC_COLUMNS, *FLOAT_COLUMNS, *INT_COLUMNS):
        if column not in raw:
            continue
        text = raw[column].strip()
        value = _number(text)
        integer = column in INT_COLUMNS
        why = None
        if text == "":
            row[column] = None if integer else math.nan
            continue
        if value is None or not math.isfinite(value):
            why = f"{text!r} is not a number"
        elif column in METRIC_COLUMNS and not 0.0 <= value <= 1.0:
            why = f"{text} is outside [0, 1] (metrics are fractions, not percent)"
        elif integer and value != int(value):
            why = f"{text} is not a whole number"
        elif (integer or column in FLOAT_COLUMNS) and value < 0:
            why = f"{text} is negative"
        if why:
            table.notes.append(RowNote(line, cell, column, why, "value left out"))
            row[column] = None if integer else math.nan
        else:
            row[column] = int(value) if integer else value
    return row


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The cell's metrics.json, the source of truth


def _check_metrics(table: ResultsTable, study: Path, line: int, row: dict) -> dict | None:
    metrics = read_run_metrics(study, row, table.problems)
    if metrics is None:
        return None
    test = metrics.get("test") or {}
    for column, key in METRIC_COLUMNS.items():
        truth = test.get(key) if key else None
        if not (isinstance(truth, (int, float)) and math.isfinite(truth)):
            continue
        if column not in row:  # an older results.csv without the column: filled in, silently
            row[column] = float(truth)
            continue
        value = row[column]
        if _usable(value) and abs(value - truth) <= AGREEMENT_TOLERANCE:
            continue
        row[column] = float(truth)
        source = f"{row['run_dir']}/metrics.json"
        earlier = [note for note in table.notes if (note.line, note.column) == (line, column)]
        if earlier:  # the value was already left out as unusable: now it is replaced
            earlier[0].reason += f"; {source} has {truth:.6g}"
            earlier[0].action = "metrics.json value used"
            continue
        table.notes.append(
            RowNote(
                line,
                cell_label(row),
                column,
                f"{value:.6g} here but {truth:.6g} in {source}",
                "metrics.json value used",
            )
        )
    return metrics


def read_run_metrics(study: Path, row: dict, problems: list[str]) -> dict | None:
    """The metrics.json of ``row``'s run folder; None (and a line in ``problems``) when absent
    or unreadable."""
    run_dir = str(row.get("run_dir") or "").strip()
    if not run_dir:
        return None
    path = study / run_dir / "metrics.json"  # run_dir may also be absolute
    shown = shown_path(path, study)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(
            f"{shown} is missing (run {cell_label(row)}); the row's values are "
            "used unchecked and its confusion matrix is left out"
        )
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{shown} could not be read ({err}); the row's values are used unchecked")
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test", {}), dict):
        problems.append(f"{shown} is not a metrics object with a `test` mapping; ignored")
        return None
    return metrics
