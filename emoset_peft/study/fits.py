"""Scaling fits error(k) = a * k^-b + c, only where the data can carry them.

A fit needs >= 4 distinct k (with 3, a 3-parameter curve passes through every point and its
"parameters" describe nothing) and >= 3 replicates at every k (fewer cannot say how much the fit
varies between seeds). It is fitted to the seed-mean error curve (error = 1 - metric) of each
method at its own k >= 1, with a >= 0 and c >= 0; c is the error that would remain with unlimited
data. The c = 0 form is fitted as well and the two are compared (F-test and AIC on the mean
curve). Intervals of b and c refit the seed-mean curve of each of the first ``FIT_DRAWS`` (500)
two-level bootstrap draws (``study/bootstrap.py``: images reweighted, replicate keys resampled,
the same draws as every other statistic) and take widened percentiles (``curves.interval``).
The extrapolation check fits without the largest k and predicts it.

The fit is vectorised over draws: for a fixed b the model is linear in (a, c), so a and c come in
closed form (non-negative least squares on two unknowns) and only b is searched: a grid of step
``B_STEP`` on [0, ``B_MAX``] refined by golden-section search to about 1e-7.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from emoset_peft.study.curves import Curves, interval, resampled_mean

MIN_FIT_KS = 4
MIN_FIT_REPLICATES = 3
B_MAX = 6.0  # larger exponents mean the error has dropped to its floor within one doubling
B_STEP = 0.02
GOLDEN_STEPS = 30
CHUNK = 256  # draws per vectorised block (keeps grid temporaries to a few MB)
FIT_DRAWS = 500  # refits per interval: ~0.15 s per method and model; 2.5% tails from 12 draws


def _solve(b: np.ndarray, y: np.ndarray, log_k: np.ndarray, free_c: bool):
    """Best a, c >= 0 (c = 0 unless ``free_c``) for exponents ``b`` [...]; y is [..., m].

    Returns (sse, a, c), each shaped like ``b`` broadcast with ``y``'s leading axes.
    """
    x = np.exp(-b[..., None] * log_k)
    y = np.broadcast_to(y, np.broadcast_shapes(x.shape, y.shape))
    x = np.broadcast_to(x, y.shape)
    sxx, sxy = (x * x).sum(-1), (x * y).sum(-1)
    a_origin = np.maximum(sxy / sxx, 0.0)  # c = 0 face
    sse_origin = ((y - a_origin[..., None] * x) ** 2).sum(-1)
    if not free_c:
        return sse_origin, a_origin, np.zeros_like(a_origin)
    x_bar, y_bar = x.mean(-1), y.mean(-1)
    centred = ((x - x_bar[..., None]) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_free = np.where(centred > 1e-15, ((x - x_bar[..., None]) * y).sum(-1) / centred, 0.0)
    c_free = y_bar - a_free * x_bar
    sse_free = ((y - a_free[..., None] * x - c_free[..., None]) ** 2).sum(-1)
    c_flat = np.maximum(y_bar, 0.0)  # a = 0 face: a flat line
    sse_flat = ((y - c_flat[..., None]) ** 2).sum(-1)
    sse_free = np.where((a_free >= 0) & (c_free >= 0), sse_free, np.inf)
    best = np.argmin(np.stack([sse_free, sse_origin, sse_flat]), axis=0)
    sse = np.choose(best, [sse_free, sse_origin, sse_flat])
    a = np.choose(best, [a_free, a_origin, np.zeros_like(a_free)])
    c = np.choose(best, [c_free, np.zeros_like(c_free), c_flat])
    return sse, a, c


def fit_curves(ks, error: np.ndarray, free_c: bool = True) -> dict[str, np.ndarray]:
    """Least-squares fit of ``error`` ([..., len(ks)]) against k, vectorised over leading axes.

    Returns arrays ``a, b, c, sse`` shaped like the leading axes; NaN rows stay NaN.
    """
    error = np.asarray(error, dtype=np.float64)
    flat = error.reshape(-1, error.shape[-1])
    log_k = np.log(np.asarray(ks, dtype=np.float64))
    out = {name: np.full(flat.shape[0], np.nan) for name in ("a", "b", "c", "sse")}
    valid = np.flatnonzero(np.isfinite(flat).all(axis=1))
    grid = np.arange(0.0, B_MAX + B_STEP / 2, B_STEP)
    ratio = (np.sqrt(5) - 1) / 2
    for start in range(0, valid.size, CHUNK):
        rows = valid[start : start + CHUNK]
        y = flat[rows]
        sse_grid = _solve(grid[None, :], y[:, None, :], log_k, free_c)[0]
        centre = grid[np.argmin(sse_grid, axis=1)]
        low, high = np.maximum(centre - B_STEP, 0.0), np.minimum(centre + B_STEP, B_MAX)
        for _ in range(GOLDEN_STEPS):  # golden-section search inside the grid cell pair
            left, right = high - ratio * (high - low), low + ratio * (high - low)
            keep_left = _solve(left, y, log_k, free_c)[0] <= _solve(right, y, log_k, free_c)[0]
            high, low = np.where(keep_left, right, high), np.where(keep_left, low, left)
        b = (low + high) / 2
        sse, a, c = _solve(b, y, log_k, free_c)
        for name, value in (("a", a), ("b", b), ("c", c), ("sse", sse)):
            out[name][rows] = value
    return {name: value.reshape(error.shape[:-1]) for name, value in out.items()}


def power_law(k, a, b, c=0.0):
    return a * np.power(np.asarray(k, dtype=np.float64), -b) + c


def _guard(ks: list[int], counts: np.ndarray) -> str | None:
    if len(ks) < MIN_FIT_KS:
        return (
            f"{len(ks)} distinct k ({', '.join(map(str, ks)) or 'none'}): a 3-parameter curve "
            f"would pass through every point; a fit needs >= {MIN_FIT_KS}"
        )
    if counts.min() < MIN_FIT_REPLICATES:
        k = ks[int(np.argmin(counts))]
        return (
            f"{int(counts.min())} replicate(s) at k = {k}: a fit needs >= "
            f"{MIN_FIT_REPLICATES} at every k to say how much it varies between seeds"
        )
    return None


def _params(fit: dict, draws: dict, n: int, names: tuple[str, ...]) -> dict:
    entry = {param: float(fit[param]) for param in names}
    upper = {"b": B_MAX}  # the exponent is capped where the fit is; c is unbounded above
    for param in names[1:]:  # b, c: the shape of the curve; a only scales it
        entry[f"{param}_ci_low"], entry[f"{param}_ci_high"] = interval(
            draws[param], n, entry[param], (0.0, upper.get(param, np.inf))
        )
    entry["sse"] = float(fit["sse"])
    notes = []
    if fit["a"] <= 1e-12:
        notes.append("the fitted curve is flat (a = 0): b is not identified")
        # Any b gives the same flat curve, so b and the interval ends (the search bounds 0 and
        # B_MAX) say nothing; c is the curve's level, but its refits trade c against a and b.
        entry["b"] = entry["b_ci_low"] = entry["b_ci_high"] = None
        entry["b_reason"] = "not identified: the fitted curve is flat (a = 0), every b fits it"
        if "c" in names:
            entry["c_ci_low"] = entry["c_ci_high"] = None
            entry["c_reason"] = (
                "no interval: with b not identified the bootstrap refits trade c against a "
                "and b, so their spread is not c's"
            )
    elif fit["b"] >= B_MAX - 1e-6:
        notes.append(
            f"b sits at the search bound {B_MAX:g}: the error stops falling after the first k"
        )
    entry["note"] = "; ".join(notes) or None
    return entry


def compare_offset(sse_free: float, sse_zero: float, n_points: int) -> dict:
    """F-test of c = 0 against free c on one curve of ``n_points``, plus both AICs, in words."""
    df = n_points - 3
    tiny = 1e-300  # a curve fitted exactly has SSE 0: keep the logarithm finite
    aic_free = n_points * np.log(max(sse_free, tiny) / n_points) + 2 * 3
    aic_zero = n_points * np.log(max(sse_zero, tiny) / n_points) + 2 * 2
    gain = max(sse_zero - sse_free, 0.0)
    f_stat = gain / (sse_free / df) if sse_free > tiny else (np.inf if gain > 0 else 0.0)
    p_value = float(stats.f.sf(f_stat, 1, df)) if np.isfinite(f_stat) else 0.0
    test = f"F = {f_stat:.3g} on 1 and {df} df, p = {p_value:.2g}"
    if p_value < 0.05:
        text = (
            f"a free c fits better than c = 0 ({test}; AIC {aic_zero - aic_free:.2f} lower): "
            "the curve levels off above zero error"
        )
    elif aic_free < aic_zero:
        text = (
            f"c = 0 is not rejected at the 5% level ({test}), though AIC prefers a free c by "
            f"{aic_zero - aic_free:.2f}: the data hint at, but do not establish, an "
            "irreducible error"
        )
    else:
        text = (
            f"c = 0 is not rejected ({test}; AIC of the free c {aic_free - aic_zero:+.2f}): "
            "the data cannot tell an irreducible error from a slower decay"
        )
    return {
        "f_statistic": float(f_stat) if np.isfinite(f_stat) else None,  # inf: exact fit
        "df": [1, df],
        "p_value": p_value,
        "aic_free_c": float(aic_free),
        "aic_c_zero": float(aic_zero),
        "text": text,
    }


def _extrapolation(ks, mean_error, boot_error, n) -> dict:
    """Fit without the largest k, predict it; error in percentage points of the metric."""
    held, fitted_ks = ks[-1], ks[:-1]
    observed = 1 - mean_error[-1]
    result = {"k_held_out": held, "ks_fitted": fitted_ks, "observed": float(observed)}
    for name, free_c in (("free_c", True), ("c_zero", False)):
        fit = fit_curves(fitted_ks, mean_error[:-1], free_c)
        predicted = 1 - power_law(held, fit["a"], fit["b"], fit["c"])
        draws = fit_curves(fitted_ks, boot_error[:, :-1], free_c)
        draw_error = 100 * (
            (boot_error[:, -1]) - power_law(held, draws["a"], draws["b"], draws["c"])
        )
        error_pp = float(100 * (predicted - observed))
        low, high = interval(draw_error, n, error_pp)
        result[name] = {
            "predicted": float(predicted),
            "error_pp": error_pp,
            "error_pp_ci_low": low,
            "error_pp_ci_high": high,
        }
    result["note"] = (
        f"the free-c curve passes exactly through the {len(fitted_ks)} fitted points"
        if len(fitted_ks) == 3
        else None
    )
    return result


def scaling_fits(curves: Curves, methods=None, max_draws: int | None = FIT_DRAWS) -> dict:
    """Guarded power-law fits of each method's error curve (see the module docstring).

    ``max_draws`` caps the bootstrap draws refitted (the first ``FIT_DRAWS`` by default, None
    for all); ``n_boot`` in the result says how many were used.
    Returns ``{metric, n_boot, seed, methods: {m: {...}}}``; a method without a fit has
    ``fitted: False`` and a ``reason`` in words and no numbers.
    """
    methods = curves.methods if methods is None else list(methods)
    n_draws = curves.n_boot if max_draws is None else min(max_draws, curves.n_boot)
    result = {
        "metric": curves.metric,
        "model": "error(k) = a * k^-b + c, error = 1 - metric",
        "n_boot": n_draws,
        "seed": curves.seed,
        "methods": {},
    }
    for method in methods:
        ks, point = curves.ks[method], curves.point[method]
        counts = np.isfinite(point).sum(axis=1)
        entry = {
            "ks": ks,
            "n_replicates": int(counts.min()) if counts.size else 0,
            "fitted": False,
            "reason": _guard(ks, counts),
        }
        result["methods"][method] = entry
        if entry["reason"]:
            continue
        mean_error = 1 - np.nanmean(point, axis=1)
        boot_error = 1 - resampled_mean(
            curves.boot[method][:n_draws], curves.replicate_index[:n_draws]
        )
        n = entry["n_replicates"]
        free, zero = fit_curves(ks, mean_error, True), fit_curves(ks, mean_error, False)
        free_draws = fit_curves(ks, boot_error, True)
        zero_draws = fit_curves(ks, boot_error, False)
        entry.update(
            fitted=True,
            free_c=_params(free, free_draws, n, ("a", "b", "c")),
            c_zero=_params(zero, zero_draws, n, ("a", "b")),
            comparison=compare_offset(float(free["sse"]), float(zero["sse"]), len(ks)),
            extrapolation=_extrapolation(ks, mean_error, boot_error, n),
            mean_error={str(k): float(v) for k, v in zip(ks, mean_error)},
        )
    return result
