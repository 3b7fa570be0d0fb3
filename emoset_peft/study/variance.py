"""Where a cell's spread between seeds comes from, when data and training seeds are crossed.

With ``data_seeds`` x ``train_seeds`` crossed (every pair run), a cell's replicate values form a
D x T table: rows differ in which training images were drawn, columns in initialisation and
data order. A two-way analysis of variance without replication splits the spread into a
data-sampling part, a training part and a residual (their interaction), by the method of moments
(expected mean squares of the random-effects model), each clipped at 0. The test images are the
same for every replicate, so test-set noise is not in this split (see the per-cell intervals).
"""

from __future__ import annotations

import numpy as np

ROUGH_BELOW = 5  # seeds per factor under which the split is a rough indication only


def variance_split(values: dict) -> dict:
    """Split ``{(data_seed, train_seed): metric}`` into data, training and residual variance.

    Returns components (in metric units squared), their shares of the total, SDs in percentage
    points, the mean squares and a note; ``crossed: False`` with a reason when the design is not
    a full D x T table with D, T >= 2.
    """
    result = {
        "crossed": False,
        "reason": None,
        "n_data_seeds": 0,
        "n_train_seeds": 0,
        "components": None,
        "shares": None,
        "sd_pp": None,
        "mean_squares": None,
        "note": None,
    }
    values = {
        tuple(key): float(value)
        for key, value in values.items()
        if value is not None and np.isfinite(value)
    }
    data_seeds = sorted({key[0] for key in values})
    train_seeds = sorted({key[1] for key in values})
    result.update(n_data_seeds=len(data_seeds), n_train_seeds=len(train_seeds))
    if len(values) > 1 and all(d == t for d, t in values):
        result["reason"] = (
            "data and training seeds are not crossed (each replicate uses "
            "data_seed = train_seed), so their variances are confounded"
        )
        return result
    if len(data_seeds) < 2 or len(train_seeds) < 2:
        result["reason"] = (
            f"{len(data_seeds)} data seed(s) x {len(train_seeds)} training "
            "seed(s): a split needs >= 2 of each, every pair run"
        )
        return result
    absent = [(d, t) for d in data_seeds for t in train_seeds if (d, t) not in values]
    if absent:
        shown = ", ".join(f"{d}/{t}" for d, t in absent[:4]) + (" ..." if len(absent) > 4 else "")
        result["reason"] = (
            f"not fully crossed: {len(absent)} of {len(data_seeds)} x "
            f"{len(train_seeds)} data/train seed pairs missing ({shown})"
        )
        return result
    table = np.array([[values[(d, t)] for t in train_seeds] for d in data_seeds])
    n_d, n_t = table.shape
    grand = table.mean()
    row_effect = table.mean(axis=1) - grand
    col_effect = table.mean(axis=0) - grand
    residual = table - grand - row_effect[:, None] - col_effect[None, :]
    ms_data = n_t * (row_effect @ row_effect) / (n_d - 1)
    ms_train = n_d * (col_effect @ col_effect) / (n_t - 1)
    ms_residual = float((residual**2).sum()) / ((n_d - 1) * (n_t - 1))
    components = {
        "data": max((ms_data - ms_residual) / n_t, 0.0),
        "train": max((ms_train - ms_residual) / n_d, 0.0),
        "residual": ms_residual,
    }
    total = sum(components.values())
    result.update(
        crossed=True,
        components={name: float(value) for name, value in components.items()},
        shares={
            name: (float(value / total) if total > 0 else None)
            for name, value in components.items()
        },
        sd_pp={name: float(100 * np.sqrt(value)) for name, value in components.items()},
        mean_squares={
            "data": float(ms_data),
            "train": float(ms_train),
            "residual": float(ms_residual),
            "df": [n_d - 1, n_t - 1, (n_d - 1) * (n_t - 1)],
        },
    )
    if min(n_d, n_t) < ROUGH_BELOW:
        result["note"] = (
            f"{n_d} data x {n_t} training seeds: each part rests on "
            f"{n_d - 1} and {n_t - 1} degrees of freedom, so the split is rough "
            "(a part of 0 means smaller than the residual, not absent)"
        )
    return result


def cell_variance_splits(study, metric: str = "accuracy") -> list[dict]:
    """:func:`variance_split` of ``metric`` for every cell of a ``StudyPredictions``."""
    from emoset_peft.study.bootstrap import replicate_metric

    splits = []
    for (method, k), cell in study.cells.items():
        values = replicate_metric(cell, study.labels, metric)
        splits.append(
            {
                "method": method,
                "per_class": k,
                "metric": metric,
                **variance_split(dict(zip(map(tuple, cell.replicates), values))),
            }
        )
    return splits
