"""Variance split for crossed data x training seeds, checked against least squares with dummy
variables and against a simulation with known variance components."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoset_peft.study.variance import variance_split


def _sse(design, y):
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    return float(residual @ residual)


def test_mean_squares_match_dummy_variable_regression():
    rng = np.random.default_rng(0)
    n_d, n_t = 3, 4
    table = (
        0.6
        + rng.normal(0, 0.03, (n_d, 1))
        + rng.normal(0, 0.01, (1, n_t))
        + rng.normal(0, 0.005, (n_d, n_t))
    )
    values = {(10 + d, 20 + t): table[d, t] for d in range(n_d) for t in range(n_t)}
    result = variance_split(values)
    json.dumps(result, allow_nan=False)
    y = table.ravel()
    rows = np.repeat(np.eye(n_d), n_t, axis=0)
    cols = np.tile(np.eye(n_t), (n_d, 1))
    full = _sse(np.hstack([rows, cols]), y)
    ms_data = (_sse(cols, y) - full) / (n_d - 1)
    ms_train = (_sse(rows, y) - full) / (n_t - 1)
    ms_residual = full / ((n_d - 1) * (n_t - 1))
    squares = result["mean_squares"]
    assert [squares["data"], squares["train"], squares["residual"]] == pytest.approx(
        [ms_data, ms_train, ms_residual]
    )
    assert result["components"]["data"] == pytest.approx(max((ms_data - ms_residual) / n_t, 0))
    assert result["components"]["train"] == pytest.approx(max((ms_train - ms_residual) / n_d, 0))
    assert sum(result["shares"].values()) == pytest.approx(1)
    assert result["sd_pp"]["residual"] == pytest.approx(100 * np.sqrt(ms_residual))
    assert result["crossed"] and "rough" in result["note"]


def test_components_recover_known_variances_on_average():
    rng = np.random.default_rng(1)
    truth = {"data": 4e-4, "train": 1e-4, "residual": 2.5e-5}
    estimates = {name: [] for name in truth}
    for _ in range(400):
        table = (
            0.5
            + rng.normal(0, truth["data"] ** 0.5, (6, 1))
            + rng.normal(0, truth["train"] ** 0.5, (1, 6))
            + rng.normal(0, truth["residual"] ** 0.5, (6, 6))
        )
        result = variance_split({(d, 100 + t): table[d, t] for d in range(6) for t in range(6)})
        for name in truth:
            estimates[name].append(result["components"][name])
    for name, value in truth.items():
        assert np.mean(estimates[name]) == pytest.approx(value, rel=0.2)


def test_not_crossed_says_why():
    confounded = variance_split({(0, 0): 0.5, (1, 1): 0.6, (2, 2): 0.55})
    assert confounded["crossed"] is False and "confounded" in confounded["reason"]
    assert confounded["components"] is None
    holes = variance_split({(0, 0): 0.5, (0, 1): 0.6, (1, 0): 0.55})
    assert "1 of 2 x 2" in holes["reason"] and "1/1" in holes["reason"]
    one_train = variance_split({(0, 5): 0.5, (1, 5): 0.6})
    assert "2 data seed(s) x 1 training seed(s)" in one_train["reason"]
    # A failed replicate (NaN) counts as missing, not as a value.
    with_nan = variance_split({(0, 0): 0.5, (0, 1): float("nan"), (1, 0): 0.5, (1, 1): 0.6})
    assert with_nan["crossed"] is False and "missing" in with_nan["reason"]
