"""``emoset-peft eval`` of a run trained with relative paths (data.root=data, a backbone folder
beside it), from another folder, after the backbone moved; and overrides eval does not use."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fixtures_train import train_two_steps

from emoset_peft.cli import main


@pytest.fixture(scope="module")
def workdir(training_root, tiny_vit_dir, tmp_path_factory) -> Path:
    """A folder holding data (a link to the tree), bb (a backbone copy) and runs/a, trained there
    with data.root=data and model.backbone=bb as typed."""
    work = tmp_path_factory.mktemp("eval_paths")
    (work / "data").symlink_to(training_root, target_is_directory=True)
    shutil.copytree(tiny_vit_dir, work / "bb")
    before = os.getcwd()
    os.chdir(work)
    try:
        train_two_steps("data", "bb", Path("runs/a"), per_class=2, selection_per_class=2)
    finally:
        os.chdir(before)
    return work


@pytest.fixture
def elsewhere(workdir, monkeypatch) -> Path:
    """The current folder: a sibling of the training folder."""
    other = workdir / "other"
    other.mkdir(exist_ok=True)
    monkeypatch.chdir(other)
    return other


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _metrics(run: Path, *under: str) -> dict:
    return json.loads(run.joinpath("eval", *under, "metrics_test.json").read_text())


def test_relative_data_root_is_resolved_where_the_run_was_trained(workdir, elsewhere, capsys):
    run = workdir / "runs" / "a"
    assert json.loads((run / "provenance.json").read_text())["cwd"] == str(workdir)
    assert main(["eval", "../runs/a"]) == 0
    metrics = _metrics(run)
    assert metrics["data_root"] == str(workdir / "data")  # absolute, not "data"
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == trained["accuracy"]
    # The same tree named from here is the run's own tree: eval/, not eval/data/.
    (run / "eval" / "metrics_test.json").unlink()
    assert main(["eval", "../runs/a", "data.root=../data"]) == 0
    assert _metrics(run)["data_root"] == str(workdir / "data")
    assert not (run / "eval" / "data").exists()
    capsys.readouterr()


def test_a_run_from_before_cwd_was_recorded_still_evaluates(workdir, elsewhere, capsys):
    old = workdir / "old" / "runs" / "a"  # trained with output_dir=runs/a in workdir/old
    shutil.copytree(workdir / "runs" / "a", old, ignore=shutil.ignore_patterns("eval"))
    record = json.loads((old / "provenance.json").read_text())
    del record["cwd"]
    (old / "provenance.json").write_text(json.dumps(record))
    (workdir / "old" / "data").symlink_to(workdir / "data", target_is_directory=True)
    assert main(["eval", str(old)]) == 0  # output_dir runs/a tells where it was trained
    assert _metrics(old)["data_root"] == str(workdir / "old" / "data")

    renamed = workdir / "old" / "renamed"
    old.rename(renamed)  # nothing tells where it was trained, and ./data is not there
    assert main(["eval", str(renamed)]) == 2
    err = _error(capsys)
    assert "does not record" in err and str(elsewhere / "data") in err and "data.root=" in err


def test_a_missing_recorded_data_root_is_named(workdir, elsewhere, capsys):
    link = workdir / "data"
    link.rename(workdir / "data_moved")
    try:
        assert main(["eval", "../runs/a", "--out-dir", "gone"]) == 2
        err = _error(capsys)
        assert f"the run was trained on {link}, which is not there" in err
        assert "pass data.root=" in err
        assert main(["eval", "../runs/a", "--out-dir", "found", "data.root=../data_moved"]) == 0
    finally:
        (workdir / "data_moved").rename(link)
    assert not Path("gone").exists() and Path("found", "metrics_test.json").is_file()


def test_overrides_eval_does_not_use_are_refused(workdir, elsewhere, capsys):
    assert main(["eval", "../runs/a", "model.method=ia3", "train.lr=9", "--out-dir", "ig"]) == 2
    err = _error(capsys)
    assert "model.method, train.lr" in err and "data.*" in err and "model.backbone" in err
    assert not Path("ig").exists()


def test_a_moved_backbone_is_given_as_model_backbone(workdir, elsewhere, capsys):
    (workdir / "bb").rename(workdir / "bb_moved")
    try:
        assert main(["eval", "../runs/a", "--out-dir", "no_bb"]) == 2
        err = _error(capsys)
        assert "pass model.backbone=" in err and "load_adapter" not in err
        assert main(["eval", "../runs/a", "--out-dir", "bb", "model.backbone=../bb_moved"]) == 0
    finally:
        (workdir / "bb_moved").rename(workdir / "bb")
    assert Path("bb", "metrics_test.json").is_file()
