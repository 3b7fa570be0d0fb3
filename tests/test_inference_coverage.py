"""The intervals are honest: simulated studies with a known truth.

Each simulated study has R seeds of M methods scored on n test images. A seed's true accuracy is
truth + seed effect (normal, sd ``sd_seed``); each image is classified correctly when its
difficulty (uniform) falls below that accuracy. Difficulty is shared: with probability
``shared`` an (image, seed) uses the image's common difficulty (hard images are hard for every
cell), with probability ``specific`` the image's difficulty for that method, else a fresh draw.
So each seed's accuracy has expectation exactly truth + effect, and the test images add both
shared and per-seed noise. Everything is vectorised over studies (one bootstrap draw of images
serves all of them, as the studies are independent), so hundreds of studies take a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from emoset_peft.study.bootstrap import (
    make_draws,
    two_level_interval,
    two_level_p_value,
    variance_parts,
)
from emoset_peft.study.inference import summarize_replicates

N_BOOT = 400


def simulate(
    seed,
    *,
    studies,
    seeds,
    images,
    truth,
    sd_seed,
    shared,
    methods=1,
    specific=0.0,
    sd_common=0.0,
    difference=0.0,
):
    """Correctness [studies, methods, seeds, images] and image resamples [B, studies, methods,
    seeds] of each seed's accuracy. ``sd_common``: the part of the seed effect the methods
    share (same data seed); ``difference``: added to method 0's true accuracy."""
    rng = np.random.default_rng(seed)
    shape = (studies, methods, seeds, images)
    common = rng.random((studies, 1, 1, images))
    own_method = rng.random((studies, methods, 1, images))
    pick = rng.random(shape)
    difficulty = np.where(
        pick < shared, common, np.where(pick < shared + specific, own_method, rng.random(shape))
    )
    effect = rng.normal(0, sd_common, (studies, 1, seeds, 1)) + rng.normal(
        0, sd_seed, (studies, methods, seeds, 1)
    )
    accuracy = truth + effect
    accuracy[:, 0] += difference
    correct = (difficulty < np.clip(accuracy, 0, 1)).astype(np.float32)
    weights = make_draws(images, list(range(seeds)), n_boot=N_BOOT, seed=seed + 1).image_weights
    boot = (correct.reshape(-1, images) @ weights.T) / images  # [S*M*R, B]
    boot = np.moveaxis(boot.reshape(studies, methods, seeds, N_BOOT), -1, 0)
    return correct.mean(axis=-1, dtype=np.float64), boot


REGIMES = {  # name: (sd_seed, test images, shared difficulty)
    "seeds dominate": (0.04, 600, 0.5),
    "test images dominate": (0.003, 300, 0.8),
    "both": (0.02, 400, 0.5),
}


def _coverage(n_seeds, truth, regime, studies=300, seed=0):
    sd_seed, images, shared = REGIMES[regime]
    values, boot = simulate(
        seed,
        studies=studies,
        seeds=n_seeds,
        images=images,
        truth=truth,
        sd_seed=sd_seed,
        shared=shared,
    )
    parts = variance_parts(values[:, 0], boot[:, :, 0])
    low, high = two_level_interval(parts)
    return float(np.mean((low <= truth) & (truth <= high))), values[:, 0], boot[:, :, 0], low, high


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("truth", [0.5, 0.9])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_cell_interval_covers_the_truth(n_seeds, truth, regime):
    coverage, values, boot, low, high = _coverage(n_seeds, truth, regime, seed=n_seeds)
    assert 0.90 <= coverage <= 0.99, f"coverage {coverage:.3f}"
    assert np.all((low >= 0) & (high <= 1))
    # The vectorised check runs the same code as a report: one study through the public path.
    entry = summarize_replicates(values[7], boot[:, 7])
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((low[7], high[7]), abs=1e-12)
    assert entry["reliable"] is True and entry["note"] is None


def test_plain_percentile_bootstrap_under_covers_with_three_seeds():
    """Why the correction exists: percentiles of the joint resamples miss the truth too often."""
    coverage, values, boot, _, _ = _coverage(3, 0.9, "seeds dominate", seed=11)
    studies = values.shape[0]
    draws = make_draws(boot.shape[-1], [0, 1, 2], n_boot=N_BOOT, seed=12)
    picked = np.take_along_axis(boot, draws.replicate_index[:, None, :].repeat(studies, 1), 2)
    low, high = np.percentile(picked.mean(axis=-1), [2.5, 97.5], axis=0)
    naive = float(np.mean((low <= 0.9) & (0.9 <= high)))
    assert naive < 0.90 < coverage, (naive, coverage)


def test_two_seeds_are_marked_unreliable():
    coverage, values, boot, _, _ = _coverage(2, 0.5, "both", seed=21)
    entry = summarize_replicates(values[0], boot[:, 0])
    assert entry["reliable"] is False and entry["note"].startswith("2 seeds")
    assert coverage >= 0.90  # the t_1 quantile makes it wide, but its width is a rough guess
    one = summarize_replicates(values[0, :1], boot[:, 0, :1])
    assert one["reliable"] is False and "test-image noise only" in one["note"]


PAIRED = {  # name: (sd_common, sd_seed per method, images, shared, method-specific difficulty)
    "seeds dominate": (0.02, 0.03, 600, 0.7, 0.0),
    "test images dominate": (0.01, 0.002, 300, 0.7, 0.0),
    "both": (0.01, 0.015, 400, 0.5, 0.0),
    "method-specific hard images": (0.0, 0.005, 300, 0.4, 0.4),
}


def _paired(n_seeds, regime, truth, seed, difference=0.0, studies=400):
    """(two-level p-values, per-seed differences [studies, seeds])."""
    sd_common, sd_seed, images, shared, specific = PAIRED[regime]
    values, boot = simulate(
        seed,
        studies=studies,
        seeds=n_seeds,
        images=images,
        truth=truth,
        sd_seed=sd_seed,
        shared=shared,
        methods=2,
        specific=specific,
        sd_common=sd_common,
        difference=difference,
    )
    differences = values[:, 0] - values[:, 1]
    parts = variance_parts(differences, boot[:, :, 0] - boot[:, :, 1])
    return two_level_p_value(parts), differences


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("regime", list(PAIRED))
def test_paired_test_false_positive_rate(n_seeds, regime):
    truth = 0.9 if regime == "both" else 0.5
    p, _ = _paired(n_seeds, regime, truth, seed=100 + n_seeds)
    rate = float(np.mean(p < 0.05))
    assert rate <= 0.07, f"false-positive rate {rate:.3f}"
    assert np.all((p > 0) & (p <= 1))


def test_seed_only_t_test_is_fooled_by_method_specific_hard_images():
    """Why the two-level test is the primary one: when each method has its own hard images, a
    t-test over seeds ignores that the test set itself is a sample, and rejects too often."""
    p, differences = _paired(5, "method-specific hard images", 0.6, seed=300)
    t_test = stats.ttest_1samp(differences, 0, axis=1).pvalue
    assert np.mean(p < 0.05) <= 0.05
    assert np.mean(t_test < 0.05) > 0.08


def test_paired_test_finds_a_real_difference():
    """Not conservative to uselessness: about the power of a t-test where that one is valid."""
    p, differences = _paired(5, "both", 0.6, seed=300, difference=0.04)
    t_test = stats.ttest_1samp(differences, 0, axis=1).pvalue
    power = np.mean(p < 0.05)
    assert power > 0.35 and power >= 0.8 * np.mean(t_test < 0.05)
