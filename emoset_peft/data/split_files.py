"""EmoSet's split files (train.json, val.json, test.json) and per-image annotation files, read
and checked record by record: one ``EmoSetError`` line naming the file and record for anything
that cannot be used."""

from __future__ import annotations

import json
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from emoset_peft.errors import EmoSetError

# "image/awe/awe_06628.jpg": relative, no "." or ".." parts, no doubled or backslash separators.
_PLAIN_RELATIVE = re.compile(r"^(?![A-Za-z]:)(?:[^/\\.][^/\\]*)(?:/[^/\\.][^/\\]*)*$")


class Record(NamedTuple):
    index: int  # 0-based position in the split file, for error messages
    emotion: str
    image_id: str
    image_rel: str  # normalised, relative to ROOT
    annotation_rel: str


def read_split_records(split_path: Path, emotions: tuple[str, ...]) -> list[Record]:
    """Validate a split file and return its records with normalised relative paths."""
    data = read_json_file(split_path)
    if not isinstance(data, list):
        raise EmoSetError(
            f"{split_path}: expected a JSON list of records, got "
            f"{type(data).__name__}; restore it from the EmoSet download"
        )
    known = set(emotions)
    out = []
    for index, record in enumerate(data):
        where = f"{split_path}: record {index}"
        if not isinstance(record, list) or len(record) not in (3, 4):
            raise EmoSetError(
                f"{where} is {record!r}; expected [emotion, image_path, annotation_path] or "
                "[emotion, image_id, image_path, annotation_path]"
            )
        if len(record) == 3:
            emotion, image_rel, annotation_rel = record
            image_id = None
        else:
            emotion, image_id, image_rel, annotation_rel = record
        if emotion not in known:
            raise EmoSetError(
                f"{where}: emotion {emotion!r} is not in the label map "
                f"{list(emotions)}; fix the record or info.json"
            )
        image_rel = _checked_relative(image_rel, where, "image path")
        annotation_rel = _checked_relative(annotation_rel, where, "annotation path")
        if image_id is None:
            image_id = posixpath.splitext(posixpath.basename(image_rel))[0]
        elif not isinstance(image_id, str) or not image_id:
            raise EmoSetError(f"{where}: image_id {image_id!r} must be a non-empty string")
        out.append(Record(index, emotion, image_id, image_rel, annotation_rel))
    return out


def _checked_relative(path: Any, where: str, what: str) -> str:
    """A record path, normalised; refuses absolute paths and paths that climb out of ROOT."""
    if not isinstance(path, str) or not path:
        raise EmoSetError(f"{where}: {what} {path!r} must be a non-empty string")
    if not _PLAIN_RELATIVE.match(path):  # the common case needs no normalisation
        posix = path.replace("\\", "/")
        if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
            raise EmoSetError(
                f"{where}: {what} {path!r} is absolute; paths must be relative to "
                "the EmoSet root (e.g. image/awe/awe_06628.jpg)"
            )
        normal = posixpath.normpath(posix)
        if normal == ".." or normal.startswith("../"):
            raise EmoSetError(
                f"{where}: {what} {path!r} points outside the EmoSet root; paths "
                "must stay inside it (e.g. image/awe/awe_06628.jpg)"
            )
        return normal
    return path


def read_annotations(paths: list[str], threads: int = 0) -> list[Any]:
    """Parsed JSON per path; None for a missing file, the exception for an unreadable one."""
    if threads <= 1 or len(paths) < 256:
        return [_read_annotation(path) for path in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(_read_annotation, paths, chunksize=512))


def _read_annotation(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    except OSError as err:  # a folder, no permission: reported with the record
        return err
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return err


def read_json_file(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise EmoSetError(f"{path} not found") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise EmoSetError(
            f"{path} is not valid JSON ({err}); restore it from the EmoSet download"
        ) from None
