"""A loaded model in transformers' own ``pipeline("image-classification")``: every method on every
tiny backbone family gives the emotion names, with the scores the model itself computes."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import emoset_peft as ep
from emoset_peft.models.methods import get_method

FAMILIES = ("vit", "clip")
MATRIX = [
    (m, b) for m in ep.METHODS for b in FAMILIES if b == "clip" or not get_method(m).text_head
]


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 52), (64, 36))
    ]


def _perturb(model):
    """Random trained weights: a zero-initialised adapter would hide a method that is not run."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("method,backbone", MATRIX)
def test_pipeline_gives_emotion_names_and_the_models_scores(
    method, backbone, tiny_backbones, photos, tmp_path
):
    torch.manual_seed(0)
    built = ep.build_model(tiny_backbones[backbone], method, total_steps=10)
    _perturb(built)
    built.save_pretrained(tmp_path)
    model = ep.load_adapter(tmp_path)
    processor = model.image_processor()
    classify = pipeline("image-classification", model=model, image_processor=processor)
    results = classify(photos, top_k=8)
    pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits, dim=-1)
    for result, expected in zip(results, probs):
        assert [r["label"] for r in result] == [
            ep.EMOTIONS[i] for i in expected.argsort(descending=True)
        ]
        scores = {r["label"]: r["score"] for r in result}
        got = torch.tensor([scores[name] for name in ep.EMOTIONS])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_pipeline_accepts_the_model_without_complaint(tiny_vit_dir, photos, caplog):
    """transformers logs an error for a model class outside its image-classification mapping;
    EmoSetModel is registered there (and has device / dtype / config)."""
    model = ep.build_model(tiny_vit_dir, "lora").eval()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(caplog.handler)
    try:
        classify = pipeline(
            "image-classification", model=model, image_processor=model.image_processor()
        )
    finally:
        hf_logger.removeHandler(caplog.handler)
    assert "not supported" not in caplog.text
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.config.id2label == dict(enumerate(ep.EMOTIONS))
    assert model.config.label2id == {name: i for i, name in enumerate(ep.EMOTIONS)}
    assert classify(photos[0], top_k=1)[0]["label"] in ep.EMOTIONS


def test_image_processor_has_the_eval_geometry(tiny_vit_dir):
    """Resize the shorter side to size / crop_ratio, centre crop, the backbone's mean and std."""
    model = ep.build_model(tiny_vit_dir, "linear")
    processor = model.image_processor()
    spec = model.input_spec
    assert processor.size == {"shortest_edge": round(spec.image_size / spec.crop_ratio)}
    assert processor.crop_size == {"height": spec.image_size, "width": spec.image_size}
    assert tuple(processor.image_mean) == spec.mean and tuple(processor.image_std) == spec.std


def _offset(got, expected, tolerance):
    """(dy, dx) in {-1, 0, 1}^2 such that ``got`` shifted by it equals ``expected`` within
    ``tolerance``, or None."""
    size = got.shape[-1]
    for dy in (0, -1, 1):
        for dx in (0, -1, 1):
            a = expected[..., max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)]
            b = got[..., max(-dy, 0) : size + min(-dy, 0), max(-dx, 0) : size + min(-dx, 0)]
            if (a - b).abs().max().item() <= tolerance:
                return dy, dx
    return None


def test_image_processor_gives_the_toolkits_eval_pixels(tiny_clip_dir, tmp_path):
    """The pixels training and eval decode (data/pipeline.py) within one grey level, the crop
    placed alike or one pixel over along the long side (transformers' centre crop floors a
    half-pixel offset, torchvision's rounds it to even): the geometry the run was scored on."""
    from emoset_peft.data.pipeline import Normalizer, center_crop, decode_square

    model = ep.build_model(tiny_clip_dir, "linear")
    spec, processor = model.input_spec, model.image_processor()
    normalize = Normalizer(spec.mean, spec.std, torch.device("cpu"))
    grey_level = 1.0 / 255 / min(spec.std) + 1e-6
    rng = np.random.default_rng(0)
    offsets = []
    for height, width in ((90, 120), (37, 37), (300, 210), (64, 96), (97, 65)):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"{height}x{width}.png"
        Image.fromarray(pixels).save(path)
        square = decode_square(str(path), round(spec.image_size / spec.crop_ratio), spec.image_size)
        expected = normalize(center_crop(normalize.to_nchw(square[None].copy()), spec.image_size))
        got = processor(images=Image.open(path), return_tensors="pt")["pixel_values"]
        assert got.shape == expected.shape
        offsets.append(_offset(got, expected, grey_level))
    # 37 x 49 px resized: (49 - 32) / 2 = 8.5 rounds to 8 either way; 52 x 37: 10 exactly
    assert offsets[:3] == [(0, 0)] * 3
    # 37 x 55 and 55 x 37: (55 - 32) / 2 = 11.5, torchvision 12 (half to even), transformers 11
    assert offsets[3] == (0, -1) and offsets[4] == (-1, 0)
