"""The report's gallery: one PNG per method of the test images it gets right with the most
confidence and its most confident mistakes, per emotion; the best method's opens the report."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures_study import make_fake_study
from fixtures_tiny_study import write_tiny_study
from PIL import Image

from emoset_peft.cli import main
from emoset_peft.labels import EMOTIONS
from emoset_peft.study import gallery
from emoset_peft.study.plots import DPI
from emoset_peft.study.report import write_report

METHODS = {
    "lora": {"model": {"options": {"r": 4}}, "train": {"lr": 1e-2}},
    "linear": {"train": {"lr": 1e-1}},
}


@pytest.fixture(scope="module")
def study(training_root, tiny_vit_dir, tmp_path_factory):
    """A finished real study: lora and linear x k in {2, 4} x seeds {0, 1}, no report yet."""
    folder = tmp_path_factory.mktemp("gallery")
    recipe = write_tiny_study(folder, training_root, tiny_vit_dir, methods=METHODS, seeds=[0, 1])
    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    return folder / "study"


def test_one_gallery_per_method_with_the_best_method_first(study, tmp_path):
    study = shutil.copytree(study, tmp_path / "study")
    text = write_report(study, n_boot=100).read_text()
    width, height = (round(inches * DPI) for inches in gallery.FIGSIZE)
    for method in METHODS:
        with Image.open(study / f"gallery_{method}.png") as image:
            assert image.size == (width, height)
            assert np.asarray(image.convert("L")).std() > 10  # images drawn, not a blank page

    # The best method: the higher mean test accuracy at the largest k, over both seeds.
    with open(study / "results.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["per_class"] == "4"]
    means = {m: np.mean([float(r["test_accuracy"]) for r in rows if r["method"] == m]) for m in METHODS}  # fmt: skip
    best, other = sorted(METHODS, key=lambda m: -means[m])
    summary = json.loads((study / "summary.json").read_text())["gallery"]
    assert summary["best"] == best and summary["note"] is None
    entry = summary["methods"][0]
    assert (entry["method"], entry["per_class"], entry["seeds"]) == (best, 4, 2)
    assert entry["accuracy"] == pytest.approx(means[best])
    # Right answers are images of that emotion predicted as it; mistakes predicted otherwise,
    # each most confident first.
    assert [shown["emotion"] for shown in entry["per_emotion"]] == list(EMOTIONS)
    for shown in entry["per_emotion"]:
        assert all(item["predicted"] == shown["emotion"] for item in shown["right"])
        assert all(item["predicted"] != shown["emotion"] for item in shown["mistakes"])
        for side in (shown["right"], shown["mistakes"]):
            probabilities = [item["probability"] for item in side]
            assert probabilities == sorted(probabilities, reverse=True)
            assert len(side) <= gallery.PER_SIDE

    # The report opens with the best method's gallery and links the other's further down.
    lead = text.index(f"![gallery of {best}](gallery_{best}.png)")
    assert lead < text.index("## Test accuracy per cell") < text.index(f"(gallery_{other}.png)")


def test_a_moved_tree_is_one_line_instead_of_a_gallery(study, tmp_path):
    study = shutil.copytree(study, tmp_path / "study")
    for config_path in study.glob("cells/*/config.yaml"):  # the tree is no longer where it was
        config = yaml.safe_load(config_path.read_text())
        config["data"]["root"] = str(tmp_path / "moved_away")
        config_path.write_text(yaml.safe_dump(config))
    text = write_report(study, n_boot=100).read_text()
    notes = [line for line in text.splitlines() if line.startswith("No gallery for")]
    assert len(notes) == 1 and "moved_away" in notes[0], notes
    assert all(method in notes[0].split(":")[0] for method in METHODS)
    assert not list(study.glob("gallery_*.png")) and "![gallery" not in text


def test_a_study_without_run_configs_reports_without_a_gallery(tmp_path):
    make_fake_study(tmp_path, seeds=(0,), ks=(1,), methods=("linear",), zero_shot=False, full=False)  # fmt: skip
    text = write_report(tmp_path, n_boot=100).read_text()
    assert "No gallery for linear: runs/linear_k1_s0/config.yaml names no data.root" in text


def _rewrite_results(study, change) -> None:
    with open(study / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, [change(row) for row in reader]
    with open(study / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_run_dirs_that_are_absolute_or_outside_the_study_keep_the_gallery(study, tmp_path):
    study = shutil.copytree(study, tmp_path / "study")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(study / "cells" / "linear_k4_s0", elsewhere / "linear_k4_s0")

    def change(row):
        if row["run_dir"] == "cells/linear_k4_s0":
            return {**row, "run_dir": str(elsewhere / "linear_k4_s0")}
        return {**row, "run_dir": str(study / row["run_dir"])}

    _rewrite_results(study, change)
    text = write_report(study, n_boot=100).read_text()
    assert "No gallery" not in text
    for method in METHODS:
        assert f"(gallery_{method}.png)" in text and (study / f"gallery_{method}.png").is_file()


def test_a_relative_data_root_is_found_where_the_cells_were_trained(study, tmp_path, monkeypatch):
    study = shutil.copytree(study, tmp_path / "study")
    for config_path in study.glob("cells/*/config.yaml"):
        root = Path(yaml.safe_load(config_path.read_text())["data"]["root"])
        config = yaml.safe_load(config_path.read_text())
        config["data"]["root"] = root.name  # typed as `data.root=<name>` in root's parent
        config_path.write_text(yaml.safe_dump(config))
        provenance_path = config_path.with_name("provenance.json")
        provenance = json.loads(provenance_path.read_text())
        provenance_path.write_text(json.dumps({**provenance, "cwd": str(root.parent)}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the report runs in another folder
    text = write_report(study, n_boot=100).read_text()
    assert "No gallery" not in text and "was the tree moved" not in text
    assert all((study / f"gallery_{method}.png").is_file() for method in METHODS)
