"""Scaling studies: grid expansion, resumable results, sharding over two real processes."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main
from emoset_peft.errors import EmoSetError
from emoset_peft.study.grid import StudyConfig, expand, load_study_config, shard
from emoset_peft.study.runner import read_results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def study_recipe(training_root, tiny_vit_dir, tmp_path):
    """A 2 methods x 2 k x 2 seeds grid of ~1 s cells."""

    def write(name="study", **changes):
        recipe = {
            "output_dir": str(tmp_path / name),
            "base": {
                "data": {"root": str(training_root), "selection_per_class": 4},
                "model": {"backbone": str(tiny_vit_dir)},
                "train": {"batch_size": 8, "min_steps": 6, "max_steps": 6, "eval_every": 3},
            },
            "methods": {
                "lora": {"model": {"options": {"r": 4}}, "train": {"lr": 1e-2}},
                "ia3": {"train": {"lr": 3e-2}},
            },
            "per_class": [2, 4],
            "seeds": [0, 1],
            "report": False,
        }
        recipe.update(changes)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write


def test_grid_expansion_applies_per_method_overrides(study_recipe):
    study = load_study_config(study_recipe(), ["train.weight_decay=0.5", "seeds=[0,1,2]"])
    cells = expand(study)
    assert len(cells) == 2 * 2 * 3
    lora = [c for c in cells if c.method == "lora"]
    assert {c.config.train.lr for c in lora} == {1e-2}
    assert all(c.config.model.options == {"r": 4} for c in lora)
    assert {c.config.train.lr for c in cells if c.method == "ia3"} == {3e-2}
    assert all(c.config.train.weight_decay == 0.5 for c in cells)  # base override reaches all
    for cell in cells:  # each seed picks the data and seeds training; both are recorded
        assert cell.config.data.data_seed == cell.config.train.seed == cell.seed
        assert cell.config.data.per_class == cell.per_class
    assert len({c.config_hash for c in cells}) == len(cells)


def test_zero_shot_gets_one_cell_and_shards_cover_everything():
    study = StudyConfig(
        base={"data": {"root": "/x"}},
        methods={"zeroshot": {}, "lora": {}},
        per_class=[0, 1, 4],
        seeds=[0, 1, 2],
    )
    cells = expand(study)
    assert [(c.method, c.per_class, c.seed) for c in cells if c.method == "zeroshot"] == [
        ("zeroshot", 0, 0)
    ]
    assert len(cells) == 1 + 2 * 3
    shards = [shard(cells, rank, 3) for rank in range(3)]
    names = [c.name for part in shards for c in part]
    assert sorted(names) == sorted(c.name for c in cells) and len(set(names)) == len(names)


def test_bad_study_keys_are_named(study_recipe):
    path = study_recipe()
    raw = yaml.safe_load(path.read_text())
    raw["seed"] = [1]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(EmoSetError, match=r"unknown key study\.seed.*did you mean seeds"):
        load_study_config(path)


def test_study_runs_resumes_and_refuses_another_grid(study_recipe, tmp_path, capsys):
    recipe = study_recipe()
    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    rows = read_results(tmp_path / "study" / "results.csv")
    assert len(rows) == 8
    assert {(r["method"], r["per_class"], r["seed"]) for r in rows} == {
        (m, k, s) for m in ("lora", "ia3") for k in ("2", "4") for s in ("0", "1")
    }
    for row in rows:
        assert int(row["train_images"]) == 8 * int(row["per_class"])
        assert 0 <= float(row["test_accuracy"]) <= 1
        assert (tmp_path / "study" / row["run_dir"] / "metrics.json").exists()

    # A rerun finds every cell finished and trains nothing.
    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    assert read_results(tmp_path / "study" / "results.csv") == rows

    # The same folder with another grid is refused, unless asked for explicitly.
    assert main(["study", "--config", str(recipe), "--no-progress", "seeds=[0,1,2]"]) == 2
    assert "different grid" in capsys.readouterr().err
    assert (
        main(
            [
                "study",
                "--config",
                str(recipe),
                "--no-progress",
                "seeds=[0,1,2]",
                "allow_grid_change=true",
            ]
        )
        == 0
    )
    assert len(read_results(tmp_path / "study" / "results.csv")) == 12


@pytest.mark.slow
def test_study_killed_mid_grid_resumes_without_repeating_cells(study_recipe, tmp_path):
    recipe = study_recipe("killed", seeds=[0, 1, 2])
    results = tmp_path / "killed" / "results.csv"
    process = subprocess.Popen(
        [sys.executable, "-m", "emoset_peft", "study", "--config", str(recipe), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if results.exists() and len(read_results(results)) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = read_results(results)
    assert 2 <= len(before) < 12, "the study was not interrupted mid-grid"

    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    after = read_results(results)
    assert after[: len(before)] == before  # finished cells are kept as they were
    names = [(r["method"], r["per_class"], r["seed"]) for r in after]
    assert len(names) == len(set(names)) == 12


@pytest.mark.slow
def test_two_processes_share_the_grid(study_recipe, tmp_path):
    recipe = study_recipe("sharded")
    result = run_two_cpu_processes(
        "study", "--config", str(recipe), "--no-progress", "cpu=true", timeout=400
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "sharded" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    cells = [(r["method"], r["per_class"], r["seed"]) for r in rows]
    assert len(cells) == len(set(cells)) == 8  # every cell exactly once
    by_process = {r["process_index"] for r in rows}
    assert by_process == {"0", "1"}  # both processes trained cells


def test_cells_share_one_loaded_backbone_and_never_touch_it(tiny_vit_dir):
    import torch

    from emoset_peft.models import build_model
    from emoset_peft.models.backbones import reuse_loaded_backbones

    with reuse_loaded_backbones() as cache:
        first = build_model(str(tiny_vit_dir), "full")
        (original,) = cache.values()
        snapshot = {k: v.clone() for k, v in original.state_dict().items()}
        for method in ("full", "lora"):  # two cells, each training its own copy hard
            model = first if method == "full" else build_model(str(tiny_vit_dir), method)
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
            model(pixel_values=torch.randn(2, 3, 32, 32)).logits.sum().backward()
            optimizer.step()
        assert len(cache) == 1  # read from disk once
        for key, value in original.state_dict().items():
            assert torch.equal(value, snapshot[key]), key
        changed = first.classifier_model.state_dict()
        assert any(not torch.equal(changed[k], snapshot[k]) for k in snapshot if k in changed)
