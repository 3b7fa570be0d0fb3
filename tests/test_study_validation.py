"""Fail before spending compute: a study's whole grid, and a run's method and backbone, are
checked before anything trains or decodes; a report on an unfinished study names the cells it
is missing."""

import pytest
import yaml
from fixtures_study import make_fake_study
from fixtures_tiny_study import write_tiny_study
from test_hardening_run import one_line_error

from emoset_peft.cli import main
from emoset_peft.study.report import write_report

LORA = {"model": {"options": {"r": 4}}, "train": {"lr": 1e-2}}


@pytest.mark.parametrize(
    "methods, override, needles",
    [
        ({"lora": LORA, "lora2": {}}, None, ["lora2_k2_s0", "unknown method 'lora2'"]),
        ({"lora": {"model": {"options": {"rank": 4}}}}, None, ["lora_k2_s0", "rank"]),
        ({"lora": LORA}, "per_class=[2,500]", ["lora_k500_s0", "per_class=500"]),
        ({"lora": LORA, "ia3": {"model": {"backbone": "/nonexistent/vit"}}}, None, ["ia3_k2_s0"]),
        ({"linear": {}, "lora": {"model": {"targets": ["query"]}}}, None, ["lora_k2_s0", "query"]),
    ],
    ids=["unknown_method", "option_key", "k_above_class_size", "missing_backbone", "target_role"],
)
def test_a_bad_cell_anywhere_in_the_grid_stops_the_study_before_the_first_cell(
    methods, override, needles, training_root, tiny_vit_dir, tmp_path, capsys
):
    cache = tmp_path / "cache"
    recipe = write_tiny_study(tmp_path, training_root, tiny_vit_dir, methods=methods)
    args = ["study", "--config", str(recipe), "--no-progress", f"data.cache_dir={cache}"]
    assert main(args + ([override] if override else [])) == 2
    one_line_error(capsys, *needles, "no cell was started")
    assert not (tmp_path / "study").exists()  # no folder, no results.csv, no cell
    assert not list(cache.glob("decoded/*"))  # and no image was decoded


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.method=lora2", "lora2"),
        ("model.backbone=/nonexistent/vit", "/nonexistent/vit"),
        # The rest are found by building the model on the backbone's config (meta device).
        ("model.targets=[query]", "unknown target role(s) ['query']"),
        ("model.layers=[7]", "index 7 is out of range"),
        ("model.head_init=text", "needs a full CLIP checkpoint"),
        ("model.quantize=8bit", "8bit"),  # with bitfit, which cannot be quantized
    ],
)
def test_train_checks_the_whole_model_before_reading_the_data(
    override, needle, tiny_run, tmp_path, capsys
):
    cache = tmp_path / "cache"
    key, value = override.split("=")
    extra = {"model.method": "bitfit", "model.options": "{}"} if key == "model.quantize" else {}
    assert main(["train", *tiny_run("out", **{key: value, "data.cache_dir": cache, **extra})]) == 2
    one_line_error(capsys, needle)
    assert not cache.exists()  # neither EmoSet's index nor a decoded image was written
    assert not (tmp_path / "out").exists()


def test_a_report_on_an_unfinished_study_names_the_missing_cells(tmp_path):
    make_fake_study(tmp_path, seeds=(0, 1), ks=(1, 2), methods=("linear", "lora"), zero_shot=False, full=False)  # fmt: skip
    grid = {  # the grid as the runner records it: 2 methods x k in {1, 2, 4} x 3 seeds
        "base": {"data": {"root": "/data/EmoSet"}},
        "methods": {"linear": {}, "lora": {}},
        "per_class": [1, 2, 4],
        "seeds": [0, 1, 2],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"cells": 18, "study": grid}))
    text = write_report(tmp_path, n_boot=100).read_text()
    section = text.split("## Missing cells", 1)[1].split("\n## ", 1)[0]
    assert "covers only the finished cells: 10 of the 18 cells" in section
    listed = [line for line in section.splitlines() if line.startswith("- ")]
    assert listed == [
        "- linear k=1: seed(s) 2",
        "- linear k=2: seed(s) 2",
        "- linear k=4: seed(s) 0, 1, 2",
        "- lora k=1: seed(s) 2",
        "- lora k=2: seed(s) 2",
        "- lora k=4: seed(s) 0, 1, 2",
    ]
    assert text.index("## Missing cells") < text.index("## Test accuracy per cell")

    per_class = {**grid, "seeds": [0, 1], "per_class": [1, 2]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"study": per_class}))
    assert "## Missing cells" not in write_report(tmp_path, n_boot=100).read_text()
