"""A small, learnable, EmoSet-shaped tree on disk: the demo data and the fixture for tests.

The tree has exactly the layout of the real download (see ``emoset.py``): 3-element records,
an ``info.json`` in the official emotion order with the real vocabulary keys (a compact
vocabulary of real names), non-contiguous zero-padded ids, and annotation files in which some
attributes are missing. Image sizes vary, and some files are grayscale ("L") or CMYK JPEGs.

Each emotion has a visual signature, shown under nuisance variation so that accuracy grows with
the number of training images per class instead of being 100% from one image:
    hue        class c is centred on hue 45*c degrees, jittered (sd 22 deg): neighbours overlap;
    stripes    orientation (0/90/45/135 deg) and frequency (3 or 6 cycles) per class, drawn only
               inside a random window, with random phase, contrast and angle jitter (sd 8 deg);
               hue-neighbours differ in orientation, so stripes separate what hue confuses;
    blob       a Gaussian spot whose position depends on the class (a weak cue);
    nuisance   random background gradient, brightness, noise, a distractor stripe pattern, and
               grayscale files that carry no hue at all.
Everything is numpy on whole arrays (no per-pixel Python), so 300-640 px images stay cheap.

``task="factors"`` draws the demo's task instead (``synthetic_factors.py``): each emotion is a
union of 8 of 64 factor combinations, so accuracy keeps rising with images per class.
``label_noise`` records that share of images under a uniformly drawn *other* emotion (the image
still shows its true class), so no model can reach 100%. ``truth.json`` keeps every image's true
emotion (and factor combination), for tests and for checking the noise rate.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS

MARKER = ".synthetic_emoset.json"  # written first, so even an interrupted tree can be replaced
SPLIT_FILE_NAMES = {"train": "train.json", "val": "val.json", "test": "test.json"}
TRUTH_FILE = "truth.json"  # image_id -> true emotion (and factor combination), see label_noise
TASKS = ("signature", "factors")

# A compact vocabulary of names that all occur in the official info.json.
SCENES = (
    "amusement_park",
    "beach",
    "bedroom",
    "cemetery",
    "church",
    "desert",
    "forest_path",
    "highway",
    "hospital_room",
    "kitchen",
    "mountain",
    "ocean",
    "park",
    "playground",
    "ruin",
    "stage",
    "street",
)
OBJECTS = (
    "Balloon",
    "Building",
    "Cake",
    "Candle",
    "Car",
    "Cat",
    "Dog",
    "Flower",
    "Food",
    "Skull",
    "Snake",
    "Spider",
    "Toy",
    "Tree",
    "Weapon",
)
FACIAL_EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise")
HUMAN_ACTIONS = (
    "applauding",
    "celebrating",
    "clapping",
    "crying",
    "dancing",
    "headbanging",
    "hugging",
    "kissing",
    "laughing",
    "skydiving",
    "slapping",
    "sword fighting",
)
# Each emotion's facial expression when one is annotated (roughly what the real data shows).
_FACE_OF = {
    "amusement": "happy",
    "awe": "surprise",
    "contentment": "happy",
    "excitement": "surprise",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sad",
}

# Per class c (official order): stripe angle (degrees), stripe cycles across the short side,
# and blob centre (x, y) in units of the short side.
_ANGLES = (0.0, 90.0, 45.0, 135.0, 0.0, 90.0, 45.0, 135.0)
_CYCLES = (3.0, 3.0, 6.0, 6.0, 6.0, 6.0, 3.0, 3.0)
_WORK_PX = 96  # short side (pixels) of the grid the pattern is drawn on
_BLOBS = (
    (0.3, 0.3),
    (0.7, 0.7),
    (0.7, 0.3),
    (0.3, 0.7),
    (0.7, 0.7),
    (0.3, 0.3),
    (0.3, 0.7),
    (0.7, 0.3),
)


def make_synthetic_emoset(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    train_per_class: int = 60,
    val_per_class: int = 12,
    test_per_class: int = 12,
    size_range: tuple[int, int] = (40, 72),
    grayscale_fraction: float = 0.08,
    cmyk_fraction: float = 0.05,
    task: str = "signature",
    label_noise: float = 0.0,
) -> Path:
    """Write a synthetic EmoSet tree at ``root`` and return its path.

    Deterministic in ``seed`` (same files for the same arguments and Pillow version). Image
    sides are drawn uniformly from ``size_range`` (pixels, inclusive). ``root`` must be absent,
    empty, or an earlier synthetic tree (which is replaced); any other folder is refused so that
    real data is never overwritten. ``task`` is "signature" (the default, see above) or
    "factors" (the demo's task); ``label_noise`` is the share of images recorded under a wrong
    emotion (each split, each class: ``*_per_class`` counts the recorded labels).
    """
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    if any(not isinstance(n, int) or n < 0 for n in counts.values()) or not any(counts.values()):
        raise EmoSetError(f"images per class must be integers >= 0, not all 0; got {counts}")
    low, high = size_range
    if not 8 <= low <= high:
        raise EmoSetError(
            f"size_range must be (min_px, max_px) with 8 <= min <= max; got {size_range}"
        )
    if min(grayscale_fraction, cmyk_fraction) < 0 or grayscale_fraction + cmyk_fraction > 1:
        raise EmoSetError("grayscale_fraction and cmyk_fraction must be >= 0 and sum to <= 1")
    if task not in TASKS:
        raise EmoSetError(f"task={task!r} is not one of {', '.join(TASKS)}")
    if not 0 <= label_noise < 1:
        raise EmoSetError(f"label_noise must be a share in [0, 1), got {label_noise}")

    root = Path(root).expanduser()
    _prepare_folder(root)
    params = {
        "seed": seed,
        **{f"{s}_per_class": n for s, n in counts.items()},
        "size_range": [low, high],
        "grayscale_fraction": grayscale_fraction,
        "cmyk_fraction": cmyk_fraction,
        "task": task,
        "label_noise": label_noise,
    }
    _write_json(
        root / MARKER,
        {"generator": "emoset_peft.make_synthetic_emoset", "params": params, "complete": False},
    )
    _write_json(root / "info.json", compact_info_json())

    records: dict[str, list[list[str]]] = {split: [] for split in counts}
    truth: dict[str, dict] = {}
    per_class = sum(counts.values())
    for c, emotion in enumerate(EMOTIONS):
        (root / "image" / emotion).mkdir(parents=True, exist_ok=True)
        (root / "annotation" / emotion).mkdir(parents=True, exist_ok=True)
        # Non-contiguous 5-digit ids, shuffled over the splits like the real release.
        id_rng = np.random.default_rng([seed, c, 100_000])  # apart from the per-image streams
        numbers = np.sort(id_rng.choice(100_000, size=per_class, replace=False))
        splits = np.repeat(list(counts), list(counts.values()))
        id_rng.shuffle(splits)
        for number, split in zip(numbers.tolist(), splits.tolist()):
            image_id = f"{emotion}_{number:05d}"
            rng = np.random.default_rng([seed, c, number])
            true_class = _true_class(np.random.default_rng([seed, c, number, 1]), c, label_noise)
            size = (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
            truth[image_id] = {"emotion": EMOTIONS[true_class]}
            if task == "factors":
                from emoset_peft.data.synthetic_factors import combinations_of, render_factors

                combination = int(rng.choice(combinations_of(true_class)))
                truth[image_id]["combination"] = combination
                pixels = render_factors(rng, combination, size)
            else:
                pixels = render_signature(rng, true_class, size)
            image_rel = f"image/{emotion}/{image_id}.jpg"
            annotation_rel = f"annotation/{emotion}/{image_id}.json"
            _save_jpeg(rng, pixels, root / image_rel, grayscale_fraction, cmyk_fraction)
            _write_json(
                root / annotation_rel, _annotation(rng, image_id, emotion, pixels), indent=None
            )
            records[split].append([emotion, image_rel, annotation_rel])

    order_rng = np.random.default_rng([seed, 99])
    for split, rows in records.items():
        shuffled = [rows[i] for i in order_rng.permutation(len(rows))]
        _write_json(root / SPLIT_FILE_NAMES[split], shuffled, indent=None)
    _write_json(root / TRUTH_FILE, truth, indent=None)
    _write_json(
        root / MARKER,
        {"generator": "emoset_peft.make_synthetic_emoset", "params": params, "complete": True},
    )
    return root


def _true_class(rng: np.random.Generator, recorded: int, label_noise: float) -> int:
    """The class an image shows: its recorded class, or with probability ``label_noise`` one of
    the 7 others (uniformly), so that exactly the noisy share of labels is wrong."""
    if label_noise and rng.random() < label_noise:
        return (recorded + 1 + int(rng.integers(len(EMOTIONS) - 1))) % len(EMOTIONS)
    return recorded


def render_signature(
    rng: np.random.Generator, class_index: int, size: tuple[int, int]
) -> np.ndarray:
    """One RGB image (uint8, H x W x 3) of class ``class_index`` with random nuisance.

    The pattern is drawn on a grid of at most ``_WORK_PX`` on the short side and resized (the
    signature has at most ~7 cycles per side, so nothing is lost); pixel noise is added at full
    size. A 640 x 480 image costs a few milliseconds.
    """
    height, width = size
    scale = min(1.0, _WORK_PX / min(height, width))
    work_h, work_w = max(1, round(height * scale)), max(1, round(width * scale))
    unit = float(min(work_h, work_w))  # coordinates in units of the short side
    y = (np.arange(work_h, dtype=np.float32) / unit)[:, None]
    x = (np.arange(work_w, dtype=np.float32) / unit)[None, :]
    extent_x, extent_y = work_w / unit, work_h / unit

    # Background: a gradient between two dull random colours.
    direction = rng.uniform(0, 2 * np.pi)
    ramp = x * np.float32(np.cos(direction)) + y * np.float32(np.sin(direction))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = (
        _colour(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.8))
        for _ in range(2)
    )
    image = start + (end - start) * ramp[..., None]

    # Distractor stripes at a random angle (weaker than the signature).
    if rng.random() < 0.35:
        image = _blend(
            image,
            _stripes(rng, x, y, rng.uniform(0, 180), rng.uniform(2, 7)),
            _colour(rng.uniform(0, 360), 0.3, 0.6),
            rng.uniform(0.15, 0.35),
        )

    # Signature stripes in the class hue, only inside a random window.
    hue = 45.0 * class_index + rng.normal(0, 22)
    colour = _colour(hue, rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0))
    angle = _ANGLES[class_index] + rng.normal(0, 8)
    pattern = _stripes(rng, x, y, angle, _CYCLES[class_index] * rng.uniform(0.85, 1.15))
    pattern = pattern * _window(rng, x, y, extent_x, extent_y)
    image = _blend(image, pattern, colour, rng.uniform(0.45, 0.9))

    # Class-dependent blob of a random colour (a separable Gaussian: two 1-D factors).
    bx, by = _BLOBS[class_index]
    bx = (bx + rng.normal(0, 0.12)) * extent_x
    by = (by + rng.normal(0, 0.12)) * extent_y
    inv = np.float32(1 / (2 * rng.uniform(0.1, 0.2) ** 2))
    blob = np.exp(-((x - np.float32(bx)) ** 2) * inv) * np.exp(-((y - np.float32(by)) ** 2) * inv)
    image = _blend(
        image, blob, _colour(rng.uniform(0, 360), rng.uniform(0.3, 1), 1.0), rng.uniform(0.25, 0.6)
    )

    image *= np.float32(rng.uniform(0.65, 1.25))  # exposure
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if (work_h, work_w) != (height, width):
        pixels = np.asarray(
            Image.fromarray(pixels, "RGB").resize((width, height), Image.Resampling.BILINEAR)
        )
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    noise *= np.float32(255 * rng.uniform(0.015, 0.06))  # sensor noise, sd in 0..255 units
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def _stripes(rng, x, y, angle_deg, cycles) -> np.ndarray:
    theta = np.deg2rad(angle_deg)
    k = np.float32(2 * np.pi * cycles)
    phase = np.float32(rng.uniform(0, 2 * np.pi))
    arg = x * (k * np.float32(np.cos(theta))) + y * (k * np.float32(np.sin(theta))) + phase
    return np.float32(0.5) + np.float32(0.5) * np.cos(arg)


def _window(rng, x, y, width, height) -> np.ndarray:
    """A soft-edged random rectangle covering 45-100% of each side (a random crop of the cue)."""

    def edges(extent):
        size = rng.uniform(0.45, 1.0) * extent
        start = rng.uniform(0, extent - size)
        return start, start + size

    (x0, x1), (y0, y1) = edges(width), edges(height)
    soft = np.float32(0.04)  # edge width, in units of the short side

    def ramp(t, lo, hi):
        lo, hi = np.float32(lo), np.float32(hi)
        return 1 / (1 + np.exp(-(t - lo) / soft)) / (1 + np.exp((t - hi) / soft))

    return ramp(x, x0, x1) * ramp(y, y0, y1)


def _blend(image, mask, colour, strength) -> np.ndarray:
    weight = (mask * np.float32(strength))[..., None]
    return image + (colour - image) * weight


def _colour(hue_deg, saturation, value) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, saturation, value), np.float32)


def _save_jpeg(rng, pixels, path: Path, grayscale_fraction, cmyk_fraction) -> None:
    draw = rng.random()
    image = Image.fromarray(pixels, "RGB")
    if draw < grayscale_fraction:
        image = image.convert("L")
    elif draw < grayscale_fraction + cmyk_fraction:
        image = image.convert("CMYK")
    image.save(path, "JPEG", quality=int(rng.integers(75, 96)))


def _annotation(rng, image_id, emotion, pixels) -> dict:
    """An annotation like the real ones; each attribute may be missing."""
    annotation: dict = {"image_id": image_id, "emotion": emotion}
    step = max(1, min(pixels.shape[:2]) // 64)  # statistics from ~64 px per side are enough
    rgb = pixels[::step, ::step].astype(np.float32) / 255
    if rng.random() < 0.9:
        annotation["brightness"] = round(float(rgb.mean()), 1)
    if rng.random() < 0.9:
        spread = rgb.max(axis=2) - rgb.min(axis=2)  # a saturation proxy, 0..1
        annotation["colorfulness"] = round(min(1.0, float(spread.mean()) * 2), 1)
    if rng.random() < 0.8:
        annotation["scene"] = SCENES[int(rng.integers(len(SCENES)))]
    if rng.random() < 0.7:
        picks = rng.choice(len(OBJECTS), size=int(rng.integers(1, 4)), replace=False)
        annotation["object"] = [OBJECTS[i] for i in sorted(picks.tolist())]
    if rng.random() < 0.3:
        annotation["facial_expression"] = (
            _FACE_OF[emotion] if rng.random() < 0.7 else FACIAL_EXPRESSIONS[int(rng.integers(6))]
        )
    if rng.random() < 0.35:
        annotation["human_action"] = HUMAN_ACTIONS[int(rng.integers(len(HUMAN_ACTIONS)))]
    return annotation


def compact_info_json() -> dict:
    """info.json with the official keys and emotion order and the compact vocabularies."""
    steps = [round(i / 10, 1) for i in range(11)]

    def vocab(names, labels=None):
        labels = list(names) if labels is None else labels
        return {
            "label2idx": {str(name): i for i, name in enumerate(names)},
            "idx2label": {str(i): label for i, label in enumerate(labels)},
        }

    return {
        "emotion": vocab(EMOTIONS),
        "brightness": vocab([f"{s:.1f}" for s in steps], steps),
        "colorfulness": vocab([f"{s:.1f}" for s in steps], steps),
        "scene": vocab(SCENES),
        "object": vocab(OBJECTS),
        "facial_expression": vocab(FACIAL_EXPRESSIONS),
        "human_action": vocab(HUMAN_ACTIONS),
    }


def _prepare_folder(root: Path) -> None:
    """Refuse a non-empty folder unless an earlier synthetic tree (then clear what it wrote)."""
    if root.exists() and not root.is_dir():
        raise EmoSetError(f"{root} exists and is not a folder; pick another output path")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise EmoSetError(
                f"{root} is not empty and is not a synthetic EmoSet tree (no "
                f"{MARKER}); refusing to write into it. Pick an empty or new folder."
            )
        for name in ("image", "annotation"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("info.json", TRUTH_FILE, *SPLIT_FILE_NAMES.values()):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, data, indent: int | None = 1) -> None:
    path.write_text(json.dumps(data, indent=indent))
