"""The demo's synthetic task: emotions as combinations of visual factors, under nuisance.

Every image shows full-frame stripes described by four factors (64 combinations):
    hue          8 stripe hues, 45 degrees apart (jitter sd 6 deg);
    orientation  horizontal or vertical stripes (jitter sd 6 deg);
    duty         thin lines (25% of the area) or thick bands (70%);
    ground       a dark or a light background.
All four survive the training augmentation (random resized crop down to 8% of the area, and
horizontal flips), so a crop of an image still shows its combination.

The emotion is a fixed combination of the factors, ``(hue + 3*orientation + 5*duty + 2*ground)
mod 8``: each emotion is the union of 8 of the 64 combinations, one for each (orientation, duty,
ground). A backbone pretrained to tell the 64 combinations apart (``factor_images``: a different
label space) has features that separate them, but which combinations make up which emotion has
to be learned from the labelled images. With k images per class a model has seen on average
``8 * (1 - (7/8)**k)`` of a class's 8 combinations (1, 1.9, 3.3, 5.2, 7.0, 7.9 for k = 1, 2, 4,
8, 16, 32), so accuracy keeps rising up to k = 32 instead of saturating at once.

Class-independent nuisance: background tint and gradient, stripe frequency and phase, a
distractor spot of a random hue, exposure and sensor noise.
"""

from __future__ import annotations

import numpy as np

from emoset_peft.data.synthetic import _blend, _colour

NUM_COMBINATIONS = 64
FACTOR_NAMES = ("hue", "orientation", "duty", "ground")
_DUTIES = (0.25, 0.7)  # share of the area the stripe colour covers
_GROUNDS = ((0.05, 0.2), (0.65, 0.85))  # background value (HSV) range: dark, light


def factors_of(combination: int) -> tuple[int, int, int, int]:
    """(hue 0-7, orientation 0-1, duty 0-1, ground 0-1) of a combination index 0-63."""
    return combination // 8, (combination // 4) % 2, (combination // 2) % 2, combination % 2


def emotion_of(combination: int) -> int:
    """The emotion (class index in the official order) of a combination."""
    hue, orientation, duty, ground = factors_of(combination)
    return (hue + 3 * orientation + 5 * duty + 2 * ground) % 8


def combinations_of(emotion: int) -> list[int]:
    """The 8 combinations whose emotion is ``emotion``."""
    return [c for c in range(NUM_COMBINATIONS) if emotion_of(c) == emotion]


def render_factors(rng: np.random.Generator, combination: int, size: tuple[int, int]) -> np.ndarray:
    """One RGB image (uint8, H x W x 3) of ``combination`` with random nuisance."""
    hue, orientation, duty, ground = factors_of(combination)
    height, width = size
    unit = float(min(height, width))
    y = (np.arange(height, dtype=np.float32) / unit)[:, None]
    x = (np.arange(width, dtype=np.float32) / unit)[None, :]

    # Background: dark or light, a faint random tint, a gentle gradient.
    value = rng.uniform(*_GROUNDS[ground])
    start = _colour(rng.uniform(0, 360), rng.uniform(0.0, 0.2), value)
    end = start * np.float32(rng.uniform(0.8, 1.2))
    direction = rng.uniform(0, 2 * np.pi)
    ramp = x * np.float32(np.cos(direction)) + y * np.float32(np.sin(direction))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = start + (end - start) * ramp[..., None]

    # Stripes over the whole frame; the duty cycle sets how much of it they cover.
    theta = np.deg2rad(90.0 * orientation + rng.normal(0, 6))
    k = np.float32(2 * np.pi * rng.uniform(2.5, 5.0))  # cycles across the short side
    arg = (
        x * (k * np.float32(np.cos(theta)))
        + y * (k * np.float32(np.sin(theta)))
        + np.float32(rng.uniform(0, 2 * np.pi))
    )
    threshold = np.float32(np.cos(np.pi * _DUTIES[duty]))  # cos > t on a `duty` share
    mask = 1 / (1 + np.exp(-(np.cos(arg) - threshold) / np.float32(0.05)))
    colour = _colour(45.0 * hue + rng.normal(0, 6), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))
    image = _blend(image, mask, colour, rng.uniform(0.8, 1.0))

    # A small distractor spot of a random hue somewhere in the frame.
    if rng.random() < 0.5:
        cx, cy = rng.uniform(0, width / unit), rng.uniform(0, height / unit)
        inv = np.float32(1 / (2 * rng.uniform(0.06, 0.12) ** 2))
        spot = np.exp(-((x - np.float32(cx)) ** 2) * inv) * np.exp(
            -((y - np.float32(cy)) ** 2) * inv
        )
        image = _blend(
            image,
            spot,
            _colour(rng.uniform(0, 360), rng.uniform(0.4, 1), 1.0),
            rng.uniform(0.2, 0.5),
        )

    image *= np.float32(rng.uniform(0.85, 1.15))  # exposure
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.04))
    return (np.clip(image + noise, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def factor_images(count: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` square images (uint8 [count, side, side, 3]) of random combinations and their
    combination labels (int64, 0-63): pretraining data in a label space other than emotions."""
    rng = np.random.default_rng([seed, 64])
    labels = rng.integers(NUM_COMBINATIONS, size=count)
    pixels = np.stack(
        [
            render_factors(np.random.default_rng([seed, 64, i]), int(label), (side, side))
            for i, label in enumerate(labels)
        ]
    )
    return pixels, labels.astype(np.int64)
