"""load_emoset on synthetic trees: columns, label order, record forms, bad input, the cache;
and open_image on the image files EmoSet really contains."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from emoset_peft.data import (
    CorruptImageError,
    is_readable_image,
    load_emoset,
    open_image,
    split_files,
)
from emoset_peft.data import emoset as emoset_module
from emoset_peft.data.emoset import COLUMNS, default_cache_dir
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS, valence_of


def _records(root: Path, name: str = "train.json") -> list:
    return json.loads((root / name).read_text())


def _write_records(root: Path, records, name: str = "train.json") -> None:
    (root / name).write_text(json.dumps(records))


# ---------------------------------------------------------------------------------------------
# Columns and label order


def test_splits_columns_and_values_match_the_files(synthetic_root, tmp_path):
    ds = load_emoset(synthetic_root, cache_dir=tmp_path)
    assert list(ds) == ["train", "validation", "test"]
    assert [len(ds[s]) for s in ds] == [64, 32, 32]
    assert [str(ds[s].split) for s in ds] == ["train", "validation", "test"]
    train = ds["train"]
    assert tuple(train.column_names) == COLUMNS
    assert isinstance(train.features["image"], datasets.Image)
    assert train.features["label"].names == list(EMOTIONS)
    assert train.features["valence"].names == ["positive", "negative"]
    assert isinstance(train.features["scene"], datasets.ClassLabel)

    plain = train.cast_column("image", datasets.Image(decode=False))
    records = {Path(r[1]).stem: r for r in _records(synthetic_root)}
    for row in plain:
        emotion, image_rel, annotation_rel = records[row["image_id"]]
        assert row["image"]["path"] == str(synthetic_root.resolve() / image_rel)
        assert EMOTIONS[row["label"]] == emotion
        assert row["valence"] == valence_of(emotion)
        annotation = json.loads((synthetic_root / annotation_rel).read_text())
        assert row["brightness"] == annotation.get("brightness")
        assert row["object"] == annotation.get("object", [])
        scene = annotation.get("scene")
        assert row["scene"] == (-1 if scene is None else train.features["scene"].str2int(scene))
    # Some attributes are missing in the synthetic annotations, and come out as -1 / None / [].
    assert -1 in train["facial_expression"]
    assert any(v is None for v in train["brightness"]) or any(v == [] for v in train["object"])


def test_decoded_images_are_rgb(synthetic_root, tmp_path):
    ds = load_emoset(synthetic_root, cache_dir=tmp_path)
    modes = {
        Image.open(row["image"]["path"]).mode
        for row in ds["train"].cast_column("image", datasets.Image(decode=False))
    }
    assert {ds["train"][i]["image"].mode for i in range(8)} == {"RGB"}
    assert "RGB" in modes


def test_four_element_records_give_the_same_dataset(synthetic_copy, tmp_path):
    three = load_emoset(synthetic_copy, cache_dir=tmp_path / "a")
    for name in ("train.json", "val.json", "test.json"):
        records = _records(synthetic_copy, name)
        _write_records(synthetic_copy, [[e, Path(i).stem, i, a] for e, i, a in records], name)
    four = load_emoset(synthetic_copy, cache_dir=tmp_path / "b")
    for split in three:
        assert four[split]["image_id"] == three[split]["image_id"]
        assert four[split]["label"] == three[split]["label"]


def test_label_order_follows_info_json(synthetic_copy, tmp_path):
    info = json.loads((synthetic_copy / "info.json").read_text())
    alphabetical = sorted(EMOTIONS)
    info["emotion"] = {
        "label2idx": {name: i for i, name in enumerate(alphabetical)},
        "idx2label": {str(i): name for i, name in enumerate(alphabetical)},
    }
    (synthetic_copy / "info.json").write_text(json.dumps(info))
    train = load_emoset(synthetic_copy, cache_dir=tmp_path)["train"]
    assert train.features["label"].names == alphabetical
    emotion_of = {Path(r[1]).stem: r[0] for r in _records(synthetic_copy)}
    for image_id, label in zip(train["image_id"], train["label"]):
        assert alphabetical[label] == emotion_of[image_id]


def test_without_info_json_official_order_and_string_attributes(synthetic_copy, tmp_path):
    with_info = load_emoset(synthetic_copy, cache_dir=tmp_path)["train"]
    (synthetic_copy / "info.json").unlink()
    train = load_emoset(synthetic_copy, cache_dir=tmp_path)["train"]
    assert train.features["label"].names == list(EMOTIONS)
    assert train.column_names == with_info.column_names
    assert train.features["scene"] == datasets.Value("string")
    scenes = with_info.features["scene"].names
    assert train["scene"] == [None if s == -1 else scenes[s] for s in with_info["scene"]]


def test_official_info_json_gives_amusement_0_to_sadness_7(
    synthetic_copy, official_info_json, tmp_path
):
    shutil.copy(official_info_json, synthetic_copy / "info.json")
    train = load_emoset(synthetic_copy, cache_dir=tmp_path)["train"]
    names = train.features["label"].names
    assert names[0] == "amusement" and names[7] == "sadness" and names == list(EMOTIONS)
    assert len(train.features["scene"].names) == 254
    assert len(train.features["human_action"].names) == 264
    # The synthetic vocabulary uses real names: every annotated scene maps to a real index.
    annotated = [
        json.loads((synthetic_copy / r[2]).read_text()).get("scene")
        for r in _records(synthetic_copy)
    ]
    present = {image_id: s for image_id, s in zip(train["image_id"], train["scene"])}
    for record, scene in zip(_records(synthetic_copy), annotated):
        assert (present[Path(record[1]).stem] >= 0) == (scene is not None)


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file, the record and what to do


def _break_record(index, value):
    def edit(root):
        records = _records(root)
        records[index] = value(records[index]) if callable(value) else value
        _write_records(root, records)

    return edit


def _rewrite_annotation(index, text):
    def edit(root):
        (root / _records(root)[index][2]).write_text(text(root, index) if callable(text) else text)

    return edit


def _other_emotion(root, index):
    record = _records(root)[index]
    annotation = json.loads((root / record[2]).read_text())
    annotation["emotion"] = "fear" if record[0] != "fear" else "awe"
    return json.dumps(annotation)


BAD_INPUTS = {
    "split file missing": (lambda root: (root / "val.json").unlink(), ["val.json", "not found"]),
    "split file not a list": (
        lambda root: (root / "train.json").write_text('{"a": 1}'),
        ["train.json", "JSON list"],
    ),
    "split file not JSON": (
        lambda root: (root / "test.json").write_text("[[oops"),
        ["test.json", "not valid JSON"],
    ),
    "record of wrong length": (
        _break_record(3, ["awe", "image/awe/x.jpg"]),
        ["train.json", "record 3", "[emotion, image_path"],
    ),
    "emotion not in label map": (
        _break_record(2, lambda r: ["joy", *r[1:]]),
        ["train.json", "record 2", "'joy'", "label map"],
    ),
    "path escapes root": (
        _break_record(1, lambda r: [r[0], "../outside.jpg", r[2]]),
        ["train.json", "record 1", "outside the EmoSet root"],
    ),
    "absolute path": (
        _break_record(0, lambda r: [r[0], r[1], "/etc/passwd"]),
        ["train.json", "record 0", "absolute"],
    ),
    "annotation disagrees": (
        _rewrite_annotation(5, _other_emotion),
        ["train.json", "record 5", ".json says emotion"],
    ),
    "annotation not JSON": (
        _rewrite_annotation(4, "{not json"),
        ["train.json", "record 4", "not valid JSON", "annotation/"],
    ),
    "info.json damaged": (
        lambda root: (root / "info.json").write_text('{"emotion": 3}'),
        ["info.json", "label2idx"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case, synthetic_copy, tmp_path):
    edit, expected = BAD_INPUTS[case]
    edit(synthetic_copy)
    with pytest.raises(EmoSetError) as caught:
        load_emoset(synthetic_copy, cache_dir=tmp_path)
    for text in expected:
        assert text in str(caught.value)


@pytest.mark.parametrize("kind", ["image", "annotation"])
def test_missing_files_are_counted_and_can_be_skipped(kind, synthetic_copy, tmp_path, caplog):
    records = _records(synthetic_copy)
    column = 1 if kind == "image" else 2
    for index in (6, 9):
        (synthetic_copy / records[index][column]).unlink()
    with pytest.raises(EmoSetError) as caught:
        load_emoset(synthetic_copy, cache_dir=tmp_path)
    message = str(caught.value)
    assert "train.json" in message and "2 of 64 records" in message
    assert f"record 6: {kind} {records[6][column]}" in message and "skip_missing" in message

    with caplog.at_level(logging.WARNING, logger="emoset_peft.data.emoset"):
        ds = load_emoset(synthetic_copy, cache_dir=tmp_path, skip_missing=True)
    assert len(ds["train"]) == 62
    assert Path(records[6][1]).stem not in ds["train"]["image_id"]
    assert "2 of 64 records" in caplog.text


# ---------------------------------------------------------------------------------------------
# The cache


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_read_only_dataset_folder_loads_and_is_not_touched(synthetic_copy, tmp_path):
    before = _snapshot(synthetic_copy)
    modes = {p: p.stat().st_mode for p in [synthetic_copy, *synthetic_copy.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        ds = load_emoset(synthetic_copy, cache_dir=tmp_path / "cache")
        ds = load_emoset(synthetic_copy, cache_dir=tmp_path / "cache")  # warm
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert len(ds["train"]) == 64
    assert _snapshot(synthetic_copy) == before  # nothing added, removed or rewritten
    assert list((tmp_path / "cache").iterdir())  # the index went to the cache instead


def test_warm_load_comes_from_the_cache(synthetic_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cold = load_emoset(synthetic_copy, cache_dir=cache)
    # The warm load must not read annotations: delete one, and make any read fail loudly.
    (synthetic_copy / _records(synthetic_copy)[0][2]).unlink()
    monkeypatch.setattr(
        split_files, "_read_annotation", lambda path: pytest.fail(f"warm load read {path}")
    )
    warm = load_emoset(synthetic_copy, cache_dir=cache)
    assert warm["train"]["image_id"] == cold["train"]["image_id"]
    assert warm["train"].cache_files[0]["filename"].startswith(str(cache))


def test_cache_is_rebuilt_when_a_split_file_changes(synthetic_copy, tmp_path):
    cache = tmp_path / "cache"
    first = load_emoset(synthetic_copy, cache_dir=cache)
    records = _records(synthetic_copy)
    _write_records(synthetic_copy, records[1:])
    second = load_emoset(synthetic_copy, cache_dir=cache)
    assert len(second["train"]) == len(first["train"]) - 1
    assert Path(records[0][1]).stem not in second["train"]["image_id"]
    entries = [p for p in cache.iterdir() if p.name != ".locks"]
    assert len(entries) == 1  # the stale entry of the old split file was removed


def test_a_killed_cache_write_leaves_no_entry(synthetic_copy, tmp_path, monkeypatch):
    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(emoset_module.os, "rename", killed)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_emoset(synthetic_copy, cache_dir=cache)
    # Neither a partial entry nor a temporary folder; only the (empty) lock file.
    assert [p.name for p in cache.iterdir()] == [".locks"]
    monkeypatch.undo()
    assert len(load_emoset(synthetic_copy, cache_dir=cache)["test"]) == 32


def test_a_damaged_cache_entry_is_rebuilt(synthetic_root, tmp_path, caplog):
    cache = tmp_path / "cache"
    load_emoset(synthetic_root, cache_dir=cache)
    (entry,) = [p for p in cache.iterdir() if p.name != ".locks"]
    (entry / "train.arrow").write_bytes(b"not arrow")
    with caplog.at_level(logging.WARNING, logger="emoset_peft.data.emoset"):
        assert len(load_emoset(synthetic_root, cache_dir=cache)["train"]) == 64
    assert "damaged" in caplog.text


def test_unwritable_cache_still_loads(synthetic_root, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="emoset_peft.data.emoset"):
        ds = load_emoset(synthetic_root, cache_dir=blocker / "cache")
    assert len(ds["validation"]) == 32
    assert "could not write the EmoSet index cache" in caplog.text


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOSET_PEFT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EMOSET_PEFT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "emoset_peft"


def test_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(EmoSetError, match="is not a folder"):
        load_emoset(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# open_image


def _jpeg_bytes(mode: str = "RGB", size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
    ],
)
def test_open_image_converts_to_rgb(mode, fmt, tmp_path):
    path = tmp_path / f"image.{fmt.lower()}"
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), np.uint8))
    if mode == "I;16":
        source = Image.fromarray(np.full((24, 32), 40000, np.uint16))
    source.convert(mode).save(path, fmt) if mode != "I;16" else source.save(path, fmt)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (32, 24)
    if mode == "I;16":  # 16-bit values are scaled, not clipped to white
        assert 150 < np.asarray(image).mean() < 160


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_synthetic_grayscale_and_cmyk_files_open_as_rgb(tmp_path):
    from emoset_peft.data import make_synthetic_emoset

    root = make_synthetic_emoset(
        tmp_path / "gray",
        train_per_class=2,
        val_per_class=0,
        test_per_class=0,
        grayscale_fraction=0.5,
        cmyk_fraction=0.5,
    )
    files = sorted((root / "image").rglob("*.jpg"))
    assert {Image.open(f).mode for f in files} == {"L", "CMYK"}
    assert {open_image(f).mode for f in files} == {"RGB"}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_corrupt_images_raise_an_error_naming_the_path(damage, tmp_path):
    path = tmp_path / f"{damage}.jpg"
    whole = _jpeg_bytes(size=(64, 64))
    if damage == "garbage":
        path.write_bytes(b"this is not a JPEG" * 10)
    elif damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(CorruptImageError) as caught:
        open_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, EmoSetError) and caught.value.path == str(path)
    assert not is_readable_image(path)


def test_draft_size_decodes_a_large_jpeg_smaller_but_not_below_the_request(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("CMYK", (800, 600)).save(path, "JPEG")
    image = open_image(path, draft_size=(128, 128))
    assert image.mode == "RGB" and image.size == (200, 150)  # 1/4 scale; 1/8 would be < 128
    assert open_image(path).size == (800, 600)


def test_open_image_accepts_a_datasets_value_and_bytes(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes("L"))
    assert open_image({"path": str(path), "bytes": None}).mode == "RGB"
    assert open_image(path.read_bytes()).size == (32, 24)
    assert is_readable_image(os.fspath(path))


_LOAD_CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from emoset_peft.data import load_emoset
print(len(load_emoset(sys.argv[1], cache_dir=sys.argv[2])["train"]))
"""


@pytest.mark.slow
def test_processes_started_together_index_once(synthetic_root, tmp_path):
    import subprocess
    import sys

    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD_CHILD, str(synthetic_root), str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert [out.strip() for out, _ in outputs] == ["64", "64"]
    assert sum(err.count("indexed") for _, err in outputs) == 1
