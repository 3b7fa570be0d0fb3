"""``report.md`` and its figures for a finished (or half-finished) scaling study.

Input: a study directory holding ``results.csv`` (one row per finished cell), optionally
``study.yaml`` (its config) and the run folders named in the ``run_dir`` column, each with a
``metrics.json``. Output, beside results.csv: ``report.md`` plus PNG figures.

The report is meant to be read while a study is still running, so anything missing (a run
folder, a column, a second seed) is listed under "Problems found" instead of stopping it.
Only an absent or empty results.csv is an error.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.study import plots
from emoset_peft.study.stats import (
    ALL, data_efficiency, fit_power_law, group_rows, methods_in_order, paired_comparisons,
    parse_per_class, summarize_results, to_float,
)
from emoset_peft.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
REPORT_FILE = "report.md"
CONFIG_FILE = "study.yaml"
REQUIRED_COLUMNS = ("method", "per_class", "test_accuracy")
# Metric columns of results.csv shown in the report, with their names in tables and figures.
METRICS = {
    "test_accuracy": "test accuracy",
    "test_macro_f1": "test macro-F1",
    "test_balanced_accuracy": "test balanced accuracy",
    "test_valence_accuracy": "test valence accuracy (2-class)",
}
MAX_PROBLEMS_LISTED = 30  # a study missing hundreds of run folders should not bury the tables
POWER_LAW_BOOTSTRAP = 200  # refits on resampled seeds for the interval of the exponent b


@dataclass
class Study:
    """A study directory, read once: rows of results.csv and each row's metrics.json."""

    directory: Path
    rows: list[dict]
    columns: list[str]
    run_metrics: list[dict | None]  # metrics.json of rows[i], None when unreadable
    problems: list[str] = field(default_factory=list)
    config_text: str | None = None
    cache: dict = field(default_factory=dict)  # analyses shared by the figures and the text

    @property
    def methods(self) -> list[str]:
        return methods_in_order(self.rows)


def load_study(study_dir: str | os.PathLike) -> Study:
    """Read results.csv, the run folders' metrics.json and study.yaml of ``study_dir``.

    Raises EmoSetError when results.csv is missing, empty or lacks the method/per_class/
    test_accuracy columns; every other gap becomes a line in ``Study.problems``.
    """
    directory = Path(study_dir)
    results_path = directory / RESULTS_FILE
    if not results_path.is_file():
        raise EmoSetError(f"{results_path} not found: run `emoset-peft study` first, or pass "
                          "the folder that holds results.csv")
    with open(results_path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        raw_rows = list(reader)
        columns = list(reader.fieldnames or [])
    if not raw_rows:
        raise EmoSetError(f"{results_path} has no result rows yet: wait for the first cell of "
                          "the study to finish")
    missing_columns = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing_columns:
        raise EmoSetError(f"{results_path} lacks the column(s) {', '.join(missing_columns)}; "
                          f"it has {', '.join(columns)}")

    problems: list[str] = []
    rows: dict[tuple, dict] = {}  # the last row of a repeated cell wins (a re-run after resume)
    for line, row in enumerate(raw_rows, start=2):
        try:
            per_class = parse_per_class(row["per_class"])
        except (TypeError, ValueError):
            problems.append(f"{RESULTS_FILE} line {line}: per_class {row['per_class']!r} is "
                            "neither an integer nor 'all'; row skipped")
            continue
        if not row.get("method"):
            problems.append(f"{RESULTS_FILE} line {line}: no method; row skipped")
            continue
        if row.get("status") == "failed":  # training diverged: no metrics to count
            problems.append(f"{RESULTS_FILE} line {line}: cell {row['method']} k={per_class} "
                            f"seed={row.get('seed')} failed ({row.get('error')}); left out")
            continue
        key = (row["method"], per_class, row.get("seed"), row.get("data_seed"))
        if key in rows:
            problems.append(f"{RESULTS_FILE} line {line}: repeats the cell {row['method']} "
                            f"k={per_class} seed={row.get('seed')}; the later row is used")
        rows[key] = {**row, "per_class": per_class}
    rows_list = list(rows.values())
    if not rows_list:
        raise EmoSetError(f"{results_path} has no usable rows (see per_class values)")

    for column in ("seed", "run_dir", "trainable_params", *METRICS):
        if column not in columns:
            problems.append(f"{RESULTS_FILE} has no `{column}` column; what needs it is left out")

    run_metrics = [_read_run_metrics(directory, row, problems) for row in rows_list]
    config_path = directory / CONFIG_FILE
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    return Study(directory, rows_list, columns, run_metrics, problems, config_text)


def _read_run_metrics(directory: Path, row: Mapping, problems: list[str]) -> dict | None:
    run_dir = row.get("run_dir")
    if not run_dir:
        return None
    path = directory / run_dir / "metrics.json"  # run_dir may also be absolute
    shown = path.relative_to(directory) if path.is_relative_to(directory) else path
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{shown} is missing (run {row['method']} k={row['per_class']} "
                        f"seed={row.get('seed')}); its confusion matrix and slices are left out")
        return None
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{shown} could not be read ({err})")
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test", {}), dict):
        problems.append(f"{shown} is not a metrics object with a `test` mapping; ignored")
        return None
    return metrics


# ---------------------------------------------------------------------------------------------
# Formatting


def _pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}" if _ok(value) else "n/a"


def _ok(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ci(entry: Mapping, digits: int = 2) -> str:
    if not (_ok(entry["ci_low"]) and _ok(entry["ci_high"])):
        return "n/a"
    return f"[{_pct(entry['ci_low'], digits)}, {_pct(entry['ci_high'], digits)}]"


def _mean_std(entry: Mapping) -> str:
    std = f" ± {_pct(entry['std'])}" if _ok(entry["std"]) else ""
    return _pct(entry["mean"]) + std


def _k_label(k) -> str:
    return "0 (zero-shot)" if k == 0 else str(k)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _params(value) -> str:
    value = to_float(value)
    if not _ok(value):
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{int(value)}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]  # str.capitalize would turn "macro-F1" into "macro-f1"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


# ---------------------------------------------------------------------------------------------
# Analyses


def default_baseline(rows: Sequence[Mapping]) -> str:
    """``linear`` (the linear probe) when the study has it, else the first method that trains."""
    methods = methods_in_order(rows)
    if "linear" in methods:
        return "linear"
    trained = [m for m in methods if any(r["method"] == m and r["per_class"] != 0 for r in rows)]
    return (trained or methods)[0]


def _largest_k(rows: Sequence[Mapping], method: str):
    ks = {row["per_class"] for row in rows if row["method"] == method}
    return max(ks, key=lambda k: (1, 0) if k == ALL else (0, k)) if ks else None


def _largest_k_with_metrics(study: "Study", method: str, key: str):
    """The largest k of ``method`` whose runs have ``key`` in their test metrics."""
    ks = {row["per_class"] for row, metrics in zip(study.rows, study.run_metrics)
          if row["method"] == method and metrics and metrics.get("test", {}).get(key)}
    return max(ks, key=lambda k: (1, 0) if k == ALL else (0, k)) if ks else None


def _reference_k(rows: Sequence[Mapping], methods: Sequence[str]):
    """The k every trained method ran at that is largest ('all' first): for cross-method plots."""
    shared = None
    for method in methods:
        ks = {row["per_class"] for row in rows if row["method"] == method}
        shared = ks if shared is None else shared & ks
    shared = sorted(shared or [], key=lambda k: (1, 0) if k == ALL else (0, k))
    return shared[-1] if shared else None


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


def pooled_slices(study: Study, method: str, k) -> dict[str, dict[str, dict]]:
    """Slice accuracy of ``method`` at ``k``, pooled over seeds (weighted by slice size).

    Returns ``{attribute: {slice: {n, accuracy}}}`` with n the mean image count per run; scenes
    keep the five most frequent over the pooled runs.
    """
    correct: dict[tuple[str, str], float] = {}
    count: dict[tuple[str, str], float] = {}
    runs: dict[tuple[str, str], int] = {}
    for row, metrics in zip(study.rows, study.run_metrics):
        if row["method"] != method or row["per_class"] != k or not metrics:
            continue
        for attribute, by_slice in (metrics.get("test", {}).get("slices") or {}).items():
            for name, entry in by_slice.items():
                key = (attribute, str(name))
                correct[key] = correct.get(key, 0.0) + entry["accuracy"] * entry["n"]
                count[key] = count.get(key, 0.0) + entry["n"]
                runs[key] = runs.get(key, 0) + 1
    pooled: dict[str, dict[str, dict]] = {}
    for key in sorted(count, key=lambda key: -count[key] if key[0] == "scene" else 0):
        attribute, name = key
        if count[key] <= 0 or (attribute == "scene" and len(pooled.get("scene", {})) >= 5):
            continue
        pooled.setdefault(attribute, {})[name] = {
            "n": count[key] / runs[key], "accuracy": correct[key] / count[key]}
    return pooled


def _chance(study: Study) -> float:
    for metrics in study.run_metrics:
        names = (metrics or {}).get("test", {}).get("class_names")
        if names:
            return 1.0 / len(names)
    return 1.0 / len(EMOTIONS)


# ---------------------------------------------------------------------------------------------
# The report


def build_figures(study: Study) -> dict[str, object]:
    """All figures of the report as ``{file name: matplotlib Figure}`` (not yet saved)."""
    rows, methods = study.rows, study.methods
    colours = plots.method_colours(methods)
    figures: dict[str, object] = {}
    chance = _chance(study)
    for metric, file_name in (("test_accuracy", "accuracy_vs_k.png"),
                              ("test_macro_f1", "macro_f1_vs_k.png")):
        if metric not in study.columns:
            continue
        figures[file_name] = plots.plot_metric_vs_k(
            summarize_results(rows, metric), colours, metric_label=METRICS[metric],
            title=f"{_capital(METRICS[metric])} vs training images per class "
                  "(mean over seeds)",
            chance=chance if metric == "test_accuracy" else None,
        )

    params_points = _params_points(study)
    if params_points:
        k = params_points[0]["per_class"]
        figures["accuracy_vs_params.png"] = plots.plot_metric_vs_params(
            params_points, colours,
            title=f"Test accuracy vs trainable parameters (k = {k} images per class)\n"
                  "mean over seeds; error bars: 95% t-interval",
        )

    points, fits = _power_law_inputs(study)
    if points:
        figures["power_law.png"] = plots.plot_power_law(
            points, fits, colours,
            title="Test error vs training images per class (dots: runs, lines: fits)")

    for method in methods:
        k = _largest_k_with_metrics(study, method, "confusion_matrix")
        matrix, names, runs = pooled_confusion(study, method, k)
        if matrix is not None:
            figures[f"confusion_{_safe_name(method)}.png"] = plots.plot_confusion(
                matrix, names,
                title=f"{method}, k = {k}: confusion matrix, rows normalised\n"
                      f"({runs} seed(s) pooled, {int(matrix.sum())} test predictions)",
            )

    slices = {m: s for m in methods
              if (s := pooled_slices(study, m, _largest_k_with_metrics(study, m, "slices")))}
    if slices:
        figures["attribute_slices.png"] = plots.plot_slices(
            slices, colours,
            title="Test accuracy by image attribute (each method at its largest k with metrics, "
                  "seeds pooled)")
    return figures


def _params_points(study: Study) -> list[dict]:
    rows = study.rows
    if "trainable_params" not in study.columns:
        return []
    trained = [m for m in study.methods if any(r["method"] == m and r["per_class"] != 0
                                               for r in rows)]
    k = _reference_k(rows, trained)
    if k is None:
        return []
    points = []
    for entry in summarize_results(rows, "test_accuracy"):
        if entry["per_class"] != k and not (entry["per_class"] == 0
                                            and entry["method"] not in trained):
            continue
        cell = [r for r in rows if r["method"] == entry["method"]
                and r["per_class"] == entry["per_class"]]
        # A zero-shot method trains nothing: drawn as a reference line, not on the log axis.
        params = 0.0 if entry["per_class"] == 0 else _median(cell, "trainable_params")
        total = _median(cell, "total_params")
        if not _ok(params):
            continue  # parameter count not recorded: nowhere to put it on the x axis
        points.append({**entry, "per_class": k, "params": params, "total_params": total})
    return points


def _median(cell: Sequence[Mapping], column: str) -> float:
    values = [to_float(r.get(column)) for r in cell]
    values = [v for v in values if _ok(v)]
    return float(np.median(values)) if values else float("nan")


def _power_law_inputs(study: Study):
    """Per method: (k, error) of every run at k >= 1, and its power-law fit (computed once)."""
    if "power_law" in study.cache:
        return study.cache["power_law"]
    points, fits = {}, {}
    for method in study.methods:
        cell = [r for r in study.rows if r["method"] == method
                and r["per_class"] not in (0, ALL) and _ok(to_float(r["test_accuracy"]))]
        if not cell:
            continue
        ks = [float(r["per_class"]) for r in cell]
        errors = [1.0 - to_float(r["test_accuracy"]) for r in cell]
        seeds = [r.get("data_seed") or r.get("seed") for r in cell]
        points[method] = (ks, errors)
        fits[method] = fit_power_law(ks, errors, seeds=seeds, n_bootstrap=POWER_LAW_BOOTSTRAP)
    study.cache["power_law"] = points, fits
    return points, fits


def render_markdown(study: Study, figure_names: Sequence[str], baseline: str | None = None,
                    fraction: float = 0.9) -> str:
    """The text of report.md (figures are referenced by file name)."""
    rows, methods = study.rows, study.methods
    ks = sorted({r["per_class"] for r in rows}, key=lambda k: (1, 0) if k == ALL else (0, k))
    seeds = sorted({str(r.get("seed")) for r in rows})
    lines = [f"# Scaling study report: {study.directory.resolve().name}", "",
             f"{len(rows)} finished runs: {len(methods)} method(s) ({', '.join(methods)}) x "
             f"k in {{{', '.join(map(str, ks))}}} images per class x {len(seeds)} seed(s). "
             "k = 0 is zero-shot; `all` is the full training split. Means are over seeds; "
             "intervals are two-sided 95% Student-t intervals (n/a with a single seed). "
             "Accuracies are in %.", ""]

    problems = []
    single = [f"{m} k={k}" for (m, k), group in group_rows(rows).items() if len(group) < 2]
    if single:
        problems.append(f"only one seed for {len(single)} cell(s) ({', '.join(single[:8])}"
                        f"{', ...' if len(single) > 8 else ''}): no spread or interval there")
    problems += study.problems
    if problems:
        shown = problems[:MAX_PROBLEMS_LISTED]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        lines += ["## Problems found", ""] + [f"- {p}" for p in shown] + [""]

    def figure(name, caption):
        if name in figure_names:
            lines.extend([f"![{caption}]({name})", ""])

    for metric, name in (("test_accuracy", "accuracy_vs_k.png"),
                         ("test_macro_f1", "macro_f1_vs_k.png")):
        if metric not in study.columns:
            continue
        lines += [f"## {_capital(METRICS[metric])}", ""]
        lines += _table(["method", "k", "seeds", "mean ± std", "95% CI"], [
            [e["method"], _k_label(e["per_class"]), e["n"], _mean_std(e), _ci(e)]
            for e in summarize_results(rows, metric)])
        figure(name, f"{METRICS[metric]} vs images per class")

    others = [m for m in ("test_balanced_accuracy", "test_valence_accuracy") if m in study.columns]
    if others:
        lines += ["## Other metrics (mean ± std)", ""]
        summaries = [summarize_results(rows, m) for m in others]
        lines += _table(["method", "k", *[METRICS[m] for m in others]], [
            [entries[0]["method"], _k_label(entries[0]["per_class"]),
             *[_mean_std(e) for e in entries]] for entries in zip(*summaries)])

    lines += _cost_section(study)
    figure("accuracy_vs_params.png", "accuracy vs trainable parameters")
    lines += _paired_section(study, baseline)
    lines += _power_law_section(study)
    figure("power_law.png", "test error vs images per class with power-law fits")
    lines += _efficiency_section(study, fraction)

    confusion = [n for n in figure_names if n.startswith("confusion_")]
    if confusion:
        lines += ["## Confusion matrices", "",
                  "Each method at its largest k with metrics.json; seeds pooled.", ""]
        for name in confusion:
            figure(name, name[len("confusion_"):-len(".png")])
    if "attribute_slices.png" in figure_names:
        lines += ["## Accuracy by image attribute", "",
                  "Slices from EmoSet's annotations: facial expression and human action "
                  "annotated or not, brightness low (<0.4) / mid / high (>=0.7), and the five "
                  "most frequent scenes. Seeds are pooled, weighted by slice size.", ""]
        figure("attribute_slices.png", "accuracy by attribute slice")
    else:
        lines += ["No per-attribute slices were found in the runs' metrics.json.", ""]

    if study.config_text is not None:
        lines += ["## Study config", "", f"<details><summary>{CONFIG_FILE}</summary>", "",
                  "```yaml", study.config_text.rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


def _cost_section(study: Study) -> list[str]:
    if "trainable_params" not in study.columns:
        return []
    table = []
    for method in study.methods:
        k = _largest_k(study.rows, method)
        cell = [r for r in study.rows if r["method"] == method and r["per_class"] == k]
        trainable, total = _median(cell, "trainable_params"), _median(cell, "total_params")
        seconds = [to_float(r.get("train_seconds")) for r in cell]
        seconds = [s for s in seconds if _ok(s)]
        share = f"{trainable / total:.3%}" if _ok(total) and total > 0 and _ok(trainable) \
            else "n/a"
        table.append([method, _params(trainable), _params(total), share, k,
                      f"{np.mean(seconds):.1f}" if seconds else "n/a"])
    return ["## Cost", ""] + _table(
        ["method", "trainable params", "total params", "trainable share", "k",
         "mean train time at k (s)"], table)


def _paired_section(study: Study, baseline: str | None) -> list[str]:
    baseline = baseline or default_baseline(study.rows)
    if baseline not in study.methods:
        raise EmoSetError(f"baseline method {baseline!r} is not in {RESULTS_FILE}; choose one "
                          f"of {', '.join(study.methods)}")
    comparisons = paired_comparisons(study.rows, baseline, "test_accuracy")
    lines = [f"## Paired differences vs `{baseline}` (test accuracy)", "",
             "Difference = method - baseline in percentage points, paired on the data seed "
             "(the same training images); p from a paired t-test.", ""]
    if not comparisons:
        return lines + ["No other method shares a k with the baseline.", ""]
    return lines + _table(["method", "k", "pairs", "mean difference (pp)", "95% CI", "p-value"], [
        [c["method"], _k_label(c["per_class"]), c["n"], _pct(c["mean_diff"]), _ci(c),
         f"{c['p_value']:.3g}" if _ok(c["p_value"]) else "n/a"] for c in comparisons])


def _power_law_section(study: Study) -> list[str]:
    _, fits = _power_law_inputs(study)
    lines = ["## Power-law fits", "",
             "error(k) = a · k^-b + c fitted to the test error (1 - accuracy) of every run at "
             "k >= 1; c is the error left with unlimited data (fixed at 0 with fewer than 4 "
             "distinct k). ± is the standard error from the fit's covariance; the bootstrap "
             f"interval of b resamples whole seeds ({POWER_LAW_BOOTSTRAP} refits).", ""]
    if not fits:
        return lines + ["No runs with k >= 1.", ""]
    table = []
    for method, fit in fits.items():
        if not fit["ok"]:
            table.append([method, "no fit", "", "", "", "", "", fit["n_points"], fit["reason"]])
            continue
        se = lambda v, digits=3: f" ± {v:.{digits}f}" if _ok(v) else ""  # noqa: E731
        boot = f"[{fit['b_boot_low']:.3f}, {fit['b_boot_high']:.3f}]" \
            if _ok(fit["b_boot_low"]) else "n/a"
        c_text = f"{_pct(fit['c'])}{' ± ' + _pct(fit['c_se']) if _ok(fit['c_se']) else ''}"
        table.append([method, fit["model"], f"{fit['a']:.3f}{se(fit['a_se'])}",
                      f"{fit['b']:.3f}{se(fit['b_se'])}", boot, c_text, _pct(fit["rmse"]),
                      fit["n_points"], fit["reason"] or ""])
    return lines + _table(["method", "model", "a", "b", "b 95% bootstrap", "c (%)",
                           "RMSE (pp)", "runs", "note"], table)


def _efficiency_section(study: Study, fraction: float) -> list[str]:
    lines = [f"## Data efficiency ({fraction:.0%} of full-data accuracy)", "",
             f"Smallest k at which the mean test accuracy reaches {fraction:.0%} of the method's "
             "accuracy on the full training split (`all`), or of its largest k when it has no "
             "`all` runs; interpolated linearly in log2 k.", ""]
    summary = summarize_results(study.rows, "test_accuracy")
    table = []
    for method in study.methods:
        means = {e["per_class"]: e["mean"] for e in summary if e["method"] == method}
        curve = {k: v for k, v in means.items() if k not in (0, ALL)}
        if not curve:
            continue
        reference = ALL if ALL in means else max(curve)
        k_needed = data_efficiency(curve, means[reference], fraction)
        table.append([method, "all" if reference == ALL else f"k = {reference}",
                      _pct(means[reference]), _pct(fraction * means[reference]),
                      f"{k_needed:.1f}" if k_needed is not None else "not reached"])
    if not table:
        return lines + ["No runs with k >= 1.", ""]
    return lines + _table(["method", "reference", "reference accuracy", "target",
                           "k needed"], table)


def write_report(study_dir: str | os.PathLike, baseline: str | None = None,
                 fraction: float = 0.9) -> Path:
    """Write ``report.md`` and its PNG figures into ``study_dir``; return the report's path.

    ``baseline``: the method the paired differences compare against (default ``linear`` when
    present, else the first trained method). ``fraction``: the share of full-data accuracy used
    by the data-efficiency table. Raises EmoSetError for a missing/empty results.csv or an
    unknown baseline.
    """
    study = load_study(study_dir)
    figures = build_figures(study)
    text = render_markdown(study, list(figures), baseline=baseline, fraction=fraction)
    for name, fig in figures.items():
        fig.savefig(study.directory / name, dpi=plots.DPI)
    path = study.directory / REPORT_FILE
    atomic_write_text(path, text)
    logger.info("wrote %s and %d figure(s)", path, len(figures))
    return path
