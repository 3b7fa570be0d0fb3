"""Frozen-feature cells (engine/features.py): linear probe and zero-shot on cached features."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml

import emoset_peft as ep
from emoset_peft.cli import main
from emoset_peft.commands.cache import entries as cache_entries
from emoset_peft.config import load_config, validate
from emoset_peft.data.feature_cache import SUBFOLDER
from emoset_peft.data.pipeline import Normalizer
from emoset_peft.data.run_data import load_run_data
from emoset_peft.engine.evaluate import predict_probs
from emoset_peft.engine.recipe import train
from emoset_peft.engine.solo import SoloAccelerator
from emoset_peft.errors import EmoSetError
from emoset_peft.models import input_spec
from emoset_peft.study.report import load_study
from emoset_peft.study.report_protocol import protocol, render_protocol
from emoset_peft.study.runner import read_results


def _probs(path):
    rows = (path / "predictions_test.csv").read_text().splitlines()
    header = rows[0].split(",")
    columns = [i for i, name in enumerate(header) if name.startswith("prob_")]
    return np.array([[float(r.split(",")[i]) for i in columns] for r in rows[1:]])


def _score_on_images(adapter, config):
    """predict_probs of a reloaded adapter on the decoded test images (the image path)."""
    model = ep.load_adapter(adapter)
    spec = input_spec(model)
    data = load_run_data(config.data, spec.image_size, crop_ratio=spec.crop_ratio)
    accelerator = SoloAccelerator(torch.device("cpu"))
    normalizer = Normalizer(spec.mean, spec.std, accelerator.device)
    return predict_probs(model, data.test, accelerator, normalizer, spec.image_size, 64)


def test_linear_probe_on_cached_features_saves_an_adapter_that_scores_images_alike(
    tiny_run, tmp_path
):
    cache = tmp_path / "cache"
    config = load_config(
        None, tiny_run("linear", **{"model.method": "linear", "data.cache_dir": str(cache)})
    )
    metrics = train(config, show_progress=False)
    record = metrics["frozen_features"]
    assert record["augmentation"] is False and record["images_computed"] > 0
    assert metrics["seconds"]["features"] > 0 and metrics["steps"] == 12
    assert len(list((cache / SUBFOLDER).glob("*.npy"))) == 3  # train, selection, test
    out = tmp_path / "linear"
    on_images = _score_on_images(out / "adapter", config)
    np.testing.assert_allclose(_probs(out), on_images, atol=1e-5)

    # A second run reads every split from the cache and trains the same head.
    again = load_config(
        None, tiny_run("again", **{"model.method": "linear", "data.cache_dir": str(cache)})
    )
    second = train(again, show_progress=False)
    assert second["frozen_features"]["images_computed"] == 0
    assert second["frozen_features"]["images_from_cache"] == record["images_computed"]
    np.testing.assert_allclose(_probs(tmp_path / "again"), _probs(out), atol=1e-6)


def test_zero_shot_features_equal_the_image_path(tiny_run, tiny_clip_dir, tmp_path):
    def run(name, mode):
        overrides = tiny_run(
            name,
            backbone=tiny_clip_dir,
            **{
                "model.method": "zeroshot",
                "data.per_class": 0,
                "data.cache_dir": str(tmp_path / "cache"),
                "train.frozen_features": mode,
            },
        )
        return train(load_config(None, overrides), show_progress=False)

    cached, plain = run("cached", "auto"), run("plain", "off")
    assert "frozen_features" in cached and "frozen_features" not in plain
    assert cached["test"]["accuracy"] == plain["test"]["accuracy"]
    np.testing.assert_allclose(_probs(tmp_path / "cached"), _probs(tmp_path / "plain"), atol=1e-5)

    # The cached test features are CLIP's unit-RMS image embedding of each test image.
    config = load_config(None, tiny_run("x", backbone=tiny_clip_dir))
    model = ep.load_adapter(tmp_path / "cached" / "adapter").eval()
    spec = input_spec(model)
    data = load_run_data(config.data, spec.image_size, crop_ratio=spec.crop_ratio)
    normalizer = Normalizer(spec.mean, spec.std, torch.device("cpu"))
    crop = (data.test.pixels.shape[1] - spec.image_size) // 2
    pixels = normalizer(
        normalizer.to_nchw(data.test.pixels)[
            ..., crop : crop + spec.image_size, crop : crop + spec.image_size
        ]
    )
    with torch.no_grad():
        expected = model.classifier_model.image_features(pixels)[0].numpy()
    stored = [np.load(p) for p in (tmp_path / "cache" / SUBFOLDER).glob("*.npy")]
    match = [a for a in stored if a.shape == expected.shape]
    assert match and np.abs(match[0] - expected).max() < 1e-5


def test_a_study_reuses_features_across_cells_and_rebuilds_a_damaged_cache(
    training_root, tiny_vit_dir, tmp_path, caplog
):
    cache = tmp_path / "cache"
    recipe = {
        "output_dir": str(tmp_path / "study"),
        "base": {
            "data": {
                "root": str(training_root),
                "selection_per_class": 4,
                "cache_dir": str(cache),
            },
            "model": {"backbone": str(tiny_vit_dir)},
            "train": {"batch_size": 8, "min_steps": 6, "max_steps": 6, "eval_every": 3},
        },
        "methods": {"linear": {"train": {"lr": 1e-2}}},
        "per_class": [2, 4],
        "seeds": [0],
        "report": False,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    rows = read_results(tmp_path / "study" / "results.csv")
    first, second = (
        json.loads((tmp_path / "study" / r["run_dir"] / "metrics.json").read_text())[
            "frozen_features"
        ]
        for r in rows
    )
    # k=2: train 16 + selection 32 + test 48 computed. k=4: test and selection from the cache,
    # the 16 images of k=2 (nested inside k=4) from the first cell, 16 new ones computed.
    assert first["images_computed"] == 16 + 32 + 48
    assert second["images_from_cache"] == 32 + 48
    assert second["images_from_earlier_cells"] == 16 and second["images_computed"] == 16
    assert all(float(r["feature_seconds"]) > 0 for r in rows)
    # test, selection and two training subsets, listed (and cleared) by `emoset-peft cache`
    assert [e.kind for e in cache_entries(cache)].count("features") == 4
    study = load_study(tmp_path / "study")
    block = protocol(study.directory, study.rows, study.run_metrics)
    assert block["frozen_feature_methods"] == ["linear"]
    assert "without augmentation" in "\n".join(render_protocol(block, lambda header, rows: []))

    # Damage every entry: the next run warns, computes the features again, gets the same result.
    for array in (cache / SUBFOLDER).glob("*.npy"):
        data = bytearray(array.read_bytes())
        data[-8:] = b"\x7f" * 8
        array.write_bytes(bytes(data))
    overrides = [
        f"data.root={training_root}",
        "data.per_class=2",
        "data.selection_per_class=4",
        f"data.cache_dir={cache}",
        f"model.backbone={tiny_vit_dir}",
        "model.method=linear",
        "train.batch_size=8",
        "train.min_steps=6",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.lr=1e-2",
        f"output_dir={tmp_path / 'rerun'}",
    ]
    with caplog.at_level(logging.WARNING):
        metrics = train(load_config(None, overrides), show_progress=False)
    assert "feature cache" in caplog.text and "damaged" in caplog.text
    assert metrics["frozen_features"]["images_computed"] == 16 + 32 + 48
    assert metrics["test"]["accuracy"] == pytest.approx(float(rows[0]["test_accuracy"]))
    np.testing.assert_allclose(
        _probs(tmp_path / "rerun"), _probs(tmp_path / "study" / rows[0]["run_dir"]), atol=1e-6
    )


def test_frozen_features_key_and_fingerprints():
    def fingerprint(*extra):
        return load_config(None, ["data.root=/x", *extra]).fingerprint()

    # Methods it does not apply to, and zeroshot (same features, nothing trained), keep the
    # hash they had before the option existed (emoset-peft 0.1.0, as test_protocol pins it).
    assert fingerprint() == fingerprint("train.frozen_features=off") == "80e61c1bf84fb531"
    assert fingerprint("model.method=zeroshot") == fingerprint(
        "model.method=zeroshot", "train.frozen_features=off"
    )
    # The linear probe on cached features trains without augmentation: a new hash; with
    # frozen_features=off it is the earlier linear cell, hashed as before.
    assert fingerprint("model.method=linear", "train.frozen_features=off") == "608c895419cb37f0"
    assert fingerprint("model.method=linear") != "608c895419cb37f0"
    assert fingerprint("model.method=linear") == fingerprint(
        "model.method=linear", "train.frozen_features=true"
    )
    with pytest.raises(EmoSetError, match="train.frozen_features"):
        validate(load_config(None, ["data.root=/x", "train.frozen_features=sometimes"]))
