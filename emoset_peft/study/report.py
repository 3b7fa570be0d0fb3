"""``report.md``, its figures and ``summary.json``/``summary.csv`` for a scaling study.

Input: a study directory holding ``results.csv`` (one row per finished cell, validated on read
by ``study/results.py``), optionally ``study.yaml`` (its config) and the run folders named in
the ``run_dir`` column, each with ``metrics.json`` and ``predictions_test.csv``. Output, beside
results.csv: ``report.md``, PNG figures, ``summary.json`` and ``summary.csv``.

Every number comes from ``study/summary.py`` (one two-level bootstrap shared by all statistics);
this module loads the study, draws the figures and lays out the text (tables in
``report_tables.py``, the protocol block in ``report_protocol.py``).

The report is meant to be read while a study is still running, so anything missing (a run
folder, a column, a second seed) is listed instead of stopping it. Only an absent, unreadable or
empty results.csv is an error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.study import gallery, plots, plots_curve, plots_time, report_curves
from emoset_peft.study import report_tables as tables
from emoset_peft.study.missing import render_missing
from emoset_peft.study.per_class import per_class_sort_key
from emoset_peft.study.report_protocol import render_protocol
from emoset_peft.study.result_rows import RESULTS_FILE, FailedCell, RowNote
from emoset_peft.study.results import read_results_table
from emoset_peft.study.summary import (
    METRIC_LABELS,
    METRICS,
    N_BOOT,
    SEED,
    build_summary,
    default_baseline,
)
from emoset_peft.study.summary_files import summary_files
from emoset_peft.utils.io import atomic_open
from emoset_peft.utils.storage import is_disk_full

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
CONFIG_FILE = "study.yaml"
CURVE_FIGURES = {metric: f"{metric}_vs_k.png" for metric in METRICS}

__all__ = [
    "Study",
    "build_figures",
    "default_baseline",
    "load_study",
    "render_markdown",
    "write_report",
]


@dataclass
class Study:
    """A study directory, read once: validated rows of results.csv and each row's metrics.json."""

    directory: Path
    rows: list[dict]
    columns: list[str]
    run_metrics: list[dict | None]  # metrics.json of rows[i], None when unreadable
    problems: list[str] = field(default_factory=list)
    config_text: str | None = None
    notes: list[RowNote] = field(default_factory=list)  # rows of results.csv ignored/corrected
    failed: list[FailedCell] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(row["method"] for row in self.rows))


def load_study(study_dir: str | os.PathLike) -> Study:
    """Read results.csv (validated, see study/results.py), the run folders' metrics.json and
    study.yaml of ``study_dir``.

    Raises EmoSetError when results.csv is missing, not a results table, or has no usable row;
    every other gap becomes a line in ``Study.problems`` or ``Study.notes``.
    """
    directory = Path(study_dir)
    table = read_results_table(directory / RESULTS_FILE, directory)
    if not table.rows:
        detail = (
            f" ({len(table.notes)} row(s) ignored, first: {table.notes[0].text()})"
            if table.notes
            else ""
        )
        raise EmoSetError(
            f"{table.path} has no usable result rows yet{detail}: wait for the "
            "first cell of the study to finish"
        )
    problems = list(table.problems)
    for column in ("seed", "run_dir", "trainable_params", *METRICS.values()):
        if column not in table.columns:
            problems.append(f"{RESULTS_FILE} has no `{column}` column; what needs it is left out")
    config_path = directory / CONFIG_FILE
    config_text = (
        config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    )
    return Study(
        directory,
        table.rows,
        table.columns,
        table.run_metrics,
        problems,
        config_text,
        notes=table.notes,
        failed=table.failed,
    )


# ---------------------------------------------------------------------------------------------
# Helpers over the rows


def _largest_k_with_metrics(study: Study, method: str, key: str):
    """The largest k of ``method`` whose runs have ``key`` in their test metrics."""
    ks = {
        row["per_class"]
        for row, metrics in zip(study.rows, study.run_metrics)
        if row["method"] == method and metrics and metrics.get("test", {}).get(key)
    }
    return max(ks, key=per_class_sort_key) if ks else None


def _reference_k(rows: Sequence[Mapping], methods: Sequence[str]):
    """The largest k every given method ran at ('all' counts as largest)."""
    shared = None
    for method in methods:
        ks = {row["per_class"] for row in rows if row["method"] == method}
        shared = ks if shared is None else shared & ks
    shared = sorted(shared or [], key=per_class_sort_key)
    return shared[-1] if shared else None


def _median(cell: Sequence[Mapping], column: str) -> float:
    values = [row.get(column) for row in cell]
    values = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


def pooled_confusion(study: Study, method: str, k) -> tuple[np.ndarray | None, list[str], int]:
    """Confusion counts of ``method`` at ``k`` summed over seeds; (None, [], 0) if none found."""
    total, names, runs = None, [], 0
    for row, metrics in zip(study.rows, study.run_metrics):
        if row["method"] != method or row["per_class"] != k or not metrics:
            continue
        test = metrics.get("test", {})
        if "confusion_matrix" not in test:
            continue
        matrix = np.asarray(test["confusion_matrix"], dtype=np.float64)
        total = matrix if total is None else total + matrix
        names = test.get("class_names") or list(EMOTIONS[: matrix.shape[0]])
        runs += 1
    return total, names, runs


def cost_table(study: Study) -> list[dict]:
    """Parameter counts and train time of each method at its largest k."""
    if "trainable_params" not in study.columns:
        return []
    table = []
    for method in study.methods:
        k = _reference_k(study.rows, [method])
        cell = [r for r in study.rows if r["method"] == method and r["per_class"] == k]
        table.append(
            {
                "method": method,
                "per_class": k,
                "trainable": _median(cell, "trainable_params"),
                "total": _median(cell, "total_params"),
                "seconds": _median(cell, "train_seconds"),
            }
        )
    return table


def _params_points(study: Study, summary: Mapping) -> list[dict]:
    """Accuracy vs trainable parameters at the largest k all trained methods share."""
    if "trainable_params" not in study.columns:
        return []
    trained = [
        m
        for m in study.methods
        if any(r["method"] == m and r["per_class"] != 0 for r in study.rows)
    ]
    k = _reference_k(study.rows, trained)
    if k is None:
        return []
    points = []
    for entry in summary["cells"]:
        if entry["metric"] != "accuracy" or entry["mean"] is None:
            continue
        zero_shot = entry["per_class"] == 0 and entry["method"] not in trained
        if entry["per_class"] != k and not zero_shot:
            continue
        cell = [
            r
            for r in study.rows
            if r["method"] == entry["method"] and r["per_class"] == entry["per_class"]
        ]
        params = 0.0 if zero_shot else _median(cell, "trainable_params")
        if not np.isfinite(params):
            continue  # parameter count not recorded: nowhere to put it on the x axis
        points.append(
            {
                **entry,
                "ci_low": entry["ci_low"] if entry["ci_low"] is not None else float("nan"),
                "ci_high": entry["ci_high"] if entry["ci_high"] is not None else float("nan"),
                "per_class": k,
                "params": params,
                "total_params": _median(cell, "total_params"),
            }
        )
    return points


# ---------------------------------------------------------------------------------------------
# Figures


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def build_figures(study: Study, summary: Mapping) -> dict[str, object]:
    """All figures of the report as ``{file name: matplotlib Figure}`` (not yet saved)."""
    colours = plots.method_colours(study.methods)
    figures: dict[str, object] = {}
    test_set = summary["test_set"]
    for metric, file_name in CURVE_FIGURES.items():
        if not any(e["metric"] == metric and e["mean"] is not None for e in summary["cells"]):
            continue
        figures[file_name] = plots_curve.plot_learning_curve(
            summary["cells"],
            summary["replicates"],
            summary.get("paired", []),
            colours,
            metric=metric,
            metric_label=METRIC_LABELS[metric],
            baseline=summary["baseline"],
            title=f"{tables.capital(METRIC_LABELS[metric])} vs training images per class",
            chance=test_set["chance"] if metric == "accuracy" else None,
            majority=test_set["majority"] if metric == "accuracy" else None,
        )
    points = _params_points(study, summary)
    if points:
        figures["accuracy_vs_params.png"] = plots.plot_metric_vs_params(
            points,
            colours,
            title=f"Test accuracy vs trainable parameters (k = {points[0]['per_class']} images "
            "per class)\nmean over seeds; error bars: 95% two-level bootstrap interval",
        )
    reliability = summary.get("reliability") or []
    if reliability:
        figures["calibration.png"] = plots.plot_reliability(
            reliability,
            colours,
            title="Reliability diagram: each method at its largest k\n"
            "seeds pooled; point area ~ images in the bin",
        )
    slices = {
        f"{entry['method']} (k = {entry['per_class']})": entry["attributes"]
        for entry in summary.get("slices") or []
        if entry["attributes"]
    }
    if slices:
        slice_colours = dict(
            zip(slices, (colours[e["method"]] for e in summary["slices"] if e["attributes"]))
        )
        figures["attribute_slices.png"] = plots.plot_slices(
            slices,
            slice_colours,
            title="Test accuracy by image attribute (seeds averaged; bars: 95% Wilson interval "
            "over the slice's images)",
        )
    for method in study.methods:
        k = _largest_k_with_metrics(study, method, "confusion_matrix")
        matrix, names, runs = pooled_confusion(study, method, k)
        if matrix is not None:
            figures[f"confusion_{_safe_name(method)}.png"] = plots.plot_confusion(
                matrix,
                names,
                title=f"{method}, k = {k}: confusion matrix, rows normalised\n"
                f"({runs} seed(s) pooled, {int(matrix.sum())} test predictions)",
            )
    figures.update(plots_time.time_figures(study.rows))
    return figures


# ---------------------------------------------------------------------------------------------
# Text


def render_markdown(study: Study, summary: Mapping, figure_names: Sequence[str]) -> str:
    """The text of report.md (figures are referenced by file name)."""
    rows, methods = study.rows, study.methods
    ks = sorted({r["per_class"] for r in rows}, key=per_class_sort_key)
    seeds = sorted({str(r.get("seed")) for r in rows})
    n_test = summary["test_set"]["n_images"]
    boot = summary["bootstrap"]
    lines = [
        f"# Scaling study report: {summary['study']}",
        "",
        (
            f"{len(rows)} finished runs: {len(methods)} method(s) ({', '.join(methods)}) x "
            f"k in {{{', '.join(map(str, ks))}}} images per class x {len(seeds)} seed(s), "
            f"scored on {n_test or 'an unknown number of'} test images. k = 0 is zero-shot; "
            "`all` is the full training split. Means are over seeds; 95% intervals cover both "
            "the spread between seeds and the test-image noise (a two-level bootstrap: "
            f"{boot['n_boot']} draws, RNG seed {boot['seed']}). Metrics are in %, differences "
            "in percentage points (pp). Every number is also in summary.json; the per-cell "
            "table in summary.csv. What each interval covers and why a number is withheld: "
            "'How to read a report' in the README."
        ),
        "",
    ]
    lines += render_missing(study)
    lines += gallery.render_lead(summary)
    lines += tables.render_notes(summary)
    lines += tables.render_withheld(summary)
    lines += render_protocol(summary["protocol"], tables.table)

    def figure(name, caption):
        if name in figure_names:
            lines.extend([f"![{caption}]({name})", ""])

    for metric, label in METRIC_LABELS.items():
        lines += tables.render_cells(summary, metric, label)
        figure(CURVE_FIGURES[metric], f"{label} vs images per class")
    lines += tables.render_other_metrics(summary)
    # Without any comparison one section says so; otherwise one section per metric.
    for metric, label in METRIC_LABELS.items():
        if summary["paired"] or metric == "accuracy":
            lines += tables.render_paired(summary, metric, label)
    for render in report_curves.SECTIONS:
        lines += render(summary)
        if render is report_curves.render_calibration:
            figure("calibration.png", "reliability diagram")
    figure("attribute_slices.png", "accuracy by attribute slice")
    lines += tables.render_cost(summary.get("cost") or [])
    figure("accuracy_vs_params.png", "accuracy vs trainable parameters")
    lines += plots_time.render_time(study.rows, figure_names)
    confusion = [n for n in figure_names if n.startswith("confusion_")]
    if confusion:
        lines += [
            "## Confusion matrices",
            "",
            "Each method at its largest k with metrics.json; seeds pooled.",
            "",
        ]
        for name in confusion:
            figure(name, name[len("confusion_") : -len(".png")])
    lines += gallery.render_rest(summary)
    if study.config_text is not None:
        lines += [
            "## Study config",
            "",
            f"<details><summary>{CONFIG_FILE}</summary>",
            "",
            "```yaml",
            study.config_text.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def write_report(
    study_dir: str | os.PathLike,
    baseline: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> Path:
    """Write ``report.md``, its PNG figures, ``summary.json`` and ``summary.csv`` into
    ``study_dir``; return the report's path.

    ``baseline``: the method the paired differences compare against (default ``linear`` when
    present, else the first trained method). ``n_boot``/``seed``: the bootstrap's size and RNG
    seed (recorded in summary.json). Raises EmoSetError for a missing/unreadable/empty
    results.csv or an unknown baseline.
    """
    study = load_study(study_dir)
    if baseline is not None and baseline not in study.methods:
        raise EmoSetError(
            f"baseline method {baseline!r} is not in {RESULTS_FILE}; choose one "
            f"of {', '.join(study.methods)}"
        )
    summary = build_summary(study, baseline=baseline, n_boot=n_boot, seed=seed)
    summary["cost"] = cost_table(study)
    summary["gallery"], galleries = gallery.build_galleries(study)
    figures = {**build_figures(study, summary), **galleries}
    text = render_markdown(study, summary, list(figures))
    files = {name: _png(fig) for name, fig in figures.items()}
    files.update({name: content.encode() for name, content in summary_files(summary).items()})
    files[REPORT_FILE] = text.encode()
    _write_together(study.directory, files)
    path = study.directory / REPORT_FILE
    logger.info("wrote %s, summary.json and %d figure(s)", path, len(figures))
    return path


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=plots.DPI)
    return buffer.getvalue()


def _write_together(directory: Path, files: Mapping[str, bytes]) -> None:
    """Every file into a temp file beside it first; only when all are written are they renamed
    over the old ones, so a full disk leaves the previous report whole (never half old, half
    new). An OSError is one EmoSetError line naming the file."""
    path = directory
    try:
        with contextlib.ExitStack() as renames:
            for name, content in files.items():
                path = directory / name
                handle = renames.enter_context(atomic_open(path, "wb"))
                handle.write(content)
                handle.flush()  # a full disk fails here, naming this file, not at the renames
    except OSError as err:
        hint = "free space" if is_disk_full(err) else "check the folder's permissions"
        raise EmoSetError(
            f"cannot write {path} ({err.strerror or err}): the report was not updated, the files "
            f"of the previous one are intact; {hint} and run `emoset-peft report {directory}` "
            "again"
        ) from None
