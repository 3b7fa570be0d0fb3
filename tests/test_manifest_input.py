"""data.manifest=PATH: train (and study) on exactly the ids of a manifest; data.allow_fewer."""

import json

import yaml

from emoset_peft.cli import main
from emoset_peft.data.subsets import ids_sha256


def _manifest(path):
    return json.loads(path.read_text())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emoset-peft train: error: "), err
    return err[0]


def test_train_on_a_data_subset_manifest_then_on_a_runs_train_manifest(
    tiny_run, training_root, tmp_path, capsys
):
    out = tmp_path / "m.json"
    args = ["--per-class", "3", "--seed", "5", "--out", str(out)]
    assert main(["data", "subset", str(training_root), *args]) == 0
    wanted = _manifest(out)

    assert main(["train", *tiny_run("a"), f"data.manifest={out}"]) == 0
    first = _manifest(tmp_path / "a" / "train_manifest.json")
    assert first["image_ids"] == wanted["image_ids"] and first["sha256"] == wanted["sha256"]
    assert first["args"]["manifest"] == str(out) and first["args"]["per_class"] == 3
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["train_images"] == 24
    card = (tmp_path / "a" / "adapter" / "README.md").read_text()  # tiny_run asks for 4
    assert "| EmoSet training images | 3 per class (24 images) |" in card

    # A run's train_manifest.json is accepted the same way (here through its run folder).
    # k_tied takes the manifest's k (3 per class), not data.per_class.
    source = f"data.manifest={tmp_path / 'a'}"
    assert main(["train", *tiny_run("b"), source, "data.selection=k_tied"]) == 0
    again = _manifest(tmp_path / "b" / "train_manifest.json")
    assert again["image_ids"] == wanted["image_ids"]
    assert again["args"]["manifest"] == str(tmp_path / "a" / "train_manifest.json")
    selection = json.loads((tmp_path / "b" / "metrics.json").read_text())["selection"]
    assert selection["images_per_class"] == 3 and selection["images"] == 24


def test_a_folder_gives_the_manifest_made_for_the_runs_k_and_seed(
    tiny_run, training_root, tmp_path, capsys
):
    folder = tmp_path / "manifests"
    for k, seed in ((2, 0), (3, 1)):
        out = folder / f"k{k}_s{seed}.json"
        args = ["--per-class", str(k), "--seed", str(seed), "--out", str(out)]
        assert main(["data", "subset", str(training_root), *args]) == 0
    source = f"data.manifest={folder}"
    assert main(["train", *tiny_run("x"), source, "data.per_class=4"]) == 2
    line = _one_error_line(capsys)
    assert "no manifest made for per_class=4, data seed 0" in line
    assert "per_class=2, data seed 0; per_class=3, data seed 1" in line
    assert not (tmp_path / "x").exists()  # refused before the run folder was made


def test_a_missing_id_or_a_wrong_sha256_is_one_line(tiny_run, training_root, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["data", "subset", str(training_root), "--per-class", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    manifest = _manifest(out)

    edited = tmp_path / "edited.json"
    ids = [*manifest["image_ids"][:-1], "amusement_99999"]  # not in the tree
    edited.write_text(json.dumps({**manifest, "image_ids": ids, "sha256": ids_sha256(ids)}))
    assert main(["train", *tiny_run("r"), f"data.manifest={edited}"]) == 2
    line = _one_error_line(capsys)
    assert "'amusement_99999'" in line and str(edited) in line
    assert not (tmp_path / "r").exists()

    edited.write_text(json.dumps({**manifest, "image_ids": ids}))  # ids changed, sha256 not
    assert main(["train", *tiny_run("r"), f"data.manifest={edited}"]) == 2
    line = _one_error_line(capsys)
    assert "sha256 does not match" in line and str(edited) in line

    validation = tmp_path / "val.json"
    args = ["--per-class", "2", "--split", "validation", "--out", str(validation)]
    assert main(["data", "subset", str(training_root), *args]) == 0
    capsys.readouterr()
    assert main(["train", *tiny_run("r"), f"data.manifest={validation}"]) == 2
    assert "lists validation images" in _one_error_line(capsys)

    assert main(["train", *tiny_run("r"), f"data.manifest={tmp_path / 'absent.json'}"]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_allow_fewer_advice_works_when_followed(tiny_run, training_root, tmp_path, capsys):
    # training_root has 12 training images per class
    assert main(["train", *tiny_run("few"), "data.per_class=20"]) == 2
    line = _one_error_line(capsys)
    assert "data.allow_fewer=true" in line and "--allow-fewer" in line
    assert main(["train", *tiny_run("few"), "data.per_class=20", "data.allow_fewer=true"]) == 0
    assert json.loads((tmp_path / "few" / "metrics.json").read_text())["train_images"] == 96

    out = tmp_path / "m.json"
    args = ["--per-class", "20", "--allow-fewer", "--out", str(out)]
    assert main(["data", "subset", str(training_root), *args]) == 0
    assert _manifest(out)["num_images"] == 96


def test_a_study_reuses_an_earlier_studys_subsets(training_root, tiny_vit_dir, tmp_path, capsys):
    def recipe(name, method, **changes):
        content = {
            "output_dir": str(tmp_path / name),
            "base": {
                "data": {"root": str(training_root), "selection_per_class": 4},
                "model": {"backbone": str(tiny_vit_dir)},
                "train": {"batch_size": 8, "min_steps": 3, "max_steps": 3, "lr": 1e-2},
            },
            "methods": {method: {}},
            "per_class": [2],
            "seeds": [0, 1],
            "report": False,
        }
        content.update(changes)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        return str(path)

    assert main(["study", "--config", recipe("first", "lora"), "--no-progress"]) == 0
    source = f"data.manifest={tmp_path / 'first'}"
    assert main(["study", "--config", recipe("second", "ia3"), "--no-progress", source]) == 0
    for seed in (0, 1):
        first = _manifest(tmp_path / "first" / "cells" / f"lora_k2_s{seed}" / "train_manifest.json")
        second = _manifest(
            tmp_path / "second" / "cells" / f"ia3_k2_s{seed}" / "train_manifest.json"
        )
        assert second["image_ids"] == first["image_ids"]
    capsys.readouterr()

    # A k the earlier study never drew stops the whole grid before any cell trains.
    third = recipe("third", "ia3", per_class=[2, 4])
    assert main(["study", "--config", third, "--no-progress", source]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest made for per_class=4" in err[0]
    assert not (tmp_path / "third").exists()

    # One file fits one (k, seed): the cells of another seed are refused.
    single = f"data.manifest={tmp_path / 'first' / 'cells' / 'lora_k2_s0' / 'train_manifest.json'}"
    assert main(["study", "--config", third, "--no-progress", single, "per_class=[2]"]) == 2
    assert "wants per_class=2, data seed 1" in capsys.readouterr().err
