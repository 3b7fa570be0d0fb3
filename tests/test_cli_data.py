"""``emoset-peft data {inspect,subset,synth}``, run in-process through cli.main."""

from __future__ import annotations

import json

from full_disk import run_cli_with_file_limit

from emoset_peft.cli import main
from emoset_peft.data import read_manifest
from emoset_peft.labels import EMOTIONS


def test_inspect_prints_counts_and_coverage(synthetic_root, capsys):
    assert main(["data", "inspect", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "label order: info.json" in out
    for emotion in EMOTIONS:
        line = next(line for line in out.splitlines() if line.startswith(emotion + " "))
        assert line.split()[-3:] == ["8", "4", "4"]  # train, validation, test
    assert next(line for line in out.splitlines() if line.startswith("total")).split()[-3:] == [
        "64",
        "32",
        "32",
    ]
    for attribute in ("brightness", "scene", "object", "facial_expression"):
        line = next(line for line in out.splitlines() if line.startswith(attribute))
        assert line.count("%") == 3


def test_subset_writes_a_manifest(synthetic_root, tmp_path, capsys):
    out = tmp_path / "manifest.json"
    args = ["data", "subset", str(synthetic_root), "--per-class", "3", "--seed", "1", "--out"]
    assert main(args + [str(out)]) == 0
    assert "24 images" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["per_class_counts"] == {name: 3 for name in EMOTIONS}
    assert manifest["args"]["seed"] == 1 and manifest["split_size"] == 64
    again = tmp_path / "again.json"
    assert main(args + [str(again)]) == 0
    assert json.loads(again.read_text())["sha256"] == manifest["sha256"]


def test_subset_by_fraction_from_validation(synthetic_root, tmp_path):
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "data",
                "subset",
                str(synthetic_root),
                "--fraction",
                "0.5",
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = read_manifest(out)
    assert manifest["split"] == "validation" and manifest["num_images"] == 16


def test_user_errors_are_one_line_with_status_2(synthetic_root, tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "subset",
                str(synthetic_root),
                "--per-class",
                "50",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-fewer" in err and "amusement has 8" in err
    assert not (tmp_path / "m.json").exists()

    assert main(["data", "inspect", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_subset_out_that_cannot_or_must_not_be_written_is_one_line(
    synthetic_copy, tmp_path, capsys
):
    root = synthetic_copy
    folder = tmp_path / "outdir"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    cases = [
        (root / "train.json", "inside the EmoSet tree"),
        (root / "annotation" / "m.json", "inside the EmoSet tree"),
        (folder, f"e.g. {folder / 'manifest.json'}"),
        (afile / "m.json", "is a file, not a folder"),
        (afile, "is not a subset manifest"),
    ]
    for out, needle in cases:
        assert main(["data", "subset", str(root), "--per-class", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and needle in err, err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert afile.read_text() == "x" and not any(folder.iterdir())

    # A manifest named like a split file, outside any tree, is the user's own: it is replaced.
    out = tmp_path / "train.json"
    for seed in ("0", "1"):
        argv = ["data", "subset", str(root), "--per-class", "2", "--seed", seed, "--out"]
        assert main([*argv, str(out)]) == 0
    assert read_manifest(out)["args"]["seed"] == 1


def test_subset_on_a_full_disk_is_one_line_and_leaves_nothing(synthetic_root, tmp_path):
    """A real file size limit (RLIMIT_FSIZE, in a child process) fails the manifest write."""
    from emoset_peft.data import load_emoset

    load_emoset(synthetic_root)  # the index cache exists: the child only writes the manifest
    out = tmp_path / "m.json"
    argv = ["data", "subset", str(synthetic_root), "--per-class", "2", "--out", str(out)]
    result = run_cli_with_file_limit(argv, max_bytes=200, timeout=120)
    err = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert f"cannot write --out {out}" in err and "free space" in err
    assert list(tmp_path.iterdir()) == []


def test_synth_writes_a_tree_and_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "data",
                "synth",
                str(out),
                "--seed",
                "3",
                "--train-per-class",
                "2",
                "--val-per-class",
                "1",
                "--test-per-class",
                "1",
                "--size",
                "24",
                "32",
            ]
        )
        == 0
    )
    assert "32 images" in capsys.readouterr().out
    assert len(json.loads((out / "train.json").read_text())) == 16
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert main(["data", "synth", str(foreign)]) == 2
    assert "refusing" in capsys.readouterr().err


def test_data_without_a_subcommand_prints_help(capsys):
    assert main(["data"]) == 2
    assert "inspect" in capsys.readouterr().out
