"""The two-level bootstrap shared by every image-level statistic of a study.

A study's number for a cell (method, k) varies for two reasons: which seeds were run (training
order, initialisation and, at small k, which training images were drawn) and which test images
happen to be in the test set. The bootstrap here resamples both at once:

- test images: one multinomial draw of n images per bootstrap replicate, the SAME draw for every
  cell (all cells are scored on the same images, so an image that is hard for one method is in or
  out of the resample for all of them: comparisons and learning curves keep that pairing);
- replicates (seeds): a draw of the replicate keys ((data_seed, train_seed)), again the same
  draw for every cell, so a seed's learning curve stays one unit (its training subsets are
  nested over k) and method A's seed 1 stays paired with method B's seed 1.

Metrics are fractions in [0, 1] (the report prints percent). The weighted metrics are exact:
a bootstrap replicate's accuracy or macro-F1 equals the metric computed on the resampled images
listed out one by one (weights are image counts; confusion counts are matrix products of the
weights with one-hot indicators, so there is no Python loop over bootstrap replicates).

How an interval is formed (``two_level_interval``). Plain percentiles of the joint resamples are
too narrow with 3-5 seeds (resampling 3 values ignores the R/(R-1) factor and has only 10
distinct outcomes; in simulation such an interval covers the truth only about 80-90% of the
time when seeds dominate). Instead the two parts of the variance of a cell's mean are measured
separately, and each gets its own quantile:

- seed part A = s^2 / R: the spread s of the R per-replicate values (each on the whole test set)
  squared, over R. This is what resampling the seeds measures, times R/(R-1). It carries a
  Student-t quantile with R - 1 degrees of freedom, because it is estimated from R values;
- image part F: the variance of the replicate mean over test-image resamples, minus each
  replicate's own test noise (already inside s^2, so not counted twice). It is estimated from
  n images and carries the normal quantile z = 1.96.

The 95% interval is mean +- sqrt(t_{R-1}^2 A + z^2 F), never narrower than the test images alone
allow (mean +- z sqrt(I), I = all of the image-resampling variance of the mean: seeds that agree
by chance, e.g. two methods differing by exactly 2 images on every seed, cannot make a mean more
certain than its test set), and clipped to [0, 1] ([-1, 1] for a difference). In the simulation
tests it covers the truth in about 93-98% of studies at 3 and 5 seeds whether seeds or test
images dominate (up to 99% when seeds err on unrelated images), and the paired test rejects a
true null in at most about 5% of studies. With one replicate A is unknown and the interval
covers test-image noise only; with two, A rests on one difference and carries t_1 = 12.7 (97-99%
coverage in simulation, but its width is a rough guess): callers mark both unreliable. A
two-sided p-value is the level at which that interval just touches 0.

The seed-key draws (``replicate_index``) serve statistics that are not averages over replicates
(e.g. the k at which a mean learning curve crosses a target): there, percentiles of
``resampled_cell_metric`` are what is available, with the under-coverage described above.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

METRICS = ("accuracy", "macro_f1")
CONFIDENCE = 0.95


@dataclass
class Draws:
    image_weights: np.ndarray  # float32 [B, n]: how often each test image is in replicate b
    replicate_keys: list  # the distinct replicate keys, e.g. (data_seed, train_seed)
    replicate_index: np.ndarray  # int [B, K]: indices into replicate_keys drawn for replicate b
    n_boot: int
    seed: int


def union_keys(cells: Iterable) -> list:
    """The sorted distinct replicate keys of some ``CellPredictions`` (the keys to draw from)."""
    return sorted({key for cell in cells for key in cell.replicates})


def make_draws(n_images: int, replicate_keys: Sequence, n_boot: int = 2000, seed: int = 0) -> Draws:
    """``n_boot`` joint draws of test images (multinomial counts) and replicate keys.

    Images and keys use separate random streams of ``seed``, so the image draws do not change
    when a study gains a seed. Counts are stored as float32 (exact: they are small integers).
    """
    if n_images < 1 or n_boot < 1:
        raise ValueError(f"need n_images >= 1 and n_boot >= 1, got {n_images}, {n_boot}")
    image_stream, key_stream = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    weights = np.empty((n_boot, n_images), np.float32)
    rows = max(1, 2**22 // n_images)  # ~32 MB of int64 indices at a time
    for start in range(0, n_boot, rows):
        block = min(rows, n_boot - start)
        picks = image_stream.integers(0, n_images, size=(block, n_images))
        picks += (np.arange(block) * n_images)[:, None]
        counts = np.bincount(picks.ravel(), minlength=block * n_images)
        weights[start : start + block] = counts.reshape(block, n_images)
    keys = list(replicate_keys)
    index = key_stream.integers(0, max(len(keys), 1), size=(n_boot, len(keys)))
    return Draws(weights, keys, index, int(n_boot), int(seed))


def _as_weights(weights, n_images: int) -> tuple[np.ndarray, bool]:
    if weights is None:
        return np.ones((1, n_images), np.float32), True
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != n_images:
        raise ValueError(f"weights must be [B, {n_images}], got {weights.shape}")
    if weights.dtype != np.float64:
        weights = weights.astype(np.float32, copy=False)  # integer sums < 2**24 stay exact
    return weights, False


def metric_from_predictions(
    predictions: np.ndarray, labels, metric: str, weights=None
) -> np.ndarray:
    """``metric`` of each row of ``predictions`` [R, n] (class indices) against ``labels`` [n].

    Returns [R] without ``weights``, [B, R] with image weights [B, n]. Macro-F1 follows
    scikit-learn: the mean F1 over the classes present in the labels or the predictions (of the
    resample), and 0 for a class with no true positive.
    """
    predictions = np.atleast_2d(np.asarray(predictions))
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    n_images = predictions.shape[1]
    if labels.shape[0] != n_images:
        raise ValueError(f"{n_images} predictions per replicate but {labels.shape[0]} labels")
    weights, single = _as_weights(weights, n_images)
    totals = weights.sum(axis=1, dtype=np.float64)[:, None]  # [B, 1]
    if metric == "accuracy":
        correct = (predictions == labels[None, :]).astype(weights.dtype)
        hits = (weights @ correct.T).astype(np.float64)  # [B, R]
        values = np.divide(hits, totals, out=np.zeros_like(hits), where=totals > 0)
    elif metric == "macro_f1":
        values = _macro_f1(predictions, labels, weights)
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return values[0] if single else values


def _macro_f1(predictions: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n_rep, n_images = predictions.shape
    n_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    classes = np.arange(n_classes)
    # One-hot indicators laid out [n, R*C]: a single matrix product gives every replicate's
    # per-class counts for every bootstrap replicate.
    predicted = predictions.T[:, :, None] == classes  # [n, R, C]
    true_positive = predicted & (labels[:, None, None] == classes)
    dtype = weights.dtype
    predicted_counts = weights @ predicted.reshape(n_images, -1).astype(dtype)
    tp_counts = weights @ true_positive.reshape(n_images, -1).astype(dtype)
    support = weights @ (labels[:, None] == classes).astype(dtype)  # [B, C]
    n_boot = weights.shape[0]
    predicted_counts = predicted_counts.reshape(n_boot, n_rep, n_classes).astype(np.float64)
    tp_counts = tp_counts.reshape(n_boot, n_rep, n_classes).astype(np.float64)
    support = support.astype(np.float64)[:, None, :]
    denominator = support + predicted_counts
    # F1 = 2PR/(P+R) = 2 TP / (support + predicted); 0 when a class has no true positive.
    f1 = np.divide(2 * tp_counts, denominator, out=np.zeros_like(tp_counts), where=denominator > 0)
    seen = denominator > 0
    n_seen = seen.sum(axis=-1)
    return np.divide((f1 * seen).sum(axis=-1), n_seen, out=np.zeros(n_seen.shape), where=n_seen > 0)


def replicate_metric(cell, labels, metric: str, weights=None) -> np.ndarray:
    """``metric`` ("accuracy" | "macro_f1") of each replicate of a ``CellPredictions``:
    [R] when ``weights`` is None, [B, R] with image weights [B, n]."""
    return metric_from_predictions(cell.predictions, labels, metric, weights)


def key_counts(replicates: Sequence, draws: Draws) -> np.ndarray:
    """[B, R]: how often each of a cell's replicates (by key) was drawn in each replicate b.

    A key of the draws that this cell lacks (a failed run) simply contributes nothing.
    """
    position = {key: i for i, key in enumerate(draws.replicate_keys)}
    missing = [key for key in replicates if key not in position]
    if missing:
        raise ValueError(f"replicate keys {missing} are not among the draws' keys")
    wanted = np.array([position[key] for key in replicates])
    return (draws.replicate_index[:, :, None] == wanted[None, None, :]).sum(axis=1)


def resample_mean(values: np.ndarray, replicates: Sequence, draws: Draws) -> np.ndarray:
    """[B] mean over the drawn replicates of per-replicate bootstrap values [B, R].

    NaN for a bootstrap replicate that drew none of this cell's keys (possible only when the
    cell lacks some of the study's keys).
    """
    counts = key_counts(replicates, draws).astype(np.float64)
    drawn = counts.sum(axis=1)
    total = (counts * values).sum(axis=1)
    return np.divide(total, drawn, out=np.full(drawn.shape, np.nan), where=drawn > 0)


def resampled_cell_metric(cell, labels, draws: Draws, metric: str) -> np.ndarray:
    """[B] the cell's metric in each joint bootstrap replicate: images re-weighted by
    ``draws.image_weights``, averaged over the replicate keys drawn (same draw for all cells)."""
    values = replicate_metric(cell, labels, metric, draws.image_weights)
    return resample_mean(values, cell.replicates, draws)


# ---------------------------------------------------------------------------------------------
# Intervals from the two variance parts


def variance_parts(values, boot, keys: Sequence | None = None) -> dict:
    """The variance of a mean over replicates, split into its seed and test-image parts.

    ``values`` [..., R]: each replicate's statistic on the whole test set; ``boot`` [B, ..., R]:
    the same statistic on B test-image resamples (the same image draw for every replicate).
    ``keys`` (optional, R (data_seed, train_seed) pairs): when they cross D data seeds with T
    training seeds, the seed part follows that design (``crossed_seed_variance``).
    Returns arrays (shape [...]): ``mean``; ``seed`` (A = s^2/R, NaN when R < 2); ``image``
    (F, the test-image variance shared by the replicates); ``own_test`` (each replicate's own
    test noise inside A); ``image_total`` (the whole image-resampling variance of the mean);
    ``seed_only`` (A minus own_test, >= 0: the spread seeds add beyond test noise);
    ``n_replicates``; ``df`` (degrees of freedom of A), ``units`` and ``independent``
    (``seed_units``).
    """
    values = np.asarray(values, dtype=np.float64)
    boot = np.asarray(boot, dtype=np.float64)
    n_rep = values.shape[-1]
    image_total = boot.mean(axis=-1).var(axis=0, ddof=1)
    df = float(max(n_rep - 1, 1))
    known = keys is not None and len(keys) == n_rep
    units, independent = seed_units(keys) if known else (n_rep, True)
    grid = crossed_grid(keys) if known else None
    if n_rep >= 2:
        seed = values.var(axis=-1, ddof=1) / n_rep
        if grid is not None:
            seed, df = crossed_seed_variance(values[..., grid])
        per_replicate = boot.var(axis=0, ddof=1).mean(axis=-1)
        # Var(mean) = shared + own / R and per-replicate = shared + own, so own / R is:
        own_test = np.maximum(per_replicate - image_total, 0.0) / (n_rep - 1)
        seed_only = np.maximum(seed - own_test, 0.0)
    else:
        seed = own_test = seed_only = np.full(image_total.shape, np.nan)
    image = np.maximum(image_total - np.nan_to_num(own_test), 0.0)
    return {
        "mean": values.mean(axis=-1),
        "seed": seed,
        "image": image,
        "own_test": own_test,
        "image_total": image_total,
        "seed_only": seed_only,
        "n_replicates": n_rep,
        "df": df,
        "units": units,
        "independent": independent,
    }


def seed_units(keys: Sequence) -> tuple[int, bool]:
    """(independent seed units, whether the replicates themselves are independent) of the
    (data_seed, train_seed) ``keys``.

    Replicates are independent when no two share a data seed, or no two share a training seed
    (the paired default data_seed == train_seed; or one factor held fixed): R units. When both
    factors repeat (crossed D x T, complete or with cells missing) every data seed shares the
    same training seeds: the factor with fewer levels limits what the spread can say, and
    min(D, T) counts the independent units (its spread rests on min(D, T) - 1 differences).
    """
    keys = [tuple(key) if isinstance(key, (tuple, list)) else (key, key) for key in keys]
    n_data, n_train = len({key[0] for key in keys}), len({key[1] for key in keys})
    if n_data == len(keys) or n_train == len(keys):
        return len(keys), True
    return min(n_data, n_train), False


def crossed_grid(keys: Sequence) -> np.ndarray | None:
    """[D, T] positions of the replicates when ``keys`` ((data_seed, train_seed) pairs) cross
    D >= 2 data seeds with T >= 2 training seeds, each pair once; None for any other design
    (the paired default, data_seed == train_seed, is R independent replicates)."""
    data = sorted({key[0] for key in keys})
    train = sorted({key[1] for key in keys})
    if len(data) < 2 or len(train) < 2 or len(keys) != len(data) * len(train):
        return None
    where = {tuple(key): index for index, key in enumerate(keys)}
    if len(where) != len(keys):
        return None
    return np.array([[where[(d, t)] for t in train] for d in data])


def crossed_seed_variance(table) -> tuple[np.ndarray, np.ndarray]:
    """Variance of the grand mean of a [..., D, T] table whose rows (data seeds) and columns
    (training seeds) are both random draws, and its Satterthwaite degrees of freedom.

    With y = mu + d_i + t_j + e_ij: Var(mean) = s_d^2/D + s_t^2/T + s_e^2/(DT), estimated
    without bias by (MS_rows + MS_cols - MS_resid) / (DT) -- treating the DT cells as independent
    (s^2/R) would miss that every data seed's mean shares the same training seeds. The estimate
    is floored at MS_resid / (DT), the variance the residual alone gives.
    """
    table = np.asarray(table, dtype=np.float64)
    d, t = table.shape[-2:]
    grand = table.mean(axis=(-2, -1), keepdims=True)
    rows = table.mean(axis=-1, keepdims=True)
    cols = table.mean(axis=-2, keepdims=True)
    ms_rows = t * ((rows - grand) ** 2).sum(axis=(-2, -1)) / (d - 1)
    ms_cols = d * ((cols - grand) ** 2).sum(axis=(-2, -1)) / (t - 1)
    ms_resid = ((table - rows - cols + grand) ** 2).sum(axis=(-2, -1)) / ((d - 1) * (t - 1))
    a, b, c = ms_rows / (d * t), ms_cols / (d * t), ms_resid / (d * t)
    variance = np.maximum(a + b - c, c)
    denominator = a**2 / (d - 1) + b**2 / (t - 1) + c**2 / ((d - 1) * (t - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denominator > 0, variance**2 / denominator, d * t - 1)
    return variance, np.clip(df, 1.0, d * t - 1)


def _half_width(parts: dict, alpha):
    """sqrt(max(t^2 A + z^2 F, z^2 I)) at two-sided level alpha (I: all image-resampling
    variance of the mean); with one replicate only z * sqrt(I) is known."""
    z = stats.norm.isf(np.asarray(alpha) / 2)
    images_only = z**2 * parts["image_total"]
    if parts["n_replicates"] < 2:
        return np.sqrt(images_only)
    t = stats.t.isf(np.asarray(alpha) / 2, parts.get("df", parts["n_replicates"] - 1))
    return np.sqrt(np.maximum(t**2 * parts["seed"] + z**2 * parts["image"], images_only))


def two_level_interval(
    parts: dict, confidence: float = CONFIDENCE, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple:
    """(low, high) arrays: mean +- sqrt(t_{R-1}^2 A + z^2 F), clipped to ``bounds``.

    Never narrower than the test-image resampling alone gives (mean +- z sqrt(I)): seeds that
    agree by chance cannot make a mean more certain than its test set allows. With one
    replicate that is all there is (the interval then covers test-image noise only)."""
    half = _half_width(parts, 1 - confidence)
    low = np.clip(parts["mean"] - half, *bounds)
    high = np.clip(parts["mean"] + half, *bounds)
    return low, high


def two_level_p_value(parts: dict, null: float = 0.0, iterations: int = 64):
    """Two-sided p-value of mean = ``null``: the alpha at which the two-level interval just
    reaches ``null`` (vectorised bisection on log alpha; p < 1e-17 is reported as 1e-17)."""
    distance = np.abs(np.asarray(parts["mean"], dtype=np.float64) - null)
    low = np.full(distance.shape, np.log(1e-17))
    high = np.zeros(distance.shape)
    for _ in range(iterations):
        middle = (low + high) / 2
        excludes = _half_width(parts, np.exp(middle)) < distance
        high = np.where(excludes, middle, high)
        low = np.where(excludes, low, middle)
    return np.where(distance > 0, np.exp(high), 1.0)
