"""The EmoSet index cache: Arrow IPC stream files (the format ``datasets`` itself memory-maps)
in a folder per (root, options, split-file stamps) outside the dataset folder.

An entry is written into a temporary folder and renamed into place, so a killed process never
leaves a half-written one; ``source.json`` records the root, the features, and the ``lstat``
stamps of the dataset folders, with which a symlink out of the root that appears after indexing
is caught at the next load (see :mod:`emoset_peft.data.hygiene`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from emoset_peft.data.hygiene import new_link_leaving_root
from emoset_peft.utils.locks import file_lock

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# Bump when the cached columns or their meaning change: old cache entries are then ignored.
CACHE_FORMAT_VERSION = 1


def cache_key(
    root: Path, files: Iterable[str], skip_missing: bool, follow_symlinks: bool = False
) -> str:
    """Hash of everything that decides the index without reading the annotation files:
    the options, and the size and mtime of ``files`` (info.json and the split files)."""
    import datasets

    parts = [
        f"format={CACHE_FORMAT_VERSION}",
        f"root={root}",
        f"skip_missing={skip_missing}",
        f"datasets={datasets.__version__.split('.')[0]}",
    ]
    if follow_symlinks:  # an index built while following links must not serve a refusing load
        parts.append("follow_symlinks=True")
    for name in files:
        try:
            stat = (root / name).stat()
            parts.append(f"{name}={stat.st_size}:{stat.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{name}=absent")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "root"


def write_cache(entry: Path, tables: dict, features, root: Path, key: str, folders: dict) -> None:
    """Write the tables into a temporary folder beside ``entry``, then rename it into place.

    A killed process leaves at most a ``.tmp-*`` folder, never a half-written entry. Entries for
    the same root with an older key (a split file changed) are removed afterwards.
    """
    import pyarrow as pa

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared by a group
        for split, table in tables.items():
            with (
                pa.OSFile(str(tmp / f"{split}.arrow"), "wb") as sink,
                pa.ipc.new_stream(sink, table.schema) as writer,
            ):
                writer.write_table(table, max_chunksize=10_000)
        (tmp / "source.json").write_text(
            json.dumps(
                {
                    "root": str(root),
                    "key": key,
                    "format": CACHE_FORMAT_VERSION,
                    "features": features.to_dict(),
                    "folders": folders,
                },
                indent=1,
            )
        )
        (tmp / "done").write_text("")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "done").is_file():  # not another process winning the same race
                raise
            log.debug("another process wrote %s first", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_stale_entries(entry, root)


@contextlib.contextmanager
def build_lock(entry: Path):
    """An exclusive lock file beside ``entry``, held while building it; without a writable
    cache folder, proceed unlocked (the writer warns about it)."""
    path = entry.parent / ".locks" / f"{entry.name}.lock"
    with contextlib.ExitStack() as held:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(path))
        except OSError:
            pass
        yield


def _prune_stale_entries(entry: Path, root: Path) -> None:
    """Delete cache entries of the same root that an earlier version of its split files made."""
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    for other in entry.parent.glob(prefix + "*"):
        if other == entry or other.name.startswith(".tmp-"):
            continue
        try:
            source = json.loads((other / "source.json").read_text())
        except (OSError, ValueError):
            continue
        if source.get("root") == str(root):
            shutil.rmtree(other, ignore_errors=True)
            (entry.parent / ".locks" / f"{other.name}.lock").unlink(missing_ok=True)


def open_cached(entry: Path, splits: Iterable[str]) -> datasets.DatasetDict | None:
    """The cached ``splits``, memory-mapped; None when there is no complete, readable entry."""
    import datasets

    if not (entry / "done").is_file():
        return None
    try:
        source = json.loads((entry / "source.json").read_text())
        if "folders" not in source:
            log.info("the EmoSet index %s predates the symlink check; indexing again", entry)
            return None
        link = new_link_leaving_root(Path(source["root"]), source["folders"])
        if link is not None:  # indexing decides whether a record uses it (and refuses it)
            log.info(
                "%s: a link out of the root appeared since the EmoSet index was built; "
                "indexing again",
                link,
            )
            return None
        features = datasets.Features.from_dict(source["features"])
        dataset = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_file(
                    str(entry / f"{split}.arrow"),
                    info=datasets.DatasetInfo(features=features),
                    split=datasets.NamedSplit(split),
                )
                for split in splits
            }
        )
    except (OSError, ValueError, KeyError, TypeError) as err:  # ArrowInvalid is a ValueError
        log.warning("the EmoSet index cache %s is damaged (%s); indexing again", entry, err)
        return None
    log.debug("EmoSet index from cache %s", entry)
    return dataset


def in_memory(tables: dict, features) -> datasets.DatasetDict:
    import datasets

    return datasets.DatasetDict(
        {
            split: datasets.Dataset(
                table,
                info=datasets.DatasetInfo(features=features),
                split=datasets.NamedSplit(split),
            )
            for split, table in tables.items()
        }
    )
