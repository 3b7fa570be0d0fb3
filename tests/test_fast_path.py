"""The fast data path is numerically the plain one: eval pixels and predictions match torchvision's
Resize + CenterCrop + ToTensor + Normalize, train crops keep RandomResizedCrop's distribution,
batches are pure functions of (seed, step), and the precision policy only drops emulated bf16."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from emoset_peft.data.emoset import load_emoset
from emoset_peft.data.images import open_image
from emoset_peft.data.pipeline import (
    Normalizer,
    TrainStream,
    cache_resolution,
    decode_split,
    eval_batches,
    random_resized_crop_flip,
    sample_crop_boxes,
)

IMAGE_SIZE = 32  # cached squares are R = 37 px
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=8,
    )
    return ViTForImageClassification(config).eval()


def _both_paths(root, cache):
    """(toolkit eval tensors, torchvision eval tensors) for the test split of ``root``."""
    split = load_emoset(root, cache_dir=cache)["test"]
    images = decode_split(split, IMAGE_SIZE, cache_dir=cache, show_progress=False)
    normalizer = Normalizer(MEAN, STD, torch.device("cpu"))
    fast = torch.cat([x for _, x in eval_batches(images, 16, normalizer, IMAGE_SIZE)])
    plain = T.Compose(
        [
            T.Resize(cache_resolution(IMAGE_SIZE)),
            T.CenterCrop(IMAGE_SIZE),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    paths = [
        row["path"]
        for row in split.cast_column("image", __import__("datasets").Image(decode=False))["image"]
    ]
    reference = torch.stack([plain(open_image(path)) for path in paths])
    return fast, reference


def test_eval_pixels_and_predictions_equal_torchvision(synthetic_root, tmp_path):
    # 28-40 px images: decoded in full, same PIL filter and geometry as torchvision.
    fast, reference = _both_paths(synthetic_root, tmp_path / "cache")
    assert fast.shape == reference.shape == (32, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (fast - reference).abs().max().item() < 1e-5
    model = _tiny_vit()
    with torch.inference_mode():
        assert torch.equal(
            model(pixel_values=fast).logits.argmax(1),
            model(pixel_values=reference).logits.argmax(1),
        )


def test_draft_decoding_of_large_jpegs_stays_close(tmp_path):
    from emoset_peft.data.synthetic import make_synthetic_emoset

    # 150-220 px for R = 37: JPEG draft decodes at 1/4 scale before the bilinear resize.
    root = make_synthetic_emoset(
        tmp_path / "big",
        seed=5,
        train_per_class=1,
        val_per_class=1,
        test_per_class=3,
        size_range=(150, 220),
    )
    fast, reference = _both_paths(root, tmp_path / "cache")
    # In [0, 1] pixel units (x std): under 1 grey level on average, edges a little more.
    diff = (fast - reference).abs() * torch.tensor(STD).view(1, 3, 1, 1)
    assert diff.mean().item() < 1.5 / 255
    assert diff.max().item() < 40 / 255
    model = _tiny_vit()
    with torch.inference_mode():
        fast_logits = model(pixel_values=fast).logits
        ref_logits = model(pixel_values=reference).logits
    assert (fast_logits.argmax(1) == ref_logits.argmax(1)).float().mean().item() >= 0.9
    assert (fast_logits - ref_logits).abs().max().item() < 0.1


def test_crop_boxes_follow_random_resized_crop():
    generator = torch.Generator().manual_seed(0)
    n, side = 4000, 37
    boxes, flips = sample_crop_boxes(n, side, side, generator)
    boxes = np.array(boxes, dtype=np.float64)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= side).all() and (left + w <= side).all()
    area = h * w / side**2
    # Rounding to whole pixels moves a crop's area and aspect a little past the bounds.
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 0.75 * 0.75 and aspect.max() <= 4 / 3 / 0.75
    assert 0.47 < np.mean(flips) < 0.53
    # Same distribution as torchvision's own sampler (its mean area fraction over n draws).
    torch.manual_seed(0)
    image = torch.zeros(3, side, side)
    ref = np.array(
        [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
        dtype=np.float64,
    )
    ref_area = ref[:, 2] * ref[:, 3] / side**2
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(np.median(aspect) - np.median(ref[:, 3] / ref[:, 2])) < 0.05


def test_batch_augmentation_applies_each_box_and_flip():
    import torchvision.transforms.v2.functional as TF

    batch = torch.randint(0, 256, (6, 3, 37, 37), dtype=torch.uint8)
    crops = random_resized_crop_flip(batch, 32, torch.Generator().manual_seed(3))
    boxes, flips = sample_crop_boxes(6, 37, 37, torch.Generator().manual_seed(3))
    assert crops.shape == (6, 3, 32, 32) and crops.dtype == torch.uint8
    for index, ((top, left, h, w), flip) in enumerate(zip(boxes, flips)):
        expected = TF.resized_crop(batch[index], top, left, h, w, [32, 32], antialias=True)
        assert torch.equal(crops[index], TF.horizontal_flip(expected) if flip else expected)


def test_train_batches_are_a_pure_function_of_seed_and_step(synthetic_root, tmp_path):
    split = load_emoset(synthetic_root, cache_dir=tmp_path)["train"]
    images = decode_split(split, IMAGE_SIZE, cache_dir=tmp_path, show_progress=False)
    normalizer = Normalizer(MEAN, STD, torch.device("cpu"))
    stream = TrainStream(images, batch_size=16, seed=4)
    x5, y5 = stream.batch(5, normalizer, IMAGE_SIZE)
    stream.batch(6, normalizer, IMAGE_SIZE)
    again = TrainStream(images, batch_size=16, seed=4).batch(5, normalizer, IMAGE_SIZE)
    assert torch.equal(x5, again[0]) and torch.equal(y5, again[1])
    assert not torch.equal(x5, stream.batch(4, normalizer, IMAGE_SIZE)[0])
    assert x5.shape == (16, 3, IMAGE_SIZE, IMAGE_SIZE) and x5.dtype == torch.float32


AMX = ("GenuineIntel", frozenset({"avx512_bf16", "amx_bf16"}))
AVX2 = ("AuthenticAMD", frozenset({"avx2"}))


def test_precision_policy_drops_only_slow_low_precision(monkeypatch):
    from emoset_peft.engine import precision

    cpu = torch.device("cpu")
    assert precision.resolve_mixed_precision("no", cpu) == "no"
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX2)
    assert precision.resolve_mixed_precision("bf16", cpu) == "no"
    assert precision.resolve_mixed_precision("fp16", cpu) == "no"
    monkeypatch.setattr(precision, "cpu_features", lambda: AMX)
    assert precision.resolve_mixed_precision("bf16", cpu) == "bf16"


def test_runs_and_study_cells_train_in_the_resolved_precision(monkeypatch, tiny_run):
    from emoset_peft.config import load_config
    from emoset_peft.engine import precision
    from emoset_peft.engine.recipe import make_accelerator

    config = load_config(
        overrides=tiny_run("precision", **{"train.mixed_precision": "bf16", "cpu": "true"})
    )
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX2)
    assert make_accelerator(config).mixed_precision == "no"
    monkeypatch.setattr(precision, "cpu_features", lambda: AMX)
    assert make_accelerator(config).mixed_precision == "bf16"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_fit_reports_every_step_time(tiny_run):
    from emoset_peft.config import load_config
    from emoset_peft.data.run_data import load_run_data
    from emoset_peft.engine.recipe import build_run_model
    from emoset_peft.engine.solo import SoloAccelerator
    from emoset_peft.engine.trainer import fit
    from emoset_peft.models import input_spec

    config = load_config(overrides=tiny_run("steps"))
    data = load_run_data(config.data, IMAGE_SIZE, show_progress=False)
    model = build_run_model(config, data.class_names, 12)
    spec = input_spec(model)
    accelerator = SoloAccelerator(torch.device("cpu"))
    calls = []
    result = fit(
        model,
        data,
        config.train,
        accelerator,
        Normalizer(spec.mean, spec.std, accelerator.device),
        spec.image_size,
        show_progress=False,
        on_step=lambda step, seconds: calls.append((step, seconds)),
    )
    assert result.steps == len(calls) == 12
    assert [step for step, _ in calls] == list(range(1, 13))
    assert all(seconds > 0 for _, seconds in calls)
    assert sum(seconds for _, seconds in calls) <= result.train_seconds
