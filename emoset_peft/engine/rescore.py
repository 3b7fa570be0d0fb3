"""Scoring a finished run again (``emoset-peft eval``): which images, and where results may go.

The images of a split are the ones the run itself used: ``train`` its training subset,
``validation`` its selection set, ``test`` the test split (with ``data.test_limit_per_class``),
all drawn by ``data.run_data.select_splits`` from the run's config, overrides applied. Only the
split asked for is selected and decoded, so scoring the test split of another tree
(``data.root=...``) does not need that tree to hold k training images per class.

Results go to ``metrics_<split>.json`` and ``predictions_<split>.csv`` in ``RUN/eval/`` (for the
run's own data tree) or ``RUN/eval/<tree folder name>/`` (another tree), never over a file the
run wrote while training (``metrics.json``, ``predictions_test.csv``, ...).

Paths in a run's config.yaml are kept as typed (its fingerprint hashes them so): a relative
``data.root`` is resolved against the folder the run was trained in (provenance.json ``cwd``; for
runs from before it was recorded, the folder that ``output_dir`` was relative to), overrides on
the eval command line against the current folder. Eval takes only the overrides it uses
(:data:`EVAL_KEYS`); any other key would change nothing, so it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from emoset_peft.config import DataConfig, RunConfig, load_config
from emoset_peft.data.emoset import check_emoset_root
from emoset_peft.errors import EmoSetError

SPLITS = ("train", "validation", "test")
EVAL_FOLDER = "eval"  # inside the run folder; engine/run_dir.py lists it as the run's own
# Override keys eval reads besides every data.* key: the rest only change how a run trains.
EVAL_KEYS = ("model.backbone", "train.eval_batch_size", "train.mixed_precision", "cpu")
DATA_PATHS = ("root", "cache_dir", "manifest")  # data.* keys holding a file or folder


def check_eval_overrides(overrides: list[str]) -> None:
    """EmoSetError naming the overrides eval does not use (it would ignore them silently)."""
    unused = []
    for item in overrides:
        dotted = item.split("=", 1)[0].strip()
        if not (dotted == "data" or dotted.startswith("data.") or dotted in EVAL_KEYS):
            unused.append(dotted)
    if unused:
        raise EmoSetError(
            f"eval does not use {', '.join(unused)} (they change how a run trains, not how it "
            f"is scored); it takes data.*, {', '.join(EVAL_KEYS)}"
        )


def training_folder(run_dir: Path, trained: RunConfig) -> Path | None:
    """The working folder the run was trained in, where its relative paths start; None when
    the run does not tell (trained before provenance.json recorded it, and moved since)."""
    try:
        cwd = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8")).get("cwd")
    except (OSError, ValueError, AttributeError):
        cwd = None
    if isinstance(cwd, str) and cwd:
        return Path(cwd)
    typed = Path(trained.output_dir)
    here = run_dir.resolve()
    if typed.is_absolute() or ".." in typed.parts or not typed.parts:
        return None
    if here.parts[-len(typed.parts) :] != typed.parts:
        return None  # renamed or moved since
    return Path(*here.parts[: -len(typed.parts)])


def _absolute(data: DataConfig, folder: Path) -> DataConfig:
    changes = {}
    for key in DATA_PATHS:
        value = getattr(data, key)
        if value and not Path(value).expanduser().is_absolute():
            changes[key] = os.path.abspath(folder / Path(value).expanduser())  # no ../
    return dataclasses.replace(data, **changes)


def eval_configs(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """(the run's config, the config to score with): data paths absolute, the run's own ones
    resolved where it was trained, the overrides' ones from the current folder. EmoSetError
    when the run's data tree is not where it trained (naming it) or an override is unused."""
    check_eval_overrides(overrides)
    trained = load_config(run_dir / "config.yaml")
    typed_relative = not Path(trained.data.root).expanduser().is_absolute()
    folder = training_folder(run_dir, trained)
    recorded = _absolute(trained.data, folder or Path.cwd())
    trained = dataclasses.replace(trained, data=recorded)
    config = load_config(None, overrides, base=trained.to_dict())
    config = dataclasses.replace(config, data=_absolute(config.data, Path.cwd()))
    root = Path(config.data.root)
    if config.data.root == recorded.root and not root.is_dir():
        where = (
            f"the run was trained on {root}"
            if folder is not None or not typed_relative
            else f"the run's config.yaml gives data.root relative to the folder it was trained "
            f"in, which {run_dir} does not record; from here that is {root}"
        )
        raise EmoSetError(
            f"{where}, which is not there; pass data.root=<where that EmoSet tree is now>"
        )
    check_emoset_root(root)  # a look at the disk: before the model is loaded
    return trained, config


def is_run_folder(folder: Path) -> bool:
    """A folder ``train`` or a study cell wrote (marker, or config.yaml beside adapter/)."""
    from emoset_peft.engine.run_dir import MARKER

    return (folder / MARKER).exists() or (
        (folder / "config.yaml").is_file() and (folder / "adapter").is_dir()
    )


def refuse_training_output(path: str | os.PathLike, what: str) -> None:
    """EmoSetError when ``path`` is a file a run writes while training (in a run folder)."""
    from emoset_peft.engine.run_dir import WRITTEN

    path = Path(path)
    if path.name in WRITTEN and is_run_folder(path.parent):
        raise EmoSetError(
            f"{what} {path} is a file its run wrote while training, which eval and predict "
            "never overwrite; pick another path"
        )


def output_paths(
    run_dir: Path, split: str, data_root: str, run_root: str, out_dir: str | None = None
) -> tuple[Path, Path]:
    """(metrics_<split>.json, predictions_<split>.csv) for one eval, checked against the
    run's own files."""
    if out_dir is not None:
        folder = Path(out_dir)
    elif _same_path(data_root, run_root):
        folder = run_dir / EVAL_FOLDER
    else:
        folder = run_dir / EVAL_FOLDER / (Path(data_root).resolve().name or "data")
    paths = folder / f"metrics_{split}.json", folder / f"predictions_{split}.csv"
    for path in paths:
        refuse_training_output(path, "eval output")
    return paths


def _same_path(one: str, other: str) -> bool:
    try:
        return Path(one).resolve() == Path(other).resolve()
    except OSError:
        return one == other


def split_config(data: DataConfig, split: str) -> DataConfig:
    """``data`` reduced to what selects ``split``: the other splits' subsets are not drawn."""
    from emoset_peft.data.run_data import selection_images_per_class

    if split == "train":
        return dataclasses.replace(data, selection="none")
    if split == "test":
        return dataclasses.replace(data, per_class=0, fraction=None, selection="none")
    # The selection set as the run drew it; k_tied's size depends on k, so it is fixed here.
    per_class = selection_images_per_class(data)
    return dataclasses.replace(
        data, per_class=0, fraction=None, selection="fixed", selection_per_class=per_class
    )


def load_split(data: DataConfig, split: str, spec, run_dir: Path, *, show_progress: bool = True):
    """(DecodedImages, class names) of ``split`` as the run selected it, decoded with the
    model's ``InputSpec`` (the decode cache is shared with training)."""
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.pipeline import decode_split
    from emoset_peft.data.run_data import select_splits
    from emoset_peft.utils.cpus import default_decode_workers

    if split == "validation" and data.selection == "none":
        raise EmoSetError(
            f"{run_dir} was trained with data.selection=none: it has no selection "
            "set; evaluate --split test, or pass data.selection=fixed"
        )
    if split == "train" and data.per_class == 0 and data.fraction is None:
        raise EmoSetError(
            f"{run_dir} trained on no images (data.per_class=0); pass data.per_class=N "
            "(or all) to score training images"
        )
    emoset = load_emoset(
        data.root,
        cache_dir=data.cache_dir,
        skip_missing=data.skip_missing,
        follow_symlinks=data.follow_symlinks,
    )
    train, selection, test, _ = select_splits(split_config(data, split), emoset)
    chosen = {"train": train, "validation": selection, "test": test}[split]
    if chosen is None:  # k_tied at k = 0 selects no validation images
        raise EmoSetError(f"{run_dir} has no {split} images to score with its config")
    images = decode_split(
        chosen,
        spec.image_size,
        crop_ratio=spec.crop_ratio,
        cache_dir=data.cache_dir,
        skip_corrupt=data.skip_corrupt,
        workers=data.decode_workers or default_decode_workers(),
        desc=f"decoding {split}",
        show_progress=show_progress,
    )
    return images, list(emoset["train"].features["label"].names)
