"""Everything a study report shows, as data: ``summary.json`` (all of it) and ``summary.csv``
(the per-cell table), written beside report.md.

``build_summary`` reads the cells' saved test predictions once, draws one two-level bootstrap
(test images jointly across all cells x seeds by key, ``study/bootstrap.py``) and hands the same
draws to every statistic, so the intervals of cells, differences and learning-curve summaries
are consistent with one another. The bootstrap count and the RNG seed are recorded: the same
study folder gives the same summary.

Metrics are fractions in [0, 1]; ``per_class`` is an int k (0 = zero-shot) or ``"all"``. A
statement the data cannot support (one seed, two seeds, too few k) is not given as a number:
its value is None and ``withheld`` holds the reason in words, which the report prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from emoset_peft.metrics import registry
from emoset_peft.study import bootstrap, calibration, curves, efficiency, fits, inference, variance
from emoset_peft.study.per_class import per_class_sort_key
from emoset_peft.study.predictions import (
    StudyPredictions,
    load_predictions,
    replicate_key,
)
from emoset_peft.study.report_protocol import protocol

FORMAT = "emoset-peft-summary/1"
N_BOOT = 2000  # joint bootstrap replicates for every interval
SEED = 0
# The registry's metrics the bootstrap resamples image by image (study/bootstrap.py): metric name
# -> results.csv column (the fallback without prediction files), and their labels. The other
# registry metrics get a table of results.csv means (``other_metrics``).
METRICS = {name: f"test_{name}" for name in bootstrap.METRICS}
METRIC_LABELS = {name: f"test {registry.get(name).display}" for name in METRICS}


class Withheld:
    """Statements the data cannot support, each with the reason in words."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, section: str, subject: str, reason: str) -> str:
        self.items.append({"section": section, "subject": subject, "reason": reason})
        return reason


def build_summary(
    study, *, baseline: str | None = None, n_boot: int = N_BOOT, seed: int = SEED
) -> dict:
    """The summary of a loaded ``report.Study`` (rows validated, metrics.json read)."""
    withheld = Withheld()
    predictions = load_predictions(study.directory, study.rows)
    draws = None
    if predictions.cells:
        keys = bootstrap.union_keys(predictions.cells.values())
        draws = bootstrap.make_draws(len(predictions.image_ids), keys, n_boot, seed)
    methods = list(dict.fromkeys(row["method"] for row in study.rows))
    baseline = baseline or default_baseline(study.rows)
    summary = {
        "format": FORMAT,
        "study": study.directory.resolve().name,
        "bootstrap": {
            "n_boot": n_boot,
            "seed": seed,
            "resamples": "test images (jointly across cells) x seeds (by key)",
        },
        "baseline": baseline,
        "methods": methods,
        "test_set": _test_set(predictions),
        "replicates": _replicates(study, predictions),
        "protocol": protocol(study.directory, study.rows, study.run_metrics),
        "rows_ignored": [vars(note) | {"text": note.text()} for note in study.notes],
        "failed_cells": [vars(cell) for cell in study.failed],
        "problems": list(study.problems) + list(predictions.problems),
    }
    summary.update(inference_sections(study, predictions, baseline, n_boot, seed, withheld))
    if draws is not None:
        summary.update(curve_summaries(predictions, draws, withheld))
        summary["calibration"] = calibration.calibration_table(predictions)
        summary["reliability"] = reliability(predictions)
        summary["variance_split"] = variance.cell_variance_splits(predictions, "accuracy")
    else:
        withheld.add(
            "curves",
            "paired comparisons, AULC, data efficiency, scaling fits, calibration",
            "no cell has a readable predictions_test.csv, which these are "
            "computed from (image by image)",
        )
    summary["slices"] = slices(study)
    summary["other_metrics"] = other_metrics(study)
    summary["withheld"] = withheld.items
    return summary


def curve_summaries(predictions: StudyPredictions, draws, withheld: Withheld) -> dict:
    """AULC (+ pairwise), data efficiency and scaling fits per metric, from one set of draws."""
    out: dict = {"aulc": {}, "efficiency": {}, "fits": {}}
    for metric, label in METRIC_LABELS.items():
        learning = curves.learning_curves(predictions, draws, metric)
        out["aulc"][metric] = curves.aulc(learning)
        out["efficiency"][metric] = efficiency.data_efficiency(learning)
        if metric == "accuracy":  # the report fits the error curve of accuracy only
            out["fits"][metric] = fits.scaling_fits(learning)
        for section, name in (("aulc", "AULC"), ("efficiency", "data efficiency")):
            reason = out[section][metric]["reason"]
            if reason:
                withheld.add(section, f"{name} ({label})", reason)
        for method, fit in out["fits"].get(metric, {"methods": {}})["methods"].items():
            if not fit["fitted"]:
                withheld.add("fits", f"{method} ({label})", f"no scaling fit: {fit['reason']}")
            elif fit["free_c"].get("b_reason"):
                withheld.add(
                    "fits", f"{method} ({label})", f"no exponent b: {fit['free_c']['b_reason']}"
                )
        for pair in out["aulc"][metric]["pairs"]:
            subject = f"{pair['a']} vs {pair['b']}"
            if pair.get("p_reason") and pair["difference"] is not None:
                withheld.add("aulc", f"{subject} AULC ({label})", f"no p-value: {pair['p_reason']}")
            if pair.get("poi_reason") and metric == "accuracy":
                reason = pair["poi_reason"]
                if not reason.startswith("crossed"):  # the usual case, said once for all pairs
                    reason = f"it needs >= {curves.MIN_PI_REPLICATES} seeds per method"
                withheld.add("aulc", subject, f"no probability of improvement: {reason}")
    return out


RELIABILITY_BINS = 15


def reliability(predictions: StudyPredictions) -> list[dict]:
    """Reliability-diagram bins of each method at its largest k >= 1 (seeds pooled)."""
    largest: dict = {}
    for (method, k), cell in predictions.cells.items():
        if k != 0 and cell.probabilities is not None:
            largest[method] = (method, k)  # cells are ordered by k, "all" last
    out = []
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    for method, k in largest.values():
        probs = predictions.cells[(method, k)].probabilities.astype(np.float64)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        confidence = probs.max(axis=-1).ravel()
        correct = (probs.argmax(axis=-1) == predictions.labels[None, :]).ravel()
        which = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, RELIABILITY_BINS - 1)
        count = np.bincount(which, minlength=RELIABILITY_BINS)
        conf_sum = np.bincount(which, confidence, RELIABILITY_BINS)
        hit_sum = np.bincount(which, correct.astype(np.float64), RELIABILITY_BINS)
        nonzero = np.maximum(count, 1)
        ece = float(np.abs(hit_sum - conf_sum).sum() / confidence.size)
        out.append(
            {
                "method": method,
                "per_class": k,
                "ece": ece,
                "bins": [
                    {
                        "low": float(edges[i]),
                        "high": float(edges[i + 1]),
                        "count": int(count[i]),
                        "confidence": float(conf_sum[i] / nonzero[i]),
                        "accuracy": float(hit_sum[i] / nonzero[i]),
                    }
                    for i in range(RELIABILITY_BINS)
                ],
            }
        )
    return out


def slices(study) -> list[dict]:
    """Attribute slices of each method at its largest k with slices in metrics.json, with
    Wilson intervals over the slice's test images (``calibration.slice_table``)."""
    out = []
    for method in dict.fromkeys(row["method"] for row in study.rows):
        by_k: dict = {}
        for row, metrics in zip(study.rows, study.run_metrics):
            found = ((metrics or {}).get("test") or {}).get("slices")
            if row["method"] == method and found:
                by_k.setdefault(row["per_class"], []).append(found)
        if not by_k:
            continue
        k = max(by_k, key=per_class_sort_key)
        out.append(
            {"method": method, "per_class": k, "attributes": calibration.slice_table(by_k[k])}
        )
    return out


def default_baseline(rows: Sequence[Mapping]) -> str:
    """``linear`` (the linear probe) when the study has it, else the first method that trains."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    if "linear" in methods:
        return "linear"
    trained = [m for m in methods if any(r["method"] == m and r["per_class"] != 0 for r in rows)]
    return (trained or methods)[0]


def _test_set(predictions: StudyPredictions) -> dict:
    labels = predictions.labels
    if labels.size == 0:
        return {"n_images": None, "class_names": [], "chance": None, "majority": None}
    counts = np.bincount(labels, minlength=len(predictions.class_names))
    return {
        "n_images": int(labels.size),
        "class_names": list(predictions.class_names),
        "chance": 1.0 / len(predictions.class_names),
        "majority": float(counts.max() / labels.size),
        "majority_class": predictions.class_names[int(counts.argmax())],
    }


def _replicates(study, predictions: StudyPredictions) -> list[dict]:
    """Each replicate's metrics per cell (the thin lines of the learning-curve figure)."""
    out = []
    for (method, k), cell in predictions.cells.items():
        values = {
            metric: bootstrap.replicate_metric(cell, predictions.labels, metric)
            for metric in METRICS
        }
        for index, (data_seed, train_seed) in enumerate(cell.replicates):
            out.append(
                {
                    "method": method,
                    "per_class": k,
                    "data_seed": data_seed,
                    "train_seed": train_seed,
                    **{metric: float(values[metric][index]) for metric in METRICS},
                }
            )
    for row in study.rows:  # cells without prediction files: results.csv values
        if (row["method"], row["per_class"]) in predictions.cells:
            continue
        data_seed, train_seed = replicate_key(row)
        out.append(
            {
                "method": row["method"],
                "per_class": row["per_class"],
                "data_seed": data_seed,
                "train_seed": train_seed,
                **{metric: _float(row.get(column)) for metric, column in METRICS.items()},
            }
        )
    return out


def inference_sections(
    study, predictions: StudyPredictions, baseline: str, n_boot: int, seed: int, withheld: Withheld
) -> dict:
    """Per-cell intervals, paired comparisons (Holm/BH over the whole family) and planning from
    ``study/inference.py``, in the summary's shape; cells without prediction files get their
    mean and seed SD from results.csv and no interval."""
    result = inference.study_inference(
        predictions, baseline=baseline, metrics=tuple(METRICS), n_boot=n_boot, seed=seed
    )
    found = {(e["method"], e["per_class"], e["metric"]): e for e in result["cells"]}
    cells = []
    for metric, label in METRIC_LABELS.items():
        for method, k in _cells(study.rows):
            subject = f"{method} k={k} ({label})"
            entry = found.get((method, k, metric))
            if entry is None:
                cells.append(
                    _rows_only_cell(
                        study,
                        method,
                        k,
                        metric,
                        withheld.add(
                            "cells",
                            subject,
                            "no predictions_test.csv: its mean comes from results.csv "
                            "and it has no interval (the test-image noise is unknown)",
                        ),
                    )
                )
                continue
            test_se = entry.get("wilson_se")
            if test_se is None and entry.get("var_image") is not None:
                # macro-F1 has no binomial SE: the bootstrap SE over test images instead
                test_se = math.sqrt(entry["var_image"] * entry["n_replicates"])
            if not entry["reliable"] and entry["note"]:
                withheld.add("cells", subject, entry["note"])
            cells.append(
                {
                    "method": method,
                    "per_class": k,
                    "metric": metric,
                    "mean": entry["mean"],
                    "ci_low": entry["ci_low"],
                    "ci_high": entry["ci_high"],
                    "seed_sd": entry["seed_sd"],
                    "test_se": test_se,
                    "share_seed": entry["share_seed"],
                    "share_test": entry["share_image"],
                    "n_seeds": entry["n_replicates"],
                    "n_test": entry["n_images"],
                    "reliable": entry["reliable"],
                    "note": entry["note"],
                }
            )
    paired = []
    for entry in result["comparisons"]:
        t_test = entry.get("t_test") or {}
        subject = (
            f"{entry['method']} vs {entry['baseline']} k="
            f"{entry['per_class']} ({METRIC_LABELS[entry['metric']]})"
        )
        if entry["p_value"] is None and entry.get("p_reason"):
            withheld.add("paired", subject, f"no p-value: {entry['p_reason']}")
        elif t_test.get("p") is None and str(t_test.get("reason")).startswith("crossed"):
            withheld.add("paired", subject, f"no paired t-test: {t_test['reason']}")
        paired.append(
            {
                "method": entry["method"],
                "baseline": entry["baseline"],
                "per_class": entry["per_class"],
                "metric": entry["metric"],
                "n_pairs": entry["n_pairs"],
                "diff": entry["diff"],
                "ci_low": entry["ci_low"],
                "ci_high": entry["ci_high"],
                "p_boot": entry["p_value"],
                "p_reason": entry.get("p_reason"),
                "p_short": entry.get("p_short"),
                "p_holm": entry.get("p_holm"),
                "p_bh": entry.get("p_bh"),
                "mcnemar": entry.get("mcnemar") or [],
                "t_p": t_test.get("p"),
                "t_note": t_test.get("reason"),
                "reliable": entry.get("reliable"),
                "note": entry.get("note"),
                "planning": entry.get("planning"),
            }
        )
    planning = [e for e in result["planning"] if e["metric"] == "accuracy"]
    for entry in planning:
        if entry["by_seeds"] is None and str(entry["note"]).startswith("crossed"):
            withheld.add(
                "planning",
                f"{entry['method']} k={entry['per_class']}",
                f"no projection: {entry['note']}",
            )
    return {"cells": cells, "paired": paired, "planning": planning}


def _rows_only_cell(study, method, k, metric, note) -> dict:
    values = [
        _float(r.get(METRICS[metric]))
        for r in study.rows
        if r["method"] == method and r["per_class"] == k
    ]
    values = np.array([v for v in values if math.isfinite(v)])
    return {
        "method": method,
        "per_class": k,
        "metric": metric,
        "mean": float(values.mean()) if values.size else None,
        "ci_low": None,
        "ci_high": None,
        "seed_sd": float(values.std(ddof=1)) if values.size > 1 else None,
        "test_se": None,
        "share_seed": None,
        "share_test": None,
        "n_seeds": int(values.size),
        "n_test": None,
        "reliable": False,
        "note": note,
    }


def _cells(rows: Sequence[Mapping]) -> list[tuple]:
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    cells = {(r["method"], r["per_class"]) for r in rows}
    return sorted(cells, key=lambda c: (order[c[0]], per_class_sort_key(c[1])))


def other_metrics(study) -> list[dict]:
    """Per cell, the seed mean and SD of each registry metric outside ``METRICS`` (balanced,
    valence and top-2 accuracy, ECE, ...), from results.csv; None where no row has the value
    (an older study without that column)."""
    names = [name for name in registry.METRICS if name not in METRICS]
    cells: dict = {}
    for row in study.rows:
        cells.setdefault((row["method"], row["per_class"]), []).append(row)
    methods = list(dict.fromkeys(row["method"] for row in study.rows))
    out = []
    for (method, k), rows in sorted(
        cells.items(),
        key=lambda item: (
            methods.index(item[0][0]),
            per_class_sort_key(item[0][1]),
        ),
    ):
        entry = {"method": method, "per_class": k, "n_seeds": len(rows)}
        for name in names:
            values = np.array([_float(row.get(f"test_{name}")) for row in rows])
            values = values[np.isfinite(values)]
            entry[name] = float(values.mean()) if values.size else None
            entry[f"{name}_sd"] = float(values.std(ddof=1)) if values.size > 1 else None
        out.append(entry)
    return out


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
