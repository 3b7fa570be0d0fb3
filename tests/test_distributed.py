"""Real multi-process runs (two CPU processes, gloo), started the way users start them."""

import json
import subprocess
from pathlib import Path

import pytest
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def launch_two_cpu_processes(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two processes that must succeed."""
    result = run_two_cpu_processes(*args, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_two_process_training_counts_every_image_once_and_matches_one_process(tiny_run, tmp_path):
    launch_two_cpu_processes("train", *tiny_run("ddp", **{"cpu": "true"}))
    run = tmp_path / "ddp"
    two = json.loads((run / "metrics.json").read_text())
    assert two["num_processes"] == 2  # the launcher really started two processes
    assert two["test"]["num_images"] == 48

    # The same checkpoint scored by one process gives exactly the same metrics.
    assert main(["eval", str(run), "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["num_processes"] == 1
    for key in (
        "accuracy",
        "macro_f1",
        "balanced_accuracy",
        "valence_accuracy",
        "top2_accuracy",
        "confusion_matrix",
        "num_images",
    ):
        assert one[key] == two["test"][key], key
    predictions = (run / "predictions_test.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0] for line in predictions]
    assert len(ids) == len(set(ids)) == 48


def test_two_process_clip_with_unused_text_tower(tiny_run, tiny_clip_dir, tmp_path):
    """CLIP keeps text-tower parameters that a vision loss never reaches; DDP must cope."""
    launch_two_cpu_processes(
        "train",
        *tiny_run("clip", backbone=tiny_clip_dir, cpu="true", **{"model.head_init": "text"}),
    )
    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 12
