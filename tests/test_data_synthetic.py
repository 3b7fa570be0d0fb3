"""make_synthetic_emoset: the real layout, determinism, safety, and images a model can learn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emoset_peft.data import make_synthetic_emoset
from emoset_peft.data.synthetic import MARKER, compact_info_json
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import ATTRIBUTES, EMOTIONS


def test_layout_matches_the_real_download(synthetic_root):
    info = json.loads((synthetic_root / "info.json").read_text())
    assert list(info) == ["emotion", *ATTRIBUTES]
    assert [
        name for name, _ in sorted(info["emotion"]["label2idx"].items(), key=lambda kv: kv[1])
    ] == list(EMOTIONS)
    expected = {"train.json": 8, "val.json": 4, "test.json": 4}
    ids: dict[str, list[int]] = {emotion: [] for emotion in EMOTIONS}
    missing_attributes = 0
    for name, per_class in expected.items():
        records = json.loads((synthetic_root / name).read_text())
        assert len(records) == 8 * per_class
        for emotion, image_rel, annotation_rel in records:  # 3-element records
            image_id = Path(image_rel).stem
            assert re.fullmatch(rf"image/{emotion}/{emotion}_\d{{5}}\.jpg", image_rel)
            assert annotation_rel == f"annotation/{emotion}/{image_id}.json"
            assert (synthetic_root / image_rel).is_file()
            annotation = json.loads((synthetic_root / annotation_rel).read_text())
            assert annotation["image_id"] == image_id and annotation["emotion"] == emotion
            missing_attributes += len(set(ATTRIBUTES) - set(annotation))
            ids[emotion].append(int(image_id[-5:]))
    assert missing_attributes > 0
    for numbers in ids.values():  # unique and not contiguous, like the real ids
        assert len(set(numbers)) == len(numbers) == 16
        assert max(numbers) - min(numbers) + 1 > len(numbers)


def test_sizes_vary_within_the_range(synthetic_root):
    sizes = {Image.open(p).size for p in (synthetic_root / "image").rglob("*.jpg")}
    assert len(sizes) > 10
    assert all(28 <= side <= 40 for size in sizes for side in size)


def test_vocabulary_uses_real_names(official_info_json):
    official = json.loads(official_info_json.read_text())
    ours = compact_info_json()
    assert list(ours) == list(official)
    assert ours["emotion"] == official["emotion"]
    for key in ("scene", "object", "facial_expression", "human_action"):
        assert set(ours[key]["label2idx"]) <= set(official[key]["label2idx"])
    assert ours["brightness"]["label2idx"] == official["brightness"]["label2idx"]


def test_deterministic_from_seed(tmp_path):
    def files(root):
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    small = dict(train_per_class=2, val_per_class=1, test_per_class=1, size_range=(24, 32))
    first = files(make_synthetic_emoset(tmp_path / "a", seed=5, **small))
    assert first == files(make_synthetic_emoset(tmp_path / "b", seed=5, **small))
    assert first != files(make_synthetic_emoset(tmp_path / "c", seed=6, **small))


def test_refuses_a_folder_that_is_not_a_synthetic_tree(tmp_path):
    (tmp_path / "notes.txt").write_text("my real data")
    with pytest.raises(EmoSetError, match="not empty"):
        make_synthetic_emoset(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_replaces_an_earlier_synthetic_tree(tmp_path):
    root = make_synthetic_emoset(
        tmp_path / "t", train_per_class=3, val_per_class=1, test_per_class=1, size_range=(24, 24)
    )
    make_synthetic_emoset(
        root, seed=1, train_per_class=1, val_per_class=1, test_per_class=1, size_range=(24, 24)
    )
    assert len(list((root / "image").rglob("*.jpg"))) == 8 * 3  # the old images are gone
    assert json.loads((root / MARKER).read_text())["complete"] is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size_range": (2, 4)},
        {"train_per_class": -1},
        {"grayscale_fraction": 0.8, "cmyk_fraction": 0.5},
        {"task": "faces"},
        {"label_noise": 1.0},
    ],
)
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(EmoSetError):
        make_synthetic_emoset(tmp_path / "x", **kwargs)


def _features(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Colour statistics and the FFT magnitude of a 16 x 16 gray image: hue, stripes, layout."""
    rows, labels = [], []
    for emotion, image_rel, _ in json.loads((root / f"{split}.json").read_text()):
        image = (
            np.asarray(Image.open(root / image_rel).convert("RGB").resize((16, 16)), np.float32)
            / 255
        )
        gray = image.mean(-1)
        spectrum = np.abs(np.fft.fft2(gray - gray.mean())).ravel()
        colour = np.concatenate([image.reshape(-1, 3).mean(0), image.reshape(-1, 3).std(0)])
        rows.append(np.concatenate([spectrum, 8 * colour]))
        labels.append(EMOTIONS.index(emotion))
    return np.array(rows), np.array(labels)


def test_images_are_learnable_and_accuracy_grows_with_images_per_class(tmp_path):
    root = make_synthetic_emoset(
        tmp_path / "learn",
        seed=0,
        train_per_class=32,
        val_per_class=0,
        test_per_class=24,
        size_range=(28, 40),
    )
    x_train, y_train = _features(root, "train")
    x_test, y_test = _features(root, "test")
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / scale, (x_test - mean) / scale

    def nearest_centroid_accuracy(k: int, draw: int) -> float:
        rng = np.random.default_rng(draw)
        centroids = np.stack(
            [x_train[rng.permutation(np.flatnonzero(y_train == c))[:k]].mean(0) for c in range(8)]
        )
        distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
        return float((distances.argmin(1) == y_test).mean())

    one = np.mean([nearest_centroid_accuracy(1, draw) for draw in range(5)])
    many = nearest_centroid_accuracy(32, 0)
    assert 0.125 < one < 0.5  # better than chance, far from solved with one image
    assert many > 0.55 and many > one + 0.2


def test_factor_task_sizes_label_noise_and_combinations(tmp_path):
    from emoset_peft.data.synthetic import TRUTH_FILE
    from emoset_peft.data.synthetic_factors import combinations_of, emotion_of

    root = make_synthetic_emoset(
        tmp_path / "factors",
        seed=2,
        task="factors",
        label_noise=0.1,
        train_per_class=60,
        val_per_class=2,
        test_per_class=40,
        size_range=(24, 28),
    )
    truth = json.loads((root / TRUTH_FILE).read_text())
    wrong = total = 0
    for split, per_class in (("train", 60), ("val", 2), ("test", 40)):
        records = json.loads((root / f"{split}.json").read_text())
        counts = {emotion: 0 for emotion in EMOTIONS}
        for emotion, image_rel, _ in records:
            counts[emotion] += 1
            true = truth[Path(image_rel).stem]
            assert emotion_of(true["combination"]) == EMOTIONS.index(true["emotion"])
            wrong += true["emotion"] != emotion
            total += 1
        assert counts == {emotion: per_class for emotion in EMOTIONS}  # recorded labels
    # 816 images at a 10% noise rate: the binomial 99.9% range is about 6.5-13.7%.
    assert 0.065 <= wrong / total <= 0.137
    assert sorted(c for e in range(8) for c in combinations_of(e)) == list(range(64))
    assert json.loads((root / MARKER).read_text())["params"]["label_noise"] == 0.1


def test_no_label_noise_by_default(synthetic_root):
    truth = json.loads((synthetic_root / "truth.json").read_text())
    for emotion, image_rel, _ in json.loads((synthetic_root / "train.json").read_text()):
        assert truth[Path(image_rel).stem]["emotion"] == emotion


def test_factor_images_for_pretraining():
    from emoset_peft.data.synthetic_factors import factor_images

    pixels, labels = factor_images(20, 37, seed=0)
    assert pixels.shape == (20, 37, 37, 3) and pixels.dtype == np.uint8
    assert labels.shape == (20,) and 0 <= labels.min() and labels.max() < 64
    again, _ = factor_images(20, 37, seed=0)
    assert np.array_equal(pixels, again)
