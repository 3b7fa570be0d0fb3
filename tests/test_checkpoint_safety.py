"""Checkpoints hold no pickle the toolkit opens; a damaged file or a full disk stops with one line."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from emoset_peft.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def overrides(root, backbone, out, **extra):
    """12 deterministic steps with checkpoints at 4 and 8 (the ones kept)."""
    items = {
        "data.root": root,
        "data.per_class": 4,
        "data.selection_per_class": 4,
        "model.backbone": backbone,
        "train.batch_size": 8,
        "train.min_steps": 12,
        "train.max_steps": 12,
        "train.eval_every": 6,
        "train.lr": 1e-2,
        "train.checkpoint_every": 4,
        "train.deterministic": "true",
        "output_dir": out,
    }
    items.update(extra)
    return [f"{key}={value}" for key, value in items.items()]


@pytest.fixture(scope="module")
def finished(training_root, tiny_vit_dir, tmp_path_factory):
    """A finished run whose checkpoints/step_00000008 is where an interrupted run would resume."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", *overrides(training_root, tiny_vit_dir, out)]) == 0
    return out


@pytest.fixture
def interrupted(finished, training_root, tiny_vit_dir, tmp_path):
    """A copy of the run as it was after step 8: the results of the finish removed."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    for name in ("metrics.json", "predictions_test.csv"):
        (out / name).unlink()
    shutil.rmtree(out / "adapter")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    return out, overrides(training_root, tiny_vit_dir, out)


class _Planted:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickles_are_never_unpickled_and_resume_stays_exact(
    finished, interrupted, tmp_path
):
    out, args = interrupted
    step = out / "checkpoints" / "step_00000008"
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Planted(marker))
    for name in (
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "pytorch_model.bin",
        "model.safetensors",
    ):
        (step / name).write_bytes(payload)

    assert main(["train", *args, "resume=true"]) == 0
    assert not marker.exists(), "resume unpickled a planted file"
    straight = json.loads((finished / "metrics.json").read_text())
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"] == 12
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert resumed["test"][key] == straight["test"][key]
    weights_a = load_file(str(finished / "adapter" / "adapter_model.safetensors"))
    weights_b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[key] == weights_b[key]).all() for key in weights_a)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_json(path):
    path.write_text(path.read_text().replace("0", "7", 3))


@pytest.mark.parametrize(
    "name, damage",
    [
        ("rng_rank0.safetensors", _truncate),
        ("rng_rank0.safetensors", Path.unlink),
        ("optimizer.safetensors", _truncate),
        ("scheduler.json", _garble_json),
        ("checkpoint.json", _truncate),
    ],
)
def test_a_damaged_checkpoint_file_stops_resume_with_one_line(interrupted, capsys, name, damage):
    out, args = interrupted
    damage(out / "checkpoints" / "step_00000008" / name)
    capsys.readouterr()
    assert main(["train", *args, "resume=true"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert name in lines[0] and "step_00000004" in lines[0] and "overwrite=true" in lines[0]
    assert not (out / "metrics.json").exists()


def test_latest_naming_a_missing_checkpoint_stops_resume(interrupted, capsys):
    out, args = interrupted
    shutil.rmtree(out / "checkpoints" / "step_00000008")
    capsys.readouterr()
    assert main(["train", *args, "resume=true"]) == 2
    line = capsys.readouterr().err.strip()
    assert "step_00000008" in line and "does not exist" in line and "\n" not in line


# A real file size limit (ulimit -f) set from inside the run at a chosen moment: writes past it
# fail with EFBIG exactly as on a full disk (SIGXFSZ ignored so the process is not killed).
LIMITED_RUN = textwrap.dedent("""
    import resource, signal, sys
    from emoset_peft.cli import main
    from emoset_peft.engine import recipe, trainer

    def limit_after(module, name):
        original = getattr(module, name)
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
            return result
        setattr(module, name, wrapped)

    limit_after(trainer if sys.argv[1] == "save_checkpoint" else recipe, sys.argv[1])
    sys.exit(main(["train", *sys.argv[2:]]))
""")


def _run_limited(after, args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", LIMITED_RUN, after, *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    training_root, tiny_vit_dir, tmp_path
):
    out = tmp_path / "run"
    args = overrides(training_root, tiny_vit_dir, out, **{"train.eval_every": 100})
    result = _run_limited("save_checkpoint", args)  # step 4 is written, step 8 hits the limit
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "disk is full" in line and "step_00000008" in line and "step_00000004" in line, line
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004"]
    assert not (out / "metrics.json").exists()

    assert main(["train", *args, "resume=true"]) == 0  # the kept checkpoint is whole
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12


def test_full_disk_while_saving_the_adapter_leaves_no_half_adapter(
    training_root, tiny_vit_dir, tmp_path
):
    out = tmp_path / "run"
    result = _run_limited("fit", overrides(training_root, tiny_vit_dir, out))
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "disk is full" in line and "adapter" in line and str(out) in line, line
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_two_process_resume_reads_each_ranks_rng_and_ends_where_the_straight_run_ends(
    training_root, tiny_vit_dir, tmp_path
):
    from test_distributed import launch_two_cpu_processes

    straight = tmp_path / "straight"
    launch_two_cpu_processes("train", *overrides(training_root, tiny_vit_dir, straight, cpu="true"))
    step = straight / "checkpoints" / "step_00000008"
    assert (step / "rng_rank0.safetensors").exists() and (step / "rng_rank1.safetensors").exists()

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for name in ("metrics.json", "predictions_test.csv"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "adapter")
    launch_two_cpu_processes(
        "train", *overrides(training_root, tiny_vit_dir, resumed, cpu="true"), "resume=true"
    )
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["num_processes"] == b["num_processes"] == 2 and a["steps"] == b["steps"] == 12
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    weights_a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    weights_b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert all((weights_a[key] == weights_b[key]).all() for key in weights_a)
