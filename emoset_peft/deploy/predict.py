"""Predict new images with a trained model, exactly as its run scored the test split.

A run scores images with its own geometry, not the backbone's image processor: each file is
decoded to a square of ``image_size / crop_ratio`` pixels (``data.pipeline.decode_square``,
what the decode cache stores), centre-cropped to ``image_size`` and normalised with the
backbone's mean/std, and the probabilities come from ``engine.evaluate.predict_probs``. A run
folder (or its ``adapter/``) is scored the way its run scored its test split
(``engine.rescore.RunScoring``: its recorded autocast, frozen weights stored as it stored them,
adapters folded in unless it trained under ``train.compile``), so a run's test images predicted
here give its ``predictions_test.csv``, bf16 runs included; an adapter folder of its own is
scored in fp32. A PIL image already in memory skips the JPEG draft decode that a file gets, so a
photo at least twice the decode size may differ from its file by a grey level or so.

``predict(model, images)`` is the API (``ep.predict``); ``find_images`` and
``write_prediction_csv`` serve ``emoset-peft predict``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS, POSITIVE_EMOTIONS, VALENCES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GLOB_CHARACTERS = "*?["
CHUNK_IMAGES = 256  # images decoded at a time: 256 x 256 x 256 x 3 bytes = 48 MiB at 224 px
RECORD_NAME = "emoset_peft.json"  # as models/folder.py (not imported: it would load torch early)
FOLDER_HINT = (
    "give a run folder (written by emoset-peft train, holding adapter/) or an adapter folder "
    f"(holding {RECORD_NAME}, written by EmoSetModel.save_pretrained)"
)


# -- what to load, what to read -------------------------------------------------------------------


def adapter_folder(path: str | os.PathLike) -> Path:
    """The adapter folder of ``path``: a run folder's ``adapter/`` or ``path`` itself.
    EmoSetError (one line) for anything else."""
    path = Path(path)
    if not path.exists():
        raise EmoSetError(f"{path} does not exist; {FOLDER_HINT}")
    if not path.is_dir():
        raise EmoSetError(f"{path} is a file, not a folder; {FOLDER_HINT}")
    if (path / "adapter").is_dir():
        return path / "adapter"
    if any((path / name).is_file() for name in (RECORD_NAME, "adapter_config.json")):
        return path  # load_adapter checks it (and tells a plain PEFT folder apart)
    raise EmoSetError(
        f"{path} is neither a run folder nor an adapter folder: it should contain adapter/ "
        f"(a run written by emoset-peft train) or {RECORD_NAME} (a folder written by "
        "EmoSetModel.save_pretrained)"
    )


def load_model(path: str | os.PathLike, device: Any = None):
    """``load_adapter`` on a run folder or adapter folder, moved to ``device`` (default: the
    GPU when there is one)."""
    import torch

    from emoset_peft.models import load_adapter

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return load_adapter(adapter_folder(path)).to(device)


def load_scoring_model(path: str | os.PathLike, device: Any = None):
    """(model, ``RunScoring``): ``load_model``, and for a run folder (or its ``adapter/``) the
    model as its run scored its test split, with how it did; an adapter folder of its own gets
    the defaults (fp32, adapters folded in)."""
    import torch

    from emoset_peft.config import load_config
    from emoset_peft.engine.rescore import RunScoring, is_run_folder, load_for_scoring, run_scoring

    folder = adapter_folder(path)
    if folder.name != "adapter" or not is_run_folder(folder.parent):
        return load_model(folder, device), RunScoring()
    run_dir = folder.parent
    scoring = run_scoring(run_dir, load_config(run_dir / "config.yaml"))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_for_scoring(folder, scoring, scoring.precision or "no")
    return model.to(device), scoring


def find_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The image files named by ``paths``, in order, each once: a file as given, a folder's
    image files (recursively, sorted), a glob's matches (``**`` recurses). EmoSetError for a
    path that does not exist, a pattern that matches nothing, a folder without images."""
    found: list[str] = []
    for given in paths:
        text = os.fspath(given)
        path = Path(text)
        if path.is_dir():
            found += _folder_images(path, text)
        elif path.exists():
            found.append(text)  # named by the user: read it whatever its extension
        elif any(char in text for char in GLOB_CHARACTERS):
            matches = []
            for match in sorted(glob.glob(text, recursive=True)):
                if Path(match).is_dir():
                    matches += _folder_images(Path(match), match, required=False)
                elif match.lower().endswith(IMAGE_EXTENSIONS):
                    matches.append(match)
            if not matches:
                raise EmoSetError(f"{text} matches no image files ({_extensions()})")
            found += matches
        else:
            raise EmoSetError(f"{text} does not exist; give image files, folders or globs")
    return list(dict.fromkeys(found))


def _folder_images(folder: Path, shown: str, required: bool = True) -> list[str]:
    files = sorted(
        str(path)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    if not files and required:
        raise EmoSetError(f"{shown} holds no image files ({_extensions()}), nor do its subfolders")
    return files


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


# -- scoring ------------------------------------------------------------------------------------


@dataclass
class Scored:
    """What ``score_images`` read and predicted."""

    indices: list[int]  # positions in the input of the images that were read, in order
    probs: np.ndarray  # float [len(indices), num_classes]
    class_names: list[str]
    unreadable: list[tuple[int, str, str]]  # (position, name, reason)


def score_images(
    model,
    images: Sequence[Any],
    *,
    batch_size: int = 32,
    skip_unreadable: bool = False,
    on_unreadable: Callable[[str, str], None] | None = None,
    show_progress: bool = False,
    scoring=None,
) -> Scored:
    """Class probabilities for ``images`` (paths or PIL images) with the run's eval geometry.

    ``scoring``: the ``RunScoring`` of ``load_scoring_model`` (the run's autocast and whether
    its adapters are folded in); None: fp32, folded.

    An image that cannot be read raises ``CorruptImageError`` naming it, or with
    ``skip_unreadable`` is left out, listed in ``unreadable`` and passed to ``on_unreadable``
    (name, reason) as soon as it is met.
    """
    import torch
    from tqdm.auto import tqdm

    from emoset_peft.data.pipeline import Normalizer, cache_resolution
    from emoset_peft.engine.evaluate import predict_probs
    from emoset_peft.engine.rescore import warn_if_slow
    from emoset_peft.engine.solo import SoloAccelerator
    from emoset_peft.models import input_spec, merged_for_inference, unwrap
    from emoset_peft.utils.cpus import default_decode_workers

    if int(batch_size) < 1:
        raise EmoSetError(f"batch_size must be at least 1, got {batch_size}")
    spec = input_spec(model)  # EmoSetError unless it comes from build_model/load_adapter
    network = unwrap(model)
    class_names = [network.id2label[index] for index in range(len(network.id2label))]
    first = next(network.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    precision = (scoring.precision if scoring is not None else None) or "no"
    merge = scoring.merge_adapters if scoring is not None else True
    accelerator = SoloAccelerator(device, precision)
    warn_if_slow(precision, device, "predicting")
    normalizer = Normalizer(spec.mean, spec.std, device)
    resolution = cache_resolution(spec.image_size, spec.crop_ratio)

    def decode(item: tuple[int, Any]):
        from emoset_peft.data.images import CorruptImageError

        index, image = item
        try:
            return index, _square(image, resolution, spec.image_size), None
        except CorruptImageError as err:
            return index, None, err

    kept: list[int] = []
    probs: list[np.ndarray] = []
    unreadable: list[tuple[int, str, str]] = []
    chunk = max(CHUNK_IMAGES, int(batch_size))
    with (
        merged_for_inference(network, enabled=merge) as _,  # once for all chunks
        ThreadPoolExecutor(max_workers=default_decode_workers()) as pool,
        tqdm(total=len(images), unit="img", desc="predicting", disable=not show_progress) as bar,
    ):
        for start in range(0, len(images), chunk):
            rows = []
            for index, pixels, err in pool.map(
                decode, enumerate(images[start : start + chunk], start)
            ):
                if err is None:
                    rows.append(pixels)
                    kept.append(index)
                    continue
                name = err.path or _name(images[index])
                if not skip_unreadable:
                    raise _unreadable(name, err.reason or str(err)) from None
                unreadable.append((index, name, err.reason or str(err)))
                if on_unreadable is not None:
                    on_unreadable(name, err.reason or str(err))
            if rows:
                probs.append(
                    predict_probs(
                        network,
                        _decoded(rows),
                        accelerator,
                        normalizer,
                        spec.image_size,
                        int(batch_size),
                        merge_adapters=False,  # already folded above
                    )
                )
            bar.update(min(chunk, len(images) - start))
    table = np.concatenate(probs) if probs else np.zeros((0, len(class_names)))
    return Scored(kept, table, class_names, unreadable)


def _square(image, resolution: int, crop_size: int) -> np.ndarray:
    from PIL import Image

    from emoset_peft.data.images import as_rgb
    from emoset_peft.data.pipeline import decode_square, square_pixels

    if isinstance(image, np.ndarray):  # checked by _image_list: uint8 H x W [x 1/3/4]
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if _is_pil(image):
        return square_pixels(as_rgb(image), resolution, crop_size)
    return decode_square(os.fspath(image), resolution, crop_size=crop_size)


def _unreadable(name: str, reason: str):
    """The decoder's error with advice for a user's own photo (not an EmoSet file)."""
    from emoset_peft.data.images import CorruptImageError

    fix = (
        "check the path"
        if reason == "file not found"
        else f"give an image file PIL can open ({_extensions()}), or leave it out"
    )
    return CorruptImageError(
        f"cannot read image {name}: {reason}; {fix}",
        name,
        reason,
    )


def _decoded(rows: list[np.ndarray]):
    from emoset_peft.data.pipeline import DecodedImages

    return DecodedImages(
        pixels=np.stack(rows),
        labels=np.zeros(len(rows), dtype=np.int64),  # unused: predict_probs reads pixels only
        image_ids=[str(index) for index in range(len(rows))],
    )


def _name(image) -> str:
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape))}>"
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<PIL image>"


def _is_pil(image) -> bool:
    return hasattr(image, "convert") and hasattr(image, "size")


IMAGE_TYPES = "image file paths, PIL images or H x W x 3 uint8 arrays"


def _image_list(images) -> list:
    """``predict``'s ``images`` as a list of items ``score_images`` reads; EmoSetError (one line)
    for what it cannot: folders and globs (their images would come back unnamed), tensors, other
    types, arrays that are not uint8 pixels."""
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = [images] if images.ndim in (2, 3) else list(images)
    elif _is_tensor(images) or not hasattr(images, "__iter__"):
        images = [images]
    else:
        images = list(images)
    for position, image in enumerate(images):
        _check_image(image, position if len(images) > 1 else None)
    return images


def _check_image(image, position: int | None) -> None:
    where = "images" if position is None else f"images[{position}]"
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        many = (
            "a folder"
            if Path(text).is_dir()
            else (
                "a glob"
                if not Path(text).exists() and any(c in text for c in GLOB_CHARACTERS)
                else ""
            )
        )
        if many:
            raise EmoSetError(
                f"{text} is {many}: ep.predict takes {IMAGE_TYPES}, one result per item; run "
                f"`emoset-peft predict MODEL {text}` (a CSV naming each file), or pass the files "
                f"(emoset_peft.deploy.predict.find_images([{text!r}]) lists them)"
            )
        return
    if _is_pil(image):
        return
    if isinstance(image, np.ndarray):
        shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
        if image.dtype == np.uint8 and shape_ok and min(image.shape[:2]) > 0:
            return
        raise EmoSetError(
            f"{where}: an array of shape {image.shape} and dtype {image.dtype}; an image array is "
            "H x W x 3 (RGB), H x W x 4 (RGBA) or H x W, dtype uint8 (0-255)"
        )
    if _is_tensor(image):
        raise EmoSetError(
            f"{where}: a torch tensor; ep.predict takes {IMAGE_TYPES} and resizes and normalises "
            "them itself. For pixels already prepared, call model(pixel_values=...).logits; for "
            "a uint8 H x W x 3 tensor, pass tensor.numpy()"
        )
    raise EmoSetError(
        f"{where}: an object of type {type(image).__name__}; ep.predict takes {IMAGE_TYPES}"
    )


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def predict(
    model,
    images,
    *,
    batch_size: int = 32,
    top_k: int | None = None,
    show_progress: bool = False,
) -> list[dict[str, float]]:
    """One ``{label: probability}`` per image, most probable first (``top_k``: only the first k).

    ``model``: from ``ep.load_adapter``/``ep.build_model``, or a run folder / adapter folder
    (loaded here, on the GPU when there is one). ``images``: image file paths, PIL images or
    H x W x 3 uint8 arrays (or one of them; folders and globs: ``emoset-peft predict``). Preprocessing is the one the run evaluated with (see the module docstring). An
    unreadable image raises ``EmoSetError`` naming it. The valence: ``sum(p for label, p in
    result.items() if label in emoset_peft.labels.POSITIVE_EMOTIONS)`` (with ``top_k=None``).
    """
    images = _image_list(images)
    if top_k is not None and int(top_k) < 1:
        raise EmoSetError(f"top_k must be at least 1 (or None for every class), got {top_k}")
    scoring = None
    if isinstance(model, (str, os.PathLike)):
        model, scoring = load_scoring_model(model)
    scored = score_images(
        model, images, batch_size=batch_size, show_progress=show_progress, scoring=scoring
    )
    return [ranked(row, scored.class_names, top_k) for row in scored.probs]


def ranked(probs: np.ndarray, class_names: Sequence[str], top_k: int | None = None) -> dict:
    """``{label: probability}`` of one image, most probable first (ties in class order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")
    if top_k is not None:
        order = order[: int(top_k)]
    return {str(class_names[i]): float(probs[i]) for i in order}


# -- the CSV ------------------------------------------------------------------------------------


def prediction_columns(class_names: Sequence[str], top_k: int) -> list[str]:
    """path, predicted, probability, [valence, positive_probability], top<i>/top<i>_prob for
    i <= top_k, prob_<class> for every class. The valence columns need EmoSet's emotions."""
    columns = ["path", "predicted", "probability"]
    if _has_valence(class_names):
        columns += ["valence", "positive_probability"]
    for rank in range(1, top_k + 1):
        columns += [f"top{rank}", f"top{rank}_prob"]
    return columns + [f"prob_{name}" for name in class_names]


def prediction_rows(
    names: Sequence[str], probs: np.ndarray, class_names: Sequence[str], top_k: int
) -> list[dict]:
    """One dict per image with the keys of ``prediction_columns``."""
    class_names = [str(name) for name in class_names]
    top_k = max(1, min(int(top_k), len(class_names)))
    positive = [name in POSITIVE_EMOTIONS for name in class_names]
    rows = []
    for name, row in zip(names, np.asarray(probs, dtype=np.float64), strict=True):
        top = list(ranked(row, class_names, top_k).items())
        out = {"path": name, "predicted": top[0][0], "probability": top[0][1]}
        if _has_valence(class_names):
            out["valence"] = VALENCES[0] if top[0][0] in POSITIVE_EMOTIONS else VALENCES[1]
            out["positive_probability"] = float(row[positive].sum())
        for rank, (label, prob) in enumerate(top, 1):
            out[f"top{rank}"], out[f"top{rank}_prob"] = label, prob
        for index, label in enumerate(class_names):
            out[f"prob_{label}"] = float(row[index])
        rows.append(out)
    return rows


def write_prediction_csv(
    path: str | os.PathLike,
    names: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    top_k: int = 3,
) -> Path:
    """The rows of ``prediction_rows`` as CSV, written atomically (6 significant digits, as
    ``predictions_test.csv``)."""
    import csv

    from emoset_peft.utils.io import atomic_open

    top_k = max(1, min(int(top_k), len(class_names)))
    rows = prediction_rows(names, probs, class_names, top_k)
    with atomic_open(Path(path), "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=prediction_columns(class_names, top_k))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: f"{v:.6g}" if isinstance(v, float) else v for key, v in row.items()}
            )
    return Path(path)


def _has_valence(class_names: Sequence[str]) -> bool:
    return set(class_names) <= set(EMOTIONS)
