"""Image-level inference for a study: per-cell intervals, paired comparisons, planning.

All numbers are fractions in [0, 1]; the report prints them in percent, and differences and
half-widths in percentage points (pp).

What a cell's 95% interval covers. A cell's mean (over its R seeds) would change if the study
were rerun with other seeds AND scored on another test set of the same size. The interval
accounts for both: the seed-to-seed spread (Student-t quantile with R - 1 degrees of freedom,
with the R/(R-1) correction that plain resampling of R seeds lacks) and the test-image noise
(bootstrap over test images, the same image draw for every cell, without counting twice the
test noise already inside the seed spread); it is never narrower than the test images alone
allow, and never leaves [0, 1]. See ``emoset_peft.study.bootstrap`` for the construction. On
simulated studies it covers the true accuracy in about 93-98% of studies with 3 or 5 seeds
(tests/test_inference_coverage.py). With 1 seed it covers test-image noise only, and with 2 it
rests on a single difference: both are marked ``reliable = False`` with a note.

Paired comparisons (method - baseline, per k). Replicates are paired by their (data_seed,
train_seed) key and images by id, so what both cells share (the training subset of a data seed,
the hard images) cancels. The difference gets the same two-part interval and a two-sided p-value
(the level at which that interval touches 0; withheld with fewer than 3 independent seed units:
pairs, or with crossed seeds min(data seeds, training seeds)). Beside it: an
exact McNemar test per pair of replicates (b = images only the method got right, c = images only
the baseline got right), Holm and Benjamini-Hochberg adjusted p over all comparisons reported
(every method, k and metric), and a paired t-test over the per-replicate differences where it
means something (>= 3 independent pairs, not crossed seeds, with a spread above float noise). The t-test ignores test-image
noise, so it can be too optimistic; the two-level p-value is the primary one.

Planning: from a cell's seed spread and test-image noise, the interval half-width and the
smallest paired difference detectable with 80% power at 3/5/10/20 seeds, and the seeds needed
for +-1 pp (see ``emoset_peft.study.planning``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from emoset_peft.study.bootstrap import (
    CONFIDENCE,
    METRICS,
    make_draws,
    replicate_metric,
    seed_units,
    two_level_interval,
    two_level_p_value,
    union_keys,
    variance_parts,
)
from emoset_peft.study.planning import plan_from_parts
from emoset_peft.study.predictions import CellPredictions, StudyPredictions

Z = float(stats.norm.isf((1 - CONFIDENCE) / 2))
SPREAD_NOISE = 1e-9  # sd of per-pair differences below this is float noise, not a spread
MIN_PAIRS_FOR_P = 3


def _float(value) -> float | None:
    """A JSON-safe float: None for NaN / inf / None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def wilson_se(accuracy: float, n_images: int) -> float | None:
    """Standard error of one run's accuracy on ``n_images`` test images: the half-width of the
    95% Wilson score interval divided by 1.96 (stays sensible near 0% and 100%)."""
    if n_images < 1 or accuracy is None:
        return None
    p, n = float(accuracy), float(n_images)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return half / Z


def reliability(n_replicates: int, kind: str = "interval") -> tuple[bool, str | None]:
    """Whether a two-level interval from ``n_replicates`` can be trusted, and why not."""
    if n_replicates < 1:
        return False, "no replicates"
    if n_replicates == 1:
        return False, (
            f"1 seed: the seed-to-seed spread is unknown, so this {kind} covers "
            "test-image noise only; another seed may land outside it"
        )
    if n_replicates == 2:
        return False, (
            f"2 seeds: the seed spread rests on a single difference, so this {kind} "
            "is a rough guess (a t quantile with 1 degree of freedom makes it wide); "
            "run 3 or more seeds"
        )
    return True, None


def summarize_replicates(
    values,
    boot,
    *,
    bounds=(0.0, 1.0),
    confidence: float = CONFIDENCE,
    kind: str = "interval",
    keys=None,
) -> dict:
    """The two-level summary of one statistic from its per-replicate values [R] and their
    test-image resamples [B, R] (any statistic that averages over replicates: a metric, a
    difference, an area under a learning curve). JSON-ready dict of floats/None:
    ``mean, ci_low, ci_high, seed_sd, var_seed, var_image, share_seed, share_image,
    n_replicates, reliable, note``. ``keys`` ((data_seed, train_seed) per replicate) let a
    crossed seed design be recognised (see ``bootstrap.crossed_seed_variance``)."""
    return _summarize(values, boot, bounds, confidence, kind, keys)[0]


def _summarize(values, boot, bounds, confidence=CONFIDENCE, kind="interval", keys=None):
    """(summary dict, variance parts) -- the parts feed the planning table."""
    values = np.asarray(values, dtype=np.float64)
    n_rep = int(values.shape[-1])
    parts = variance_parts(values, boot, keys)
    low, high = two_level_interval(parts, confidence, bounds)
    seed_part = float(parts["seed_only"]) if n_rep >= 2 else None
    image_part = float(parts["image_total"])
    known = (seed_part or 0.0) + image_part
    reliable, note = reliability(n_rep, kind)
    if reliable and parts["units"] < 3:  # crossed seeds: 2 data (or training) seeds
        reliable, note = (
            False,
            (
                f"crossed seeds with only {parts['units']} data or training seeds: the spread of "
                f"that factor rests on a single difference, so this {kind} is a rough guess"
            ),
        )
    if reliable and float(high) - float(low) <= 0.0:
        reliable, note = (
            False,
            (
                f"no variation over seeds or test-image resamples (e.g. every image right, or two "
                f"methods with identical predictions), so this {kind} has no width; the test set "
                "is still a sample (for accuracy see the Wilson SE)"
            ),
        )
    summary = {
        "mean": _float(parts["mean"]),
        "ci_low": _float(low),
        "ci_high": _float(high),
        "seed_sd": _float(values.std(ddof=1)) if n_rep >= 2 else None,
        "var_seed": _float(seed_part),
        "var_image": _float(image_part),
        "share_seed": _float(seed_part / known) if seed_part is not None and known > 0 else None,
        "share_image": _float(image_part / known) if n_rep >= 2 and known > 0 else None,
        "n_replicates": n_rep,
        "reliable": reliable,
        "note": note,
    }
    return summary, parts


def cell_summary(cell: CellPredictions, labels, metric: str, boot=None, weights=None) -> dict:
    """Mean, two-level 95% interval, seed SD, Wilson SE, variance shares of one cell.

    ``boot`` is the cell's per-replicate metric on the image resamples [B, R] (computed from
    ``weights`` [B, n] when not given)."""
    return _cell_summary(cell, labels, metric, boot, weights)[0]


def _cell_summary(cell, labels, metric, boot=None, weights=None):
    values = replicate_metric(cell, labels, metric)
    if boot is None:
        boot = replicate_metric(cell, labels, metric, weights)
    entry, parts = _summarize(values, boot, (0.0, 1.0), keys=cell.replicates)
    n_images = int(np.asarray(labels).shape[0])
    return {
        "method": cell.method,
        "per_class": cell.per_class,
        "metric": metric,
        **entry,
        "n_images": n_images,
        "wilson_se": wilson_se(entry["mean"], n_images) if metric == "accuracy" else None,
        "per_replicate": [
            {"data_seed": k[0], "train_seed": k[1], "value": float(v)}
            for k, v in zip(cell.replicates, values)
        ],
    }, parts


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test of two classifiers on the same images: b = images only A got right,
    c = images only B got right; p = two-sided binomial test of b against Binomial(b+c, 1/2)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else min(1.0, 2 * float(stats.binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "p": p}


def p_withheld(keys, minimum: int = MIN_PAIRS_FOR_P) -> tuple[str, str] | None:
    """Why a statistic over the replicate ``keys`` that needs ``minimum`` independent seed units
    (a p-value across seeds: 3) is withheld, as (short words for a table cell, the sentence for
    "What this study cannot say"); None when it can be given. Crossed seeds count
    ``bootstrap.seed_units``: min(data seeds, training seeds), not the D x T pairs."""
    keys = [tuple(key) for key in keys]
    units, independent = seed_units(keys)
    if units >= minimum:
        return None
    n = len(keys)
    if independent:
        short = f"{n} pair(s)"
        return short, f"{short}: too few seeds for a p-value across seeds (needs >= {minimum})"
    n_data, n_train = len({key[0] for key in keys}), len({key[1] for key in keys})
    few = [f"{count} {name} seeds" for count, name in ((n_data, "data"), (n_train, "training"))]
    short = " and ".join(f for f, c in zip(few, (n_data, n_train)) if c < minimum)
    return short, (
        f"crossed seeds ({n_data} data x {n_train} training seeds, {n} pairs): the pairs "
        f"are not independent (every data seed shares the same training seeds), so they count "
        f"as {units} seed units, too few for a p-value across seeds (needs >= {minimum} "
        "data and training seeds)"
    )


def guarded_t_test(a_values, b_values, keys=None) -> dict:
    """Paired t-test over replicates, only where it means something; else p=None + reason.

    ``keys`` ((data_seed, train_seed) per pair): crossed seeds are not independent pairs, which
    the t-test assumes, so it is withheld for them."""
    a, b = np.asarray(a_values, float), np.asarray(b_values, float)
    n = int(a.size)
    if n < MIN_PAIRS_FOR_P:
        return {"p": None, "reason": f"{n} pair{'s' if n != 1 else ''}: too few for a t-test"}
    if keys is not None and not seed_units(keys)[1]:
        return {
            "p": None,
            "reason": (f"crossed seeds: the {n} pairs share seeds, not independent"),
        }
    if np.std(a - b, ddof=1) <= SPREAD_NOISE:
        return {
            "p": None,
            "reason": "all pairs differ by exactly the same amount: no spread to test",
        }
    return {"p": float(stats.ttest_rel(a, b).pvalue), "reason": None}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="mergesort")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def adjust_family(comparisons: list[dict]) -> list[dict]:
    """Add ``p_holm`` and ``p_bh`` to every comparison with a p-value (None elsewhere); the
    family is all the comparisons given (every method, k and metric of a report)."""
    tested = [entry for entry in comparisons if entry.get("p_value") is not None]
    p = [entry["p_value"] for entry in tested]
    for entry in comparisons:
        entry["p_holm"] = entry["p_bh"] = None
    for entry, p_holm, p_bh in zip(tested, holm(p), benjamini_hochberg(p)):
        entry["p_holm"], entry["p_bh"] = float(p_holm), float(p_bh)
    return comparisons


def compare_cells(
    cell: CellPredictions,
    baseline: CellPredictions,
    labels,
    metric: str,
    boot_cell,
    boot_baseline,
    seeds_planned=(3, 5, 10, 20),
    target_half_width: float = 0.01,
) -> dict:
    """Paired difference ``cell - baseline`` over the replicate keys both have (see module
    docstring). ``boot_*`` are the cells' per-replicate metrics on the same image resamples."""
    common = [key for key in cell.replicates if key in set(baseline.replicates)]
    head = {
        "method": cell.method,
        "baseline": baseline.method,
        "per_class": cell.per_class,
        "metric": metric,
        "n_pairs": len(common),
        "n_images": int(np.shape(labels)[0]),
    }
    if not common:
        return {
            **head,
            "diff": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "p_reason": "no seed in common",
            "p_short": "no seed in common",
            "reliable": False,
            "note": "the two cells share no (data_seed, train_seed) pair",
            "mcnemar": None,
            "t_test": {"p": None, "reason": "0 pairs: too few for a t-test"},
            "planning": None,
        }
    rows_a = [cell.replicates.index(key) for key in common]
    rows_b = [baseline.replicates.index(key) for key in common]
    values_a = replicate_metric(cell, labels, metric)[rows_a]
    values_b = replicate_metric(baseline, labels, metric)[rows_b]
    boot = np.asarray(boot_cell)[:, rows_a] - np.asarray(boot_baseline)[:, rows_b]
    entry, parts = _summarize(values_a - values_b, boot, (-1.0, 1.0), keys=common)
    withheld = p_withheld(common)
    p_value = None if withheld else float(two_level_p_value(parts))
    p_short, p_reason = withheld or (None, None)
    if p_reason:
        p_reason += " (see the per-seed McNemar tests)"
    mcnemar = None
    if metric == "accuracy":
        correct_a = cell.correct(labels)[rows_a]
        correct_b = baseline.correct(labels)[rows_b]
        mcnemar = [
            {"data_seed": key[0], "train_seed": key[1], **mcnemar_exact(a, b)}
            for key, a, b in zip(common, correct_a, correct_b)
        ]
    return {
        **head,
        "diff": entry.pop("mean"),
        **entry,
        "p_value": p_value,
        "p_reason": p_reason,
        "p_short": p_short,
        "mcnemar": mcnemar,
        "t_test": guarded_t_test(values_a, values_b, common),
        "planning": plan_from_parts(parts, seeds_planned, target_half_width, paired=True),
    }


def study_inference(
    study: StudyPredictions,
    *,
    baseline: str | None = None,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 2000,
    seed: int = 0,
    seeds_planned: Sequence[int] = (3, 5, 10, 20),
    target_half_width: float = 0.01,
) -> dict:
    """Everything above for a loaded study, as one JSON-serialisable dict:
    ``{n_boot, seed, confidence, n_images, baseline, cells, comparisons, planning, problems}``.

    ``baseline`` defaults to the first method; comparisons are made at every k the baseline
    ran. The image draws use ``seed``, so the same study always gives the same numbers."""
    out = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "confidence": CONFIDENCE,
        "n_images": len(study.image_ids),
        "baseline": None,
        "cells": [],
        "comparisons": [],
        "planning": [],
        "problems": list(study.problems),
    }
    if not study.cells:
        return out
    labels = study.labels
    draws = make_draws(len(study.image_ids), union_keys(study.cells.values()), n_boot, seed)
    methods = list(dict.fromkeys(method for method, _ in study.cells))
    out["baseline"] = baseline = baseline or methods[0]
    for metric in metrics:
        boots = {
            key: replicate_metric(cell, labels, metric, draws.image_weights)
            for key, cell in study.cells.items()
        }
        for key, cell in study.cells.items():
            entry, parts = _cell_summary(cell, labels, metric, boot=boots[key])
            out["cells"].append(entry)
            out["planning"].append(
                {
                    "method": cell.method,
                    "per_class": cell.per_class,
                    "metric": metric,
                    **plan_from_parts(parts, seeds_planned, target_half_width, paired=False),
                }
            )
        for (method, k), cell in study.cells.items():
            if method == baseline or (baseline, k) not in study.cells:
                continue
            out["comparisons"].append(
                compare_cells(
                    cell,
                    study.cells[(baseline, k)],
                    labels,
                    metric,
                    boots[(method, k)],
                    boots[(baseline, k)],
                    seeds_planned,
                    target_half_width,
                )
            )
    adjust_family(out["comparisons"])
    return out
