"""``emoset-peft cache {ls,clear}``: see and free what the caches hold.

    emoset-peft cache ls [--cache-dir DIR]                      entries, sizes, last use, total
    emoset-peft cache clear [--older-than DAYS] [KEY ...]       remove entries (all by default)

Two kinds of entry live under the cache folder (``$EMOSET_PEFT_CACHE``, default
``~/.cache/emoset_peft``): the EmoSet index (``<root name>-<key>/``, Arrow files) and decoded
images (``decoded/<key>.npy`` + ``.json``, one per split and resolution). Temp files of
processes that no longer run are listed and cleared too; those of running ones are left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Entry:
    kind: str  # "decoded", "features", "index" or "temp"
    key: str
    what: str  # split, dataset root or why it is there
    images: int | None
    resolution: int | None
    size: int  # bytes
    used: float  # seconds since the epoch: last use (decoded), creation (index)
    paths: list[Path] = field(default_factory=list)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="list or clear cached indexes and decoded images",
        description="List the EmoSet index and decoded-image cache entries with their sizes, "
        "or remove them.",
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    commands = parser.add_subparsers(dest="cache_command", metavar="{ls,clear}")
    ls = commands.add_parser(
        "ls",
        help="list cache entries, sizes and last use",
        description="List every cache entry and the total size.",
    )
    clear = commands.add_parser(
        "clear",
        help="remove cache entries (all, by key, or by age)",
        description="Remove the named entries (a unique prefix of KEY is enough), or all "
        "entries unused for DAYS days, or everything. They are rebuilt on next use.",
    )
    clear.add_argument("keys", nargs="*", metavar="KEY", help="entries to remove (see ls)")
    clear.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        default=None,
        help="only entries older than DAYS days (decoded images: since last "
        "use; index: since it was built)",
    )
    for sub in (ls, clear):
        sub.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="cache folder (default $EMOSET_PEFT_CACHE or ~/.cache/emoset_peft)",
        )
    ls.set_defaults(func=run_ls)
    clear.set_defaults(func=run_clear)


def run_ls(args) -> int:
    from emoset_peft.commands.data import _print_table
    from emoset_peft.utils.storage import fallback_cache_dir

    root = _root(args)
    found = entries(root)
    fallback = fallback_cache_dir()
    if fallback != root and entries(fallback):
        print(
            f"(entries written while a cache folder was not writable are in {fallback}: "
            f"emoset-peft cache ls --cache-dir {fallback})"
        )
    if not found:
        print(f"{root}: no cache entries")
        return 0
    rows = [
        [
            e.key,
            e.kind,
            e.what,
            "-" if e.images is None else f"{e.images:,}",
            "-" if e.resolution is None else f"{e.resolution}px",
            _mb(e.size),
            _age(e.used),
        ]
        for e in found
    ]
    rows.append(["total", "", "", "", "", _mb(sum(e.size for e in found)), ""])
    print(f"cache folder {root}")
    _print_table(["key", "kind", "split / source", "images", "resolution", "MB", "last used"], rows)
    return 0


def run_clear(args) -> int:
    from emoset_peft.errors import EmoSetError

    root = _root(args)
    found = entries(root)
    chosen = found
    if args.keys:
        chosen = []
        for key in args.keys:
            matches = [e for e in found if e.key == key] or [
                e for e in found if e.key.startswith(key)
            ]
            if len(matches) != 1:
                problem = "matches no entry" if not matches else f"matches {len(matches)} entries"
                raise EmoSetError(
                    f"cache key {key!r} {problem} in {root}; see "
                    "`emoset-peft cache ls` for the keys"
                )
            chosen.append(matches[0])
    if args.older_than is not None:
        if args.older_than < 0:
            raise EmoSetError(f"--older-than must be >= 0 days, got {args.older_than}")
        cutoff = time.time() - args.older_than * 86400
        chosen = [e for e in chosen if e.used < cutoff]
    for entry in chosen:
        for path in entry.paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    print(
        f"removed {len(chosen)} cache entr{'y' if len(chosen) == 1 else 'ies'} "
        f"({_mb(sum(e.size for e in chosen))} MB) from {root}; "
        f"{len(found) - len(chosen)} left"
    )
    return 0


def entries(root: Path) -> list[Entry]:
    """Every entry under ``root``: index folders, decoded arrays, temp files of dead writers."""
    from emoset_peft.data.decode_cache import SUBFOLDER
    from emoset_peft.utils.storage import is_temp_name, remove_stale_temps

    found = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            # ".tmp-*": an index being written right now (or by a killed process): not listed.
            if (
                not folder.name.startswith(".")
                and folder.is_dir()
                and (folder / "source.json").is_file()
            ):
                found.append(_index_entry(folder))
    decoded = root / SUBFOLDER
    if decoded.is_dir():
        for meta_path in sorted(decoded.glob("*.json")):
            if not is_temp_name(meta_path.name):
                found.append(_decoded_entry(meta_path))
        listed = {p for e in found for p in e.paths}
        for array in sorted(decoded.glob("*.npy")):  # an array whose writer died before its meta
            if array not in listed and not is_temp_name(array.name):
                found.append(
                    Entry(
                        "decoded",
                        array.stem,
                        "incomplete (no .json)",
                        None,
                        None,
                        array.stat().st_size,
                        array.stat().st_mtime,
                        [array],
                    )
                )
        for temp in remove_stale_temps(decoded, dry_run=True):
            found.append(
                Entry(
                    "temp",
                    temp.name,
                    "left by a process that no longer runs",
                    None,
                    None,
                    temp.stat().st_size,
                    temp.stat().st_mtime,
                    [temp],
                )
            )
    found += _feature_entries(root)
    return found


def _feature_entries(root: Path) -> list[Entry]:
    """The frozen-feature cache (data/feature_cache.py): one entry per split and backbone."""
    from emoset_peft.data.feature_cache import SUBFOLDER

    found = []
    for meta_path in sorted((root / SUBFOLDER).glob("*.json")):
        array = meta_path.with_suffix(".npy")
        try:
            meta = json.loads(meta_path.read_text())
            what, images = f"features of {meta.get('label') or '?'}", meta["shape"][0]
        except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
            what, images = "? (unreadable .json)", None
        paths = [meta_path, array]
        size = sum(p.stat().st_size for p in paths if p.exists())
        found.append(
            Entry(
                "features",
                meta_path.stem,
                what,
                images,
                None,
                size,
                meta_path.stat().st_mtime,
                paths,
            )
        )
    return found


def _index_entry(folder: Path) -> Entry:
    try:
        source = json.loads((folder / "source.json").read_text()).get("root", "?")
    except (OSError, ValueError, AttributeError):
        source = "? (unreadable source.json)"
    files = [p for p in folder.rglob("*") if p.is_file()]
    lock = folder.parent / ".locks" / f"{folder.name}.lock"
    return Entry(
        "index",
        folder.name,
        str(source),
        None,
        None,
        sum(p.stat().st_size for p in files),
        (folder / "source.json").stat().st_mtime,
        [folder, lock],
    )


def _decoded_entry(meta_path: Path) -> Entry:
    array = meta_path.with_suffix(".npy")
    try:
        meta = json.loads(meta_path.read_text())
        what = " ".join(filter(None, [meta.get("label"), meta.get("root")])) or "?"
        images, resolution = meta.get("count"), meta.get("resolution")
    except (OSError, ValueError, AttributeError):
        what, images, resolution = "? (unreadable .json)", None, None
    paths = [meta_path, array]
    return Entry(
        "decoded",
        meta_path.stem,
        what,
        images,
        resolution,
        sum(p.stat().st_size for p in paths if p.exists()),
        meta_path.stat().st_mtime,
        paths,
    )


def _root(args) -> Path:
    from emoset_peft.data.emoset import default_cache_dir

    return default_cache_dir(args.cache_dir)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f}"


def _age(when: float) -> str:
    seconds = max(0.0, time.time() - when)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit} ago"
    return "just now"
