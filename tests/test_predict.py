"""``emoset-peft predict`` and ``ep.predict``: new images scored exactly as the run scored its
test split, unreadable images named and skipped, bad input as one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from fixtures_train import train_two_steps
from PIL import Image

import emoset_peft as ep
from emoset_peft.cli import main
from emoset_peft.labels import POSITIVE_EMOTIONS


@pytest.fixture(scope="module", params=["vit", "clip"])
def trained(request, training_root, tiny_vit_dir, tiny_clip_dir, tmp_path_factory):
    """A finished tiny run (ViT: ImageNet mean/std; CLIP: its own) and its test images."""
    run = tmp_path_factory.mktemp(f"predict_{request.param}") / "run"
    backbone = tiny_vit_dir if request.param == "vit" else tiny_clip_dir
    train_two_steps(training_root, backbone, run, per_class=2, selection_per_class=1)
    test = ep.load_emoset(training_root)["test"]
    paths = {row["image_id"]: row["image"]["path"] for row in test.cast_column("image", _raw())}
    return run, paths


def _raw():
    import datasets

    return datasets.Image(decode=False)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _expected(run: Path) -> dict[str, dict]:
    return {row["image_id"]: row for row in _read_csv(run / "predictions_test.csv")}


def test_cli_on_a_folder_reproduces_predictions_test_csv(trained, training_root, tmp_path, capsys):
    run, paths = trained
    out = tmp_path / "predictions.csv"
    # The whole image folder: train, validation and test images, found recursively.
    assert main(["predict", str(run), str(training_root / "image"), "--out", str(out)]) == 0
    rows = {Path(row["path"]).stem: row for row in _read_csv(out)}
    expected = _expected(run)
    assert set(expected) <= set(rows) and len(expected) == 48
    names = json.loads((run / "metrics.json").read_text())["test"]["class_names"]
    for image_id, want in expected.items():
        got = rows[image_id]
        assert Path(got["path"]) == Path(paths[image_id])
        assert got["predicted"] == want["predicted"]
        for name in names:
            assert abs(float(got[f"prob_{name}"]) - float(want[f"prob_{name}"])) <= 1e-6
        probs = {name: float(got[f"prob_{name}"]) for name in names}
        assert float(got["probability"]) == max(probs.values())
        assert got["top1"] == got["predicted"] and got["top1_prob"] == got["probability"]
        assert float(got["top2_prob"]) <= float(got["top1_prob"])
        assert got["valence"] == (
            "positive" if got["predicted"] in POSITIVE_EMOTIONS else "negative"
        )
        positive = sum(p for name, p in probs.items() if name in POSITIVE_EMOTIONS)
        assert abs(float(got["positive_probability"]) - positive) <= 1e-5
    assert "top3" in rows[image_id] and "top4" not in rows[image_id]
    assert capsys.readouterr().out.strip().endswith("176 images, 0 unreadable")


def test_api_on_paths_and_pil_images_equals_the_run(trained):
    run, paths = trained
    expected = _expected(run)
    ids = sorted(expected)[::5]  # every class's images, a few each
    model = ep.load_adapter(run / "adapter")
    from_paths = ep.predict(model, [paths[i] for i in ids], batch_size=3)
    with_pil = ep.predict(model, [Image.open(paths[i]) for i in ids])
    for image_id, by_path, by_pil in zip(ids, from_paths, with_pil, strict=True):
        want = expected[image_id]
        assert list(by_path) == sorted(
            by_path, key=by_path.get, reverse=True
        )  # most probable first
        assert next(iter(by_path)) == want["predicted"]
        assert len(by_path) == 8 and abs(sum(by_path.values()) - 1) < 1e-5
        for label, prob in by_path.items():
            assert abs(prob - float(want[f"prob_{label}"])) <= 1e-6
            assert abs(by_pil[label] - prob) <= 1e-6
    # A run folder and one image are accepted too; top_k keeps the k most probable.
    top = ep.predict(run, paths[ids[0]], top_k=2)
    assert len(top) == 1 and list(top[0]) == list(from_paths[0])[:2]


def test_unreadable_images_are_named_skipped_and_counted(trained, tmp_path, capsys):
    run, paths = trained
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    good = sorted(paths.values())[:2]
    shutil.copy(good[0], photos / "a.jpg")
    shutil.copy(good[1], photos / "sub" / "b.jpg")
    (photos / "notes.txt").write_text("not an image, and not picked up from a folder")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    truncated = Path(good[0]).read_bytes()
    (photos / "sub" / "cut.jpg").write_bytes(truncated[: len(truncated) // 2])
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(photos), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert any(str(photos / "broken.jpg") in line for line in warnings)
    assert any(str(photos / "sub" / "cut.jpg") in line for line in warnings)
    assert captured.out.strip() == f"{out}: 2 images, 2 unreadable (listed above)"
    assert [Path(row["path"]).name for row in _read_csv(out)] == ["a.jpg", "b.jpg"]

    # A quoted glob (** recurses) finds the same two readable images.
    glob_out = tmp_path / "g.csv"
    pattern = str(photos / "**" / "*.jpg")
    argv = ["predict", str(run / "adapter"), "--top-k", "1", pattern, "--out", str(glob_out)]
    assert main(argv) == 0  # options between the positional arguments too
    assert _read_csv(glob_out) == [
        {key: value for key, value in row.items() if not key.startswith(("top2", "top3"))}
        for row in _read_csv(out)
    ]

    # The API raises on an unreadable image, naming it.
    with pytest.raises(ep.EmoSetError, match="broken.jpg"):
        ep.predict(ep.load_adapter(run / "adapter"), [photos / "a.jpg", photos / "broken.jpg"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    run, paths = trained
    image = next(iter(paths.values()))
    out = tmp_path / "p.csv"
    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "config.yaml").write_text("{}\n")

    cases = [
        ([str(run), str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
        ([str(run), str(empty)], f"{empty} holds no image files"),
        ([str(run), str(tmp_path / "*.png")], "matches no image files"),
        ([str(tmp_path / "no_run"), image], "no_run does not exist"),
        ([str(neither), image], "it should contain adapter/"),
        ([str(run), image, "--top-k", "0"], "--top-k"),
    ]
    for argv, message in cases:
        assert main(["predict", *argv, "--out", str(out)]) == 2
        assert message in _one_line_error(capsys)
    assert not out.exists()

    # Never over a file the run wrote while training.
    before = (run / "predictions_test.csv").read_bytes()
    assert main(["predict", str(run), image, "--out", str(run / "predictions_test.csv")]) == 2
    assert "never overwrite" in _one_line_error(capsys)
    assert (run / "predictions_test.csv").read_bytes() == before


def test_out_paths_that_cannot_or_must_not_be_written_are_one_line(
    trained, synthetic_copy, tmp_path, capsys
):
    run, paths = trained
    image = next(iter(paths.values()))
    folder = tmp_path / "outdir"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    unwritable = readonly / "p.csv"
    if os.access(readonly, os.W_OK):  # root ignores modes: sysfs refuses everyone
        unwritable = Path("/sys/emoset-peft-test/p.csv")
    before = {p: p.read_bytes() for p in synthetic_copy.rglob("*") if p.is_file()}
    cases = [
        (synthetic_copy / "val.json", "inside the EmoSet tree"),
        (synthetic_copy / "image" / "new.csv", "inside the EmoSet tree"),
        (folder, f"e.g. {folder / 'predictions.csv'}"),
        (afile / "p.csv", "is a file, not a folder"),
        (afile, "is not a predictions CSV"),
        (unwritable, "writable folder"),
    ]
    try:
        for out, needle in cases:
            assert main(["predict", str(run), image, "--out", str(out)]) == 2
            assert needle in _one_line_error(capsys)
    finally:
        readonly.chmod(0o755)
    assert {p: p.read_bytes() for p in synthetic_copy.rglob("*") if p.is_file()} == before
    assert afile.read_text() == "x" and not any(folder.iterdir())

    # An earlier predictions CSV is replaced.
    out = tmp_path / "p.csv"
    for _ in range(2):
        assert main(["predict", str(run), image, "--out", str(out), "--no-progress"]) == 0
    assert len(_read_csv(out)) == 1


def test_predict_is_public_api():
    assert "predict" in ep.__all__ and callable(ep.predict)


def test_arrays_are_images_and_what_predict_cannot_take_is_one_line(tiny_vit_dir, tmp_path):
    import numpy as np
    import torch

    model = ep.build_model(tiny_vit_dir, "linear").eval()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    from_pil = ep.predict(model, Image.fromarray(pixels))
    assert ep.predict(model, pixels) == from_pil
    for row in ep.predict(model, np.stack([pixels, pixels])):  # N x H x W x 3
        assert row == pytest.approx(from_pil[0], abs=1e-5)
    assert len(ep.predict(model, [pixels[..., 0], pixels])) == 2  # grey H x W too

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(pixels).save(photos / "a.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cases = [
        (torch.zeros(3, 32, 32), "a torch tensor"),
        (pixels.astype(np.float32), "dtype uint8"),
        ([str(photos / "a.jpg"), 3], "images[1]: an object of type int"),
        (photos, "`emoset-peft predict MODEL"),
        (str(photos / "*.jpg"), "is a glob"),
        (photos / "broken.jpg", "broken.jpg: UnidentifiedImageError"),
        (photos / "missing.jpg", "missing.jpg: file not found; check the path"),
    ]
    for images, message in cases:
        with pytest.raises(ep.EmoSetError) as caught:
            ep.predict(model, images)
        text = str(caught.value)
        assert message in text and "\n" not in text, text
        assert "EmoSet download" not in text and "split file" not in text
