"""Data efficiency: the k each method needs to reach one common absolute accuracy.

The target is absolute and shared (default: 90% of the best method's mean accuracy at the
largest common k), so a weaker method cannot look more efficient by reaching its own lower
ceiling. The k is interpolated linearly in log2 k on the mean curve; its interval comes from
the study's shared draws (``curves.resampled_mean``), widened for few seeds
(``curves.interval``), with "<= k_min" / "> k_max" markers where the target is met at the
smallest k or never.
"""

from __future__ import annotations

import numpy as np

from emoset_peft.study.curves import (
    Curves,
    _rows,
    common_ks,
    compared_methods,
    interval,
    no_curve_reason,
    resampled_mean,
)
from emoset_peft.study.inference import reliability

DEFAULT_TARGET_FRACTION = 0.9


def k_needed(curve: np.ndarray, ks: list[int], target: float) -> np.ndarray:
    """log2 of the k where ``curve`` (``[..., len(ks)]``) first reaches ``target``.

    Linear interpolation in log2 k between the two measured k around the first crossing.
    Exactly log2 k_min when the smallest k already reaches it; +inf when no k does.
    """
    x = np.log2(np.asarray(ks, dtype=np.float64))
    reached = curve >= target
    first = np.argmax(reached, axis=-1)
    before = np.maximum(first - 1, 0)
    y0 = np.take_along_axis(curve, before[..., None], -1)[..., 0]
    y1 = np.take_along_axis(curve, first[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(first > 0, (target - y0) / (y1 - y0), 0.0)
    value = x[before] + position * (x[first] - x[before])
    return np.where(reached.any(axis=-1), value, np.inf)


def _k_text(log2_k: float, ks: list[int]) -> dict:
    """A k-needed estimate as ``{k, bound, text}``: bound "<=" at k_min, ">" beyond k_max."""
    if not np.isfinite(log2_k) or log2_k > np.log2(ks[-1]):
        return {"k": None, "bound": ">", "text": f"> {ks[-1]}"}
    if log2_k <= np.log2(ks[0]):
        return {"k": float(ks[0]), "bound": "<=", "text": f"<= {ks[0]}"}
    k = float(2.0**log2_k)
    return {"k": k, "bound": None, "text": f"{k:.3g}"}


def data_efficiency(
    curves: Curves,
    target: float | None = None,
    fraction: float = DEFAULT_TARGET_FRACTION,
    methods=None,
) -> dict:
    """The k each method needs to reach one absolute ``target`` value of the metric.

    Default target: ``fraction`` of the best method's mean at the largest common k (reported
    with the method it came from). Each method's mean curve over its replicates, on the common
    k, is interpolated linearly in log2 k; the first crossing counts. The interval comes from
    the same two-level draws (target held fixed); an end beyond the measured range is reported as
    "> k_max", one at the first k as "<= k_min".
    """
    methods, left_out = compared_methods(curves, methods)
    ks = common_ks(curves, methods)
    result = {
        "metric": curves.metric,
        "ks_used": ks,
        "target": None,
        "target_source": None,
        "fraction": None,
        "reason": None,
        "methods": {},
        "left_out": left_out,
        "n_boot": curves.n_boot,
        "seed": curves.seed,
    }
    if not methods:
        result["reason"] = no_curve_reason(curves)
        return result
    if len(ks) < 2:
        result["reason"] = (
            f"needs >= 2 k values (>= 1, not 'all') that every method has; common k: {ks or 'none'}"
        )
        return result
    means = {m: np.nanmean(curves.point[m][_rows(curves, m, ks)], axis=1) for m in methods}
    if target is None:
        best = max(methods, key=lambda m: means[m][-1])
        target = fraction * float(means[best][-1])
        result.update(
            fraction=fraction,
            target_source=(f"{fraction:g} x {best}'s mean at k = {ks[-1]} ({means[best][-1]:.4f})"),
        )
    else:
        result["target_source"] = "given"
    result["target"] = float(target)
    for method in methods:
        boot_curve = resampled_mean(
            curves.boot[method][:, _rows(curves, method, ks)], curves.replicate_index
        )  # [B, len(ks)]
        n = int(np.min(np.isfinite(curves.point[method][_rows(curves, method, ks)]).sum(axis=1)))
        point = float(k_needed(means[method], ks, target))
        draws = k_needed(boot_curve[np.isfinite(boot_curve).all(axis=1)], ks, target)
        # Beyond k_max sorts above every measured k; a finite stand-in keeps percentiles defined.
        beyond = np.log2(ks[-1]) + 1.0
        draws = np.where(np.isfinite(draws), draws, beyond)
        low, high = interval(draws, n, point if np.isfinite(point) else beyond)
        result["methods"][method] = {
            "k_needed": _k_text(point, ks),
            "ci_low": None if low is None else _k_text(low, ks),
            "ci_high": None if high is None else _k_text(high, ks),
            "mean_curve": {str(k): float(v) for k, v in zip(ks, means[method])},
            "n_replicates": n,
            **dict(zip(("reliable", "reason"), reliability(n))),
        }
    return result
