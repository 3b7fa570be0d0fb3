"""The EmoSet-118K tree on disk -> a ``datasets.DatasetDict`` (train / validation / test).

The tree as users download it::

    ROOT/info.json                       label maps (emotion order, attribute vocabularies)
    ROOT/{train,val,test}.json           lists of records, paths relative to ROOT:
        ["awe", "image/awe/awe_06628.jpg", "annotation/awe/awe_06628.json"]            (3-element)
        ["awe", "awe_06628", "image/awe/awe_06628.jpg", "annotation/awe/awe_06628.json"] (4-element)
    ROOT/image/<emotion>/<emotion>_NNNNN.jpg
    ROOT/annotation/<emotion>/<emotion>_NNNNN.json

Reading 118,102 annotation files takes 7-11 s on 2 CPUs with the files in the OS page cache (far
longer from a cold network disk), so the index is built once and kept as Arrow files in a cache
OUTSIDE the dataset folder (the dataset folder is never written to; it may be read-only). Later
loads memory-map those files: about a second, most of it ``import datasets``. The cache key is the
resolved root plus the size and mtime of the split files and info.json, so editing a split file
rebuilds the index; editing an annotation file alone does not (delete the cache entry, or touch
the split file). The cache lives in ``index_cache.py``.

Checked while indexing (``hygiene.py``): a symlink whose target lies outside ROOT is refused like
a ``../`` path unless ``follow_symlinks=True`` (a link that appears after indexing is caught at
the next load); records that repeat an image and images that two splits share are logged as one
warning per kind at every load.

Columns of every split:
    image             datasets.Image(mode="RGB") (decoded lazily; stores the absolute path only)
    label             ClassLabel, names in info.json's emotion order (official order without it)
    valence           ClassLabel ["positive", "negative"]
    image_id          str, the file stem, e.g. "awe_06628"
    brightness        float 0.0..1.0 or None
    colorfulness      float 0.0..1.0 or None
    scene             ClassLabel from info.json (-1 when missing); str or None without info.json
    object            list[str] ([] when missing)
    facial_expression like scene
    human_action      like scene
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoset_peft.data.hygiene import (
    find_duplicates,
    folder_stamps,
    refuse_links_leaving_root,
    scan_folders,
    warn_about_duplicates,
)
from emoset_peft.data.index_cache import (
    build_lock,
    cache_key,
    in_memory,
    open_cached,
    safe_name,
    write_cache,
)
from emoset_peft.data.split_files import (
    read_annotations,
    read_json_file,
    read_split_records,
)
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import ATTRIBUTES, EMOTIONS, VALENCES, valence_of
from emoset_peft.utils.storage import writable_cache_dir

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# Split name in the DatasetDict -> file name in ROOT.
SPLIT_FILES: dict[str, str] = {"train": "train.json", "validation": "val.json", "test": "test.json"}
# Attributes that become ClassLabel columns when info.json gives their vocabulary.
CATEGORICAL_ATTRIBUTES: tuple[str, ...] = ("scene", "facial_expression", "human_action")
FLOAT_ATTRIBUTES: tuple[str, ...] = ("brightness", "colorfulness")
COLUMNS: tuple[str, ...] = ("image", "label", "valence", "image_id", *ATTRIBUTES)
_EXAMPLES = 5  # how many offending records an error message lists


@dataclass(frozen=True)
class LabelMap:
    """Emotion order and, when info.json gives them, the categorical attribute vocabularies."""

    emotions: tuple[str, ...]
    vocabs: dict[str, tuple[str, ...]]  # attribute -> names in index order; empty without info.json
    source: str  # "info.json" or "official order (no info.json)"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` when given, else ``$EMOSET_PEFT_CACHE`` if set, else ``~/.cache/emoset_peft``
    (``~`` expanded in each): the one place every cache user resolves its root."""
    chosen = cache_dir or os.environ.get("EMOSET_PEFT_CACHE")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "emoset_peft"


def check_emoset_root(root: str | os.PathLike) -> Path:
    """``root`` resolved, or EmoSetError unless it is a folder holding the split files: a
    look at the file system, so commands call it before anything slow."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EmoSetError(
            f"EmoSet root {root} is not a folder: pass the folder that holds "
            "info.json, train.json, val.json, test.json, image/ and annotation/"
        )
    root = root.resolve()
    for name in SPLIT_FILES.values():
        if not (root / name).is_file():
            raise EmoSetError(
                f"{root / name} not found: an EmoSet root holds train.json, "
                "val.json and test.json; check the path or re-extract the download"
            )
    return root


def load_emoset(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    skip_missing: bool = False,
    follow_symlinks: bool = False,
    read_threads: int = 0,
) -> datasets.DatasetDict:
    """Load an EmoSet tree as a DatasetDict with ``train``, ``validation`` and ``test`` splits.

    The first call reads every annotation file and writes the index to ``cache_dir`` (default
    :func:`default_cache_dir`); later calls memory-map it. Records whose image or annotation file
    is missing raise :class:`EmoSetError`, or are left out (and counted in the log) when
    ``skip_missing`` is true. Any malformed input raises :class:`EmoSetError` naming the file and
    the record (0-based index in the split file). A symlink whose target lies outside ``root``
    raises :class:`EmoSetError` unless ``follow_symlinks`` is true (checked when the index is
    built). Records that repeat an image, and images that two splits share, are logged as one
    warning per kind at every load (:mod:`emoset_peft.data.hygiene`).

    ``read_threads``: threads reading annotation files when the index is built (<= 1: a plain
    loop). With the files in the page cache a plain loop is fastest (118,102 files, 2 CPUs:
    6.8 s cold load vs 12.0 s with 4 threads, since json.loads holds the GIL); threads may pay
    off on a network file system. Compare: ``python benchmarks/bench_load_emoset.py --threads
    0,4``. It does not change the result, so it is not part of the cache key.
    """
    root = check_emoset_root(root)
    cache_root = default_cache_dir(cache_dir)
    key = cache_key(root, ("info.json", *SPLIT_FILES.values()), skip_missing, follow_symlinks)
    entry = cache_root / f"{safe_name(root.name)}-{key[:24]}"
    dataset = open_cached(entry, SPLIT_FILES)
    if dataset is None:
        # A read-only cache folder: build (or find) the entry in a per-user temporary folder.
        entry = writable_cache_dir(cache_root, "EmoSet index cache") / entry.name
        # Several processes started together (accelerate launch) index once: the others wait.
        with build_lock(entry):
            dataset = open_cached(entry, SPLIT_FILES)
            if dataset is None:
                shutil.rmtree(entry, ignore_errors=True)  # a damaged entry, if any
                dataset = _build(root, entry, key, skip_missing, follow_symlinks, read_threads)
    warn_about_duplicates(root, find_duplicates(dataset, SPLIT_FILES))
    return dataset


def _build(
    root: Path,
    entry: Path,
    key: str,
    skip_missing: bool,
    follow_symlinks: bool,
    read_threads: int = 0,
) -> datasets.DatasetDict:
    """The cold path: index every record, write the cache entry, open it."""
    started = time.perf_counter()
    label_map = read_label_map(root)
    tables, folders = {}, set()
    for split, file in SPLIT_FILES.items():
        tables[split], split_folders = _index_split(
            root, file, label_map, skip_missing, follow_symlinks, read_threads
        )
        folders |= split_folders
    features = emoset_features(label_map)
    log.info(
        "indexed %s (%s records) in %.1f s",
        root,
        sum(t.num_rows for t in tables.values()),
        time.perf_counter() - started,
    )
    try:
        # Following links, there is nothing to re-check on later loads.
        stamps = {} if follow_symlinks else folder_stamps(root, folders)
        write_cache(entry, tables, features, root, key, stamps)
    except OSError as err:
        # A read-only home or full disk must not stop the user: load from memory this time.
        log.warning(
            "could not write the EmoSet index cache to %s (%s); the next load will "
            "index again. Set EMOSET_PEFT_CACHE or cache_dir= to a writable folder.",
            entry,
            err,
        )
        return in_memory(tables, features)
    dataset = open_cached(entry, SPLIT_FILES)
    if dataset is None:
        raise EmoSetError(
            f"the EmoSet index cache {entry} cannot be read right after writing "
            "it; check the disk, or set EMOSET_PEFT_CACHE to another folder"
        )
    return dataset


def emoset_features(label_map: LabelMap) -> datasets.Features:
    """The column types of a split; attribute types depend on whether info.json was present."""
    import datasets

    columns: dict[str, Any] = {
        "image": datasets.Image(mode="RGB"),  # grayscale/CMYK files decode as RGB too
        "label": datasets.ClassLabel(names=list(label_map.emotions)),
        "valence": datasets.ClassLabel(names=list(VALENCES)),
        "image_id": datasets.Value("string"),
    }
    for name in ATTRIBUTES:
        if name in FLOAT_ATTRIBUTES:
            columns[name] = datasets.Value("float64")
        elif name == "object":
            columns[name] = datasets.List(datasets.Value("string"))
        elif name in label_map.vocabs:
            columns[name] = datasets.ClassLabel(names=list(label_map.vocabs[name]))
        else:
            columns[name] = datasets.Value("string")
    return datasets.Features(columns)


def read_label_map(root: str | os.PathLike) -> LabelMap:
    """Emotion order and attribute vocabularies from ``ROOT/info.json``.

    Without info.json: the official emotion order and no vocabularies."""
    path = Path(root) / "info.json"
    if not path.is_file():
        return LabelMap(EMOTIONS, {}, "official order (no info.json)")
    info = read_json_file(path)
    if not isinstance(info, dict) or "emotion" not in info:
        raise EmoSetError(
            f"{path}: expected an object with an 'emotion' key holding label2idx; "
            "restore info.json from the EmoSet download or delete it to use the "
            "official emotion order"
        )
    emotions = _names_in_index_order(info["emotion"], path, "emotion")
    unknown = [name for name in emotions if name not in EMOTIONS]
    if unknown:
        raise EmoSetError(
            f"{path}: emotion(s) {unknown} are not EmoSet emotions "
            f"{list(EMOTIONS)}; valence cannot be assigned. Fix info.json."
        )
    vocabs = {
        name: _names_in_index_order(info[name], path, name)
        for name in CATEGORICAL_ATTRIBUTES
        if name in info
    }
    return LabelMap(emotions, vocabs, "info.json")


# ---------------------------------------------------------------------------------------------
# Indexing (the cold path)


def _index_split(
    root: Path,
    file_name: str,
    label_map: LabelMap,
    skip_missing: bool,
    follow_symlinks: bool,
    read_threads: int = 0,
):
    """One split file and its annotations as an Arrow table (the cached form), and the folders
    its files lie in (relative to ``root``)."""
    split_path = root / file_name
    records = read_split_records(split_path, label_map.emotions)
    present_images, leaving = scan_folders(root, (rec.image_rel for rec in records))
    if not follow_symlinks:
        leaving.update(scan_folders(root, (rec.annotation_rel for rec in records))[1])
        refuse_links_leaving_root(root, split_path, records, leaving)
    root_str = str(root)
    annotations = read_annotations(
        [os.path.join(root_str, rec.annotation_rel) for rec in records], read_threads
    )

    missing = []  # (record index, what, relative path)
    keep = []
    for rec, annotation in zip(records, annotations):
        index, emotion, _, image_rel, annotation_rel = rec
        gone = []
        if image_rel not in present_images:
            gone.append(("image", image_rel))
        if annotation is None:
            gone.append(("annotation", annotation_rel))
        if gone:
            missing.extend((index, what, rel) for what, rel in gone)
            continue
        if isinstance(annotation, Exception):
            problem = "cannot be read" if isinstance(annotation, OSError) else "is not valid JSON"
            raise EmoSetError(
                f"{root / annotation_rel} (record {index} of {split_path}) "
                f"{problem}: {annotation}. Restore it from the EmoSet download."
            )
        if not isinstance(annotation, dict):
            raise EmoSetError(
                f"{root / annotation_rel} (record {index} of {split_path}) must "
                "hold a JSON object; restore it from the EmoSet download."
            )
        stated = annotation.get("emotion")
        if stated is not None and stated != emotion:
            raise EmoSetError(
                f"{root / annotation_rel} says emotion {stated!r} but record "
                f"{index} of {split_path} says {emotion!r}; one of the two files is "
                "wrong: restore them from the EmoSet download."
            )
        keep.append((rec, annotation))

    if missing:
        records_hit = len({index for index, _, _ in missing})
        examples = "; ".join(f"record {i}: {what} {rel}" for i, what, rel in missing[:_EXAMPLES])
        message = (
            f"{split_path}: {records_hit} of {len(records)} records point to missing files "
            f"({len(missing)} files; first: {examples})"
        )
        if not skip_missing:
            raise EmoSetError(
                f"{message}. Restore the files, or leave those records out: "
                "data.skip_missing=true (train, eval, study), --skip-missing (emoset-peft "
                "data inspect/subset), skip_missing=True (load_emoset)"
            )
        log.warning("%s; skipped them (skip_missing=True)", message)
    folders = {
        posixpath.dirname(rel) for rec in records for rel in (rec.image_rel, rec.annotation_rel)
    }
    return _to_arrow(root, keep, label_map, split_path), folders


def _to_arrow(root: Path, kept: list[tuple], label_map: LabelMap, split_path: Path):
    """Column lists -> a pyarrow Table in the schema of :func:`emoset_features`."""
    import pyarrow as pa

    emotion_index = {name: i for i, name in enumerate(label_map.emotions)}
    vocab_index = {
        name: {value: i for i, value in enumerate(names)}
        for name, names in label_map.vocabs.items()
    }
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    odd: list[str] = []  # attribute values that are malformed or not in the vocabulary
    root_str = str(root)
    for (_index, emotion, image_id, image_rel, annotation_rel), annotation in kept:
        columns["image"].append(os.path.join(root_str, image_rel))
        columns["label"].append(emotion_index[emotion])
        columns["valence"].append(valence_of(emotion))
        columns["image_id"].append(image_id)
        for name in FLOAT_ATTRIBUTES:
            value = annotation.get(name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not is_number:
                odd.append(f"{annotation_rel}: {name}={value!r}")
                value = None
            columns[name].append(None if value is None else float(value))
        objects = annotation.get("object")
        if isinstance(objects, str):
            objects = [objects]
        elif not isinstance(objects, list):
            objects = []
        columns["object"].append([str(item) for item in objects])
        for name in CATEGORICAL_ATTRIBUTES:
            value = annotation.get(name)
            if value is not None and not isinstance(value, str):
                odd.append(f"{annotation_rel}: {name}={value!r}")
                value = None
            if name in vocab_index:
                code = vocab_index[name].get(value, -1)
                if code < 0 and value is not None:
                    odd.append(f"{annotation_rel}: {name}={value!r} not in info.json")
                columns[name].append(code)
            else:
                columns[name].append(value)
    if odd:
        log.warning(
            "%s: %d attribute values are malformed or not in info.json's vocabulary and "
            "were stored as missing (first: %s)",
            split_path,
            len(odd),
            "; ".join(odd[:_EXAMPLES]),
        )

    schema = emoset_features(label_map).arrow_schema
    n = len(columns["image"])
    arrays = {
        name: pa.array(values, type=schema.field(name).type)
        for name, values in columns.items()
        if name != "image"
    }
    arrays["image"] = pa.StructArray.from_arrays(
        [pa.nulls(n, pa.binary()), pa.array(columns["image"], pa.string())], names=["bytes", "path"]
    )
    return pa.table([arrays[name] for name in schema.names], schema=schema)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _names_in_index_order(entry: Any, path: Path, key: str) -> tuple[str, ...]:
    """``{"label2idx": {name: i}}`` -> names ordered by i (which must be 0..n-1)."""
    mapping = entry.get("label2idx") if isinstance(entry, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise EmoSetError(
            f"{path}: '{key}' must hold a non-empty 'label2idx' object "
            "{name: index}; restore info.json from the EmoSet download"
        )
    try:
        order = sorted(mapping, key=lambda name: int(mapping[name]))
        indices = sorted(int(i) for i in mapping.values())
    except (TypeError, ValueError):
        raise EmoSetError(f"{path}: '{key}.label2idx' values must be integers") from None
    if indices != list(range(len(mapping))):
        raise EmoSetError(
            f"{path}: '{key}.label2idx' indices must be 0..{len(mapping) - 1} "
            "without gaps or repeats"
        )
    return tuple(order)
