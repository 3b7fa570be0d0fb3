"""One training run through the CLI, in-process: files, metrics, selection, folder policy."""

import json

import pytest

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.engine.trainer import step_budget


@pytest.mark.parametrize(
    "backbone, method", [("vit", "lora"), ("clip", "lora"), ("vit", "ia3"), ("clip", "zeroshot")]
)
def test_cli_train_writes_a_complete_run(
    tiny_run, tiny_vit_dir, tiny_clip_dir, tmp_path, backbone, method, capsys
):
    folder = tiny_vit_dir if backbone == "vit" else tiny_clip_dir
    extra = {"model.method": method}
    if method == "zeroshot":
        extra["data.per_class"] = 0
    assert main(["train", *tiny_run("run", backbone=folder, **extra)]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("test", "validation"):
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "valence_accuracy"):
            assert 0.0 <= metrics[split][key] <= 1.0
    assert metrics["test"]["num_images"] == 8 * 6  # test_limit_per_class x 8 classes, each once
    if method == "zeroshot":
        assert metrics["trainable_params"] == 0 and metrics["steps"] == 0
    else:
        assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["train_images"] == (0 if method == "zeroshot" else 32)
    assert (run / "config.yaml").exists() and (run / "provenance.json").exists()
    assert (run / "adapter").is_dir()
    predictions = (run / "predictions_test.csv").read_text().splitlines()
    assert len(predictions) == 1 + 48 and "prob_amusement" in predictions[0]
    if method != "zeroshot":
        assert json.loads((run / "train_manifest.json").read_text())["image_ids"]
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        log = [entry for entry in lines if "val_loss" in entry]  # the evaluations
        assert [entry["step"] for entry in log] == [6, 12]
        best = max(log, key=lambda entry: entry["val_accuracy"])  # first best wins ties
        assert metrics["best_step"] == best["step"]
        assert metrics["validation"]["accuracy"] == pytest.approx(best["val_accuracy"])
    assert "test accuracy" in capsys.readouterr().out


def test_existing_run_is_never_overwritten_silently(tiny_run, tmp_path, capsys):
    args = ["train", *tiny_run("run")]
    assert main(args) == 0
    before = (tmp_path / "run" / "metrics.json").read_text()
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    assert main(args + ["resume=true"]) == 0  # finished: only the model card is written again
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    assert main(args + ["overwrite=true", "train.seed=1"]) == 0
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["config_fingerprint"]
        != json.loads(before)["config_fingerprint"]
    )


def test_bad_config_is_one_clear_line(tiny_run, capsys):
    assert main(["train", *tiny_run(), "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key config.train.lrr" in err and "did you mean lr" in err
    assert "Traceback" not in err
    assert main(["train", *tiny_run(), "model.method=nope"]) == 2
    assert "lora" in capsys.readouterr().err  # the error lists the valid methods


def test_step_budget_gives_small_subsets_a_sensible_run():
    train = load_config(None, []).train  # epochs 30, min_steps 60
    assert step_budget(8, 8, 1, train) == 60  # k=1: 8 images would be 30 steps -> min_steps
    assert step_budget(128, 32, 1, train) == 120  # k=16: 4 steps/epoch x 30 epochs
    assert step_budget(128, 16, 2, train) == 120  # 2 processes x 16 = the same global batch


def test_python_entry_and_offline_tensorboard(tiny_run, tmp_path):
    import emoset_peft as ep

    config = ep.load_config(None, tiny_run("tb", **{"train.report_to": "tensorboard"}))
    metrics = ep.train(config, show_progress=False)
    assert metrics == json.loads((tmp_path / "tb" / "metrics.json").read_text())
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_early_stopping_and_gradient_accumulation(tiny_run, tmp_path):
    # A learning rate too small to change any prediction: selection accuracy cannot improve,
    # so patience=2 stops the run after the first evaluation plus two more.
    args = tiny_run(
        "stop",
        **{
            "train.lr": 1e-12,
            "train.eval_every": 1,
            "train.patience": 2,
            "train.max_steps": 30,
            "train.min_steps": 30,
            "train.grad_accum": 2,
            "train.warmup_ratio": 0.0,
        },
    )
    assert main(["train", *args]) == 0
    metrics = json.loads((tmp_path / "stop" / "metrics.json").read_text())
    assert metrics["stopped_early"] is True
    assert metrics["steps"] == 3 and metrics["best_step"] == 1


def test_data_seed_and_training_seed_are_separate(tiny_run, tmp_path):
    runs = {"a": {}, "b": {"train.seed": 1}, "c": {"data.data_seed": 1}}
    for name, extra in runs.items():
        assert main(["train", *tiny_run(name, **extra)]) == 0
    ids = {
        name: json.loads((tmp_path / name / "train_manifest.json").read_text())["image_ids"]
        for name in runs
    }
    assert ids["a"] == ids["b"]  # another training seed trains on the same images
    assert ids["a"] != ids["c"]  # another data seed picks other images
    adapters = {
        name: (tmp_path / name / "adapter" / "adapter_model.safetensors").read_bytes()
        for name in ("a", "b")
    }
    assert adapters["a"] != adapters["b"]  # ... with other initialisation and augmentation


def test_corrupt_images_are_skipped_and_counted_or_named(tiny_run, training_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "EmoSet"
    shutil.copytree(training_root, root)
    record = json.loads((root / "test.json").read_text())[0]
    broken = root / record[1]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated JPEG, as downloads sometimes are

    assert main(["train", *tiny_run("skip", **{"data.root": root})]) == 0
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["skipped_images"]["test"] == 1
    assert metrics["test"]["num_images"] == 47

    assert (
        main(["train", *tiny_run("strict", **{"data.root": root, "data.skip_corrupt": "false"})])
        == 2
    )
    assert str(broken) in capsys.readouterr().err


def test_attribute_slices_are_named(tiny_run, tmp_path):
    assert main(["train", *tiny_run("slices")]) == 0
    slices = json.loads((tmp_path / "slices" / "metrics.json").read_text())["test"]["slices"]
    scenes = slices.get("scene", {})
    assert scenes and not any(name.lstrip("-").isdigit() for name in scenes)  # names, not indices
