"""``emoset-peft eval RUN --split ...``: predictions and metrics per split, another data tree via
``data.root=``, and never a file the run wrote while training overwritten."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fixtures_train import train_two_steps

from emoset_peft.cli import main


@pytest.fixture(scope="module")
def run(training_root, tiny_vit_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval_cli") / "run"
    train_two_steps(training_root, tiny_vit_dir, run, per_class=3, selection_per_class=2)
    return run


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _training_files(run: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in run.iterdir()
        if path.is_file()
    }


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_every_split_gets_predictions_and_metrics_beside_the_run(run, capsys):
    before = _training_files(run)
    trained = json.loads((run / "metrics.json").read_text())

    assert main(["eval", str(run)]) == 0  # --split test by default
    assert "accuracy" in capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics_test.json").read_text())
    assert metrics.pop("split") == "test" and metrics.pop("num_processes") == 1
    metrics.pop("data_root")
    assert metrics == trained["test"]
    # Same columns and rows as the run's own predictions_test.csv, same numbers to 1e-6.
    again, original = (
        _rows(run / "eval" / "predictions_test.csv"),
        _rows(run / "predictions_test.csv"),
    )
    assert [list(row) for row in again] == [list(row) for row in original]
    for new, old in zip(again, original, strict=True):
        assert new["image_id"] == old["image_id"] and new["label"] == old["label"]
        assert new["predicted"] == old["predicted"]
        for key in (key for key in old if key.startswith("prob_")):
            assert abs(float(new[key]) - float(old[key])) <= 1e-6

    assert main(["eval", str(run), "--split", "validation"]) == 0
    validation = json.loads((run / "eval" / "metrics_validation.json").read_text())
    assert validation["num_images"] == trained["selection"]["images"] == 16
    assert validation["accuracy"] == trained["validation"]["accuracy"]
    assert len(_rows(run / "eval" / "predictions_validation.csv")) == 16

    assert main(["eval", str(run), "--split", "train"]) == 0
    train = json.loads((run / "eval" / "metrics_train.json").read_text())
    assert train["num_images"] == trained["train_images"] == 24
    manifest = json.loads((run / "train_manifest.json").read_text())
    ids = {row["image_id"] for row in _rows(run / "eval" / "predictions_train.csv")}
    assert ids == set(manifest["image_ids"])

    assert _training_files(run) == before  # metrics.json, predictions_test.csv, ... untouched
    # The run folder with eval/ in it can still be replaced by train overwrite=true.
    from emoset_peft.config import load_config
    from emoset_peft.engine.run_dir import check_run_dir

    check_run_dir(load_config(run / "config.yaml", ["overwrite=true"]))


def test_another_tree_is_scored_into_its_own_folder(run, tmp_path, capsys):
    from emoset_peft.data.synthetic import make_synthetic_emoset

    # One training image per class: fewer than the run's k = 3, which the test split never needs.
    other = make_synthetic_emoset(
        tmp_path / "Other",
        seed=11,
        train_per_class=1,
        val_per_class=1,
        test_per_class=2,
        size_range=(28, 40),
    )
    assert main(["eval", str(run), f"data.root={other}"]) == 0
    metrics = json.loads((run / "eval" / "Other" / "metrics_test.json").read_text())
    assert metrics["num_images"] == 16 and metrics["data_root"] == str(other)
    rows = _rows(run / "eval" / "Other" / "predictions_test.csv")
    assert len(rows) == 16 and str(other) in capsys.readouterr().out

    out_dir = tmp_path / "elsewhere"
    assert main(["eval", str(run), f"data.root={other}", "--out-dir", str(out_dir)]) == 0
    assert (out_dir / "metrics_test.json").is_file()
    assert _rows(out_dir / "predictions_test.csv") == rows


def test_files_written_in_training_are_never_overwritten(run, tmp_path, capsys):
    before = _training_files(run)
    assert main(["eval", str(run), "--out-dir", str(run)]) == 2
    assert "predictions_test.csv" in _one_line_error(capsys)
    assert main(["eval", str(run), "--out", str(run / "metrics.json")]) == 2
    assert "never overwrite" in _one_line_error(capsys)
    assert _training_files(run) == before

    # The legacy --out file holds the metrics dict as before.
    assert main(["eval", str(run), "--out", str(tmp_path / "m.json")]) == 0
    legacy = json.loads((tmp_path / "m.json").read_text())
    legacy.pop("num_processes")
    assert legacy == json.loads((run / "metrics.json").read_text())["test"]


def test_out_paths_eval_cannot_or_must_not_write_are_one_line(run, tmp_path, capsys):
    (tmp_path / "notes.json").write_text('{"mine": 1}')  # a file eval did not write
    (tmp_path / "afile").write_text("x")
    cases = {
        tmp_path / "notes.json": "eval metrics",
        tmp_path / "afile" / "m.json": "is a file, not a folder",
        Path("/sys/emoset-peft-test/m.json"): "not writable",  # refused even for root
        tmp_path: "folder",
    }
    for out, needle in cases.items():
        assert main(["eval", str(run), "--out", str(out), "--no-progress"]) == 2, out
        assert needle in _one_line_error(capsys), out
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'


def test_a_run_without_selection_set_or_training_images_says_so(run, capsys):
    assert main(["eval", str(run), "--split", "validation", "data.selection=none"]) == 2
    assert "data.selection=none" in _one_line_error(capsys)
    assert main(["eval", str(run), "--split", "train", "data.per_class=0"]) == 2
    assert "trained on no images" in _one_line_error(capsys)
