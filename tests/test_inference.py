"""Image-level study inference checked against independent computations (scipy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from emoset_peft.study.bootstrap import make_draws, replicate_metric
from emoset_peft.study.inference import (
    adjust_family,
    benjamini_hochberg,
    cell_summary,
    guarded_t_test,
    holm,
    mcnemar_exact,
    study_inference,
    wilson_se,
)
from emoset_peft.study.predictions import CellPredictions, StudyPredictions

N_IMAGES = 320


def _study(n_seeds: dict, accuracy: dict, n=N_IMAGES, seed=0, shared=0.8) -> StudyPredictions:
    """Cells whose errors fall mostly (``shared``) on the same hard images, as in real studies."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, n)
    difficulty = rng.random(n)
    cells = {}
    for (method, k), n_rep in n_seeds.items():
        wrong = (labels + rng.integers(1, 8, (n_rep, n))) % 8
        own = np.where(rng.random((n_rep, n)) < shared, difficulty, rng.random((n_rep, n)))
        right = own < accuracy[method]
        predictions = np.where(right, labels, wrong).astype(np.int16)
        cells[(method, k)] = CellPredictions(
            method, k, [(s, s) for s in range(1, n_rep + 1)], predictions, None
        )
    return StudyPredictions(
        [f"{i:04d}" for i in range(n)], labels, [str(c) for c in range(8)], cells, None, []
    )


@pytest.mark.parametrize("b, c", [(0, 0), (5, 0), (0, 7), (30, 45), (120, 118), (3, 11)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    correct_a = np.array([True] * b + [False] * c + [True] * 40 + [False] * 9)
    correct_b = np.array([False] * b + [True] * c + [True] * 40 + [False] * 9)
    result = mcnemar_exact(correct_a, correct_b)
    assert (result["b"], result["c"]) == (b, c)
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert result["p"] == pytest.approx(expected, rel=1e-12)


def test_multiplicity_adjustments():
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    random_p = np.random.default_rng(0).random(40) ** 3
    assert benjamini_hochberg(random_p) == pytest.approx(
        stats.false_discovery_control(random_p, method="bh")
    )
    # Holm by its definition: the i-th smallest p times (m - i + 1), made monotone, capped at 1.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    family = [{"p_value": 0.01}, {"p_value": None}, {"p_value": 0.04}]
    adjust_family(family)
    assert family[1]["p_holm"] is None and family[1]["p_bh"] is None
    assert family[0]["p_holm"] == pytest.approx(0.02) and family[2]["p_bh"] == pytest.approx(0.04)


def test_t_test_only_when_it_means_something():
    assert guarded_t_test([0.5, 0.6], [0.4, 0.5]) == {
        "p": None,
        "reason": "2 pairs: too few for a t-test",
    }
    # The case: every seed differs by exactly -2 of 320 images (spread = float noise).
    a = np.array([0.61, 0.64, 0.58])
    result = guarded_t_test(a - 2 / 320, a)
    assert result["p"] is None and "no spread" in result["reason"]
    a, b = [0.61, 0.64, 0.58, 0.66], [0.60, 0.61, 0.59, 0.62]
    assert guarded_t_test(a, b)["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


@pytest.mark.parametrize("accuracy, n", [(0.7, 320), (0.02, 50), (1.0, 40)])
def test_wilson_se_matches_scipy(accuracy, n):
    low, high = stats.binomtest(round(accuracy * n), n).proportion_ci(method="wilson")
    assert wilson_se(accuracy, n) == pytest.approx((high - low) / 2 / 1.959964, rel=1e-6)


def test_one_replicate_interval_agrees_with_scipy_bootstrap():
    """With one seed the interval is images only: it must agree with scipy's bootstrap."""
    study = _study({("lora", 8): 1}, {"lora": 0.7}, n=400, shared=0.0)
    cell = study.cells[("lora", 8)]
    draws = make_draws(400, cell.replicates, n_boot=4000, seed=1)
    entry = cell_summary(cell, study.labels, "accuracy", weights=draws.image_weights)
    correct = cell.correct(study.labels)[0].astype(float)
    reference = stats.bootstrap(
        (correct,),
        np.mean,
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(2),
    )
    assert np.sqrt(entry["var_image"]) == pytest.approx(reference.standard_error, rel=0.06)
    assert entry["ci_low"] == pytest.approx(reference.confidence_interval.low, abs=0.006)
    assert entry["ci_high"] == pytest.approx(reference.confidence_interval.high, abs=0.006)
    assert entry["reliable"] is False and "1 seed" in entry["note"]
    assert entry["seed_sd"] is None and entry["share_seed"] is None


def test_identical_shift_is_not_significant():
    """The issue's ia3-vs-lora case: each seed loses exactly 2 of 320 images."""
    study = _study({("lora", 32): 3}, {"lora": 0.6})
    base = study.cells[("lora", 32)]
    predictions = base.predictions.copy()
    labels = study.labels
    for r in range(3):  # 20 images flip each way plus 2 more lost: McNemar b=20, c=22
        right = np.flatnonzero(predictions[r] == labels)
        wrong = np.flatnonzero(predictions[r] != labels)
        predictions[r, right[:22]] = (labels[right[:22]] + 1) % 8
        predictions[r, wrong[:20]] = labels[wrong[:20]]
    study.cells[("ia3", 32)] = CellPredictions("ia3", 32, base.replicates, predictions, None)
    out = study_inference(study, baseline="lora", metrics=("accuracy",), n_boot=500)
    (comparison,) = out["comparisons"]
    assert comparison["diff"] == pytest.approx(-2 / 320)
    assert comparison["t_test"]["p"] is None and "no spread" in comparison["t_test"]["reason"]
    assert comparison["p_value"] > 0.5
    assert comparison["ci_low"] < 0 < comparison["ci_high"]
    for test in comparison["mcnemar"]:
        assert (test["b"], test["c"]) == (20, 22)
        assert test["p"] == pytest.approx(stats.binomtest(20, 42).pvalue)


def test_study_inference_is_json_and_marks_small_seed_counts():
    study = _study(
        {
            ("lora", 1): 1,
            ("lora", 4): 2,
            ("lora", 16): 3,
            ("ia3", 1): 1,
            ("ia3", 4): 2,
            ("ia3", 16): 3,
            ("ia3", 32): 3,
        },
        {"lora": 0.5, "ia3": 0.6},
    )
    out = study_inference(study, n_boot=300, seed=3)
    text = json.dumps(out, allow_nan=False)  # no NaN anywhere
    assert json.loads(text) == out
    assert out["baseline"] == "lora" and out["n_boot"] == 300 and out["seed"] == 3
    cells = {(c["method"], c["per_class"], c["metric"]): c for c in out["cells"]}
    assert len(cells) == 14
    for cell in cells.values():
        assert 0 <= cell["ci_low"] <= cell["mean"] <= cell["ci_high"] <= 1
        assert cell["reliable"] is (cell["n_replicates"] >= 3)
        assert (cell["note"] is None) is cell["reliable"]
        assert (cell["wilson_se"] is None) is (cell["metric"] == "macro_f1")
        if cell["n_replicates"] >= 2:
            assert cell["share_seed"] + cell["share_image"] == pytest.approx(1)
            values = [r["value"] for r in cell["per_replicate"]]
            assert cell["seed_sd"] == pytest.approx(np.std(values, ddof=1))
    # Accuracy per replicate is the plain fraction of correct images.
    lora16 = study.cells[("lora", 16)]
    assert [r["value"] for r in cells[("lora", 16, "accuracy")]["per_replicate"]] == pytest.approx(
        lora16.correct(study.labels).mean(axis=1)
    )
    comparisons = {(c["per_class"], c["metric"]): c for c in out["comparisons"]}
    assert set(comparisons) == {(k, m) for k in (1, 4, 16) for m in ("accuracy", "macro_f1")}
    for (_k, metric), comparison in comparisons.items():
        assert comparison["method"] == "ia3" and comparison["baseline"] == "lora"
        if comparison["n_pairs"] < 3:
            assert comparison["p_value"] is None and "too few" in comparison["p_reason"]
            assert comparison["p_holm"] is None and comparison["reliable"] is False
        else:
            assert 0 < comparison["p_value"] <= 1 and comparison["p_holm"] >= comparison["p_bh"]
        assert (comparison["mcnemar"] is None) is (metric == "macro_f1")
    # A true 10 pp difference over 3 seeds and 320 images is found.
    assert comparisons[(16, "accuracy")]["p_value"] < 0.05
    planning = {(p["method"], p["per_class"], p["metric"]): p for p in out["planning"]}
    assert planning[("lora", 1, "accuracy")]["by_seeds"] is None
    table = planning[("lora", 16, "accuracy")]["by_seeds"]
    widths = [row["half_width"] for row in table]
    assert [row["seeds"] for row in table] == [3, 5, 10, 20] and widths == sorted(widths)[::-1]


def test_planning_says_when_the_test_set_is_the_limit():
    # 320 images at 50%: the test images alone give about +-5.5 pp, so +-1 pp is unreachable.
    study = _study({("lora", 16): 5}, {"lora": 0.5})
    out = study_inference(study, metrics=("accuracy",), n_boot=400)
    (plan,) = out["planning"]
    assert plan["seeds_for_target"] is None and "not reachable" in plan["note"]
    # A huge test set with identical seeds except a seed effect: seeds are the limit.
    rng = np.random.default_rng(1)
    n = 20000
    labels = rng.integers(0, 8, n)
    shared = rng.random(n)
    predictions = np.stack(
        [np.where(shared < p, labels, (labels + 1) % 8) for p in (0.60, 0.63, 0.66, 0.69)]
    ).astype(np.int16)
    cell = CellPredictions("lora", 16, [(s, s) for s in range(4)], predictions, None)
    study = StudyPredictions(
        [str(i) for i in range(n)], labels, list("abcdefgh"), {("lora", 16): cell}, None, []
    )
    (plan,) = study_inference(study, metrics=("accuracy",), n_boot=200)["planning"]
    assert plan["dominant"] == "seeds" and plan["seeds_for_target"] > 20
    assert plan["seed_sd"] == pytest.approx(np.std([0.60, 0.63, 0.66, 0.69], ddof=1), rel=0.1)


def test_replicate_metric_boot_shapes_follow_draws():
    study = _study({("lora", 4): 3}, {"lora": 0.5})
    draws = make_draws(N_IMAGES, [(1, 1), (2, 2), (3, 3)], n_boot=50)
    boot = replicate_metric(study.cells[("lora", 4)], study.labels, "macro_f1", draws.image_weights)
    assert boot.shape == (50, 3) and np.all((boot >= 0) & (boot <= 1))


def test_degenerate_cells_say_so():
    study = _study({("lora", 4): 3}, {"lora": 1.0})  # every image right in every seed
    study.cells[("ia3", 4)] = CellPredictions(
        "ia3",
        4,
        study.cells[("lora", 4)].replicates,
        study.cells[("lora", 4)].predictions.copy(),
        None,
    )
    out = study_inference(study, metrics=("accuracy",), n_boot=200)
    cell = out["cells"][0]
    assert cell["mean"] == cell["ci_low"] == cell["ci_high"] == 1.0
    assert cell["reliable"] is False and "no width" in cell["note"]
    assert 0 < cell["wilson_se"] < 0.01
    (comparison,) = out["comparisons"]
    assert comparison["diff"] == 0 and comparison["p_value"] == 1.0
    assert comparison["t_test"]["p"] is None and comparison["reliable"] is False
    assert all(test["b"] == test["c"] == 0 and test["p"] == 1.0 for test in comparison["mcnemar"])


def test_make_draws_in_blocks_matches_counts():
    draws = make_draws(70_000, [1, 2], n_boot=130, seed=0)  # several blocks of rows
    assert draws.image_weights.shape == (130, 70_000)
    assert np.all(draws.image_weights.sum(axis=1) == 70_000)
    assert np.array_equal(
        make_draws(70_000, [1, 2], n_boot=130, seed=0).image_weights, draws.image_weights
    )
