"""Curve summaries on a study read from real prediction files (write_predictions ->
load_predictions -> make_draws): the curves line up with the bootstrap core cell by cell."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss

from emoset_peft.engine.metrics import write_predictions
from emoset_peft.labels import EMOTIONS
from emoset_peft.study.bootstrap import make_draws, resampled_cell_metric, union_keys
from emoset_peft.study.calibration import calibration_table
from emoset_peft.study.curves import (
    aulc,
    learning_curves,
    resampled_mean,
)
from emoset_peft.study.efficiency import data_efficiency
from emoset_peft.study.fits import scaling_fits
from emoset_peft.study.predictions import load_predictions
from emoset_peft.study.summary import Withheld, curve_summaries
from emoset_peft.study.variance import cell_variance_splits

N_IMAGES = 96
KS = (0, 1, 2, 4, 8, "all")


def _write_study(root, seeds):
    """Two methods whose accuracy rises with k; ``seeds`` are (data_seed, train_seed) pairs."""
    rng = np.random.default_rng(0)
    image_ids = [f"img_{i:03d}" for i in range(N_IMAGES)]
    labels = np.arange(N_IMAGES) % 8
    rows = []
    for method, strength in (("lora", 1.0), ("ia3", 0.7)):
        for k in KS:
            level = (
                0.2 if k == 0 else 0.9 if k == "all" else 0.25 + 0.12 * strength * np.log2(2 * k)
            )
            for data_seed, train_seed in seeds:
                probs = rng.random((N_IMAGES, 8))
                right = rng.random(N_IMAGES) < level + 0.02 * data_seed
                probs[right, labels[right]] += 3.0
                run_dir = f"{method}/k{k}/d{data_seed}_t{train_seed}"
                write_predictions(
                    root / run_dir / "predictions_test.csv",
                    image_ids,
                    labels,
                    probs / probs.sum(1, keepdims=True),
                    EMOTIONS,
                )
                rows.append(
                    {
                        "method": method,
                        "per_class": str(k),
                        "seed": str(train_seed),
                        "data_seed": str(data_seed),
                        "train_seed": str(train_seed),
                        "run_dir": run_dir,
                        "test_accuracy": "",
                    }
                )
    return rows


def test_curve_summaries_on_loaded_predictions(tmp_path):
    seeds = [(d, t) for d in (1, 2) for t in (5, 6)]  # crossed: 2 data x 2 training seeds
    study = load_predictions(tmp_path, _write_study(tmp_path, seeds))
    draws = make_draws(len(study.labels), union_keys(study.cells.values()), n_boot=200, seed=3)
    curves = learning_curves(study, draws, "accuracy")
    assert curves.ks == {"lora": [1, 2, 4, 8], "ia3": [1, 2, 4, 8]}  # no zero-shot, no "all"
    for method in ("lora", "ia3"):
        for row, k in enumerate(curves.ks[method]):
            cell = study.cells[(method, k)]
            expected = resampled_cell_metric(cell, study.labels, draws, "accuracy")
            got = resampled_mean(curves.boot[method][:, row], curves.replicate_index)
            assert got == pytest.approx(expected)
            assert np.nanmean(curves.point[method][row]) == pytest.approx(
                cell.correct(study.labels).mean()
            )

    summary = {
        "aulc": aulc(curves),
        "efficiency": data_efficiency(curves),
        "fits": scaling_fits(curves),
        "calibration": calibration_table(study),
        "variance": cell_variance_splits(study),
    }
    everything = curve_summaries(study, draws, Withheld())  # what summary.json holds
    assert json.loads(json.dumps(everything, allow_nan=False))["aulc"]["accuracy"] == json.loads(
        json.dumps(summary["aulc"])
    )
    assert everything["aulc"]["macro_f1"]["metric"] == "macro_f1"
    assert summary["aulc"]["ks_used"] == [1, 2, 4, 8]
    assert summary["aulc"]["methods"]["lora"]["aulc"] > summary["aulc"]["methods"]["ia3"]["aulc"]
    assert summary["fits"]["methods"]["lora"]["fitted"]  # 4 k, 4 replicates
    variance = {(entry["method"], entry["per_class"]): entry for entry in summary["variance"]}
    assert variance[("lora", 4)]["crossed"] and variance[("lora", 4)]["note"]
    calibration = {(e["method"], e["per_class"]): e for e in summary["calibration"]}
    cell = study.cells[("ia3", "all")]
    expected = np.mean(
        [
            log_loss(study.labels, p / p.sum(1, keepdims=True), labels=range(8))
            for p in cell.probabilities.astype(np.float64)
        ]
    )
    assert calibration[("ia3", "all")]["nll"] == pytest.approx(expected)
