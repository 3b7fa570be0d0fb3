"""classification_metrics against scikit-learn; valence and attribute slices by hand; CSV writer."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from emoset_peft.engine.metrics import (
    classification_metrics,
    predictions_table,
    write_predictions,
)
from emoset_peft.labels import EMOTIONS


def _random_case(seed: int, never_predicted: int = 5):
    """Random probs over 8 emotions where class ``never_predicted`` never wins the argmax."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, 300)
    probs = rng.dirichlet(np.ones(8), size=300)
    probs[:, never_predicted] = 0.0
    return probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_a_class_never_predicted(seed):
    probs, labels = _random_case(seed)
    preds = probs.argmax(axis=1)
    assert 5 not in preds and 5 in labels
    result = classification_metrics(probs, labels, EMOTIONS)

    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["macro_f1"] == pytest.approx(
        f1_score(labels, preds, average="macro", zero_division=0)
    )
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert result["top2_accuracy"] == pytest.approx(
        top_k_accuracy_score(labels, probs, k=2, labels=range(8))
    )
    assert result["confusion_matrix"] == confusion_matrix(labels, preds, labels=range(8)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=range(8), zero_division=0
    )
    for index, name in enumerate(EMOTIONS):
        entry = result["per_class"][name]
        assert entry["precision"] == pytest.approx(precision[index])
        assert entry["recall"] == pytest.approx(recall[index])
        assert entry["f1"] == pytest.approx(f1[index])
        assert entry["support"] == support[index]
    assert result["per_class"]["disgust"]["precision"] == 0.0  # never predicted: 0, not NaN
    assert result["num_images"] == 300
    # Plain JSON: no numpy types, no NaN.
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["class_names"] == list(EMOTIONS)


def test_macro_f1_with_a_class_absent_from_labels_and_predictions():
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.eye(8)[[0, 1, 1, 1, 2]]
    result = classification_metrics(probs, labels, EMOTIONS)
    # sklearn averages over the classes that occur (0, 1, 2), not all eight.
    assert result["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1))
    )


def test_valence_accuracy_by_hand():
    # true:      amusement(+) awe(+)  anger(-)    fear(-)  sadness(-)
    # predicted: awe(+)       fear(-) disgust(-)  fear(-)  contentment(+)
    labels = np.array([0, 1, 4, 6, 7])
    probs = np.eye(8)[[1, 6, 5, 6, 2]]
    result = classification_metrics(probs, labels, EMOTIONS)
    assert result["accuracy"] == pytest.approx(1 / 5)
    assert result["valence_accuracy"] == pytest.approx(3 / 5)


def test_valence_follows_class_names_not_positions():
    names = ["anger", "amusement"]  # negative first
    labels = np.array([0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert classification_metrics(probs, labels, names)["valence_accuracy"] == 1.0
    assert classification_metrics(probs[::-1], labels, names)["valence_accuracy"] == 0.0


def test_attribute_slices_by_hand():
    labels = np.zeros(6, dtype=int)
    preds = [0, 0, 1, 0, 1, 0]  # correct: T T F T F T
    probs = np.eye(8)[preds]
    attributes = {
        "facial_expression": ["happy", None, -1, "sad", None, "happy"],
        "brightness": [0.1, 0.39, 0.4, 0.7, None, 0.95],
        "scene": ["beach", "beach", "street", "beach", None, "street"],
        "human_action": [3, -1, -1, 2, 0, -1],
    }
    slices = classification_metrics(probs, labels, EMOTIONS, attributes)["slices"]
    assert slices["facial_expression"] == {
        "present": {"n": 3, "accuracy": 1.0},  # rows 0, 3, 5
        "absent": {"n": 3, "accuracy": 1 / 3},  # rows 1, 2, 4
    }
    assert slices["brightness"] == {
        "low": {"n": 2, "accuracy": 1.0},  # 0.1, 0.39
        "mid": {"n": 1, "accuracy": 0.0},  # 0.4
        "high": {"n": 2, "accuracy": 1.0},  # 0.7, 0.95; None excluded
    }
    assert slices["scene"] == {
        "beach": {"n": 3, "accuracy": 1.0},
        "street": {"n": 2, "accuracy": 0.5},
    }
    assert list(slices["scene"]) == ["beach", "street"]  # most frequent first
    assert slices["human_action"] == {
        "present": {"n": 3, "accuracy": 2 / 3},  # rows 0, 3, 4
        "absent": {"n": 3, "accuracy": 2 / 3},  # rows 1, 2, 5
    }


def test_scene_slices_keep_the_five_most_frequent_and_map_indices():
    labels = np.zeros(21, dtype=int)
    probs = np.eye(8)[np.zeros(21, dtype=int)]
    scenes = [0] * 6 + [1] * 5 + [2] * 4 + [3] * 3 + [4] * 2 + [5] * 1  # 21 images
    names = ["s0", "s1", "s2", "s3", "s4", "s5"]
    result = classification_metrics(
        probs, labels, EMOTIONS, {"scene": scenes}, attribute_labels={"scene": names}
    )
    assert list(result["slices"]["scene"]) == ["s0", "s1", "s2", "s3", "s4"]
    assert result["slices"]["scene"]["s4"] == {"n": 2, "accuracy": 1.0}


def test_no_attributes_gives_no_slices_and_bad_shapes_raise():
    probs, labels = _random_case(0)
    assert classification_metrics(probs, labels, EMOTIONS)["slices"] == {}
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(probs[:, :7], labels, EMOTIONS)
    with pytest.raises(ValueError, match="brightness"):
        classification_metrics(probs, labels, EMOTIONS, {"brightness": [0.5]})


def test_write_predictions_csv(tmp_path):
    probs = np.array([[0.7, 0.1, 0.2] + [0.0] * 5, [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]])
    path = write_predictions(
        tmp_path / "sub" / "predictions.csv", ["awe_00001", "fear_00002"], [1, 7], probs, EMOTIONS
    )
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["image_id", "label", "predicted"] + [f"prob_{e}" for e in EMOTIONS]
    assert rows[0]["label"] == "awe" and rows[0]["predicted"] == "amusement"
    assert rows[1]["label"] == "sadness" and rows[1]["predicted"] == "sadness"
    assert float(rows[1]["prob_sadness"]) == pytest.approx(0.9)
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no temp file left
    table = predictions_table(["a", "b"], probs, EMOTIONS)
    assert "label" not in table[0] and table[1]["predicted"] == "sadness"
