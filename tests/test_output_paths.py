"""Output paths a user names: never inside an EmoSet tree (emoset_peft/utils/outputs.py), and the
shared folder error reads right for every caller (engine/run_dir.py make_output_dir)."""

from __future__ import annotations

import pytest

from emoset_peft.cli import main
from emoset_peft.errors import EmoSetError
from emoset_peft.utils.outputs import emoset_tree_holding, refuse_dataset_output


def test_a_tree_and_everything_under_it_is_refused(synthetic_root, tmp_path):
    assert emoset_tree_holding(synthetic_root / "image" / "awe" / "x.csv") == synthetic_root
    for path in (synthetic_root, synthetic_root / "test.json", synthetic_root / "new" / "a.json"):
        with pytest.raises(EmoSetError, match="inside the EmoSet tree") as err:
            refuse_dataset_output(path, "--out")
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    # A link into the tree is the tree.
    (tmp_path / "link").symlink_to(synthetic_root)
    with pytest.raises(EmoSetError, match="inside the EmoSet tree"):
        refuse_dataset_output(tmp_path / "link" / "val.json", "--out")
    # Split-file names alone are a user's manifests, not a tree.
    for name in ("train.json", "val.json", "test.json", "info.json"):
        (tmp_path / name).write_text("{}")
    refuse_dataset_output(tmp_path / "train.json", "--out")
    assert emoset_tree_holding(tmp_path / "train.json") is None


def test_train_refuses_an_output_dir_inside_a_dataset(tiny_run, tmp_path, capsys):
    tree = tmp_path / "tree"
    (tree / "image").mkdir(parents=True)
    (tree / "train.json").write_text("[]")
    assert main(["train", *tiny_run("x", output_dir=tree / "newrun")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "output_dir" in err and "inside the EmoSet tree" in err, err
    assert sorted(p.name for p in tree.iterdir()) == ["image", "train.json"]


def test_folder_errors_read_right_with_a_key_or_a_noun_phrase(tmp_path):
    from emoset_peft.engine.run_dir import make_output_dir

    afile = tmp_path / "afile"
    afile.write_text("x")
    for key in ("output_dir", "the eval output folder"):
        for path in (afile, afile / "sub"):
            with pytest.raises(EmoSetError) as err:
                make_output_dir(path, key)
            message = str(err.value)
            assert message.startswith((f"{key} {path} ", f"cannot create {key} {path}:"))
            assert message.endswith(f"folder as {key}"), message
            assert f"pick a writable {key}" not in message
