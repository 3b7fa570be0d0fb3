"""The two-level bootstrap core: draws, and weighted metrics checked against scikit-learn on the
resampled images listed out one by one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn.metrics import accuracy_score, f1_score

from emoset_peft.engine.metrics import classification_metrics
from emoset_peft.labels import EMOTIONS
from emoset_peft.study.bootstrap import (
    make_draws,
    metric_from_predictions,
    replicate_metric,
    resampled_cell_metric,
    two_level_interval,
    two_level_p_value,
    union_keys,
    variance_parts,
)
from emoset_peft.study.predictions import CellPredictions


def _cell(predictions, keys=None, method="lora", k=4):
    predictions = np.asarray(predictions, dtype=np.int16)
    keys = keys or [(s, s) for s in range(predictions.shape[0])]
    return CellPredictions(method, k, list(keys), predictions, None)


def _random_study(seed=0, n=60, replicates=3, classes=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    # Mostly right, sometimes one of two classes (so some classes are never predicted).
    noise = rng.choice([1, 2], size=(replicates, n))
    predictions = np.where(rng.random((replicates, n)) < 0.6, labels, (labels + noise) % classes)
    predictions[:, labels == 7] = 0  # class 7 is in the labels but never predicted
    return labels, predictions


def test_make_draws_shapes_counts_and_determinism():
    keys = [(1, 1), (2, 2), (3, 3)]
    draws = make_draws(50, keys, n_boot=40, seed=7)
    assert draws.image_weights.shape == (40, 50) and draws.image_weights.dtype == np.float32
    assert np.all(draws.image_weights.sum(axis=1) == 50)  # n images per replicate
    assert draws.replicate_index.shape == (40, 3)
    assert draws.replicate_index.min() >= 0 and draws.replicate_index.max() <= 2
    assert draws.n_boot == 40 and draws.seed == 7 and draws.replicate_keys == keys
    again = make_draws(50, keys, n_boot=40, seed=7)
    assert np.array_equal(again.image_weights, draws.image_weights)
    assert np.array_equal(again.replicate_index, draws.replicate_index)
    assert not np.array_equal(
        make_draws(50, keys, n_boot=40, seed=8).image_weights, draws.image_weights
    )
    # A study that gains a seed keeps its image draws.
    more = make_draws(50, keys + [(4, 4)], n_boot=40, seed=7)
    assert np.array_equal(more.image_weights, draws.image_weights)
    # Each image is drawn with probability 1/n: mean count 1.
    big = make_draws(20, keys, n_boot=4000, seed=1)
    assert big.image_weights.mean(axis=0) == pytest.approx(np.ones(20), abs=0.06)


def test_unweighted_metrics_match_classification_metrics():
    labels, predictions = _random_study()
    cell = _cell(predictions)
    accuracy = replicate_metric(cell, labels, "accuracy")
    macro_f1 = replicate_metric(cell, labels, "macro_f1")
    assert accuracy.shape == macro_f1.shape == (3,)
    for r in range(3):
        probs = np.eye(8)[predictions[r]]
        expected = classification_metrics(probs, labels, EMOTIONS)
        assert accuracy[r] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert macro_f1[r] == pytest.approx(expected["macro_f1"], abs=1e-12)
        assert macro_f1[r] == pytest.approx(
            f1_score(labels, predictions[r], average="macro"), abs=1e-12
        )


def test_weighted_metrics_equal_metrics_of_the_listed_out_resample():
    labels, predictions = _random_study(seed=3)
    draws = make_draws(labels.size, [0], n_boot=25, seed=2)
    weights = draws.image_weights.copy()
    weights[0] = 0
    weights[0, labels != 3] = 2  # a resample without class 3 in the labels
    accuracy = metric_from_predictions(predictions, labels, "accuracy", weights)
    macro_f1 = metric_from_predictions(predictions, labels, "macro_f1", weights)
    assert accuracy.shape == macro_f1.shape == (25, 3)
    for b in range(25):
        index = np.repeat(np.arange(labels.size), weights[b].astype(int))
        for r in range(3):
            y, p = labels[index], predictions[r, index]
            assert accuracy[b, r] == pytest.approx(accuracy_score(y, p), abs=1e-12)
            assert macro_f1[b, r] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)


def test_resampled_cell_metric_follows_the_key_draw():
    labels, predictions = _random_study(seed=5, replicates=3)
    keys = [(1, 10), (2, 20), (3, 30)]
    full = _cell(predictions, keys)
    partial = _cell(predictions[[0, 2]], [keys[0], keys[2]], method="ia3")  # key (2, 20) failed
    draws = make_draws(labels.size, union_keys([full, partial]), n_boot=30, seed=4)
    assert draws.replicate_keys == keys
    for cell in (full, partial):
        result = resampled_cell_metric(cell, labels, draws, "accuracy")
        per_rep = replicate_metric(cell, labels, "accuracy", draws.image_weights)
        for b in range(30):
            drawn = [
                cell.replicates.index(keys[i])
                for i in draws.replicate_index[b]
                if keys[i] in cell.replicates
            ]
            if drawn:
                assert result[b] == pytest.approx(per_rep[b, drawn].mean(), abs=1e-12)
            else:
                assert np.isnan(result[b])
    stranger = _cell(predictions[:1], [(9, 9)])
    with pytest.raises(ValueError, match="not among"):
        resampled_cell_metric(stranger, labels, draws, "accuracy")


def test_metric_rejects_bad_input():
    labels, predictions = _random_study()
    with pytest.raises(ValueError, match="metric"):
        metric_from_predictions(predictions, labels, "auc")
    with pytest.raises(ValueError, match="weights"):
        metric_from_predictions(predictions, labels, "accuracy", np.ones((2, 5)))


def test_p_value_is_where_the_interval_touches_zero():
    rng = np.random.default_rng(0)
    values = np.array([0.031, 0.012, 0.047, 0.020])
    boot = values + rng.normal(0, 0.004, (600, 1)) + rng.normal(0, 0.002, (600, 4))
    parts = variance_parts(values, boot)
    p = float(two_level_p_value(parts))

    def half(alpha):
        t, z = stats.t.isf(alpha / 2, 3), stats.norm.isf(alpha / 2)
        return np.sqrt(
            max(t**2 * parts["seed"] + z**2 * parts["image"], z**2 * parts["image_total"])
        )

    expected = optimize.brentq(lambda a: half(a) - values.mean(), 1e-12, 1 - 1e-12)
    assert p == pytest.approx(expected, rel=1e-6)
    low, high = two_level_interval(parts, confidence=1 - p, bounds=(-1, 1))
    assert low == pytest.approx(0, abs=1e-9) and high > 0
    # One replicate: a normal test on the image-resampling variance.
    one = variance_parts(values[:1], boot[:, :1])
    z = values[0] / np.sqrt(one["image_total"])
    assert float(two_level_p_value(one)) == pytest.approx(2 * stats.norm.sf(z), rel=1e-6)
