"""Run-folder safety under unlucky or hostile use: users' files, NaN runs, two processes, bad input.

Real files and real processes throughout: a second process holds the lock, a holder is SIGKILLed.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main
from emoset_peft.engine.run_dir import MARKER

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every settled file's bytes (temp files of a write in flight come and go: left out)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".tmp") or ".tmp" in path.parent.name:
            continue
        try:
            files[str(path.relative_to(folder))] = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):  # renamed away while we looked
            continue
    return files


# -- item 1: only what the toolkit wrote is ever removed -----------------------------------------


def test_users_folder_with_a_config_yaml_is_never_touched(tiny_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("# my own recipe\ntrain: {lr: 0.1}\n")
    (folder / "notes.txt").write_text("three weeks of notes")
    (folder / "data").mkdir()
    (folder / "data" / "table.csv").write_text("a,b\n1,2\n")
    before = snapshot(folder)
    for extra in ([], ["overwrite=true"], ["resume=true"]):
        assert main(["train", *tiny_run("mine"), *extra]) == 2
        one_line_error(capsys, str(folder), "notes.txt")
        assert snapshot(folder) == before
        assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "data", "notes.txt"]


def test_a_lone_config_yaml_without_the_marker_is_not_ours(tiny_run, tmp_path, capsys):
    folder = tmp_path / "recipe_only"
    folder.mkdir()
    (folder / "config.yaml").write_text("# my own recipe\n")
    assert main(["train", *tiny_run("recipe_only"), "overwrite=true"]) == 2
    one_line_error(capsys, MARKER)
    assert (folder / "config.yaml").read_text() == "# my own recipe\n"


def test_overwrite_replaces_a_finished_run_but_not_one_with_a_stray_file(
    tiny_run, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", *tiny_run("run")]) == 0
    assert json.loads((run / MARKER).read_text())["fingerprint"]
    (run / "my_plot.png").write_bytes(b"png")
    before = snapshot(run)
    assert main(["train", *tiny_run("run"), "overwrite=true", "train.seed=1"]) == 2
    one_line_error(capsys, "my_plot.png")
    assert snapshot(run) == before

    (run / "my_plot.png").unlink()
    assert main(["train", *tiny_run("run"), "overwrite=true", "train.seed=1"]) == 0
    assert (
        json.loads((run / "metrics.json").read_text())["config_fingerprint"]
        != json.loads(before["metrics.json"])["config_fingerprint"]
    )


def test_an_earlier_attempt_that_never_reached_a_checkpoint_is_cleaned(tiny_run, tmp_path):
    from emoset_peft.config import load_config, save_config
    from emoset_peft.engine.run_dir import locked_run_dir, prepare_run_dir

    aborted = load_config(None, tiny_run("aborted", **{"train.lr": 0.5}))
    with locked_run_dir(aborted):  # what a run killed after its setup leaves behind
        out, _ = prepare_run_dir(aborted)
        save_config(aborted, out / "config.yaml")
        (out / "log.jsonl").write_text('{"step": 6}\n')
        (out / ".provenance.json.x1y2.tmp").write_text("{")  # an atomic write cut short
    assert main(["train", *tiny_run("aborted")]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".emoset-peft-run",
        ".emoset-peft.lock",
    ]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12


# -- item 6: one process per output folder ----------------------------------------------------


def _spawn_train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emoset_peft", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _wait_for_holder(folder: Path, process: subprocess.Popen) -> int:
    lock = folder / ".emoset-peft.lock"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            return json.loads(lock.read_text())["pid"]
        except (OSError, ValueError):  # not there yet, or the holder is writing it
            pass
        time.sleep(0.05)
    raise AssertionError(
        process.stderr.read().decode()[-3000:]
        if process.poll() is not None
        else "the first process never took the lock"
    )


@pytest.mark.slow
def test_second_train_on_a_busy_folder_is_refused_and_a_killed_holder_blocks_nothing(
    tiny_run, tmp_path, capsys
):
    run = tmp_path / "busy"
    long_run = tiny_run(
        "busy", **{"train.max_steps": 100000, "train.min_steps": 100000, "train.eval_every": 100000}
    )
    first = _spawn_train(long_run)
    try:
        holder = _wait_for_holder(run, first)
        assert holder == first.pid
        before = snapshot(run)
        second = subprocess.run(
            [sys.executable, "-m", "emoset_peft", "train", *long_run],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=180,
            check=False,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        after = snapshot(run)  # (the first run may have written more of its own files since)
        assert {name: after.get(name) for name in before} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead holder's lock; its attempt never reached a checkpoint, so the
    # next run cleans it (it holds the marker and only names the toolkit writes).
    assert main(["train", *tiny_run("busy")]) == 0
    assert (run / "metrics.json").exists()


def test_a_live_study_lock_refuses_a_second_study_and_a_killed_one_does_not(
    study_recipe_min, tmp_path, capsys
):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from emoset_peft.utils.locks import folder_lock
        with folder_lock({str(study_dir)!r}, "study"):
            print("locked", flush=True)
            time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["study", "--config", str(study_recipe_min), "--no-progress"]) == 2
        one_line_error(capsys, f"pid {holder.pid}")
        assert [p.name for p in study_dir.iterdir()] == [".emoset-peft.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["study", "--config", str(study_recipe_min), "--no-progress"]) == 0
    assert (study_dir / "results.csv").exists()


@pytest.fixture
def study_recipe_min(training_root, tiny_vit_dir, tmp_path):
    """One cell of a few steps."""
    recipe = {
        "output_dir": str(tmp_path / "study"),
        "base": {
            "data": {"root": str(training_root), "selection_per_class": 4},
            "model": {"backbone": str(tiny_vit_dir)},
            "train": {"batch_size": 8, "min_steps": 3, "max_steps": 3, "eval_every": 3},
        },
        "methods": {"lora": {"train": {"lr": 1e-2}}},
        "per_class": [2],
        "seeds": [0],
        "report": False,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# -- item 2: a NaN/inf run is stopped, not saved -----------------------------------------------


@pytest.mark.parametrize(
    "extra", [{"train.lr": 1e6}, {"train.lr": 1e30, "train.max_grad_norm": "null"}]
)
def test_divergent_training_stops_with_one_line_and_saves_nothing(
    tiny_run, tmp_path, capsys, extra
):
    assert main(["train", *tiny_run("nan", **extra)]) == 2
    line = one_line_error(capsys, "diverged at step", "train.lr")
    assert "nan" in line or "inf" in line
    assert not (tmp_path / "nan").exists()  # no adapter, no metrics, no NaN in any file


def test_a_diverging_cell_is_recorded_as_failed_and_the_grid_goes_on(
    training_root, tiny_vit_dir, tmp_path
):
    from emoset_peft.study.runner import RESULT_COLUMNS, read_results

    recipe = {
        "output_dir": str(tmp_path / "grid"),
        "base": {
            "data": {"root": str(training_root), "selection_per_class": 4},
            "model": {"backbone": str(tiny_vit_dir)},
            "train": {"batch_size": 8, "min_steps": 3, "max_steps": 3, "eval_every": 3},
        },
        "methods": {"lora": {"train": {"lr": 1e-2}}, "ia3": {"train": {"lr": 1e30}}},
        "per_class": [2],
        "seeds": [0],
        "report": True,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    rows = read_results(tmp_path / "grid" / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS)
    by_method = {row["method"]: row for row in rows}
    assert by_method["lora"]["status"] == "ok" and by_method["lora"]["test_accuracy"]
    failed = by_method["ia3"]
    assert failed["status"] == "failed" and "diverged at step" in failed["error"]
    assert failed["test_accuracy"] == ""
    report = (tmp_path / "grid" / "report.md").read_text()
    assert "ia3" in report and "failed" in report  # named as left out, not averaged in

    # A rerun treats the failed cell as done; a changed config for it runs it again.
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    assert read_results(tmp_path / "grid" / "results.csv") == rows
    assert (
        main(
            [
                "study",
                "--config",
                str(path),
                "--no-progress",
                "allow_grid_change=true",
                "methods.ia3.train.lr=3e-2",
            ]
        )
        == 0
    )
    rows = read_results(tmp_path / "grid" / "results.csv")
    assert [r["status"] for r in rows if r["method"] == "ia3"] == ["failed", "ok"]


@pytest.mark.slow
def test_divergence_stops_every_rank_of_a_two_process_run(tiny_run, tmp_path):
    result = run_two_cpu_processes(
        "train",
        *tiny_run("ddp_nan", **{"cpu": "true", "train.lr": 1e30, "train.max_grad_norm": "null"}),
    )
    assert result.returncode != 0
    # Both ranks report it themselves (neither hangs in a collective waiting for the other).
    assert result.stderr.count("error: training diverged at step") == 2, result.stderr[-4000:]
    assert not (tmp_path / "ddp_nan").exists()


def test_epochs_zero_with_max_steps_trains_exactly_that_many_steps(tiny_run, tmp_path):
    assert (
        main(
            [
                "train",
                *tiny_run(
                    "exact",
                    **{
                        "train.epochs": 0,
                        "train.min_steps": 0,
                        "train.max_steps": 5,
                        "train.eval_every": 5,
                    },
                ),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "exact" / "metrics.json").read_text())["steps"] == 5


# -- item 8: bad input is one line, rc 2, and no output folder ---------------------------------


def _empty_split(root: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    copy = Path(shutil.copytree(root, tmp_path / f"EmoSet_{name}"))
    (copy / name).write_text("[]")
    return copy


@pytest.mark.parametrize(
    "case",
    [
        "nan_lr",
        "inf_lr",
        "smoothing",
        "negative_r",
        "dropout",
        "bogus_tracker",
        "missing_backbone",
        "unknown_method",
        "per_class_too_large",
        "missing_root",
        "empty_val",
        "empty_test",
        "zero_steps",
        "negative_clip",
    ],
)
def test_bad_input_is_one_line_before_the_output_folder_exists(
    case, tiny_run, training_root, tmp_path, capsys
):
    cases = {
        "nan_lr": ({"train.lr": ".nan"}, "train.lr"),
        "inf_lr": ({"train.lr": "inf"}, "train.lr"),
        "smoothing": ({"train.label_smoothing": 2}, "train.label_smoothing"),
        "negative_r": ({"model.options.r": -4}, "model.options.r"),
        "dropout": ({"model.options.dropout": 1.5}, "model.options.dropout"),
        "bogus_tracker": ({"train.report_to": "bogus"}, "tensorboard"),
        "missing_backbone": ({"model.backbone": str(tmp_path / "no_model")}, "no_model"),
        "unknown_method": ({"model.method": "nope"}, "nope"),
        "per_class_too_large": ({"data.per_class": 500}, "500"),
        "missing_root": ({"data.root": str(tmp_path / "no_data")}, "no_data"),
        "empty_val": (
            {
                "data.root": _empty_split(training_root, tmp_path, "val.json")
                if case == "empty_val"
                else ""
            },
            "val.json",
        ),
        "empty_test": (
            {
                "data.root": _empty_split(training_root, tmp_path, "test.json")
                if case == "empty_test"
                else ""
            },
            "test.json",
        ),
        "zero_steps": (
            {"train.epochs": 0, "train.min_steps": 0, "train.max_steps": "null"},
            "train.max_steps",
        ),
        "negative_clip": ({"train.max_grad_norm": -1}, "train.max_grad_norm"),
    }
    extra, needle = cases[case]
    assert main(["train", *tiny_run("out", **extra)]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "out").exists()


def test_non_utf8_recipe_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# r\xe9glages\ntrain: {lr: 0.001}\n".encode("latin-1"))
    assert main(["train", "--config", str(recipe), "output_dir=" + str(tmp_path / "out")]) == 2
    one_line_error(capsys, str(recipe), "UTF-8")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_one_line(tiny_run, tmp_path, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        target = parent / "run"
        if os.access(parent, os.W_OK):  # root ignores modes: sysfs refuses everyone
            target = Path("/sys/emoset-peft-test-run")
        assert main(["train", *tiny_run("x", output_dir=target)]) == 2
        one_line_error(capsys, str(target), "writable")
        assert not target.exists()
    finally:
        parent.chmod(0o755)


def test_temporary_files_of_the_toolkits_own_writes_count_as_ours():
    from emoset_peft.engine.run_dir import _written_by_us

    assert _written_by_us(".config.yaml.x1y2.tmp")  # atomic_write_text
    assert _written_by_us(".adapter.host.example.org.4242.tmp")  # utils.storage.atomic_folder
    assert not _written_by_us(".my_notes.txt.tmp")
    assert not _written_by_us("adapter_backup")
