"""Learning-curve summaries: area under the curve (AULC) and data efficiency at a common target.

Both are computed from per-replicate metric values under the study's shared two-level bootstrap
draws (``study/bootstrap.py``): each draw reweights the test images (the same weights for every
cell) and resamples replicate keys ``(data_seed, train_seed)`` (the same keys for every cell).
A replicate's whole curve moves as one unit, because its training subsets are nested over k, and
every method sees the same draws, so differences between methods stay paired.

Only k values every compared method has are used: never k = 0 (zero-shot, no log2) and never
``"all"`` (no k). Metrics are fractions in [0, 1]; the report prints percent. Every function
returns JSON-serialisable dicts; what the data cannot support is ``None`` plus a reason in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TARGET_FRACTION = 0.9
MIN_PI_REPLICATES = 5  # a probability of improvement from fewer replicates is a handful of ranks
CONFIDENCE = 0.95


def interval(values: np.ndarray, n_replicates: int) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap ``values`` (NaN draws left out); None when none is left.

    ``n_replicates`` is the number of replicates behind the statistic (kept in the signature so
    a small-sample correction applies to every curve summary at once).
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p(differences: np.ndarray) -> float | None:
    """Two-sided bootstrap p for "the difference is 0": twice the smaller tail share, <= 1.

    The smallest reportable value is 1 / B (a zero count says only that p < 1/B).
    """
    values = np.asarray(differences, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = min(np.mean(values <= 0), np.mean(values >= 0))
    return float(min(1.0, max(2 * tail, 1 / values.size)))


def replicate_note(n: int) -> str | None:
    """Words that go with an interval resting on ``n`` replicates, None when n >= 3."""
    if n == 1:
        return ("1 replicate: the interval covers test-image noise only, not the spread "
                "between seeds")
    if n == 2:
        return ("2 replicates: resampling 2 seeds under-states the spread between seeds; "
                "treat the interval as unreliable")
    return None


@dataclass
class Curves:
    """Per-method learning curves on the replicate keys shared by the whole study.

    ``point[m]`` is ``[len(ks[m]), K]``: the metric of each replicate key at each k, NaN where
    that replicate is missing. ``boot[m]`` is ``[B, len(ks[m]), K]``: the same under each draw's
    image weights, before replicates are resampled (``replicate_index`` does that, ``[B, K]``).
    """

    metric: str
    keys: list
    ks: dict[str, list[int]]
    point: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]
    replicate_index: np.ndarray
    n_boot: int
    seed: int

    @property
    def methods(self) -> list[str]:
        return list(self.ks)


def learning_curves(study, draws, metric: str = "accuracy", methods=None) -> Curves:
    """:class:`Curves` of ``metric`` for every method with at least one k >= 1.

    ``study`` is a ``StudyPredictions`` and ``draws`` its ``Draws`` (study/bootstrap.py).
    """
    from emoset_peft.study.bootstrap import replicate_metric

    keys = list(draws.replicate_keys)
    column = {key: index for index, key in enumerate(keys)}
    if methods is None:
        methods = list(dict.fromkeys(method for method, _ in study.cells))
    ks, point, boot = {}, {}, {}
    for method in methods:
        method_ks = sorted(k for m, k in study.cells if m == method and _is_curve_k(k))
        if not method_ks:
            continue
        values = np.full((len(method_ks), len(keys)), np.nan)
        resampled = np.full((draws.n_boot, len(method_ks), len(keys)), np.nan)
        for row, k in enumerate(method_ks):
            cell = study.cells[(method, k)]
            columns = [column[tuple(key) if isinstance(key, list) else key]
                       for key in cell.replicates]
            values[row, columns] = replicate_metric(cell, study.labels, metric)
            resampled[:, row, columns] = replicate_metric(
                cell, study.labels, metric, weights=draws.image_weights)
        ks[method], point[method], boot[method] = method_ks, values, resampled
    return Curves(metric=metric, keys=keys, ks=ks, point=point, boot=boot,
                  replicate_index=np.asarray(draws.replicate_index), n_boot=int(draws.n_boot),
                  seed=int(draws.seed))


def _is_curve_k(k) -> bool:
    return not isinstance(k, str) and int(k) >= 1


def common_ks(curves: Curves, methods=None) -> list[int]:
    """The k values (>= 1, not "all") that every one of ``methods`` has, ascending."""
    methods = curves.methods if methods is None else list(methods)
    if not methods:
        return []
    shared = set(curves.ks[methods[0]])
    for method in methods[1:]:
        shared &= set(curves.ks[method])
    return sorted(shared)


def _rows(curves: Curves, method: str, ks: list[int]) -> list[int]:
    return [curves.ks[method].index(k) for k in ks]


def resampled_mean(per_key: np.ndarray, replicate_index: np.ndarray) -> np.ndarray:
    """Mean over each draw's resampled replicate keys, missing (NaN) replicates left out.

    ``per_key`` is ``[B, ..., K]`` (a value per draw and key); returns ``[B, ...]``, NaN for a
    draw that picked no present replicate.
    """
    index = replicate_index.reshape(replicate_index.shape[:1] + (1,) * (per_key.ndim - 2)
                                    + replicate_index.shape[1:])
    picked = np.take_along_axis(per_key, np.broadcast_to(
        index, per_key.shape[:-1] + replicate_index.shape[1:]), axis=-1)
    present = np.isfinite(picked)
    count = present.sum(axis=-1)
    total = np.where(present, picked, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def trapezoid_weights(ks: list[int]) -> np.ndarray:
    """Weights w with ``w @ curve`` = the trapezoid area over log2 k divided by the log2 k range.

    A mean accuracy over the range, so it stays in [0, 1]; linear in the curve, so the AULC of
    the mean curve is the mean of the replicates' AULCs.
    """
    x = np.log2(np.asarray(ks, dtype=np.float64))
    gaps = np.diff(x)
    weights = np.zeros_like(x)
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    return weights / (x[-1] - x[0])


# ---------------------------------------------------------------------------------------------
# AULC


def aulc(curves: Curves, methods=None) -> dict:
    """Area under each method's learning curve over log2 k, normalised to a mean in [0, 1].

    Returns ``{metric, ks_used, reason, methods: {m: {...}}, pairs: [...], n_boot, seed}``.
    Per method: ``aulc`` (mean over its complete replicates), ``ci_low/ci_high`` (two-level
    bootstrap), ``n_replicates`` and the per-replicate values. ``pairs`` holds every pair of
    methods (``a`` minus ``b``) with an interval, a two-sided bootstrap p and the probability of
    improvement (P(a random replicate of a has a higher AULC than one of b), ties count half),
    which needs >= 5 replicates on both sides.
    """
    methods = curves.methods if methods is None else list(methods)
    ks = common_ks(curves, methods)
    result = {"metric": curves.metric, "ks_used": ks, "reason": None, "methods": {},
              "pairs": [], "n_boot": curves.n_boot, "seed": curves.seed}
    if len(methods) == 0:
        result["reason"] = "no method has a learning curve (k >= 1)"
        return result
    if len(ks) < 2:
        result["reason"] = (f"an area under the curve needs >= 2 k values (>= 1, not 'all') that "
                            f"every method has; common k: {ks or 'none'}")
        return result
    weights = trapezoid_weights(ks)
    per_method = {}
    for method in methods:
        rows = _rows(curves, method, ks)
        point = weights @ curves.point[method][rows]  # [K]; NaN unless complete over ks
        boot = np.einsum("k,bkr->br", weights, curves.boot[method][:, rows])  # [B, K]
        keys_used = [curves.keys[i] for i in np.flatnonzero(np.isfinite(point))]
        per_method[method] = (point, boot)
        n = len(keys_used)
        if n == 0:
            result["methods"][method] = {"aulc": None, "ci_low": None, "ci_high": None,
                                         "n_replicates": 0, "replicates": {},
                                         "reason": f"no replicate has every k in {ks}"}
            continue
        resampled = resampled_mean(boot, curves.replicate_index)
        low, high = interval(resampled, n)
        result["methods"][method] = {
            "aulc": float(np.nanmean(point)), "ci_low": low, "ci_high": high,
            "n_replicates": n,
            "replicates": {_key_text(key): float(point[curves.keys.index(key)])
                           for key in keys_used},
            "reason": replicate_note(n),
        }
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            result["pairs"].append(_aulc_pair(curves, a, b, per_method, result["methods"]))
    return result


def _aulc_pair(curves: Curves, a: str, b: str, per_method: dict, summary: dict) -> dict:
    entry = {"a": a, "b": b, "difference": None, "ci_low": None, "ci_high": None,
             "p_value": None, "reason": None, "probability_of_improvement": None,
             "poi_ci_low": None, "poi_ci_high": None, "poi_reason": None}
    if summary[a]["aulc"] is None or summary[b]["aulc"] is None:
        entry["reason"] = entry["poi_reason"] = "one of the methods has no complete curve"
        return entry
    (point_a, boot_a), (point_b, boot_b) = per_method[a], per_method[b]
    index = curves.replicate_index
    difference = resampled_mean(boot_a, index) - resampled_mean(boot_b, index)
    n_pairs = int(np.sum(np.isfinite(point_a) & np.isfinite(point_b)))
    low, high = interval(difference, min(summary[a]["n_replicates"], summary[b]["n_replicates"]))
    entry.update(difference=summary[a]["aulc"] - summary[b]["aulc"], ci_low=low, ci_high=high,
                 p_value=bootstrap_p(difference), n_paired=n_pairs,
                 reason=replicate_note(min(summary[a]["n_replicates"],
                                           summary[b]["n_replicates"])))
    n_a, n_b = summary[a]["n_replicates"], summary[b]["n_replicates"]
    if min(n_a, n_b) < MIN_PI_REPLICATES:
        entry["poi_reason"] = (f"{a} has {n_a} and {b} has {n_b} replicates with a complete "
                               f"curve; a probability of improvement needs >= "
                               f"{MIN_PI_REPLICATES} on both sides")
        return entry
    entry["probability_of_improvement"] = float(
        probability_of_improvement(point_a[None], point_b[None])[0])
    draws_a = np.take_along_axis(boot_a, index, axis=1)
    draws_b = np.take_along_axis(boot_b, index, axis=1)
    entry["poi_ci_low"], entry["poi_ci_high"] = interval(
        probability_of_improvement(draws_a, draws_b), min(n_a, n_b))
    return entry


def probability_of_improvement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(x > y) + P(x = y) / 2 for x from a row of ``a`` and y from the same row of ``b``.

    ``a`` is ``[B, Ka]`` and ``b`` ``[B, Kb]``; NaN entries are left out. The Mann-Whitney U
    statistic over n_a * n_b (rliable's probability of improvement on one task).
    """
    valid = np.isfinite(a)[:, :, None] & np.isfinite(b)[:, None, :]
    x, y = a[:, :, None], b[:, None, :]
    with np.errstate(invalid="ignore"):
        score = np.where(valid, (x > y) + 0.5 * (x == y), 0.0).sum(axis=(1, 2))
        return np.where(valid.any(axis=(1, 2)), score / np.maximum(valid.sum(axis=(1, 2)), 1),
                        np.nan)


def _key_text(key) -> str:
    """A replicate key as JSON-safe text: ``"data_seed/train_seed"``."""
    if isinstance(key, (tuple, list)):
        return "/".join(str(part) for part in key)
    return str(key)


# ---------------------------------------------------------------------------------------------
# Data efficiency


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
    k = float(2.0 ** log2_k)
    return {"k": k, "bound": None, "text": f"{k:.3g}"}


def data_efficiency(curves: Curves, target: float | None = None,
                    fraction: float = DEFAULT_TARGET_FRACTION, methods=None) -> dict:
    """The k each method needs to reach one absolute ``target`` value of the metric.

    Default target: ``fraction`` of the best method's mean at the largest common k (reported
    with the method it came from). Each method's mean curve over its replicates, on the common
    k, is interpolated linearly in log2 k; the first crossing counts. The interval comes from
    the same two-level draws (target held fixed); an end beyond the measured range is reported as
    "> k_max", one at the first k as "<= k_min".
    """
    methods = curves.methods if methods is None else list(methods)
    ks = common_ks(curves, methods)
    result = {"metric": curves.metric, "ks_used": ks, "target": None, "target_source": None,
              "fraction": None, "reason": None, "methods": {}, "n_boot": curves.n_boot,
              "seed": curves.seed}
    if len(ks) < 2:
        result["reason"] = (f"needs >= 2 k values (>= 1, not 'all') that every method has; "
                            f"common k: {ks or 'none'}")
        return result
    means = {m: np.nanmean(curves.point[m][_rows(curves, m, ks)], axis=1) for m in methods}
    if target is None:
        best = max(methods, key=lambda m: means[m][-1])
        target = fraction * float(means[best][-1])
        result.update(fraction=fraction, target_source=(
            f"{fraction:g} x {best}'s mean at k = {ks[-1]} ({means[best][-1]:.4f})"))
    else:
        result["target_source"] = "given"
    result["target"] = float(target)
    for method in methods:
        boot_curve = resampled_mean(curves.boot[method][:, _rows(curves, method, ks)],
                                    curves.replicate_index)  # [B, len(ks)]
        n = int(np.min(np.isfinite(curves.point[method][_rows(curves, method, ks)]).sum(axis=1)))
        point = float(k_needed(means[method], ks, target))
        draws = k_needed(boot_curve[np.isfinite(boot_curve).all(axis=1)], ks, target)
        # Beyond k_max sorts above every measured k; a finite stand-in keeps percentiles defined.
        draws = np.where(np.isfinite(draws), draws, np.log2(ks[-1]) + 1.0)
        low, high = interval(draws, n) if draws.size else (None, None)
        result["methods"][method] = {
            "k_needed": _k_text(point, ks),
            "ci_low": None if low is None else _k_text(low, ks),
            "ci_high": None if high is None else _k_text(high, ks),
            "mean_curve": {str(k): float(v) for k, v in zip(ks, means[method])},
            "n_replicates": n, "reason": replicate_note(n),
        }
    return result
