"""Scaling fits checked against scipy.optimize.curve_fit and scipy.stats.f."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats

from emoset_peft.study.curves import Curves
from emoset_peft.study.fits import B_MAX, compare_offset, fit_curves, scaling_fits

KS = [1, 2, 4, 8, 16, 32]


def power_curves(a=0.6, b=0.7, c=0.15, ks=KS, n_keys=4, n_boot=200, seed=0, noise=0.004):
    """Curves of accuracy = 1 - (a k^-b + c) + seed effect + noise; draws jitter like images."""
    rng = np.random.default_rng(seed)
    error = a * np.asarray(ks, float) ** -b + c
    point = 1 - error[:, None] + rng.normal(0, noise, (len(ks), n_keys))
    boot = point[None] + rng.normal(0, noise, (n_boot, len(ks), n_keys))
    index = rng.integers(0, n_keys, (n_boot, n_keys))
    keys = [(i, i) for i in range(n_keys)]
    return Curves(
        metric="accuracy",
        keys=keys,
        ks={"m": list(ks)},
        point={"m": point},
        boot={"m": boot},
        replicate_index=index,
        n_boot=n_boot,
        seed=seed,
    )


def _curve_fit(ks, error, free_c):
    k = np.asarray(ks, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if free_c:
            params, _ = optimize.curve_fit(
                lambda k, a, b, c: a * k**-b + c,
                k,
                error,
                p0=[0.5, 0.5, 0.1],
                bounds=([0, 0, 0], [np.inf, B_MAX, np.inf]),
            )
        else:
            params, _ = optimize.curve_fit(
                lambda k, a, b: a * k**-b, k, error, p0=[0.5, 0.5], bounds=([0, 0], [np.inf, B_MAX])
            )
    residual = error - (params[0] * k ** -params[1] + (params[2] if free_c else 0))
    return params, float(residual @ residual)


def test_fit_matches_curve_fit_on_the_mean_curve_and_per_draw():
    curves = power_curves()
    result = scaling_fits(curves)
    json.dumps(result, allow_nan=False)
    entry = result["methods"]["m"]
    assert entry["fitted"] and entry["reason"] is None and entry["n_replicates"] == 4
    mean_error = 1 - curves.point["m"].mean(axis=1)
    params, sse = _curve_fit(KS, mean_error, True)
    free = entry["free_c"]
    assert [free["a"], free["b"], free["c"]] == pytest.approx(params, rel=1e-4, abs=1e-6)
    assert free["sse"] == pytest.approx(sse, rel=1e-4, abs=1e-12)
    params0, sse0 = _curve_fit(KS, mean_error, False)
    assert [entry["c_zero"]["a"], entry["c_zero"]["b"]] == pytest.approx(params0, rel=1e-4)
    assert entry["c_zero"]["sse"] == pytest.approx(sse0, rel=1e-4)
    assert (
        free["b_ci_low"] < 0.7 < free["b_ci_high"] and free["c_ci_low"] < 0.15 < free["c_ci_high"]
    )
    # The vectorised draws refit exactly like curve_fit on each draw's mean curve.
    draws = 1 - np.stack(
        [curves.boot["m"][b][:, curves.replicate_index[b]].mean(axis=1) for b in range(3)]
    )
    vectorised = fit_curves(KS, draws, True)
    for b in range(3):
        expected, _ = _curve_fit(KS, draws[b], True)
        got = [vectorised[name][b] for name in "abc"]
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_offset_comparison_matches_an_f_test():
    curves = power_curves(c=0.2)
    entry = scaling_fits(curves)["methods"]["m"]
    mean_error = 1 - curves.point["m"].mean(axis=1)
    _, sse_free = _curve_fit(KS, mean_error, True)
    _, sse_zero = _curve_fit(KS, mean_error, False)
    f_stat = (sse_zero - sse_free) / (sse_free / (len(KS) - 3))
    comparison = entry["comparison"]
    assert comparison["f_statistic"] == pytest.approx(f_stat, rel=1e-3)
    assert comparison["p_value"] == pytest.approx(scipy_stats.f.sf(f_stat, 1, 3), rel=1e-2)
    assert comparison["p_value"] < 0.05 and "free c fits better" in comparison["text"]
    n = len(KS)
    assert comparison["aic_free_c"] == pytest.approx(n * np.log(sse_free / n) + 6, rel=1e-3)
    no_offset = compare_offset(sse_free=1.0, sse_zero=1.01, n_points=5)
    assert no_offset["p_value"] > 0.5 and "c = 0 is not rejected" in no_offset["text"]


def test_extrapolation_predicts_the_held_out_k():
    curves = power_curves(noise=1e-5)
    extrapolation = scaling_fits(curves)["methods"]["m"]["extrapolation"]
    assert extrapolation["k_held_out"] == 32 and extrapolation["ks_fitted"] == KS[:-1]
    assert extrapolation["observed"] == pytest.approx(1 - (0.6 * 32**-0.7 + 0.15), abs=1e-4)
    assert abs(extrapolation["free_c"]["error_pp"]) < 0.05
    # Without the offset the decay is misread: the prediction misses by points, not hundredths.
    assert abs(extrapolation["c_zero"]["error_pp"]) > 1
    low, high = (
        extrapolation["free_c"]["error_pp_ci_low"],
        extrapolation["free_c"]["error_pp_ci_high"],
    )
    assert low <= extrapolation["free_c"]["error_pp"] + 0.05 and high >= -0.05


def test_fits_are_withheld_with_a_reason():
    three_k = scaling_fits(power_curves(ks=[2, 4, 8]))["methods"]["m"]
    assert three_k["fitted"] is False and "free_c" not in three_k
    assert three_k["reason"].startswith("3 distinct k (2, 4, 8): a 3-parameter curve would pass")
    two_seeds = scaling_fits(power_curves(n_keys=2))["methods"]["m"]
    assert two_seeds["fitted"] is False and "2 replicate(s) at k = 1" in two_seeds["reason"]
    curves = power_curves(n_keys=3)
    curves.point["m"][3, 1] = np.nan  # a failed run leaves k = 8 with 2 replicates
    assert "2 replicate(s) at k = 8" in scaling_fits(curves)["methods"]["m"]["reason"]


def test_flat_curve_is_flagged_not_fitted_to_noise():
    flat = fit_curves(KS, np.full(len(KS), 0.4), True)
    assert flat["a"] == pytest.approx(0) and flat["c"] == pytest.approx(0.4)
    entry = scaling_fits(power_curves(a=0.0, noise=0.0))["methods"]["m"]
    assert "flat" in entry["free_c"]["note"]


def test_offset_comparison_of_an_exact_fit_is_valid_json():
    exact = compare_offset(sse_free=0.0, sse_zero=0.01, n_points=4)
    assert exact["f_statistic"] is None and exact["p_value"] == 0.0
    json.dumps(exact, allow_nan=False)


def test_offset_comparison_words_follow_the_numbers():
    hint = compare_offset(sse_free=1.0, sse_zero=3.0, n_points=6)  # F = 6 on 1 and 3 df
    assert hint["p_value"] == pytest.approx(scipy_stats.f.sf(6.0, 1, 3))
    assert hint["p_value"] > 0.05 and hint["aic_free_c"] < hint["aic_c_zero"]
    assert "though AIC prefers a free c" in hint["text"]


def test_vectorised_fit_is_never_worse_than_curve_fit_on_random_curves():
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(25):
        a, b, c = rng.uniform(0.1, 0.8), rng.uniform(0.05, 2.0), rng.uniform(0.0, 0.5)
        errors.append(a * np.asarray(KS, float) ** -b + c + rng.normal(0, 0.01, len(KS)))
    ours = fit_curves(KS, np.array(errors), True)
    for i, error in enumerate(errors):
        params, sse = _curve_fit(KS, error, True)
        assert ours["sse"][i] <= sse * (1 + 1e-6) + 1e-12
        if ours["sse"][i] > sse * (1 - 1e-3):  # the same optimum: the same parameters
            assert ours["b"][i] == pytest.approx(params[1], rel=1e-2, abs=1e-3)
