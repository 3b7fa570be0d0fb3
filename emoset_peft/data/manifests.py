"""``data.manifest=PATH``: train on exactly the image ids of a manifest.

PATH may be
    - a manifest file: ``emoset-peft data subset ... --out FILE`` or a run's
      ``train_manifest.json`` (the same format): used as given;
    - a run folder (it holds ``train_manifest.json``): that run's training images, as given;
    - any other folder (an earlier study's folder, its ``cells/``, a folder of ``data subset``
      outputs): the manifest made for this run's ``data.per_class`` (or ``data.fraction``) and
      ``data.data_seed``, found among ``*.json``, ``*/train_manifest.json`` and
      ``cells/*/train_manifest.json``.
In a study every training cell must get the manifest made for its own k and data seed
(``find_manifest(..., match=True)``, checked for the whole grid by ``study/validate.py``), so
a study reuses an earlier study's subsets by pointing
``data.manifest`` at that study's folder. The manifest's sha256 of its ids is checked, and every
id must be in the train split of ``data.root``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emoset_peft.config import DataConfig
from emoset_peft.data.subsets import MANIFEST_FORMAT, read_manifest
from emoset_peft.errors import EmoSetError

RUN_MANIFEST = "train_manifest.json"
_PATTERNS = ("*.json", f"*/{RUN_MANIFEST}", f"cells/*/{RUN_MANIFEST}")
_index_cache: dict[tuple, dict[tuple, list[Path]]] = {}


def wanted_key(data: DataConfig) -> tuple:
    """What subset a run asks for: (per_class or fraction, value, data seed)."""
    if data.fraction is not None:
        return ("fraction", float(data.fraction), data.data_seed)
    return ("per_class", data.per_class, data.data_seed)


def manifest_key(manifest: dict[str, Any]) -> tuple | None:
    """The subset a manifest was made for, from its ``args`` (None: it does not say)."""
    args = manifest.get("args")
    if not isinstance(args, dict) or "seed" not in args:
        return None
    if args.get("fraction") is not None:
        return ("fraction", float(args["fraction"]), args["seed"])
    if args.get("per_class") is not None:
        return ("per_class", args["per_class"], args["seed"])
    return None


def describe(key: tuple) -> str:
    kind, value, seed = key
    return f"{kind}={value}, data seed {seed}"


def find_manifest(data: DataConfig, *, match: bool = False) -> Path | None:
    """The manifest file a run trains on (None: no ``data.manifest``, or k = 0).

    ``match=True`` (a study cell) requires a file or run folder to have been made for the run's
    k and data seed too, as a searched folder always must.
    """
    if data.manifest is None or data.per_class == 0:
        return None
    path = Path(data.manifest)
    if path.is_dir() and (path / RUN_MANIFEST).is_file():
        path = path / RUN_MANIFEST
    if path.is_file():
        if match:
            key = manifest_key(read_manifest(path))
            if key != wanted_key(data):
                made = describe(key) if key else "no per_class/fraction and seed"
                raise EmoSetError(
                    f"data.manifest={data.manifest}: {path} was made for {made}, but this cell "
                    f"wants {describe(wanted_key(data))}; point data.manifest at a folder "
                    "holding a manifest for every cell (e.g. an earlier study's folder)"
                )
        return path
    if not path.is_dir():
        raise EmoSetError(
            f"data.manifest={data.manifest} does not exist; pass a manifest file (emoset-peft "
            "data subset ROOT --per-class K --out FILE), a run folder or a study folder"
        )
    index = _index(path)
    found = index.get(wanted_key(data), [])
    if not found:
        made = sorted({describe(key) for key in index}) or ["none"]
        raise EmoSetError(
            f"data.manifest={data.manifest} holds no manifest made for "
            f"{describe(wanted_key(data))} (it has: {'; '.join(made)}); write one with "
            "emoset-peft data subset, or pick the folder of a run or study that drew it"
        )
    digests = {_read_json(p).get("sha256"): p for p in found}
    if len(digests) > 1:
        first, second = list(digests.values())[:2]
        raise EmoSetError(
            f"data.manifest={data.manifest}: {first} and {second} were both made for "
            f"{describe(wanted_key(data))} but list different images; point "
            "data.manifest at one of them"
        )
    return found[0]


def training_manifest(data: DataConfig) -> tuple[Path, dict] | None:
    """(path, checked manifest) of the run's training images, or None without one."""
    path = find_manifest(data)
    if path is None:
        return None
    manifest = read_manifest(path)  # checks the sha256 of the ids
    if manifest.get("split") not in (None, "train"):
        raise EmoSetError(
            f"data.manifest: {path} lists {manifest['split']} images; training takes a "
            "manifest of the train split (emoset-peft data subset ROOT --split train ...)"
        )
    return path, manifest


def check_manifest_source(data: DataConfig) -> None:
    """Before anything runs: ``data.manifest`` names a readable manifest for this run."""
    training_manifest(data)


def _index(folder: Path) -> dict[tuple, list[Path]]:
    """The manifests under ``folder`` by the subset they were made for (cached per process:
    a study's cells all search the same folder)."""
    files = sorted({p for pattern in _PATTERNS for p in folder.glob(pattern) if p.is_file()})
    stamp = (str(folder.resolve()), tuple((str(p), _mtime(p)) for p in files))
    if stamp not in _index_cache:
        index: dict[tuple, list[Path]] = {}
        for path in files:
            content = _read_json(path)
            if content.get("format") == MANIFEST_FORMAT and (key := manifest_key(content)):
                index.setdefault(key, []).append(path)
        _index_cache.clear()  # one folder at a time is all a study needs
        _index_cache[stamp] = index
    return _index_cache[stamp]


def _mtime(path: Path) -> int:
    return os.stat(path).st_mtime_ns


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # not a manifest; a chosen one is read again with read_manifest's checks
    return content if isinstance(content, dict) else {}
