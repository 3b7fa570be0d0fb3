"""A fake finished study on disk, without training: results.csv, and per cell the files a real
study cell writes (metrics.json, predictions_test.csv, config.yaml, train_manifest.json).

Every number in results.csv is computed from the cell's own predictions, exactly as the runner
does, so results.csv, metrics.json and predictions_test.csv agree unless a test breaks them.
"""

from __future__ import annotations

import csv
import json

import numpy as np

from emoset_peft.engine.metrics import classification_metrics, write_predictions
from emoset_peft.labels import EMOTIONS

COLUMNS = [
    "method",
    "per_class",
    "seed",
    "data_seed",
    "train_seed",
    "test_accuracy",
    "test_macro_f1",
    "test_balanced_accuracy",
    "test_valence_accuracy",
    "val_accuracy",
    "trainable_params",
    "total_params",
    "train_images",
    "train_seconds",
    "steps",
    "best_step",
    "config_hash",
    "run_dir",
]
METHOD_PARAMS = {"linear": 6_152, "lora": 300_000, "vpt": 60_000, "zeroshot": 0}
METHOD_SHIFT = {"linear": 0.0, "lora": 0.6, "vpt": 0.3, "zeroshot": 0.0}  # in logits
NUM_TEST = 160  # test images shared by every cell
POOL_PER_CLASS = 64  # training images per class the nested subsets are drawn from
SELECTION_PER_CLASS = 12  # validation images per class used for model selection


def fake_test_set() -> tuple[np.ndarray, dict, list[str]]:
    """Labels, attributes and image ids of the fake test split (the same for every cell)."""
    rng = np.random.default_rng(123)
    labels = rng.integers(0, 8, NUM_TEST)
    attributes = {
        "facial_expression": [
            str(rng.choice(["happy", "sad"])) if rng.random() < 0.3 else None
            for _ in range(NUM_TEST)
        ],
        "brightness": [float(np.round(rng.random(), 1)) for _ in range(NUM_TEST)],
        "scene": [f"scene_{rng.integers(0, 8)}" for _ in range(NUM_TEST)],
        "human_action": [
            -1 if rng.random() < 0.5 else int(rng.integers(0, 5)) for _ in range(NUM_TEST)
        ],
    }
    return labels, attributes, [f"test_{i:04d}" for i in range(NUM_TEST)]


def _cell_probs(rng, labels, logit: float, difficulty: np.ndarray) -> np.ndarray:
    """Probabilities whose argmax is right with probability sigmoid(logit - difficulty)."""
    right = rng.random(NUM_TEST) < 1 / (1 + np.exp(-(logit - difficulty)))
    preds = np.where(right, labels, (labels + rng.integers(1, 8, NUM_TEST)) % 8)
    probs = rng.dirichlet(np.ones(8), NUM_TEST) * 0.4
    probs[np.arange(NUM_TEST), preds] += 0.6
    return probs / probs.sum(axis=1, keepdims=True)


def make_fake_study(
    directory,
    seeds=(0, 1, 2),
    ks=(1, 2, 4, 8),
    missing_metrics=(),
    methods=("linear", "lora", "vpt"),
    zero_shot=True,
    full=True,
    predictions=True,
):
    """A study folder: ``methods`` x ``ks`` x ``seeds``, a zero-shot cell per seed and `all`
    cells for the first two methods; accuracy rises with k. Returns the rows written."""
    rng = np.random.default_rng(0)
    labels, attributes, image_ids = fake_test_set()
    difficulty = rng.normal(0, 1.0, NUM_TEST)
    seed_effect = {seed: rng.normal(0, 0.15) for seed in seeds}
    cells = [(m, k) for m in methods for k in ks]
    cells += [("zeroshot", 0)] if zero_shot else []
    cells += [(m, "all") for m in methods[:2]] if full else []
    rows = []
    for method, k in cells:
        for seed in seeds:
            k_value = 600 if k == "all" else k
            logit = -0.6 if k == 0 else 1.4 + METHOD_SHIFT[method] - 2.2 / k_value**0.7
            probs = _cell_probs(rng, labels, logit + seed_effect[seed], difficulty)
            test = classification_metrics(probs, labels, EMOTIONS, attributes)
            run_dir = f"runs/{method}_k{k}_s{seed}"
            row = {
                "method": method,
                "per_class": k,
                "seed": seed,
                "data_seed": seed,
                "train_seed": seed,
                "test_accuracy": test["accuracy"],
                "test_macro_f1": test["macro_f1"],
                "test_balanced_accuracy": test["balanced_accuracy"],
                "test_valence_accuracy": test["valence_accuracy"],
                "val_accuracy": test["accuracy"],
                "trainable_params": METHOD_PARAMS[method],
                "total_params": 86_000_000,
                "train_images": 0 if k == 0 else 8 * k_value,
                "train_seconds": 1.5,
                "steps": 0 if k == 0 else 10 * k_value,
                "best_step": 0 if k == 0 else 5 * k_value,
                "config_hash": f"h{method}{k}{seed}",
                "run_dir": run_dir,
            }
            rows.append(row)
            if run_dir in missing_metrics:
                continue
            folder = directory / run_dir
            folder.mkdir(parents=True)
            validation = {"accuracy": test["accuracy"], "num_images": 8 * SELECTION_PER_CLASS}
            metrics = {
                "test": test,
                "validation": validation,
                "trainable_params": row["trainable_params"],
                "total_params": row["total_params"],
                "train_images": row["train_images"],
                "steps": row["steps"],
                "best_step": row["best_step"],
            }
            (folder / "metrics.json").write_text(json.dumps(metrics))
            (folder / "config.yaml").write_text(
                f"data:\n  per_class: {k}\n  selection_per_class: {SELECTION_PER_CLASS}\n"
                f"  data_seed: {seed}\n"
                f"train:\n  seed: {seed}\n  max_steps: {row['steps']}\n"
            )
            if predictions:
                write_predictions(
                    folder / "predictions_test.csv", image_ids, labels, probs, EMOTIONS
                )
            if k not in (0, "all"):
                # Nested subsets: seed s takes the first k of its own shuffle of the pool.
                order = np.random.default_rng(1000 + seed).permutation(POOL_PER_CLASS)
                train_ids = [f"train_{c}_{i:03d}" for c in range(8) for i in order[:k]]
                (folder / "train_manifest.json").write_text(
                    json.dumps({"per_class": k, "data_seed": seed, "image_ids": train_ids})
                )
    write_results(directory / "results.csv", rows)
    (directory / "study.yaml").write_text(
        f"methods: [{', '.join(methods)}]\nper_class: {list(ks)}\n"
    )
    return rows


def write_results(path, rows, columns=COLUMNS) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
