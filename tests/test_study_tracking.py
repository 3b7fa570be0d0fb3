"""Study cells are tracked like runs: one tracker run per cell (tensorboard, and wandb offline and
mlflow in a local store: one project per study), the same scalars as a single run, and each cell
folder keeps its config, provenance and manifest."""

import csv
import json

import pytest
from fixtures_tiny_study import write_tiny_study
from test_hardening_run import one_line_error
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tensorboard finds in the event files of ``folder`` (not its subfolders)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_each_cell_is_one_tensorboard_run_with_the_scalars_of_a_single_run(
    training_root, tiny_vit_dir, tiny_run, tmp_path
):
    pytest.importorskip("tensorboard")
    # k=4 is a "large" cell (the real Accelerator), k=2 a one-process cell (SoloAccelerator).
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, large_per_class=[4])
    assert (
        main(["study", "--config", str(recipe), "--no-progress", "train.report_to=tensorboard"])
        == 0
    )
    assert main(["train", *tiny_run("single", **{"train.report_to": "tensorboard"})]) == 0
    single = scalars(tmp_path / "single" / "emoset-peft")
    assert "train_loss" in single and "val_accuracy" in single
    # Scoring the finished run again logs to no tracker (and needs no tracker folder).
    events = sorted((tmp_path / "single").glob("**/events.out.tfevents.*"))
    assert main(["eval", str(tmp_path / "single"), "--split", "validation", "--no-progress"]) == 0
    assert sorted((tmp_path / "single").glob("**/events.out.tfevents.*")) == events

    study = tmp_path / "study"
    assert sorted(p.name for p in (study / "logs").iterdir()) == ["lora_k2_s0", "lora_k4_s0"]
    for cell in ("lora_k2_s0", "lora_k4_s0"):
        logged = scalars(study / "logs" / cell)
        assert set(logged) == set(single), cell
        steps = [step for step, _ in logged["train_loss"]]
        assert steps == sorted(steps) and steps[-1] == 6  # the loss up to the last step
        folder = study / "cells" / cell
        for name in ("config.yaml", "provenance.json", "train_manifest.json", "metrics.json"):
            assert (folder / name).is_file(), f"{cell}/{name}"
        manifest = json.loads((folder / "train_manifest.json").read_text())
        assert len(manifest["image_ids"]) == 8 * int(cell.split("_k")[1].split("_")[0])
        assert "python" in json.loads((folder / "provenance.json").read_text())

    # A rerun of a cell (here: forced by a changed grid) replaces its tracker run, not appends.
    assert (
        main(
            [
                "study",
                "--config",
                str(recipe),
                "--no-progress",
                "train.report_to=tensorboard",
                "train.lr=0.02",
                "allow_grid_change=true",
            ]
        )
        == 0
    )
    for cell in ("lora_k2_s0", "lora_k4_s0"):
        assert len(list((study / "logs" / cell).glob("events.out.tfevents.*"))) == 1


def wandb_runs(folder, project: str) -> dict[str, set[str]]:
    """``{run name: logged keys}`` of the offline wandb runs of ``project`` under ``folder``,
    read from wandb's own record files (a LevelDB-style log of protobuf ``Record`` messages)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    runs = {}
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        data, pos, chunk, run = path.read_bytes(), 7, b"", {"logged": set()}  # 7: file header
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # records never start in a block's last 6 bytes
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = wandb_internal_pb2.Record.FromString(chunk)
                chunk = b""
                if record.HasField("run"):
                    run.update(name=record.run.display_name, project=record.run.project)
                elif record.HasField("history"):
                    items = record.history.item
                    run["logged"] |= {"/".join(item.nested_key) or item.key for item in items}
        if run.get("project") == project:
            runs[run["name"]] = run["logged"]
    return runs


def mlflow_runs(folder, project: str) -> dict[str, set[str]]:
    """``{run name: logged keys}`` of mlflow experiment ``project`` (one store for the test)."""
    from mlflow import MlflowClient

    experiment = MlflowClient().get_experiment_by_name(project)
    runs = MlflowClient().search_runs([experiment.experiment_id]) if experiment else []
    return {run.info.run_name: set(run.data.metrics) for run in runs}


def _written(read_runs, folder, project: str, names: list[str], seconds: float = 60.0) -> dict:
    """``read_runs(folder, project)`` once it holds ``names`` with their last logged key, or as
    it is after ``seconds``: wandb's own service process writes an offline run's file and may
    still be flushing it when ``run.finish()`` returns."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        runs = read_runs(folder, project)
        done = all("val_accuracy" in runs.get(name, ()) for name in names)
        if done or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


HOSTED = {
    "wandb": (
        wandb_runs,
        {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"},
    ),
    "mlflow": (mlflow_runs, {"MLFLOW_ALLOW_FILE_STORE": "true"}),
}


@pytest.mark.parametrize("tracker", sorted(HOSTED))
def test_a_hosted_tracker_gets_one_project_per_study_and_one_run_per_cell(
    tracker, training_root, tiny_vit_dir, tiny_run, tmp_path, monkeypatch
):
    pytest.importorskip(tracker)
    read_runs, environment = HOSTED[tracker]
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    for key in ("CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):  # not the user's home
        monkeypatch.setenv(f"WANDB_{key}", str(tmp_path / "wandb_home"))
    monkeypatch.chdir(tmp_path)  # anything written to the working folder stays in the test's
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, large_per_class=[4])
    args = ["--no-progress", f"train.report_to={tracker}"]
    assert main(["study", "--config", str(recipe), *args]) == 0
    assert main(["train", *tiny_run("single", **{"train.report_to": tracker})]) == 0

    # One project named by the study folder; k=2 trains on one process, k=4 on the DDP path.
    cells = _written(read_runs, tmp_path / "study" / "logs", "study", ["lora_k2_s0", "lora_k4_s0"])
    assert sorted(cells) == ["lora_k2_s0", "lora_k4_s0"]
    single = _written(read_runs, tmp_path / "single", "emoset-peft", ["single"])["single"]
    assert {"train_loss", "val_accuracy"} <= single
    assert all(logged == single for logged in cells.values())


@pytest.mark.slow
def test_cells_trained_on_the_second_process_are_tracked_too(training_root, tiny_vit_dir, tmp_path):
    pytest.importorskip("tensorboard")
    # k=4: both processes train it together (DDP), rank 0 logs it; then k=1 on process 0 and
    # k=2 on process 1, each logging its own cell.
    recipe = write_tiny_study(
        tmp_path, training_root, tiny_vit_dir, per_class=[1, 2, 4], large_per_class=[4]
    )
    result = run_two_cpu_processes(
        "study", "--config", str(recipe), "--no-progress", "cpu=true",
        "train.report_to=tensorboard", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "study" / "results.csv") as handle:
        assert {row["process_index"] for row in csv.DictReader(handle)} == {"0", "1"}
    for cell in ("lora_k1_s0", "lora_k2_s0", "lora_k4_s0"):
        assert scalars(tmp_path / "study" / "logs" / cell)["train_loss"], cell


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_misspelt_tracker_is_one_line_naming_the_valid_ones(
    command, training_root, tiny_vit_dir, tiny_run, tmp_path, capsys
):
    if command == "train":
        args = ["train", *tiny_run("out", **{"train.report_to": "tensorbord"})]
    else:
        recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, name="out")
        args = ["study", "--config", str(recipe), "train.report_to=tensorbord"]
    assert main(args) == 2
    one_line_error(capsys, "train.report_to=tensorbord", "'tensorbord'", "tensorboard, wandb")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_tracker_that_is_not_installed_is_refused_before_compute(
    command, training_root, tiny_vit_dir, tiny_run, tmp_path, capsys
):
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    absent = [
        t.value for t in LoggerType if t != LoggerType.ALL and t not in get_available_trackers()
    ]
    if not absent:
        pytest.skip("every tracker accelerate knows is installed")
    if command == "train":
        args = ["train", *tiny_run("out", **{"train.report_to": absent[0]})]
    else:
        recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, name="out")
        args = ["study", "--config", str(recipe), f"train.report_to={absent[0]}"]
    assert main(args) == 2
    one_line_error(capsys, f"the {absent[0]} package is not installed", "installed trackers")
    assert not (tmp_path / "out").exists()
