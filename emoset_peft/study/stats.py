"""Statistics for scaling studies: intervals over seeds, paired tests, power-law fits.

A study repeats each (method, images-per-class k) cell over a handful of seeds, so every
interval here is a Student-t interval (not mean +- 1.96 sigma, which is far too narrow for 3-5
seeds). Missing values (None, "", NaN) are dropped before any computation. Quantities that are
undefined for the data at hand (the spread of a single seed, a fit with too few points) come
back as NaN (floats) or ``ok=False`` with a reason -- these functions never raise on small data.

Rows are dicts as read from ``results.csv`` by ``csv.DictReader``: every value may be a string.
``per_class`` is an int k >= 0 (0 = zero-shot) or ``"all"`` (the full training split).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
ALL = "all"  # per_class value of a cell trained on the whole training split

NAN = float("nan")
MIN_BOOTSTRAP_SEEDS = 3  # fewer seeds cannot say how much the fit varies between seeds


# ---------------------------------------------------------------------------------------------
# Parsing rows


def to_float(value) -> float:
    """A float from a CSV cell; NaN for None, "" or text that is not a number."""
    if value is None:
        return NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def parse_per_class(value) -> int | str:
    """``per_class`` as an int k, or ``"all"``. Raises ValueError for anything else."""
    text = str(value).strip().lower()
    if text == ALL:
        return ALL
    number = float(text)
    if number < 0 or number != int(number):
        raise ValueError(f"per_class must be an integer >= 0 or 'all', got {value!r}")
    return int(number)


def per_class_sort_key(k: int | str) -> tuple[int, int]:
    """Sort ints ascending with ``"all"`` last."""
    return (1, 0) if k == ALL else (0, int(k))


def _finite(values: Iterable) -> np.ndarray:
    array = np.array([to_float(v) for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def _pair_key(row: Mapping) -> str:
    """The seed that decides which images a cell trained on: ``data_seed``, else ``seed``."""
    data_seed = row.get("data_seed")
    if data_seed not in (None, ""):
        return str(data_seed)
    return str(row.get("seed", ""))


def methods_in_order(rows: Sequence[Mapping]) -> list[str]:
    """Method names in order of first appearance (the order a study config lists them)."""
    return list(dict.fromkeys(str(row["method"]) for row in rows))


# ---------------------------------------------------------------------------------------------
# Intervals over seeds


def t_interval(
    mean: float, std: float, n: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Student-t interval for a mean of ``n`` values with sample std ``std`` (ddof=1).

    NaN for n < 2 (the spread of a single value is unknown); (mean, mean) when std is 0.
    """
    if n < 2 or not math.isfinite(std):
        return NAN, NAN
    half_width = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / math.sqrt(n)
    return float(mean - half_width), float(mean + half_width)


def summarize(values: Iterable, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample std (ddof=1), n and a t-based ``confidence`` interval of the mean.

    Missing values are dropped. With n = 1 the std and the interval are NaN (one seed says
    nothing about the spread); with n = 0 everything is NaN and n is 0.
    """
    array = _finite(values)
    n = int(array.size)
    mean = float(array.mean()) if n else NAN
    std = float(array.std(ddof=1)) if n >= 2 else NAN
    ci_low, ci_high = t_interval(mean, std, n, confidence)
    return {"mean": mean, "std": std, "n": n, "ci_low": ci_low, "ci_high": ci_high}


def group_rows(rows: Sequence[Mapping]) -> dict[tuple[str, int | str], list[Mapping]]:
    """Rows grouped by (method, per_class), methods in order of appearance, k ascending."""
    groups: dict[tuple[str, int | str], list[Mapping]] = {}
    order = {method: index for index, method in enumerate(methods_in_order(rows))}
    for row in rows:
        key = (str(row["method"]), parse_per_class(row["per_class"]))
        groups.setdefault(key, []).append(row)
    ordered = sorted(groups, key=lambda key: (order[key[0]], per_class_sort_key(key[1])))
    return {key: groups[key] for key in ordered}


def summarize_results(rows: Sequence[Mapping], metric: str = "test_accuracy") -> list[dict]:
    """``summarize`` of ``metric`` per (method, per_class) cell, over its seeds.

    Returns dicts ``{method, per_class, metric, mean, std, n, ci_low, ci_high}`` ordered by
    method (order of first appearance) then k (ascending, ``"all"`` last).
    """
    return [
        {
            "method": method,
            "per_class": k,
            "metric": metric,
            **summarize(row.get(metric) for row in group),
        }
        for (method, k), group in group_rows(rows).items()
    ]


# ---------------------------------------------------------------------------------------------
# Paired comparisons


def paired_difference(
    a_by_seed: Mapping, b_by_seed: Mapping, confidence: float = CONFIDENCE
) -> dict:
    """Mean of a - b over the seeds both have, its t-interval and a paired t-test p-value.

    Pairing on the data seed removes the variation that comes from which images were drawn,
    which is most of the variance at small k. Seeds present on one side only are ignored;
    missing values drop their pair. NaN interval and p-value for fewer than 2 pairs.
    """
    common = [seed for seed in a_by_seed if seed in b_by_seed]
    pairs = [(to_float(a_by_seed[s]), to_float(b_by_seed[s])) for s in common]
    pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n == 0:
        return {"mean_diff": NAN, "ci_low": NAN, "ci_high": NAN, "n": 0, "p_value": NAN}
    a, b = np.array(pairs).T
    diffs = a - b
    mean_diff = float(diffs.mean())
    std = float(diffs.std(ddof=1)) if n >= 2 else NAN
    ci_low, ci_high = t_interval(mean_diff, std, n, confidence)
    p_value = NAN
    if n >= 2:
        with warnings.catch_warnings():  # identical pairs: scipy warns and returns NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(stats.ttest_rel(a, b).pvalue)
    return {
        "mean_diff": mean_diff,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "n": n,
        "p_value": p_value,
    }


def values_by_seed(rows: Sequence[Mapping], metric: str) -> dict[str, float]:
    """``{data seed: metric}`` for the rows of one cell; repeats of a seed are averaged."""
    collected: dict[str, list[float]] = {}
    for row in rows:
        value = to_float(row.get(metric))
        if math.isfinite(value):
            collected.setdefault(_pair_key(row), []).append(value)
    return {seed: float(np.mean(values)) for seed, values in collected.items()}


def paired_comparisons(
    rows: Sequence[Mapping], baseline_method: str, metric: str = "test_accuracy"
) -> list[dict]:
    """``paired_difference`` of every other method against ``baseline_method`` at each k both
    ran, paired on the data seed. Returns dicts ``{method, baseline, per_class, metric,
    mean_diff, ci_low, ci_high, n, p_value}`` (difference = method - baseline)."""
    groups = group_rows(rows)
    comparisons = []
    for (method, k), group in groups.items():
        if method == baseline_method or (baseline_method, k) not in groups:
            continue
        result = paired_difference(
            values_by_seed(group, metric), values_by_seed(groups[(baseline_method, k)], metric)
        )
        comparisons.append(
            {
                "method": method,
                "baseline": baseline_method,
                "per_class": k,
                "metric": metric,
                **result,
            }
        )
    return comparisons


# ---------------------------------------------------------------------------------------------
# Scaling laws


def _power_law(k, a, b, c):
    return a * np.power(k, -b) + c


def _power_law_no_offset(k, a, b):
    return a * np.power(k, -b)


def _fit_once(k: np.ndarray, error: np.ndarray, with_offset: bool):
    """One bounded least-squares fit; returns (params, covariance). May raise."""
    k_min = k.min()
    if with_offset:
        # error >= c >= 0 on the data: the asymptote sits below the smallest error seen.
        c0 = 0.5 * error.min()
        a0 = max(float(error[k == k_min].mean() - c0), 1e-6) * k_min**0.5
        p0, bounds = [a0, 0.5, c0], ([0.0, 0.0, 0.0], [np.inf, 10.0, max(error.max(), 1e-9)])
        function = _power_law
    else:
        a0 = max(float(error[k == k_min].mean()), 1e-6) * k_min**0.5
        p0, bounds = [a0, 0.5], ([0.0, 0.0], [np.inf, 10.0])
        function = _power_law_no_offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptimizeWarning when the covariance is undefined
        return optimize.curve_fit(function, k, error, p0=p0, bounds=bounds, maxfev=20000)


def fit_power_law(
    k: Sequence[float],
    error: Sequence[float],
    *,
    seeds: Sequence | None = None,
    n_bootstrap: int = 0,
    random_state: int = 0,
    min_k_for_offset: int = 4,
) -> dict:
    """Fit error(k) = a * k^(-b) + c by least squares (``scipy.optimize.curve_fit``).

    ``k`` and ``error`` are one point per run (repeated k for repeated seeds is what gives the
    fit its error bars); k <= 0 and non-finite points are dropped. The offset c (the error the
    method would keep with unlimited data) needs at least ``min_k_for_offset`` distinct k;
    with fewer, or when that fit fails, c is fixed at 0 (``model = "a*k^-b"``).
    Standard errors come from the covariance of the fit (NaN when it is undefined). With
    ``n_bootstrap`` > 0 the fit is repeated on resampled data -- whole seeds when ``seeds`` is
    given (one per point; needs at least 3 seeds), single points otherwise -- and
    ``b_boot_low/high`` hold the 2.5 and 97.5 percentiles of b (NaN when not possible).
    Never raises: ``ok`` is False and ``reason`` says why when no fit is
    possible.
    """
    result = {
        "ok": False,
        "reason": None,
        "model": None,
        "a": NAN,
        "b": NAN,
        "c": NAN,
        "a_se": NAN,
        "b_se": NAN,
        "c_se": NAN,
        "rmse": NAN,
        "n_points": 0,
        "n_k": 0,
        "b_boot_low": NAN,
        "b_boot_high": NAN,
        "n_bootstrap": 0,
    }
    k = np.array([to_float(v) for v in k])
    error = np.array([to_float(v) for v in error])
    if k.shape != error.shape or (seeds is not None and len(seeds) != k.size):
        result["reason"] = (
            f"k, error and seeds differ in length ({k.size}, {error.size}, "
            f"{'-' if seeds is None else len(seeds)})"
        )
        return result
    keep = np.isfinite(k) & np.isfinite(error) & (k > 0)
    seed_array = np.asarray(list(seeds), dtype=object)[keep] if seeds is not None else None
    k, error = k[keep], error[keep]
    n_k = int(np.unique(k).size)
    result.update(n_points=int(k.size), n_k=n_k)
    if n_k < 2 or k.size < 3:
        result["reason"] = (
            f"too few points: {k.size} runs at {n_k} distinct k (need 3 runs at 2 or more k)"
        )
        return result

    attempts = [True, False] if n_k >= min_k_for_offset else [False]
    failures = []
    for with_offset in attempts:
        try:
            params, covariance = _fit_once(k, error, with_offset)
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as err:  # no convergence
            failures.append(f"{'with' if with_offset else 'without'} offset: {err}")
            continue
        break
    else:
        result["reason"] = "fit failed (" + "; ".join(failures) + ")"
        return result

    errors = (
        np.sqrt(np.clip(np.diag(covariance), 0, None))
        if np.all(np.isfinite(covariance))
        else np.full(len(params), NAN)
    )
    a, b = float(params[0]), float(params[1])
    c = float(params[2]) if with_offset else 0.0
    predicted = _power_law(k, a, b, c)
    result.update(
        ok=True,
        model="a*k^-b+c" if with_offset else "a*k^-b",
        a=a,
        b=b,
        c=c,
        a_se=float(errors[0]),
        b_se=float(errors[1]),
        c_se=float(errors[2]) if with_offset else NAN,
        rmse=float(np.sqrt(np.mean((error - predicted) ** 2))),
        reason=None if not failures else "offset fit failed; fitted with c = 0",
    )
    if n_bootstrap > 0:
        low, high, done = _bootstrap_b(k, error, seed_array, with_offset, n_bootstrap, random_state)
        result.update(b_boot_low=low, b_boot_high=high, n_bootstrap=done)
    return result


def _bootstrap_b(k, error, seeds, with_offset, n_bootstrap, random_state):
    """Percentile interval of the exponent b over refits on resampled data."""
    rng = np.random.default_rng(random_state)
    if seeds is not None:
        unique_seeds = np.unique(seeds.astype(str))
        if unique_seeds.size < MIN_BOOTSTRAP_SEEDS:
            return NAN, NAN, 0  # resampling 1-2 seeds gives (nearly) the same data every time
        members = [np.flatnonzero(seeds.astype(str) == s) for s in unique_seeds]
    exponents = []
    for _ in range(n_bootstrap):
        if seeds is not None:
            chosen = rng.integers(0, len(members), len(members))
            index = np.concatenate([members[i] for i in chosen])
        else:
            index = rng.integers(0, k.size, k.size)
        if np.unique(k[index]).size < (3 if with_offset else 2):
            continue
        try:
            params, _ = _fit_once(k[index], error[index], with_offset)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
        exponents.append(params[1])
    if len(exponents) < 2:
        return NAN, NAN, len(exponents)
    low, high = np.percentile(exponents, [2.5, 97.5])
    return float(low), float(high), len(exponents)


def data_efficiency(
    per_class_to_accuracy: Mapping[int, float], full_accuracy: float, fraction: float = 0.9
) -> float | None:
    """Smallest k at which accuracy reaches ``fraction`` x ``full_accuracy``.

    Between two measured k the accuracy is interpolated linearly in log2 k (the spacing of a
    scaling study); the first crossing counts. Only k >= 1 is used (log2 0 is undefined). If
    the smallest measured k already reaches the target, that k is returned (no extrapolation).
    None when no measured k reaches the target or the inputs are missing.
    """
    target = fraction * to_float(full_accuracy)
    points = sorted(
        (int(k), to_float(acc))
        for k, acc in per_class_to_accuracy.items()
        if k != ALL and int(k) >= 1 and math.isfinite(to_float(acc))
    )
    if not math.isfinite(target) or not points:
        return None
    if points[0][1] >= target:
        return float(points[0][0])
    for (k0, acc0), (k1, acc1) in itertools.pairwise(points):
        if acc0 < target <= acc1:
            position = (target - acc0) / (acc1 - acc0)
            return float(2 ** (math.log2(k0) + position * (math.log2(k1) - math.log2(k0))))
    return None
