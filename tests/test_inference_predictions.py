"""Loading a study's per-image predictions: real prediction files written by write_predictions."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from emoset_peft.engine.metrics import write_predictions
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.study.predictions import load_predictions

IMAGE_IDS = [f"img_{i:03d}" for i in range(12)]
LABELS = np.arange(12) % 8


def _write_cell(study, method, k, seed, *, image_ids=IMAGE_IDS, labels=LABELS, shift=0):
    run_dir = f"{method}/k{k}/seed{seed}"
    rng = np.random.default_rng(zlib.crc32(run_dir.encode()))
    probs = rng.random((len(image_ids), 8))
    probs[np.arange(len(image_ids)), (np.asarray(labels) + shift) % 8] += 2.0
    write_predictions(study / run_dir / "predictions_test.csv", image_ids, labels, probs, EMOTIONS)
    row = {
        "method": method,
        "per_class": str(k),
        "seed": str(seed),
        "data_seed": str(seed),
        "train_seed": str(seed),
        "test_accuracy": "0.5",
        "run_dir": run_dir,
    }
    return row, probs


def test_loads_cells_in_order_and_lists_problems(tmp_path):
    rows, expected = [], {}
    for method in ("lora", "ia3"):
        for k in ("all", 4, 1):
            for seed in (2, 1):
                row, probs = _write_cell(tmp_path, method, k, seed, shift=seed - 1)
                rows.append(row)
                expected[(method, k, seed)] = probs
    rows.append(
        {
            **rows[0],
            "seed": "3",
            "data_seed": "3",
            "train_seed": "3",
            "status": "failed",
            "error": "CUDA out of memory",
            "run_dir": "lora/x",
        }
    )
    rows.append(
        {**rows[0], "seed": "4", "data_seed": "4", "train_seed": "4", "run_dir": "lora/gone"}
    )
    broken = tmp_path / "lora/broken/predictions_test.csv"
    broken.parent.mkdir(parents=True)
    broken.write_text("image_id,label,predicted,prob_amusement\nimg_000,amusement,amusement,x\n")
    rows.append(
        {**rows[0], "seed": "5", "data_seed": "5", "train_seed": "5", "run_dir": "lora/broken"}
    )

    study = load_predictions(tmp_path, rows)
    assert list(study.cells) == [
        ("lora", 1),
        ("lora", 4),
        ("lora", "all"),
        ("ia3", 1),
        ("ia3", 4),
        ("ia3", "all"),
    ]
    assert study.image_ids == IMAGE_IDS and study.class_names == list(EMOTIONS)
    assert study.labels.dtype == np.int64 and np.array_equal(study.labels, LABELS)
    cell = study.cells[("ia3", 4)]
    assert cell.replicates == [(1, 1), (2, 2)]
    assert cell.predictions.dtype == np.int16 and cell.predictions.shape == (2, 12)
    assert cell.probabilities.shape == (2, 12, 8) and cell.probabilities.dtype == np.float32
    np.testing.assert_allclose(cell.probabilities[1], expected[("ia3", 4, 2)], rtol=1e-5)
    assert np.array_equal(cell.predictions[1], (LABELS + 1) % 8)  # seed 2 shifted by one
    assert np.array_equal(cell.correct(study.labels)[0], np.ones(12, bool))
    assert len(study.problems) == 3
    failed, missing, unreadable = study.problems
    assert "failed" in failed and "CUDA out of memory" in failed
    assert "lora/gone/predictions_test.csv is missing" in missing
    assert "lora/broken/predictions_test.csv could not be read" in unreadable
    assert (
        load_predictions(tmp_path, rows, probabilities=False).cells[("lora", 1)].probabilities
        is None
    )


def test_images_are_sorted_by_id(tmp_path):
    order = np.random.default_rng(0).permutation(12)
    row, _ = _write_cell(
        tmp_path, "lora", 1, 1, image_ids=[IMAGE_IDS[i] for i in order], labels=LABELS[order]
    )
    study = load_predictions(tmp_path, [row])
    assert study.image_ids == IMAGE_IDS and np.array_equal(study.labels, LABELS)
    assert np.array_equal(study.cells[("lora", 1)].predictions[0], LABELS)


@pytest.mark.parametrize("change", ["image_ids", "labels"])
def test_different_test_images_are_an_error_naming_the_file(tmp_path, change):
    first, _ = _write_cell(tmp_path, "lora", 1, 1)
    if change == "image_ids":
        other, _ = _write_cell(tmp_path, "ia3", 1, 1, image_ids=IMAGE_IDS[:-1] + ["other"])
    else:
        other, _ = _write_cell(tmp_path, "ia3", 1, 1, labels=(LABELS + 1) % 8)
    with pytest.raises(EmoSetError, match="ia3/k1/seed1/predictions_test.csv") as error:
        load_predictions(tmp_path, [first, other])
    assert "\n" not in str(error.value)


def test_nothing_readable_gives_an_empty_study(tmp_path):
    study = load_predictions(
        tmp_path, [{"method": "lora", "per_class": "1", "seed": "1", "run_dir": "missing"}]
    )
    assert study.cells == {} and study.image_ids == [] and len(study.problems) == 1


def test_files_to_inference_end_to_end(tmp_path):
    """Prediction files on disk -> loader -> study inference, JSON-ready, problems carried."""
    import json

    from emoset_peft.study.inference import study_inference

    rows = [
        _write_cell(tmp_path, method, k, seed, shift=int(seed == 3 and method == "ia3"))[0]
        for method in ("lora", "ia3")
        for k in (1, 8)
        for seed in (1, 2, 3)
    ]
    rows.append({**rows[0], "seed": "9", "status": "failed", "error": "killed"})
    study = load_predictions(tmp_path, rows)
    out = study_inference(study, baseline="lora", n_boot=200)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert len(out["cells"]) == 8 and len(out["comparisons"]) == 4
    assert out["problems"] == study.problems and "killed" in out["problems"][0]
    ia3 = next(c for c in out["comparisons"] if c["per_class"] == 8 and c["metric"] == "accuracy")
    assert ia3["diff"] == pytest.approx(-1 / 3)  # seed 3 of ia3 gets every image wrong
    assert [t["c"] for t in ia3["mcnemar"]] == [0, 0, 12]
