"""AULC, probability of improvement and data efficiency, each checked against a plain
loop / numpy / scipy computation on synthetic per-image correctness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from emoset_peft.study.curves import (
    Curves,
    aulc,
    common_ks,
    interval,
    resampled_mean,
)
from emoset_peft.study.efficiency import data_efficiency, k_needed
from emoset_peft.study.inference import summarize_replicates


def synthetic_curves(
    levels: dict[str, dict[int, float]], n_keys=3, n_images=200, n_boot=300, seed=0, missing=()
):
    """Curves whose replicate metrics come from 0/1 correctness per image, plus the raw parts.

    ``levels[m][k]`` is the chance of a correct answer; ``missing`` lists (method, k, key index)
    replicates that failed (NaN).
    """
    rng = np.random.default_rng(seed)
    keys = [(10 + i, 20 + i) for i in range(n_keys)]
    weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=n_boot)
    index = rng.integers(0, n_keys, size=(n_boot, n_keys))
    correct, ks, point, boot = {}, {}, {}, {}
    for method, curve in levels.items():
        ks[method] = sorted(curve)
        shift = rng.normal(0, 0.03, n_keys)  # a seed effect shared by the whole curve
        c = np.stack(
            [
                rng.random((n_keys, n_images)) < np.clip(curve[k] + shift, 0, 1)[:, None]
                for k in ks[method]
            ]
        ).astype(float)  # [len(ks), K, n]
        for m, k, key in missing:
            if m == method:
                c[ks[method].index(k), key] = np.nan
        correct[method] = c
        point[method] = c.mean(axis=2)
        boot[method] = np.einsum("krn,bn->bkr", c, weights) / n_images
    curves = Curves(
        metric="accuracy",
        keys=keys,
        ks=ks,
        point=point,
        boot=boot,
        replicate_index=index,
        n_boot=n_boot,
        seed=seed,
    )
    return curves, correct, weights


def _aulc_by_loop(values_by_k: dict[int, float]) -> float:
    ks = sorted(values_by_k)
    x = np.log2(ks)
    return float(np.trapezoid([values_by_k[k] for k in ks], x) / (x[-1] - x[0]))


LEVELS = {
    "lora": {1: 0.30, 2: 0.40, 4: 0.50, 8: 0.60, 16: 0.66},
    "ia3": {1: 0.25, 2: 0.33, 4: 0.45, 8: 0.55, 32: 0.70},
    "linear": {2: 0.30, 4: 0.35, 8: 0.40, 16: 0.45},
}


def test_aulc_matches_trapezoid_on_common_k_and_bootstrap_by_loop():
    curves, correct, weights = synthetic_curves(LEVELS)
    result = aulc(curves)
    json.dumps(result, allow_nan=False)
    assert result["ks_used"] == [2, 4, 8] == common_ks(curves)
    for method in LEVELS:
        rows = [curves.ks[method].index(k) for k in (2, 4, 8)]
        per_key = [
            _aulc_by_loop(dict(zip((2, 4, 8), correct[method][rows, r].mean(axis=1))))
            for r in range(3)
        ]
        entry = result["methods"][method]
        assert entry["aulc"] == pytest.approx(np.mean(per_key))
        assert sorted(entry["replicates"].values()) == pytest.approx(sorted(per_key))
        assert 0 <= entry["ci_low"] <= entry["aulc"] <= entry["ci_high"] <= 1
    # Each replicate's AULC under each draw's image weights, by hand (a curve is one unit),
    # fed to the two-level summary that per-cell intervals use.
    rows = [curves.ks["lora"].index(k) for k in (2, 4, 8)]
    boot = np.array(
        [
            [
                _aulc_by_loop(
                    {
                        k: np.average(correct["lora"][row, r], weights=weights[b])
                        for k, row in zip((2, 4, 8), rows)
                    }
                )
                for r in range(3)
            ]
            for b in range(curves.n_boot)
        ]
    )
    values = [
        _aulc_by_loop(dict(zip((2, 4, 8), correct["lora"][rows, r].mean(axis=1)))) for r in range(3)
    ]
    expected = summarize_replicates(values, boot, bounds=(0.0, 1.0))
    lora = result["methods"]["lora"]
    assert (lora["ci_low"], lora["ci_high"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"])
    )
    assert lora["seed_sd"] == pytest.approx(np.std(values, ddof=1)) and lora["reliable"]


def test_aulc_pairs_are_paired_on_replicates():
    curves = synthetic_curves(LEVELS)[0]
    result = aulc(curves)
    pair = next(p for p in result["pairs"] if (p["a"], p["b"]) == ("lora", "linear"))
    methods = result["methods"]
    assert pair["difference"] == pytest.approx(methods["lora"]["aulc"] - methods["linear"]["aulc"])
    assert pair["n_paired"] == 3 and pair["ci_low"] > 0 and pair["p_value"] < 0.05
    assert pair["probability_of_improvement"] is None and ">= 5" in pair["poi_reason"]
    # Two pairs: an interval (marked unreliable) but no p-value.
    two = synthetic_curves(LEVELS, n_keys=2)[0]
    pair = aulc(two)["pairs"][0]
    assert pair["p_value"] is None and "2 pair(s)" in pair["p_reason"]
    assert pair["reliable"] is False and "2 seeds" in pair["reason"]


def test_probability_of_improvement_matches_mann_whitney():
    curves, _, _ = synthetic_curves(
        {"a": {1: 0.4, 4: 0.6}, "b": {1: 0.38, 4: 0.58}}, n_keys=6, seed=3
    )
    pair = aulc(curves)["pairs"][0]
    per_a = list(aulc(curves)["methods"]["a"]["replicates"].values())
    per_b = list(aulc(curves)["methods"]["b"]["replicates"].values())
    u = scipy_stats.mannwhitneyu(per_a, per_b).statistic
    assert pair["probability_of_improvement"] == pytest.approx(u / (6 * 6))
    assert 0 <= pair["poi_ci_low"] <= pair["probability_of_improvement"] <= pair["poi_ci_high"] <= 1


def test_aulc_withholds_what_the_data_cannot_support():
    one_k = synthetic_curves({"a": {4: 0.5, 8: 0.6}, "b": {8: 0.6, 16: 0.7}})[0]
    result = aulc(one_k)
    assert result["methods"] == {} and "common k: [8]" in result["reason"]
    # A method run at one k only is left out (named) instead of shrinking everyone's k to one.
    single = synthetic_curves(
        {"a": {1: 0.4, 2: 0.5, 4: 0.6}, "b": {1: 0.3, 4: 0.5}, "probe": {4: 0.45}}
    )[0]
    result = aulc(single)
    assert result["ks_used"] == [1, 4] and set(result["methods"]) == {"a", "b"}
    assert result["left_out"] == {"probe": "measured at k = 4 only: no curve"}
    assert data_efficiency(single)["left_out"] == result["left_out"]
    # A replicate missing one k drops its whole curve, not a point of it.
    curves = synthetic_curves({"a": {1: 0.4, 2: 0.5}}, missing=[("a", 2, 0)])[0]
    entry = aulc(curves)["methods"]["a"]
    assert entry["n_replicates"] == 2 and "2 seeds" in entry["reason"] and not entry["reliable"]
    assert "10/20" not in entry["replicates"]


def test_resampled_mean_skips_missing_replicates():
    per_key = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    index = np.array([[0, 1, 1], [1, 1, 2]])
    assert resampled_mean(per_key, index) == pytest.approx([1.0, 7 / 3])
    assert np.isnan(resampled_mean(per_key, np.array([[1, 1, 1], [0, 0, 0]]))[0])


def test_k_needed_interpolates_in_log2_k_with_markers():
    ks = [1, 2, 4, 8, 16]
    curve = np.array([0.30, 0.50, 0.60, 0.70, 0.72])
    # 0.63 lies between k = 4 (0.60) and 8 (0.70), 30% of the way in log2 k.
    assert k_needed(curve, ks, 0.63) == pytest.approx(2.3)
    assert k_needed(curve, ks, 0.2) == 0.0 and np.isinf(k_needed(curve, ks, 0.9))
    assert k_needed(np.array([0.2, 0.7, 0.5, 0.9]), [1, 2, 4, 8], 0.6) < 1  # first crossing
    batch = np.stack([curve, curve + 0.05])
    expected = np.interp(0.63, curve + 0.05, np.log2(ks))  # monotone curve: interp is the crossing
    assert k_needed(batch, ks, 0.63) == pytest.approx([2.3, expected])


def test_data_efficiency_common_target_and_markers():
    curves, correct, _ = synthetic_curves(LEVELS)
    result = data_efficiency(curves)
    json.dumps(result, allow_nan=False)
    assert result["ks_used"] == [2, 4, 8]
    means = {m: [correct[m][curves.ks[m].index(k)].mean() for k in (2, 4, 8)] for m in LEVELS}
    best = max(means, key=lambda m: means[m][-1])
    assert best == "lora" and result["target"] == pytest.approx(0.9 * means["lora"][-1])
    for method, entry in result["methods"].items():
        expected = np.interp(result["target"], means[method], np.log2([2, 4, 8]))
        if means[method][-1] < result["target"]:
            assert entry["k_needed"] == {"k": None, "bound": ">", "text": "> 8"}
        else:
            assert entry["k_needed"]["k"] == pytest.approx(2**expected)
    assert result["methods"]["linear"]["k_needed"]["text"] == "> 8"
    assert result["methods"]["linear"]["ci_high"]["text"] == "> 8"
    low = data_efficiency(curves, target=0.1)["methods"]["lora"]
    assert low["k_needed"]["text"] == "<= 2" and low["ci_high"]["text"] == "<= 2"
    lora = result["methods"]["lora"]
    assert lora["ci_low"]["k"] <= lora["k_needed"]["k"] <= lora["ci_high"]["k"]


def test_interval_widens_percentiles_for_few_replicates():
    values = np.random.default_rng(0).normal(0.5, 0.1, 1000)
    low, high = np.percentile(values, [2.5, 97.5])
    assert interval(values, 3) == pytest.approx((low, high))  # no estimate: plain percentiles
    assert interval(values, 1, 0.5) == pytest.approx((low, high))  # 1 replicate: nothing to fix
    factor = np.sqrt(3 / 2)
    assert interval(values, 3, 0.5) == pytest.approx(
        (0.5 - factor * (0.5 - low), 0.5 + factor * (high - 0.5))
    )
    assert interval(values, 3, 0.5, (0.4, 0.6)) == (0.4, 0.6)
    assert interval(np.array([np.nan]), 3) == (None, None)
