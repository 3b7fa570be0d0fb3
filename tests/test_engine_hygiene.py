"""Public helpers that replaced private reach-ins and duplicated code (issue 12, item 6)."""

from __future__ import annotations

import json
import os

import pytest

from emoset_peft import cli
from emoset_peft.config import apply_override, deep_merge
from emoset_peft.errors import EmoSetError
from emoset_peft.utils.io import atomic_open


def test_a_command_module_that_fails_to_import_raises(monkeypatch):
    # A packaging error (a module missing from the wheel) must not just drop a command.
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "not_shipped"))
    with pytest.raises(ModuleNotFoundError, match="not_shipped"):
        cli.build_parser()


def test_every_command_is_registered():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps no public listing
    assert set(commands) == set(cli.COMMAND_MODULES)


def test_fresh_accelerator_state_lets_a_second_accelerator_change_settings():
    from accelerate import Accelerator

    from emoset_peft.utils.dist import fresh_accelerator_state, is_main_process

    fresh_accelerator_state()
    first = Accelerator(cpu=True, mixed_precision="no")
    assert str(first.mixed_precision) == "no"
    fresh_accelerator_state()
    second = Accelerator(cpu=True, mixed_precision="bf16")
    assert str(second.mixed_precision) == "bf16"
    assert is_main_process()
    fresh_accelerator_state()


def test_public_config_helpers():
    raw = {"train": {"lr": 1e-3}}
    apply_override(raw, "model.options.r=16")
    apply_override(raw, "train.lr=0.0003")
    assert raw == {"train": {"lr": 3e-4}, "model": {"options": {"r": 16}}}
    merged = deep_merge(raw, {"model": {"options": {"alpha": 8}, "method": "lora"}})
    # options are replaced whole: one method's options mean nothing to another
    assert merged["model"] == {"options": {"alpha": 8}, "method": "lora"}
    assert merged["train"] == {"lr": 3e-4} and raw["model"]["options"] == {"r": 16}
    with pytest.raises(EmoSetError, match="not key=value"):
        apply_override(raw, "train.lr")


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target, newline="") as handle:
        handle.write("half a ")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table.csv"]  # no temporary file left behind
    with atomic_open(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_annotation_threads_read_the_same_values(tmp_path):
    from emoset_peft.data.split_files import read_annotations

    paths = []
    for index in range(300):  # threads start at 256 files
        path = tmp_path / f"{index}.json"
        path.write_text(json.dumps({"index": index}))
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.json"))
    assert read_annotations(paths, 4) == read_annotations(paths, 0)
    assert read_annotations(paths, 0)[-1] is None


def test_every_cache_user_resolves_its_root_the_same_way(monkeypatch, tmp_path):
    from pathlib import Path

    from emoset_peft.data.emoset import default_cache_dir

    monkeypatch.setenv("EMOSET_PEFT_CACHE", "~/env-cache")
    assert default_cache_dir() == Path.home() / "env-cache"  # "~" expanded from the environment
    assert default_cache_dir("~/given") == Path.home() / "given"  # and from an argument
    assert default_cache_dir(tmp_path) == tmp_path
    assert default_cache_dir("") == Path.home() / "env-cache"  # empty: not the current folder
