"""Study statistics checked against scipy: t-intervals, paired t-tests, power-law fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats

from emoset_peft.study.stats import (
    data_efficiency,
    fit_power_law,
    paired_comparisons,
    paired_difference,
    summarize,
    summarize_results,
)


def test_summarize_matches_scipy_t_interval():
    values = [0.61, 0.64, 0.58, 0.66]
    result = summarize(values)
    low, high = scipy_stats.t.interval(
        0.95, df=3, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert result["mean"] == pytest.approx(np.mean(values))
    assert result["std"] == pytest.approx(np.std(values, ddof=1))
    assert result["n"] == 4
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    # Wider than the normal approximation, which is too narrow for 4 seeds.
    assert high - np.mean(values) > 1.96 * scipy_stats.sem(values)


def test_summarize_small_and_missing():
    one = summarize(["0.5", "", None, float("nan")])  # CSV cells: strings and blanks
    assert one["n"] == 1 and one["mean"] == 0.5
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    none = summarize([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    same = summarize([0.3, 0.3, 0.3])
    assert same["ci_low"] == pytest.approx(0.3) and same["ci_high"] == pytest.approx(0.3)


def test_summarize_results_groups_and_orders():
    rows = [
        {"method": "lora", "per_class": "8", "seed": "0", "test_accuracy": "0.7"},
        {"method": "lora", "per_class": "all", "seed": "0", "test_accuracy": "0.9"},
        {"method": "lora", "per_class": "2", "seed": "0", "test_accuracy": "0.4"},
        {"method": "lora", "per_class": "8", "seed": "1", "test_accuracy": "0.8"},
        {"method": "linear", "per_class": 8, "seed": "0", "test_accuracy": 0.6},
    ]
    summary = summarize_results(rows)
    assert [(e["method"], e["per_class"]) for e in summary] == [
        ("lora", 2),
        ("lora", 8),
        ("lora", "all"),
        ("linear", 8),
    ]
    assert summary[1]["mean"] == pytest.approx(0.75) and summary[1]["n"] == 2


def test_paired_difference_matches_ttest_rel():
    a = {0: 0.71, 1: 0.65, 2: 0.69, 3: 0.74, 9: 0.99}  # seed 9 has no partner
    b = {0: 0.66, 1: 0.64, 2: 0.62, 3: 0.70, 7: 0.10}
    result = paired_difference(a, b)
    xa, xb = np.array([0.71, 0.65, 0.69, 0.74]), np.array([0.66, 0.64, 0.62, 0.70])
    diffs = xa - xb
    low, high = scipy_stats.t.interval(0.95, df=3, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert result["n"] == 4
    assert result["mean_diff"] == pytest.approx(diffs.mean())
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    assert result["p_value"] == pytest.approx(scipy_stats.ttest_rel(xa, xb).pvalue)


def test_paired_difference_with_one_pair_is_nan_not_an_error():
    result = paired_difference({0: 0.5, 1: 0.6}, {1: 0.4})
    assert result["n"] == 1 and result["mean_diff"] == pytest.approx(0.2)
    assert math.isnan(result["ci_low"]) and math.isnan(result["p_value"])
    assert paired_difference({0: 0.5}, {1: 0.4})["n"] == 0


def test_paired_comparisons_pair_on_data_seed():
    rows = []
    for seed, (base, other) in enumerate([(0.60, 0.65), (0.55, 0.62), (0.58, 0.61)]):
        rows.append(
            {
                "method": "linear",
                "per_class": "4",
                "seed": str(seed),
                "data_seed": str(10 + seed),
                "test_accuracy": str(base),
            }
        )
        # The other method lists its seeds in another order: pairing must use data_seed.
        rows.insert(
            0,
            {
                "method": "lora",
                "per_class": "4",
                "seed": str(seed + 100),
                "data_seed": str(10 + seed),
                "test_accuracy": str(other),
            },
        )
    rows.append(
        {
            "method": "lora",
            "per_class": "16",
            "seed": "0",
            "data_seed": "10",
            "test_accuracy": "0.7",
        }
    )  # no baseline at k = 16: no comparison
    comparisons = paired_comparisons(rows, "linear")
    assert len(comparisons) == 1
    result = comparisons[0]
    assert (result["method"], result["baseline"], result["per_class"]) == ("lora", "linear", 4)
    expected = scipy_stats.ttest_rel([0.65, 0.62, 0.61], [0.60, 0.55, 0.58])
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["mean_diff"] == pytest.approx(np.mean([0.05, 0.07, 0.03]))


def test_power_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    ks = np.repeat([1, 2, 4, 8, 16, 32, 64], 3).astype(float)
    seeds = np.tile([0, 1, 2], 7)
    true_a, true_b, true_c = 0.6, 0.7, 0.15
    error = true_a * ks**-true_b + true_c + rng.normal(0, 0.004, ks.size)
    fit = fit_power_law(ks, error, seeds=seeds, n_bootstrap=100)
    assert fit["ok"] and fit["model"] == "a*k^-b+c"
    assert fit["a"] == pytest.approx(true_a, abs=4 * fit["a_se"] + 0.02)
    assert fit["b"] == pytest.approx(true_b, abs=4 * fit["b_se"] + 0.02)
    assert fit["c"] == pytest.approx(true_c, abs=4 * fit["c_se"] + 0.01)
    assert 0 < fit["b_se"] < 0.2
    assert fit["b_boot_low"] <= fit["b"] <= fit["b_boot_high"]
    assert fit["n_points"] == 21 and fit["n_k"] == 7
    # Same answer and standard errors as curve_fit called directly.
    params, covariance = optimize.curve_fit(
        lambda k, a, b, c: a * k**-b + c, ks, error, p0=[0.5, 0.5, 0.1]
    )
    assert [fit["a"], fit["b"], fit["c"]] == pytest.approx(params, rel=1e-3)
    assert fit["b_se"] == pytest.approx(np.sqrt(covariance[1, 1]), rel=1e-2)


def test_power_law_falls_back_and_never_raises():
    three_k = fit_power_law([2, 4, 8, 2, 4, 8], [0.5, 0.35, 0.25, 0.52, 0.36, 0.24])
    assert three_k["ok"] and three_k["model"] == "a*k^-b" and three_k["c"] == 0.0
    assert three_k["b"] == pytest.approx(0.5, abs=0.05)
    one_seed = fit_power_law([1, 2, 4, 8], [0.6, 0.45, 0.36, 0.31], seeds=[0] * 4, n_bootstrap=20)
    assert one_seed["ok"] and math.isnan(one_seed["b_boot_low"]) and one_seed["n_bootstrap"] == 0
    for k, error in (
        [[], []],
        [[4], [0.3]],
        [[4, 4, 4], [0.3, 0.31, 0.29]],
        [[0, 0, 1], [0.5, 0.5, 0.4]],
        [[1, 2], [0.3]],
        [[1, 2, 4], [float("nan")] * 3],
    ):
        fit = fit_power_law(k, error)
        assert fit["ok"] is False and fit["reason"]


def test_data_efficiency_interpolates_in_log2_k():
    curve = {1: 0.30, 2: 0.50, 4: 0.60, 8: 0.70, 16: 0.72}
    # 90% of 0.70 = 0.63: between k = 4 (0.60) and 8 (0.70), 30% of the way in log2.
    assert data_efficiency(curve, 0.70) == pytest.approx(2 ** (2 + 0.3))
    assert data_efficiency(curve, 0.30) == 1.0  # reached at the smallest k
    assert data_efficiency(curve, 0.90) is None  # 0.81 never reached
    assert data_efficiency({0: 0.9, "all": 0.9, 4: 0.2}, 0.5) is None  # only k >= 1 counts
    assert data_efficiency({}, 0.5) is None
    non_monotone = {1: 0.2, 2: 0.7, 4: 0.5, 8: 0.9}
    assert data_efficiency(non_monotone, 0.7, fraction=0.9) < 2  # first crossing wins
