"""Paths a user names for a command's output (``--out``, ``OUT``, ``output_dir``): the places
emoset-peft refuses to write (an EmoSet tree, a file it did not write) and one-line errors for
paths that cannot be written, checked before any slow work so that nothing is lost."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from emoset_peft.errors import EmoSetError

# Folders of an EmoSet tree (data/emoset.py): one of them beside a split file or info.json is
# the layout; split files alone are not, since users name their own manifests train.json.
_TREE_FOLDERS = ("image", "annotation")


def is_emoset_tree(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds the EmoSet layout (or is a synthetic tree, even half written)."""
    from emoset_peft.data.emoset import SPLIT_FILES
    from emoset_peft.data.synthetic import MARKER

    folder = Path(folder)
    try:
        if (folder / MARKER).is_file():
            return True
        if not any((folder / name).is_dir() for name in _TREE_FOLDERS):
            return False
        return any((folder / name).is_file() for name in ("info.json", *SPLIT_FILES.values()))
    except OSError:  # an unreadable folder: not provably a tree
        return False


def emoset_tree_holding(path: str | os.PathLike) -> Path | None:
    """The nearest EmoSet tree that is ``path`` or holds it (symlinks followed), else None."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if is_emoset_tree(folder):
            return folder
    return None


def refuse_dataset_output(path: str | os.PathLike, what: str) -> None:
    """EmoSetError (one line) when the output ``path`` (a file or folder, existing or not) is an
    EmoSet tree or lies inside one: dataset folders are read-only. ``what`` names the option
    (``--out``, ``output_dir``) in the message."""
    tree = emoset_tree_holding(path)
    if tree is not None:
        raise EmoSetError(
            f"{what} {path} is inside the EmoSet tree {tree}, and emoset-peft never writes into "
            "a dataset folder; pick a path outside it"
        )


def check_writable_place(path: str | os.PathLike, what: str) -> None:
    """EmoSetError (one line) unless ``path`` can be created: every existing folder above it is
    a folder and the nearest one is writable. Probes with a temporary file; creates nothing."""
    path = Path(path)
    base = path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise EmoSetError(f"{what} {path}: {base} is a file, not a folder; pick another path")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".probe-"):
            pass
    except OSError as err:
        raise EmoSetError(
            f"cannot write {what} {path}: {base} is not writable ({err.strerror or err}); "
            "pick a path in a writable folder"
        ) from None


def check_output_file(
    path: str | os.PathLike,
    what: str,
    *,
    ours: Callable[[Path], bool],
    kind: str,
    example: str,
) -> None:
    """The refusals for an output FILE, before any slow work: inside an EmoSet tree, a folder,
    under a file, in an unwritable folder, or an existing file that ``ours`` does not recognise
    as one this command wrote (``kind``: what it writes, e.g. "a predictions CSV"; ``example``:
    a file name to suggest when ``path`` is a folder)."""
    path = Path(path)
    refuse_dataset_output(path, what)
    if path.is_dir():
        raise EmoSetError(
            f"{what} {path} is a folder; name the file to write, e.g. {path / example}"
        )
    check_writable_place(path, what)
    if path.exists() and not ours(path):
        raise EmoSetError(
            f"{what} {path} exists and is not {kind}, so it is left as it is; pick another "
            "path, or move that file away"
        )


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, what: str):
    """An OSError while writing ``path`` (a disk that filled or turned read-only meanwhile)
    as one EmoSetError line; the write itself must be atomic so that nothing half-written stays."""
    try:
        yield
    except OSError as err:
        raise EmoSetError(
            f"cannot write {what} {path}: {err.strerror or err}; free space or pick another path"
        ) from None
