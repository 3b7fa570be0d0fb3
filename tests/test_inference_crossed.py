"""Crossed seeds (data_seeds x train_seeds): the interval follows the design.

A crossed grid's D*T cells are not independent replicates: every data seed's row shares the same
training seeds. Simulated studies with a known truth: a cell's accuracy is truth + data effect +
training effect + interaction, each image correct when its difficulty (shared across cells) falls
below it. The design-aware interval covers the truth; treating the D*T cells as independent does
not when the training seeds matter.
"""

from __future__ import annotations

import numpy as np
import pytest

from emoset_peft.study.bootstrap import (
    crossed_grid,
    crossed_seed_variance,
    make_draws,
    two_level_interval,
    variance_parts,
)
from emoset_peft.study.inference import summarize_replicates

N_BOOT = 400
KEYS = [(d, t) for d in range(3) for t in range(3)]  # 3 data seeds x 3 training seeds


def simulate(seed, *, studies, images, truth, sd_data, sd_train, sd_resid):
    rng = np.random.default_rng(seed)
    d = rng.normal(0, sd_data, (studies, 3, 1))
    t = rng.normal(0, sd_train, (studies, 1, 3))
    e = rng.normal(0, sd_resid, (studies, 3, 3))
    accuracy = (truth + d + t + e).reshape(studies, 9, 1)
    difficulty = np.where(
        rng.random((studies, 9, images)) < 0.5,
        rng.random((studies, 1, images)),
        rng.random((studies, 9, images)),
    )
    correct = (difficulty < np.clip(accuracy, 0, 1)).astype(np.float32)
    weights = make_draws(images, KEYS, n_boot=N_BOOT, seed=seed + 1).image_weights
    boot = (correct.reshape(-1, images) @ weights.T) / images
    boot = np.moveaxis(boot.reshape(studies, 9, N_BOOT), -1, 0)  # [B, studies, 9]
    return correct.mean(axis=-1, dtype=np.float64), boot


@pytest.mark.parametrize("sd_data,sd_train", [(0.0, 0.04), (0.04, 0.0), (0.03, 0.03)])
def test_crossed_interval_covers_the_truth_and_naive_one_does_not(sd_data, sd_train):
    truth = 0.6
    values, boot = simulate(
        7, studies=300, images=400, truth=truth, sd_data=sd_data, sd_train=sd_train, sd_resid=0.01
    )
    low, high = two_level_interval(variance_parts(values, boot, KEYS))
    coverage = float(np.mean((low <= truth) & (truth <= high)))
    assert 0.90 <= coverage <= 0.995, f"crossed coverage {coverage:.3f}"
    naive_low, naive_high = two_level_interval(variance_parts(values, boot))
    naive = float(np.mean((naive_low <= truth) & (truth <= naive_high)))
    assert naive < 0.88, f"9 crossed cells taken as independent covered {naive:.3f}"
    # one study through the public summary: the same interval, marked as crossed
    entry = summarize_replicates(values[3], boot[:, 3], keys=KEYS)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((low[3], high[3]), abs=1e-12)
    assert entry["reliable"] is True


def test_crossed_variance_matches_the_two_way_anova_formula():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(4, 3))
    variance, df = crossed_seed_variance(table)
    rows, cols, grand = table.mean(1), table.mean(0), table.mean()
    ms_rows = 3 * np.sum((rows - grand) ** 2) / 3
    ms_cols = 4 * np.sum((cols - grand) ** 2) / 2
    resid = table - rows[:, None] - cols[None, :] + grand
    ms_resid = np.sum(resid**2) / 6
    expected = max((ms_rows + ms_cols - ms_resid) / 12, ms_resid / 12)
    assert variance == pytest.approx(expected)
    assert 1.0 <= df <= 11


def test_only_a_full_cross_counts_as_crossed():
    assert crossed_grid([(0, 0), (1, 1), (2, 2)]) is None  # the paired default
    assert crossed_grid([(0, 0), (0, 1), (1, 0)]) is None  # a pair missing
    grid = crossed_grid([(1, 0), (0, 0), (1, 1), (0, 1)])
    assert grid.tolist() == [[1, 3], [0, 2]]


def test_two_data_seeds_crossed_are_marked_rough():
    keys = [(d, t) for d in range(2) for t in range(3)]
    values, boot = (
        np.linspace(0.5, 0.6, 6),
        np.full((50, 6), 0.55) + np.linspace(0, 0.01, 50)[:, None],
    )
    entry = summarize_replicates(values, boot, keys=keys)
    assert entry["reliable"] is False and "crossed" in entry["note"]
