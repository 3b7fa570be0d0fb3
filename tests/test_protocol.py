"""Protocol options: data.selection (fixed | k_tied | none), crossed seeds, what a cell keeps."""

import csv
import json

import numpy as np
import pytest
import test_study

from emoset_peft.cli import main
from emoset_peft.config import DataConfig, load_config
from emoset_peft.errors import EmoSetError
from emoset_peft.study.grid import StudyConfig, expand
from emoset_peft.study.runner import read_results

study_recipe = test_study.study_recipe  # the fixture: a tiny 2 x 2 x 2 study recipe


@pytest.mark.parametrize(
    "selection, per_class, expected",
    [
        ("fixed", 1, 3),
        ("fixed", 8, 3),  # selection_per_class=3 whatever k is
        ("k_tied", 1, 1),
        ("k_tied", 2, 2),
        ("k_tied", 4, 4),
        ("k_tied", 8, 4),
        ("k_tied", "all", 4),
        ("k_tied", 0, 0),
        ("none", 4, 0),
    ],
)
def test_selection_images_per_class(training_root, selection, per_class, expected):
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.run_data import select_splits, selection_images_per_class

    data = DataConfig(
        root=str(training_root),
        per_class=per_class,
        selection=selection,
        selection_per_class=3,
        data_seed=1,
    )
    assert selection_images_per_class(data) == expected
    _, chosen, _, _ = select_splits(data, load_emoset(training_root))
    if expected == 0:
        assert chosen is None
    else:  # from validation, expected per class (training_root has 4 per class)
        assert chosen.split == "validation"
        counts = {}
        for label in chosen["label"]:
            counts[label] = counts.get(label, 0) + 1
        assert counts == {c: expected for c in range(8)}


def test_unknown_selection_mode_and_patience_without_validation_are_named(tiny_run, capsys):
    assert main(["train", *tiny_run(**{"data.selection": "best"})]) == 2
    assert "data.selection='best' is not one of fixed, k_tied, none" in capsys.readouterr().err
    assert main(["train", *tiny_run(**{"data.selection": "none", "train.patience": 2})]) == 2
    assert "train.patience" in capsys.readouterr().err


def _count_evaluations(monkeypatch) -> list[list[str]]:
    """Record the image ids of every evaluation pass (selection and test) of a run."""
    from emoset_peft.engine import recipe, trainer

    calls = []
    original = trainer.evaluate

    def counting(model, images, *args, **kwargs):
        calls.append(list(images.image_ids))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", counting)
    monkeypatch.setattr(recipe, "evaluate", counting)
    return calls


def test_selection_none_trains_the_budget_keeps_the_last_step_and_tests_once(
    tiny_run, tmp_path, monkeypatch
):
    calls = _count_evaluations(monkeypatch)
    assert main(["train", *tiny_run("none", **{"data.selection": "none"})]) == 0
    run = tmp_path / "none"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"] is None
    assert metrics["steps"] == metrics["best_step"] == 12
    assert metrics["selection"] == {
        "mode": "none",
        "images_per_class": 0,
        "images": 0,
        "best_step": 12,
        "evaluations": 0,
    }
    assert metrics["test_evaluations"] == 1
    test_ids = [
        line.split(",")[0] for line in (run / "predictions_test.csv").read_text().splitlines()[1:]
    ]
    assert [sorted(ids) for ids in calls] == [sorted(test_ids)]  # one pass, over the test split
    assert not (run / "selection").exists()
    assert metrics["skipped_images"].keys() == {"train", "test"}

    # The same run with its only evaluation at the last step keeps that step: the same weights.
    assert main(["train", *tiny_run("last", **{"train.eval_every": 12})]) == 0
    last = json.loads((tmp_path / "last" / "metrics.json").read_text())
    assert last["best_step"] == 12 and last["selection"]["evaluations"] == 1
    weights = "adapter/adapter_model.safetensors"
    assert (run / weights).read_bytes() == (tmp_path / "last" / weights).read_bytes()


def test_k_tied_run_records_selection_and_keeps_every_evaluation(tiny_run, tmp_path, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    assert (
        main(["train", *tiny_run("tied", **{"data.selection": "k_tied", "data.per_class": 2})]) == 0
    )
    run = tmp_path / "tied"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"] == {
        "mode": "k_tied",
        "images_per_class": 2,
        "images": 16,
        "best_step": metrics["best_step"],
        "evaluations": 2,
    }
    assert metrics["test_evaluations"] == 1 and len(calls) == 3  # 2 selection passes + 1 test
    files = sorted((run / "selection").iterdir())
    assert [f.name for f in files] == ["step_000006.csv", "step_000012.csv"]
    accuracy = {}
    for path in files:  # the saved predictions reproduce the logged selection accuracy
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 16 and "prob_amusement" in rows[0]
        accuracy[int(path.stem[5:])] = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    log = [entry for entry in log if "val_loss" in entry]  # the evaluations
    assert {e["step"]: e["val_accuracy"] for e in log} == pytest.approx(accuracy)
    assert metrics["validation"]["accuracy"] == pytest.approx(accuracy[metrics["best_step"]])


def test_paired_seeds_keep_todays_names_and_crossed_seeds_make_the_product():
    base = {"data": {"root": "/x"}}
    paired = expand(
        StudyConfig(output_dir="/s", base=base, methods={"lora": {}}, per_class=[4], seeds=[0, 1])
    )
    assert [c.name for c in paired] == ["lora_k4_s0", "lora_k4_s1"]
    assert [c.config.output_dir for c in paired] == ["/s/cells/lora_k4_s0", "/s/cells/lora_k4_s1"]

    study = StudyConfig(
        output_dir="/s",
        base=base,
        methods={"zeroshot": {}, "lora": {}},
        per_class=[0, 1, 4],
        seeds=[5],
        data_seeds=[0, 1, 2],
        train_seeds=[7, 8],
    )
    cells = expand(study)
    assert [c.name for c in cells if c.method == "zeroshot"] == ["zeroshot_k0_d0_t7"]
    lora = [c for c in cells if c.method == "lora"]
    assert len(lora) == 2 * 3 * 2
    assert [c.name for c in lora[:6]] == [f"lora_k1_d{d}_t{t}" for d in (0, 1, 2) for t in (7, 8)]
    for cell in lora:
        assert cell.config.data.data_seed == cell.data_seed
        assert cell.config.train.seed == cell.train_seed
        assert cell.config.output_dir.endswith(f"/cells/{cell.name}")
    # The seed column numbers the pair, the same for every k: methods stay paired by it.
    assert {(c.seed, c.data_seed, c.train_seed) for c in lora} == {
        (2 * i + j, d, t) for i, d in enumerate((0, 1, 2)) for j, t in enumerate((7, 8))
    }
    assert len({c.name for c in cells}) == len(cells)

    only_data = expand(
        StudyConfig(base=base, methods={"lora": {}}, per_class=[1], seeds=[0, 1], data_seeds=[3])
    )
    assert [c.name for c in only_data] == ["lora_k1_d3_t0", "lora_k1_d3_t1"]
    with pytest.raises(EmoSetError, match="study.train_seeds"):
        expand(StudyConfig(base=base, train_seeds=[1, 1]))
    both = expand(
        StudyConfig(
            base=base,
            methods={"lora": {}},
            per_class=[1],
            seeds=[],
            data_seeds=[0],
            train_seeds=[1],
        )
    )
    assert [c.name for c in both] == ["lora_k1_d0_t1"]  # seeds unused, so not checked
    with pytest.raises(EmoSetError, match="study.seeds"):
        expand(StudyConfig(base=base, seeds=[]))


def test_crossed_study_cells_keep_the_files_of_a_single_run(study_recipe, tmp_path):
    recipe = study_recipe(
        "crossed",
        methods={"lora": {"train": {"lr": 1e-2}}},
        per_class=[2],
        data_seeds=[0, 1],
        train_seeds=[0],
    )
    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    rows = read_results(tmp_path / "crossed" / "results.csv")
    assert [(r["run_dir"], r["data_seed"], r["train_seed"], r["seed"]) for r in rows] == [
        ("cells/lora_k2_d0_t0", "0", "0", "0"),
        ("cells/lora_k2_d1_t0", "1", "0", "1"),
    ]
    manifests = []
    for row in rows:
        cell = tmp_path / "crossed" / row["run_dir"]
        for name in (
            "config.yaml",
            "provenance.json",
            "train_manifest.json",
            "metrics.json",
            "predictions_test.csv",
        ):
            assert (cell / name).is_file(), f"{cell} lacks {name}"
        assert json.loads((cell / "provenance.json").read_text())
        manifests.append(json.loads((cell / "train_manifest.json").read_text()))
        assert sorted(p.name for p in (cell / "selection").iterdir()) == [
            "step_000003.csv",
            "step_000006.csv",
        ]
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["selection"]["mode"] == "fixed" and metrics["test_evaluations"] == 1
        assert load_config(cell / "config.yaml").data.data_seed == int(row["data_seed"])
    assert manifests[0]["image_ids"] != manifests[1]["image_ids"]  # another data seed
    assert all(len(m["image_ids"]) == 16 for m in manifests)

    # A rerun finds both cells finished.
    assert main(["study", "--config", str(recipe), "--no-progress"]) == 0
    assert read_results(tmp_path / "crossed" / "results.csv") == rows


def test_study_selection_none_leaves_val_accuracy_empty(study_recipe, tmp_path):
    recipe = study_recipe(
        "nosel", methods={"ia3": {"train": {"lr": 3e-2}}}, per_class=[2], seeds=[0]
    )
    assert main(["study", "--config", str(recipe), "--no-progress", "data.selection=none"]) == 0
    (row,) = read_results(tmp_path / "nosel" / "results.csv")
    assert row["val_accuracy"] == "" and row["best_step"] == row["steps"] == "6"


def test_default_selection_keeps_earlier_fingerprints():
    """Studies and runs written before data.selection, data.follow_symlinks and the automatic
    decode_workers existed still resume and are skipped: the hashes below are what emoset-peft
    0.1.0 (commit 3c9307a) computed for these configs."""
    config = load_config(None, ["data.root=/x"])
    assert config.fingerprint() == "80e61c1bf84fb531"
    workers = load_config(None, ["data.root=/x", "data.decode_workers=4"])
    assert workers.fingerprint() == "cdb459566b253560"
    assert (
        load_config(None, ["data.root=/x", "data.selection=k_tied"]).fingerprint()
        != config.fingerprint()
    )


class _Chosen:
    """The selection images' labels (all that selection_record reads of them)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


def test_selection_record_reports_the_images_used_not_those_asked_for():
    from emoset_peft.data.run_data import selection_record

    data = DataConfig(root="/x", selection="fixed", selection_per_class=20)
    whole = selection_record(data, _Chosen(np.repeat(np.arange(8), 20)), 6, 2)
    assert whole["images_per_class"] == 20 and "requested_per_class" not in whole
    small = selection_record(data, _Chosen(np.repeat(np.arange(8), 6)), 6, 2)  # 6 per class left
    assert (small["images_per_class"], small["requested_per_class"], small["images"]) == (6, 20, 48)
    uneven = selection_record(data, _Chosen([0, 0, 1, 1, 1, 2, 2, 2, 2]), 6, 2)
    assert uneven["images_per_class"] == "2-4" and uneven["requested_per_class"] == 20
