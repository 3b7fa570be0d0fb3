"""Scoring a run again gives its numbers: ``eval RUN`` reproduces every test metric of its
metrics.json and ``predict`` its predictions_test.csv, in fp32 and in bf16 (forced with
``bf16!`` so that the bf16 path runs on any CPU), or eval says in one line which metric differs,
by how much and why."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emoset_peft.cli import main
from emoset_peft.engine.rescore import differing_metrics


@pytest.fixture(scope="module", params=["no", "bf16!", "bf16!-linear"])
def run(request, training_root, tiny_vit_dir, tmp_path_factory) -> Path:
    """A finished 4-step run in fp32, in bf16, and a bf16 linear probe (the frozen-feature
    path: the head trained and scored on cached features)."""
    precision, _, method = request.param.partition("-")
    out = tmp_path_factory.mktemp("again") / "run"
    overrides = {
        "data.root": training_root,
        "data.per_class": 3,
        "data.selection_per_class": 2,
        "model.backbone": tiny_vit_dir,
        "model.method": method or "lora",
        "train.batch_size": 8,
        "train.min_steps": 4,
        "train.max_steps": 4,
        "train.eval_every": 2,
        "train.lr": 1e-2,
        "train.mixed_precision": precision,
        "cpu": "true",
        "output_dir": out,
    }
    assert main(["train", *(f"{k}={v}" for k, v in overrides.items())]) == 0
    return out


def _probs(path: Path, key: str) -> dict[str, dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return {
            Path(row[key]).stem: {k: float(v) for k, v in row.items() if k.startswith("prob_")}
            for row in csv.DictReader(stream)
        }


def test_eval_reproduces_every_test_metric(run, capsys):
    trained = json.loads((run / "metrics.json").read_text())
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert "differ" not in capsys.readouterr().out
    again = json.loads((run / "eval" / "metrics_test.json").read_text())
    assert differing_metrics(again, trained["test"]) == []
    assert set(trained["test"]) <= set(again)
    original = _probs(run / "predictions_test.csv", "image_id")
    assert _probs(run / "eval" / "predictions_test.csv", "image_id") == original


def test_predict_on_the_test_images_reproduces_predictions_test_csv(run, training_root, tmp_path):
    out = tmp_path / "predictions.csv"
    test_images = sorted(str(p) for p in (training_root / "image").rglob("*") if p.is_file())
    assert main(["predict", str(run), *test_images, "--out", str(out), "--no-progress"]) == 0
    predicted = _probs(out, "path")
    original = _probs(run / "predictions_test.csv", "image_id")
    assert len(original) == 48
    assert {image_id: predicted[image_id] for image_id in original} == original


def test_another_precision_is_one_line_naming_the_metrics_and_why(run, capsys):
    trained = json.loads((run / "metrics.json").read_text())
    other = "bf16!" if trained["mixed_precision"] == "no" else "no"
    assert main(["eval", str(run), f"train.mixed_precision={other}", "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "differ" in line]
    again = json.loads((run / "eval" / "metrics_test.json").read_text())
    differing = differing_metrics(again, trained["test"])
    assert differing, "fp32 and bf16 gave the same probabilities to 1e-6"
    assert len(lines) == 1
    assert lines[0].startswith(f"{len(differing)} test metric(s) differ from the run's")
    ran, was = ("bf16", "fp32") if other == "bf16!" else ("fp32", "bf16")
    assert lines[0].endswith(f"why: scored in {ran}, the run in {was}")
    key, new, old = ([d for d in differing if "." not in d[0]] or differing)[0]
    assert f": {key} {new:.6g} vs {old:.6g} ({new - old:+.2g})" in lines[0]
