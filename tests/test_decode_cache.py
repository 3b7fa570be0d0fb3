"""The decoded-image cache: damage is detected and rebuilt, a full disk is one line, temp files
of dead processes go, an unwritable folder falls back, and ``cache ls|clear`` manage it."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from emoset_peft.cli import main
from emoset_peft.data.emoset import load_emoset
from emoset_peft.data.pipeline import decode_split

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # the tiny backbones' input: 37 px cached squares


@pytest.fixture(scope="module")
def splits(training_root, tmp_path_factory):
    return load_emoset(training_root, cache_dir=tmp_path_factory.mktemp("index"))


def only_entry(cache: Path) -> tuple[Path, Path]:
    (array,) = sorted((cache / "decoded").glob("*.npy"))
    return array, array.with_suffix(".json")


def _truncate(array, meta, other):
    array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])


def _garbage_array(array, meta, other):
    array.write_bytes(np.random.default_rng(0).bytes(array.stat().st_size))


def _bad_json(array, meta, other):
    meta.write_text("{not json")


def _failure_past_the_array(array, meta, other):
    content = json.loads(meta.read_text())
    content["failed"][str(content["count"] + 5)] = "planted"
    meta.write_text(json.dumps(content))


def _another_splits_array(array, meta, other):
    shutil.copyfile(other, array)


def _zeroed_pixels(array, meta, other):
    header = array.stat().st_size - np.load(array, mmap_mode="r").nbytes
    with open(array, "r+b") as handle:
        handle.seek(header)
        handle.write(bytes(array.stat().st_size - header))


DAMAGE = [
    _truncate,
    _garbage_array,
    _bad_json,
    _failure_past_the_array,
    _another_splits_array,
    _zeroed_pixels,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__.strip("_") for d in DAMAGE])
def test_a_damaged_entry_warns_once_and_is_rebuilt_to_the_same_pixels(
    splits, tmp_path, caplog, damage
):
    cache, other_cache = tmp_path / "cache", tmp_path / "other"
    intact = np.array(
        decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False).pixels
    )
    decode_split(splits["test"], SIZE, cache_dir=other_cache, show_progress=False)
    array, meta = only_entry(cache)
    damage(array, meta, only_entry(other_cache)[0])

    with caplog.at_level(logging.WARNING):
        again = decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and array.name in warnings[0].getMessage(), caplog.text
    assert "damaged" in warnings[0].getMessage()
    assert np.array_equal(np.asarray(again.pixels), intact)

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the rebuilt entry is whole
        decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False)
    assert not caplog.records


@pytest.mark.slow
def test_zeroed_cache_gives_the_accuracy_of_an_intact_one(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    assert main(["train", *tiny_run("intact", **{"data.cache_dir": cache})]) == 0
    for array in (cache / "decoded").glob("*.npy"):
        _zeroed_pixels(array, None, None)
    assert main(["train", *tiny_run("zeroed", **{"data.cache_dir": cache})]) == 0
    intact = json.loads((tmp_path / "intact" / "metrics.json").read_text())["test"]
    rebuilt = json.loads((tmp_path / "zeroed" / "metrics.json").read_text())["test"]
    assert rebuilt["accuracy"] == intact["accuracy"]
    assert rebuilt["confusion_matrix"] == intact["confusion_matrix"]


# ``ulimit -f`` for the whole command: every write past 32 KB fails with EFBIG, as on a full disk.
LIMITED_CLI = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
from emoset_peft.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_full_disk_while_decoding_is_one_line_and_leaves_no_temp_file(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, "train", *tiny_run(**{"data.cache_dir": cache})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "disk is full" in line and str(cache / "decoded") in line, line
    assert "cache clear" in line
    assert not [p.name for p in (cache / "decoded").iterdir()]


def test_temp_files_of_dead_processes_are_removed_at_the_next_decode(splits, tmp_path):
    decoded = tmp_path / "cache" / "decoded"
    decoded.mkdir(parents=True)
    # A real process creates its temp file the way a decode does, then dies.
    script = (
        "import sys, pathlib; from emoset_peft.utils.storage import temp_path; "
        "temp_path(pathlib.Path(sys.argv[1]) / 'abc.npy', '.npy').write_bytes(b'x' * 4096)"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(decoded)],
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    (stale,) = decoded.iterdir()
    from emoset_peft.utils.storage import temp_path

    live = temp_path(decoded / "def.npy", ".npy")  # this process: still running
    live.write_bytes(b"y")

    decode_split(splits["validation"], SIZE, cache_dir=tmp_path / "cache", show_progress=False)
    assert not stale.exists() and live.exists()


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(
    splits, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    if os.geteuid() == 0:  # root writes through chmod 0555: a folder under a file cannot exist
        (tmp_path / "a_file").write_text("")
        cache = tmp_path / "a_file" / "cache"
    else:
        cache = tmp_path / "readonly"
        cache.mkdir(mode=0o555)
    with caplog.at_level(logging.WARNING):
        first = decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False)
        second = decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "decoded" in warnings[0]
    assert np.array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
    assert list((tmp_path / "tmp").glob("emoset_peft-cache-*/decoded/*.npy"))


def test_cache_ls_and_clear(splits, training_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    load_emoset(training_root, cache_dir=cache)
    decode_split(splits["validation"], SIZE, cache_dir=cache, show_progress=False)
    decode_split(splits["test"], SIZE, cache_dir=cache, show_progress=False)
    (index_entry,) = [
        p
        for p in cache.iterdir()
        if p.is_dir() and p.name != "decoded" and not p.name.startswith(".")
    ]

    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert index_entry.name in out and "validation" in out and "test" in out
    assert "37px" in out and "total" in out

    arrays = sorted((cache / "decoded").glob("*.npy"))
    old = arrays[0].with_suffix(".json")
    os.utime(old, (0, 0))  # last used in 1970
    assert main(["cache", "clear", "--older-than", "30", "--cache-dir", str(cache)]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert not arrays[0].exists() and arrays[1].exists() and index_entry.exists()

    assert main(["cache", "clear", arrays[1].stem[:8], "--cache-dir", str(cache)]) == 0
    assert not arrays[1].exists() and index_entry.exists()
    assert main(["cache", "clear", "nosuchkey", "--cache-dir", str(cache)]) == 2
    assert "nosuchkey" in capsys.readouterr().err
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert not index_entry.exists()
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "no cache entries" in capsys.readouterr().out


def test_not_enough_free_space_is_refused_before_decoding(splits, tmp_path):
    from emoset_peft.errors import EmoSetError

    cache = tmp_path / "cache"
    huge = 175_000  # 200,000 px squares: 32 images need 3.8 TB, more than any test disk has
    with pytest.raises(EmoSetError, match="needs .* MB for 32 images but the disk has") as err:
        decode_split(splits["validation"], huge, cache_dir=cache, show_progress=False)
    assert str(cache / "decoded") in str(err.value) and "cache clear" in str(err.value)
    assert not list((cache / "decoded").iterdir())
