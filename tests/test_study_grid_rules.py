"""A study runs as its recipe reads, or says in one line why not, before any folder exists:
no resumable checkpoints in cells, no k=0 without a zero-shot method, the same global batch for
every cell whatever the number of processes, and no launch whose processes form no group."""

import csv
import json

import pytest
from fixtures_tiny_study import write_tiny_study
from test_hardening_run import one_line_error
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main
from emoset_peft.errors import EmoSetError
from emoset_peft.study.grid import expand, load_study_config
from emoset_peft.study.validate import check_grid

LORA = {"model": {"options": {"r": 4, "dropout": 0.0}}, "train": {"lr": 1e-2}}


def run_study(tmp_path, recipe, *overrides):
    cache = tmp_path / "cache"
    return main(["study", "--config", str(recipe), "--no-progress", f"data.cache_dir={cache}", *overrides])  # fmt: skip


def test_checkpoint_every_is_refused_before_the_study_folder(
    training_root, tiny_vit_dir, tmp_path, capsys
):
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, methods={"lora": LORA})
    assert run_study(tmp_path, recipe, "train.checkpoint_every=2") == 2
    one_line_error(capsys, "train.checkpoint_every=2", "lora_k2_s0", "remove it")
    assert not (tmp_path / "study").exists()
    assert not (tmp_path / "cache").exists()  # nothing decoded either


@pytest.mark.parametrize("per_class", ["[0]", "[0,2]"])
def test_k0_without_a_method_that_runs_at_k0_is_refused(
    per_class, training_root, tiny_vit_dir, tmp_path, capsys
):
    methods = {"linear": {}, "lora": LORA}
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, methods=methods)
    assert run_study(tmp_path, recipe, f"per_class={per_class}") == 2
    one_line_error(capsys, "study.per_class lists 0", "zeroshot")
    assert not (tmp_path / "study").exists()


def test_k0_dropped_for_training_methods_is_a_warning(tiny_vit_dir, tiny_clip_dir, tmp_path):
    recipe = write_tiny_study(
        tmp_path,
        tmp_path / "EmoSet",
        tiny_vit_dir,
        methods={"zeroshot": {"model": {"backbone": str(tiny_clip_dir)}}, "lora": LORA},
        per_class=[0, 2],
    )
    study = load_study_config(recipe)
    cells = expand(study)
    assert {(c.method, c.per_class) for c in cells} == {("zeroshot", 0), ("lora", 2)}
    assert check_grid(study, cells) == [
        "study.per_class: k=0 runs only zeroshot; lora train, so they have no k=0 cell"
    ]
    study.per_class = [2]  # no k=0 asked for: nothing to say
    assert check_grid(study, expand(study)) == []


def test_a_large_cell_needs_a_batch_its_processes_can_split(tiny_vit_dir, tmp_path):
    recipe = write_tiny_study(tmp_path, tmp_path / "EmoSet", tiny_vit_dir, large_per_class=[4])
    study = load_study_config(recipe, ["train.batch_size=9"])
    cells = expand(study)
    assert check_grid(study, cells, 1) == []
    with pytest.raises(EmoSetError, match="lora_k4_s0.*train.batch_size=9.*multiple of 2"):
        check_grid(study, cells, 2)
    assert check_grid(load_study_config(recipe), cells[:1], 2) == []  # k=2 is not large


def results(folder):
    with open(folder / "results.csv") as handle:
        return {row["run_dir"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_a_large_cell_trains_the_same_on_one_and_two_processes(
    training_root, tiny_vit_dir, tmp_path
):
    """Two processes split the cell's batch: the same global batch and steps, the same adapter
    (to float rounding: the tiny model has no dropout), so the same test predictions."""
    recipe = write_tiny_study(
        tmp_path,
        training_root,
        tiny_vit_dir,
        methods={"lora": LORA},
        per_class=[4],
        large_per_class=[4],  # fmt: skip
    )
    assert run_study(tmp_path, recipe, "output_dir=" + str(tmp_path / "one")) == 0
    two = run_two_cpu_processes(
        "--no-progress", "study", "--config", str(recipe), f"output_dir={tmp_path / 'two'}",
        f"data.cache_dir={tmp_path / 'cache'}", "cpu=true", timeout=240,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-4000:]
    one_row, two_row = results(tmp_path / "one")["cells/lora_k4_s0"], results(tmp_path / "two")["cells/lora_k4_s0"]  # fmt: skip
    assert (one_row["num_processes"], two_row["num_processes"]) == ("1", "2")
    assert one_row["global_batch"] == two_row["global_batch"] == "8"
    assert one_row["steps"] == two_row["steps"]
    assert one_row["test_accuracy"] == two_row["test_accuracy"]
    metrics = json.loads((tmp_path / "two/cells/lora_k4_s0/metrics.json").read_text())
    assert metrics["global_batch"] == 8


@pytest.mark.slow
def test_two_processes_without_cpu_true_are_told_to_pass_it(training_root, tiny_vit_dir, tmp_path):
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, methods={"lora": LORA})
    result = run_two_cpu_processes("--no-progress", "study", "--config", str(recipe), timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines and all("pass cpu=true" in line for line in lines), result.stderr[-3000:]
    assert "is in use by another" not in result.stderr
    assert not (tmp_path / "study").exists()


def test_one_process_with_world_size_one_is_not_refused(monkeypatch):
    from emoset_peft.study.runner import check_launch

    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(1)
    monkeypatch.delenv("WORLD_SIZE")
    check_launch(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_launch(2)
    with pytest.raises(EmoSetError, match="pass cpu=true"):
        check_launch(1)
