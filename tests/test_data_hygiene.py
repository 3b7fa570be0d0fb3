"""Data hygiene: duplicate records and images shared between splits are reported, symlinks out of
the dataset folder are refused, and atomically written files get the umask's mode."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.data import load_emoset, split_files
from emoset_peft.errors import EmoSetError

REPO = Path(__file__).resolve().parents[1]


def _records(root: Path, name: str) -> list:
    return json.loads((root / name).read_text())


def _write(root: Path, name: str, records: list) -> None:
    (root / name).write_text(json.dumps(records))


def _plant_duplicates(root: Path) -> dict[str, str]:
    """train.json repeats a record; test.json holds a train image (same path); val.json names a
    train image_id for one of its own files. Returns the image ids involved."""
    train, val, test = (_records(root, n) for n in ("train.json", "val.json", "test.json"))
    repeated, leaked = Path(train[1][1]).stem, Path(train[0][1]).stem
    renamed = Path(train[2][1]).stem
    _write(root, "train.json", train + [train[1]])
    _write(root, "test.json", test + [train[0]])
    emotion, image, annotation = val[0]
    _write(root, "val.json", [[emotion, renamed, image, annotation], *val[1:]])
    return {"repeated": repeated, "leaked": leaked, "renamed": renamed}


def _duplicate_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and ("more than once" in r.getMessage() or " share " in r.getMessage())
    ]


def test_duplicates_are_warned_at_every_load_one_line_per_kind(synthetic_copy, tmp_path, caplog):
    ids = _plant_duplicates(synthetic_copy)
    for attempt in ("cold", "cached"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ds = load_emoset(synthetic_copy, cache_dir=tmp_path)
        assert len(ds["train"]) == 65  # warned about, not dropped
        lines = _duplicate_warnings(caplog)
        assert len(lines) == 3, (attempt, lines)
        assert all("\n" not in line for line in lines)
        within = next(line for line in lines if "more than once" in line)
        assert "train.json lists 1 image(s)" in within and ids["repeated"] in within
        test_leak = next(line for line in lines if "train.json and test.json" in line)
        assert "share 1 image(s)" in test_leak and ids["leaked"] in test_leak
        val_leak = next(line for line in lines if "train.json and val.json" in line)
        assert ids["renamed"] in val_leak  # same image_id, different file


def test_a_clean_tree_gives_no_duplicate_warning(synthetic_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        load_emoset(synthetic_root, cache_dir=tmp_path)
    assert _duplicate_warnings(caplog) == []


def test_inspect_reports_duplicates(synthetic_copy, capsys):
    assert main(["data", "inspect", str(synthetic_copy)]) == 0
    assert "duplicates: none" in capsys.readouterr().out
    ids = _plant_duplicates(synthetic_copy)
    assert main(["data", "inspect", str(synthetic_copy)]) == 0
    out = capsys.readouterr().out
    assert "duplicates: 3" in out
    report = out.split("duplicates: 3", 1)[1]
    assert "train.json and test.json share 1 image(s)" in report and ids["leaked"] in report
    assert (
        f"train.json lists 1 image(s) more than once (same path or image_id), e.g. "
        f"{ids['repeated']}" in report
    )


# ---------------------------------------------------------------------------------------------
# Symlinks


def _link_out(root: Path, outside: Path, column: int = 1, record: int = 3) -> tuple[str, Path]:
    """Replace a train file (image: column 1, annotation: 2) by a symlink to a copy outside."""
    rel = _records(root, "train.json")[record][column]
    outside.mkdir(exist_ok=True)
    target = outside / Path(rel).name
    shutil.move(root / rel, target)
    (root / rel).symlink_to(target)
    return rel, target


@pytest.mark.parametrize("column", [1, 2], ids=["image", "annotation"])
def test_symlink_leaving_the_root_is_refused_unless_allowed(column, synthetic_copy, tmp_path):
    rel, target = _link_out(synthetic_copy, tmp_path / "elsewhere", column)
    cache = tmp_path / "cache"
    # An index built while following links must not let a refusing load through.
    assert len(load_emoset(synthetic_copy, cache_dir=cache, follow_symlinks=True)["train"]) == 64
    with pytest.raises(EmoSetError) as caught:
        load_emoset(synthetic_copy, cache_dir=cache)
    message = str(caught.value)
    assert "\n" not in message
    assert "train.json: record 3" in message and rel in message and str(target) in message
    assert "follow_symlinks=true" in message


def test_a_link_made_after_indexing_is_refused_at_the_next_load(
    synthetic_copy, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    load_emoset(synthetic_copy, cache_dir=cache)  # indexed (and cached) without links
    rel, target = _link_out(synthetic_copy, tmp_path / "elsewhere")
    with pytest.raises(EmoSetError, match=f"record 3: image {rel} is a symlink to {target}"):
        load_emoset(synthetic_copy, cache_dir=cache)
    # Following links: indexed once more, then served from the cache without re-indexing.
    load_emoset(synthetic_copy, cache_dir=cache, follow_symlinks=True)
    monkeypatch.setattr(
        split_files, "_read_annotation", lambda path: pytest.fail(f"indexed again: read {path}")
    )
    assert len(load_emoset(synthetic_copy, cache_dir=cache, follow_symlinks=True)["train"]) == 64


def test_symlinked_folder_leaving_the_root_is_refused_and_links_inside_are_fine(
    synthetic_copy, tmp_path, capsys
):
    train = _records(synthetic_copy, "train.json")
    # A link that stays inside the root is an ordinary file.
    inside = synthetic_copy / train[5][1]
    inside.unlink()
    inside.symlink_to(synthetic_copy / train[4][1])
    load_emoset(synthetic_copy, cache_dir=tmp_path / "a")

    folder = synthetic_copy / Path(train[0][1]).parent
    shutil.move(folder, tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved", target_is_directory=True)
    assert main(["data", "inspect", str(synthetic_copy), "--cache-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.json: record 0: image " + train[0][1] in err
    assert str(tmp_path / "moved") in err
    assert (
        main(
            [
                "data",
                "inspect",
                str(synthetic_copy),
                "--cache-dir",
                str(tmp_path / "b"),
                "--follow-symlinks",
            ]
        )
        == 0
    )


def test_follow_symlinks_is_a_data_config_key():
    assert load_config(overrides=["data.root=x"]).data.follow_symlinks is False
    assert load_config(overrides=["data.root=x", "data.follow_symlinks=true"]).data.follow_symlinks


# ---------------------------------------------------------------------------------------------
# File modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_of_normal_files(umask, mode, tmp_path):
    script = textwrap.dedent(f"""
        import os
        os.umask({umask})
        from emoset_peft.utils.io import atomic_write_json, atomic_write_text
        atomic_write_text({str(tmp_path / "a.txt")!r}, "x")
        atomic_write_json({str(tmp_path / "b.json")!r}, {{"a": 1}})
        open({str(tmp_path / "plain.txt")!r}, "w").close()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert plain == mode
    for name in ("a.txt", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert not list(tmp_path.glob(".*.tmp"))
