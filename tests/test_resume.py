"""Kill a run with SIGKILL after a checkpoint; resuming ends where the uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from emoset_peft.cli import main

pytestmark = pytest.mark.slow


def deterministic_run(tiny_run, name):
    return tiny_run(
        name,
        **{
            "train.max_steps": 160,
            "train.min_steps": 160,
            "train.eval_every": 40,
            "train.checkpoint_every": 20,
            "train.deterministic": "true",
            "train.batch_size": 16,
        },
    )


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_run, tmp_path):
    assert main(["train", *deterministic_run(tiny_run, "straight")]) == 0

    killed = tmp_path / "killed"
    args = deterministic_run(tiny_run, "killed")
    process = subprocess.Popen(
        [sys.executable, "-m", "emoset_peft", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest.exists(), process.stderr.read().decode()[-3000:]
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"

    assert main(["train", *args, "resume=true"]) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"] == 160
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert resumed["test"][key] == straight["test"][key]
    assert resumed["best_step"] == straight["best_step"]
    # log.jsonl: the training-loss lines written before the checkpoint are kept, the rest
    # written again, so the resumed log reads like the uninterrupted one.
    logs = [
        [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        for run in (tmp_path / "straight", killed)
    ]
    assert [sorted(entry) for entry in logs[1]] == [sorted(entry) for entry in logs[0]]
    assert [entry["step"] for entry in logs[1]] == [entry["step"] for entry in logs[0]]
    losses = [[entry.get("train_loss", 0.0) for entry in log] for log in logs]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    weights_a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    weights_b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert (weights_a[key] == weights_b[key]).all(), key


def test_resume_leaves_no_adapter_copy_of_a_run_killed_while_saving_it(
    tiny_run, tmp_path, monkeypatch
):
    from emoset_peft.engine.trainer import TrainingLoop

    save = TrainingLoop.checkpoint

    def checkpoint_then_ctrl_c(loop):
        save(loop)
        raise KeyboardInterrupt

    args = ["train", "-q", *tiny_run("run", **{"train.checkpoint_every": 4})]
    with monkeypatch.context() as patch:
        patch.setattr(TrainingLoop, "checkpoint", checkpoint_then_ctrl_c)
        assert main(args) == 130
    run = tmp_path / "run"
    # A process killed inside atomic_folder, as a kill while the adapter is written leaves it.
    script = (
        "import os, sys, pathlib; from emoset_peft.utils.storage import atomic_folder\n"
        "with atomic_folder(pathlib.Path(sys.argv[1]) / 'adapter', 'the adapter', '') as tmp:\n"
        "    (tmp / 'adapter_model.safetensors').write_bytes(b'x' * 4096)\n"
        "    os._exit(9)\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    subprocess.run(
        [sys.executable, "-c", script, str(run)], check=False, env=dict(os.environ, PYTHONPATH=repo)
    )
    (copy,) = [path for path in run.iterdir() if path.name.startswith(".adapter.")]
    assert (copy / "adapter_model.safetensors").is_file()

    assert main([*args, "resume=true"]) == 0
    assert (run / "metrics.json").exists()
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]
