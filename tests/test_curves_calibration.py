"""Calibration (NLL against sklearn, ECE against a plain loop) and slices (Wilson against
scipy.stats.binomtest) on synthetic study predictions."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import log_loss

from emoset_peft.study.calibration import (
    calibration_table,
    cell_calibration,
    cell_slices,
    expected_calibration_error,
    negative_log_likelihood,
    slice_table,
    wilson_interval,
)


def _probabilities(rng, n_rep, n, classes, labels, sharpness=3.0):
    logits = rng.normal(0, 1, (n_rep, n, classes))
    logits[:, np.arange(n), labels] += rng.normal(1.0, 1.0, (n_rep, n))  # right more often
    exp = np.exp(sharpness * logits)
    return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)


def _study(n=400, classes=8, n_rep=3, seed=0, attributes=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    probs = _probabilities(rng, n_rep, n, classes, labels)
    cell = SimpleNamespace(
        method="lora",
        per_class=4,
        replicates=[(i, i) for i in range(n_rep)],
        predictions=probs.argmax(-1).astype(np.int16),
        probabilities=probs,
    )
    return SimpleNamespace(
        labels=labels,
        cells={("lora", 4): cell},
        attributes=attributes,
        image_ids=[f"img_{i:04d}" for i in range(n)],
    )


def _ece_reference(probs, labels, bins=15):
    """Guo et al. (2017): bins (lower, upper], |accuracy - confidence| weighted by bin share."""
    confidence, prediction = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lower, upper in itertools.pairwise(edges):
        inside = (confidence > lower) & (confidence <= upper)
        if inside.any():
            accuracy = np.mean(prediction[inside] == labels[inside])
            total += inside.mean() * abs(accuracy - confidence[inside].mean())
    return total


def test_nll_matches_sklearn_and_ece_matches_a_loop():
    study = _study()
    cell = study.cells[("lora", 4)]
    entry = cell_calibration(cell, study.labels)
    json.dumps(entry, allow_nan=False)
    probs = cell.probabilities.astype(np.float64)
    probs /= probs.sum(-1, keepdims=True)
    nll = [log_loss(study.labels, p, labels=range(8)) for p in probs]
    ece = [_ece_reference(p, study.labels) for p in probs]
    assert negative_log_likelihood(probs, study.labels) == pytest.approx(nll)
    assert expected_calibration_error(probs, study.labels) == pytest.approx(ece)
    assert entry["nll"] == pytest.approx(np.mean(nll)) and entry["ece"] == pytest.approx(
        np.mean(ece)
    )
    assert entry["ece_sd"] == pytest.approx(np.std(ece, ddof=1))
    assert entry["replicates"]["1/1"]["nll"] == pytest.approx(nll[1])
    assert entry["bins"] == 15 and entry["n_replicates"] == 3
    # Edges: a confidence of exactly 1 and of exactly a bin edge land where the loop puts them.
    edge = np.array([[1.0, 0.0], [0.6, 0.4], [2 / 3, 1 / 3]])
    assert expected_calibration_error(edge, np.array([0, 1, 0]), bins=3) == pytest.approx(
        _ece_reference(edge, np.array([0, 1, 0]), bins=3)
    )


def test_calibration_without_probabilities_says_why():
    study = _study(n_rep=1)
    cell = study.cells[("lora", 4)]
    assert "1 replicate" in cell_calibration(cell, study.labels)["reason"]
    cell.probabilities = None
    (entry,) = calibration_table(study)
    assert entry["nll"] is None and "no class probabilities" in entry["reason"]


def test_wilson_interval_matches_binomtest():
    for successes, n in [(0, 12), (7, 20), (16, 16), (130, 320), (1, 3)]:
        expected = scipy_stats.binomtest(successes, n).proportion_ci(method="wilson")
        assert wilson_interval(successes / n, n) == pytest.approx((expected.low, expected.high))
    assert wilson_interval(0.5, 0) == (None, None)


def test_slices_have_wilson_intervals_and_small_flags():
    n = 400
    rng = np.random.default_rng(1)
    faces = [None if rng.random() < 0.93 else "happy" for _ in range(n)]  # ~28 with a face
    attributes = {
        "facial_expression": faces,
        "brightness": list(np.round(rng.random(n), 1)),
        "scene": [f"scene_{i}" for i in rng.integers(0, 8, n)],
    }
    study = _study(n=n, attributes=attributes)
    result = cell_slices(study, "lora", 4)
    json.dumps(result, allow_nan=False)
    assert set(result["attributes"]) == {"facial_expression", "brightness", "scene"}
    assert len(result["attributes"]["scene"]) == 5
    cell = study.cells[("lora", 4)]
    present = np.array([face is not None for face in faces])
    entry = result["attributes"]["facial_expression"]["present"]
    per_replicate = [(row[present] == study.labels[present]).mean() for row in cell.predictions]
    assert entry["n"] == present.sum() == 29 and entry["small"] is True
    assert entry["accuracy"] == pytest.approx(np.mean(per_replicate))
    assert entry["sd"] == pytest.approx(np.std(per_replicate, ddof=1))
    absent = result["attributes"]["facial_expression"]["absent"]
    assert absent["small"] is False
    # With one replicate the accuracy is a whole count: the interval is binomtest's Wilson.
    single = _study(n=n, n_rep=1, attributes=attributes)
    one = cell_slices(single, "lora", 4)["attributes"]["facial_expression"]["absent"]
    successes = round(one["accuracy"] * one["n"])
    expected = scipy_stats.binomtest(successes, one["n"]).proportion_ci(method="wilson")
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert one["sd"] is None


def test_slices_without_attributes_say_why():
    assert "no attributes" in cell_slices(_study(), "lora", 4)["reason"]
    study = _study(attributes={"scene": ["a"] * 400})
    assert "no cell" in cell_slices(study, "lora", 8)["reason"]


def test_slice_table_from_metrics_json_entries():
    runs = [
        {"scene": {"beach": {"n": 40, "accuracy": 0.5}, "forest": {"n": 12, "accuracy": 0.25}}},
        {"scene": {"beach": {"n": 40, "accuracy": 0.6}}},
        None,
    ]  # a run without metrics.json slices
    table = slice_table(runs)
    beach, forest = table["scene"]["beach"], table["scene"]["forest"]
    assert beach["accuracy"] == pytest.approx(0.55) and beach["n_replicates"] == 2
    assert beach["sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1)) and beach["small"] is False
    expected = scipy_stats.binomtest(3, 12).proportion_ci(method="wilson")
    assert (forest["ci_low"], forest["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert forest["small"] is True and forest["sd"] is None
