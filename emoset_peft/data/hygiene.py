"""What an EmoSet index must not hide: records that repeat an image, images shared between splits,
and links out of the dataset folder.

Duplicates do not stop a load (the official lists have none; a hand-edited list may have a few
on purpose), but each kind gets one warning line at every load and ``emoset-peft data inspect``
lists them: an image in both train and test inflates the test score, a repeated record weighs an
image twice. An image counts as the same when its normalised path or its ``image_id`` is; files
with the same bytes under different names are not looked for (hashing 118,102 images would cost
minutes per index build).

Links: a record path may not climb out of the root with ``../``, and a symlink inside the root
may not either, unless the user says so (``data.follow_symlinks=true``).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from emoset_peft.errors import EmoSetError

log = logging.getLogger(__name__)

_EXAMPLES = 3  # image ids a duplicate message lists


@dataclass(frozen=True)
class Duplicates:
    """One kind of duplicate: repeats within one split file, or images two split files share."""

    files: tuple[str, ...]  # one split file (repeats) or two (shared images)
    count: int  # repeated records (one file), or images of the second file also in the first
    examples: tuple[str, ...]  # a few image ids

    def message(self) -> str:
        examples = ", ".join(self.examples)
        if len(self.files) == 1:
            return (
                f"{self.files[0]} lists {self.count} image(s) more than once (same path or "
                f"image_id), e.g. {examples}; each copy is trained on or scored again: "
                "remove the repeated records"
            )
        first, second = self.files
        return (
            f"{first} and {second} share {self.count} image(s) (same path or image_id), "
            f"e.g. {examples}; a score on images the model trained on (or was selected on) "
            "overstates it: remove them from one of the two files"
        )


def find_duplicates(dataset: Mapping, split_files: Mapping[str, str]) -> list[Duplicates]:
    """Repeated records per split and images shared by each pair of splits (path or image_id).

    ``dataset`` maps split names to ``datasets.Dataset`` splits of :func:`load_emoset`;
    ``split_files`` maps the same names to the split file names used in the messages.
    """
    keys = {split: _image_keys(dataset[split]) for split in split_files if split in dataset}
    found = []
    for split, rows in keys.items():
        seen_paths, seen_ids, repeats = set(), set(), []
        for path, image_id in rows:
            if path in seen_paths or image_id in seen_ids:
                repeats.append(image_id)
            seen_paths.add(path)
            seen_ids.add(image_id)
        if repeats:
            found.append(
                Duplicates(
                    (split_files[split],), len(repeats), tuple(dict.fromkeys(repeats))[:_EXAMPLES]
                )
            )
    splits = list(keys)
    for i, first in enumerate(splits):
        paths = {path for path, _ in keys[first]}
        ids = {image_id for _, image_id in keys[first]}
        for second in splits[i + 1 :]:
            shared = list(
                dict.fromkeys(
                    image_id for path, image_id in keys[second] if path in paths or image_id in ids
                )
            )
            if shared:
                found.append(
                    Duplicates(
                        (split_files[first], split_files[second]),
                        len(shared),
                        tuple(shared[:_EXAMPLES]),
                    )
                )
    return found


def warn_about_duplicates(root: Path, found: list[Duplicates]) -> None:
    for duplicates in found:
        log.warning("EmoSet at %s: %s", root, duplicates.message())


def _image_keys(split) -> list[tuple[str, str]]:
    """(image path, image_id) per row, read as Arrow columns (no image decoding)."""
    import pyarrow.compute as pc

    table = split.select_columns(["image", "image_id"]).with_format("arrow")[:]
    paths = pc.struct_field(table.column("image"), "path").to_pylist()
    return list(zip(paths, table.column("image_id").to_pylist()))


# ---------------------------------------------------------------------------------------------
# Files and links


def scan_folders(root: Path, relative_paths: Iterable[str]) -> tuple[set[str], dict[str, str]]:
    """(the relative paths that exist, {relative path: target} for those that leave ``root``).

    One directory listing per folder rather than one stat per file (118,102 files); only
    symlinked entries and the folders themselves are resolved. ``root`` must be resolved.
    """
    by_folder: dict[str, set[str]] = {}
    for rel in relative_paths:
        folder, name = posixpath.split(rel)
        by_folder.setdefault(folder, set()).add(name)
    root_str = str(root)
    present: set[str] = set()
    leaving: dict[str, str] = {}
    for folder, wanted in by_folder.items():
        folder_path = os.path.join(root_str, folder)
        try:
            with os.scandir(folder_path) as entries:
                listed = {entry.name: entry.is_symlink() for entry in entries}
        except (FileNotFoundError, NotADirectoryError):
            continue
        folder_outside = not _inside(os.path.realpath(folder_path), root_str)
        for name in wanted & listed.keys():
            rel = posixpath.join(folder, name) if folder else name
            present.add(rel)
            if folder_outside or listed[name]:
                target = os.path.realpath(os.path.join(folder_path, name))
                if not _inside(target, root_str):
                    leaving[rel] = target
    return present, leaving


def refuse_links_leaving_root(
    root: Path, split_path: Path, records, leaving: Mapping[str, str]
) -> None:
    """EmoSetError naming the first record whose image or annotation links out of ``root``."""
    hits = [
        (rec.index, what, rel)
        for rec in records
        for what, rel in (("image", rec.image_rel), ("annotation", rec.annotation_rel))
        if rel in leaving
    ]
    if not hits:
        return
    index, what, rel = hits[0]
    more = f" ({len(hits)} such files in this split)" if len(hits) > 1 else ""
    raise EmoSetError(
        f"{split_path}: record {index}: {what} {rel} is a symlink to {leaving[rel]}, outside the "
        f"EmoSet root {root}{more}; links out of the dataset folder are refused like ../ paths. "
        "Copy the files into the root, or set data.follow_symlinks=true (data commands: "
        "--follow-symlinks; load_emoset(..., follow_symlinks=True)) if the links are intended"
    )


def folder_stamps(root: Path, folders: Iterable[str]) -> dict[str, list[int] | None]:
    """``lstat`` (inode, mtime) of each folder and its parents below ``root``, for the index cache.

    Replacing a file by a symlink changes its folder's mtime; replacing a folder by a link
    changes its parent's mtime and its own inode. So an unchanged set of stamps means no link
    appeared since the links were checked (16 or so stats for EmoSet, not 118,102).
    """
    every = set()
    for folder in folders:
        while folder and folder not in every:
            every.add(folder)
            folder = posixpath.dirname(folder)
    return {folder: _stamp(root, folder) for folder in sorted(every)}


def new_link_leaving_root(root: Path, stamps: Mapping) -> str | None:
    """A symlink out of ``root`` in a folder that changed since ``stamps`` were taken, if any.

    Only changed folders are listed, so a warm load stays a few stats; a file deleted or added
    without a link does not make the index stale (as before: the cache key is the split files).
    """
    root_str = str(root)
    for folder, stamp in stamps.items():
        if _stamp(root, folder) == stamp:
            continue
        try:
            with os.scandir(root / folder) as entries:
                links = [entry.path for entry in entries if entry.is_symlink()]
        except OSError:
            continue
        for link in links:
            if not _inside(os.path.realpath(link), root_str):
                return link
    return None


def _stamp(root: Path, folder: str) -> list[int] | None:
    try:
        stat = os.lstat(root / folder)
    except OSError:
        return None
    return [stat.st_ino, stat.st_mtime_ns]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
