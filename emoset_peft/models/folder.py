"""A saved model folder: its file names, ``emoset_peft.json`` (the record) and the checks run
before any weights are read.

Every folder holds ``emoset_peft.json`` (format version, method, backbone, options, label map,
input spec); which other files it holds is the method's ``folder_files`` (models/methods.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from emoset_peft.errors import EmoSetError

FORMAT_VERSION = 1
RECORD_NAME = "emoset_peft.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_RECORD_KEYS = {
    "method": str,
    "kind": str,
    "backbone": str,
    "model_type": str,
    "id2label": dict,
    "options": dict,
    "input_spec": dict,
}


def check_adapter_folder(path: str | Path) -> None:
    """EmoSetError (one line naming the file) unless ``path`` is an intact saved folder.

    Reads only JSON and safetensors headers; pickle files (``*.bin``) are never opened, and a
    folder whose weights exist only as a pickle is refused rather than handed to a loader that
    might unpickle it. A missing ``emoset_peft.json`` is left to ``read_record`` (its message
    tells a plain PEFT folder apart).
    """
    from emoset_peft.models import methods

    path = Path(path)
    if not path.is_dir():
        raise EmoSetError(
            f"{path}: no such folder; give a folder written by "
            "EmoSetModel.save_pretrained (a run's adapter/ folder)"
        )
    record_file = path / RECORD_NAME
    if not record_file.is_file():
        return
    fix = "the folder is damaged: save the model again, or train the run again"
    record = _read_json_object(record_file, fix)
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return  # another format: read_record names it and says to upgrade
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise EmoSetError(f"{record_file}: missing {', '.join(missing)}; {fix}")
    wrong = [key for key, kind in _RECORD_KEYS.items() if not isinstance(record[key], kind)]
    if wrong:
        raise EmoSetError(f"{record_file}: {', '.join(wrong)} of the wrong type; {fix}")
    spec = methods.REGISTRY.get(record["method"])
    if spec is None:
        return  # read_record names the unknown method
    json_files, weights = spec.folder_files
    for name in json_files:
        _read_json_object(path / name, fix)
    weights_file = path / weights
    if not weights_file.is_file():
        pickles = sorted(p.name for p in path.glob("*.bin"))
        if pickles:
            raise EmoSetError(
                f"{weights_file} is missing and the folder holds only the pickle file(s) "
                f"{', '.join(pickles)}, which emoset_peft never loads (unpickling can run code); "
                "use a folder saved as safetensors by emoset_peft, from a source you trust"
            )
        raise EmoSetError(f"{weights_file} is missing; {fix}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise EmoSetError(
            f"{weights_file} is not a readable safetensors file ({err}); {fix}"
        ) from None


def _read_json_object(file: Path, fix: str) -> dict:
    try:
        content = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise EmoSetError(f"{file} is missing; {fix}") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = " ".join(str(err).split())
        raise EmoSetError(f"{file} is not valid JSON ({reason}); {fix}") from None
    if not isinstance(content, dict):
        raise EmoSetError(f"{file} must hold a JSON object; {fix}")
    return content


def read_record(path: str | Path) -> dict:
    """The ``emoset_peft.json`` of a saved folder, checked."""
    from emoset_peft.models import methods

    file = Path(path) / RECORD_NAME
    if not file.is_file():
        hint = (
            "it looks like a plain PEFT folder: load it with peft.PeftModel.from_pretrained(base, folder)"
            if (Path(path) / "adapter_config.json").is_file()
            else "give a folder written by EmoSetModel.save_pretrained"
        )
        raise EmoSetError(f"{path}: no {RECORD_NAME}; {hint}")
    record = json.loads(file.read_text())
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EmoSetError(
            f"{file}: format_version {version!r} is not one this emoset_peft reads "
            f"(<= {FORMAT_VERSION}); upgrade emoset_peft"
        )
    if record.get("method") not in methods.REGISTRY:
        raise EmoSetError(
            f"{file}: unknown method {record.get('method')!r}; methods: {', '.join(methods.METHODS)}"
        )
    return record


def saved_files(path: str | Path) -> set[str]:
    """The names of the files a save_pretrained wrote in ``path``, by its ``emoset_peft.json``:
    the record and its method's weights and JSON files (the card is kept or rewritten by its
    marker, deploy/card.py). Empty when the folder holds no record this toolkit reads."""
    from emoset_peft.models import methods

    try:
        record = json.loads((Path(path) / RECORD_NAME).read_bytes())
    except (OSError, ValueError):
        return set()
    spec = methods.REGISTRY.get(record.get("method")) if isinstance(record, dict) else None
    if spec is None:
        return set()
    json_files, weights = spec.folder_files
    return {RECORD_NAME, weights, *json_files}


def remove_stale(path: str | Path, before: set[str]) -> list[str]:
    """Delete the files of a previous save in ``path`` (``before``: its ``saved_files``) that the
    save just made did not write again; returns their names. Another method's leftovers would be
    loaded in its place: transformers reads a stale config.json + model.safetensors, plain peft
    a stale adapter_config.json. Other files in the folder are the user's and stay."""
    stale = sorted(before - saved_files(path))
    for name in stale:
        file = Path(path) / name
        if file.is_file():
            file.unlink()
    return stale
