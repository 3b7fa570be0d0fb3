"""Resumable checkpoints that a kill can never leave half-written and that never run code.

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed to ``step_N`` only when
complete; then ``checkpoints/latest`` (a one-line text file) is replaced atomically. A reader
follows ``latest`` only, so a kill at any moment leaves the previous checkpoint usable.

Everything in it is the toolkit's own format, readable without unpickling (a planted pickle in
the folder is never opened): tensors in safetensors, numbers in JSON.

    trainable.safetensors        trainable weights (the frozen ones come from the backbone)
    optimizer.safetensors/.json  per-parameter state tensors / param groups and scalar state
    scheduler.json               the LR scheduler's state_dict (plain numbers)
    scaler.json                  fp16 loss scaler, when there is one
    rng_rank<R>.safetensors      process R's torch CPU/CUDA generator states (uint8 tensors);
                                 python/numpy ``random`` states as JSON in its metadata
    best_trainable.safetensors   weights of the best evaluation so far, if any
    trainer_state.json           the loop's own state: engine/loop_state.LoopState as JSON
    checkpoint.json              written last: format, step, processes, size + sha256 per file

Under DDP every rank writes and reads its own RNG file; rank 0 writes the shared files. Loading
checks every file against ``checkpoint.json`` first, so a damaged file stops the resume with
one line instead of resuming inexactly.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emoset_peft.engine.loop_state import (
    LoopState,
    load_trainable_state,
    trainable_state,
)
from emoset_peft.errors import EmoSetError
from emoset_peft.utils.io import atomic_write_text
from emoset_peft.utils.storage import is_disk_full

FORMAT = 1
MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "trainable.safetensors"
BEST_WEIGHTS = "best_trainable.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_META = "optimizer.safetensors", "optimizer.json"
SCHEDULER, SCALER = "scheduler.json", "scaler.json"
STEP_NAME = re.compile(r"^step_\d+$")


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint ``folder/latest`` names; None when there is no pointer.

    A pointer whose target is gone or damaged is still returned (``load_checkpoint`` then says
    what is wrong) rather than read as "no checkpoint", which would restart the run silently.
    """
    pointer = folder / "latest"
    try:
        name = pointer.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return pointer
    return folder / name if STEP_NAME.match(name) else pointer


def save_checkpoint(
    accelerator,
    folder: Path,
    step: int,
    trainer_state: LoopState,
    best_state: dict[str, torch.Tensor] | None,
    *,
    model,
    optimizer,
    scheduler,
    keep: int = 2,
) -> Path:
    """Save weights/optimizer/scheduler/RNG (every rank's) plus the loop's own state.

    A full disk raises one EmoSetError line on every rank and leaves no ``.tmp-step_N``; the
    previous checkpoint stays the one ``latest`` names.
    """
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp-step_{step:08d}"
    main = accelerator.is_main_process
    failure = None
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _agree(accelerator, None, tmp, final)
        _save_rng(accelerator, tmp / rng_file(accelerator.process_index))
        if main:
            _save_shared(tmp, trainer_state, best_state, model, optimizer, scheduler, accelerator)
    except Exception as err:
        if not is_disk_full(err):
            raise
        failure = err
    _agree(accelerator, failure, tmp, final)
    if main:
        try:
            _write_manifest(tmp, step, accelerator.num_processes)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            atomic_write_text(folder / "latest", final.name + "\n")
        except Exception as err:
            if not is_disk_full(err):
                raise
            if latest_checkpoint(folder) != final:
                shutil.rmtree(final, ignore_errors=True)
            failure = err
        else:
            for old in sorted(folder.glob("step_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _agree(accelerator, failure, tmp, final)
    return final


def load_checkpoint(
    accelerator, path: Path, *, model, optimizer, scheduler
) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    """Restore everything ``save_checkpoint`` wrote; returns (loop state, best weights or None)."""
    files = _verified_files(path, accelerator)
    with _reading(path, WEIGHTS):
        weights = load_file(str(path / WEIGHTS))
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            raise ValueError(
                f"it holds {len(weights)} tensors, this model trains {len(expected)} others"
            )
        load_trainable_state(model, weights)
    with _reading(path, OPTIMIZER_TENSORS):
        optimizer.load_state_dict(_optimizer_state(path, optimizer))
    with _reading(path, SCHEDULER):
        scheduler.load_state_dict(json.loads((path / SCHEDULER).read_text()))
    if accelerator.scaler is not None and SCALER in files:
        with _reading(path, SCALER):
            accelerator.scaler.load_state_dict(json.loads((path / SCALER).read_text()))
    with _reading(path, rng_file(accelerator.process_index)):
        _load_rng(path / rng_file(accelerator.process_index))
    with _reading(path, TRAINER_STATE):
        state = LoopState.from_json((path / TRAINER_STATE).read_text())
    best = None
    if BEST_WEIGHTS in files:
        with _reading(path, BEST_WEIGHTS):
            best = load_file(str(path / BEST_WEIGHTS))
    return state, best


# -- writing ------------------------------------------------------------------------------------


def _save_shared(
    tmp: Path, trainer_state, best_state, model, optimizer, scheduler, accelerator
) -> None:
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    tensors, meta = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(tmp / OPTIMIZER_TENSORS))
    (tmp / OPTIMIZER_META).write_text(json.dumps(meta))
    (tmp / SCHEDULER).write_text(json.dumps(scheduler.state_dict()))
    if accelerator.scaler is not None:
        (tmp / SCALER).write_text(json.dumps(accelerator.scaler.state_dict()))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / BEST_WEIGHTS))
    (tmp / TRAINER_STATE).write_text(trainer_state.to_json())


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch's optimizer state_dict -> ({"<param index>.<name>": tensor}, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _save_rng(accelerator, path: Path) -> None:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if accelerator.device.type == "cuda":
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    name, keys, position, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([name, keys.tolist(), position, has_gauss, cached]),
    }
    save_file(tensors, str(path), metadata=metadata)


def _write_manifest(tmp: Path, step: int, world_size: int) -> None:
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(tmp.iterdir())
        if path.is_file()
    }
    manifest = {"format": FORMAT, "step": step, "world_size": world_size, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _agree(accelerator, failure: BaseException | None, tmp: Path, final: Path) -> None:
    """A barrier that also shares failures: if any rank's disk was full, every rank raises."""
    reason = None
    if failure is not None:
        reason = (
            failure.strerror if isinstance(failure, OSError) and failure.strerror else str(failure)
        )
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        reasons = [r for r in gather_object([reason]) if r is not None]
        reason = reasons[0] if reasons else None
    if reason is None:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    previous = latest_checkpoint(final.parent)
    kept = (
        f"the previous checkpoint {previous.name} is intact: free space and pass "
        "resume=true to continue from it"
        if previous is not None and previous != final
        else "free space (or choose another output_dir) and start again"
    )
    raise EmoSetError(
        f"the disk is full while writing checkpoint {final} ({reason}); nothing "
        f"of it was kept; {kept}"
    )


# -- reading ------------------------------------------------------------------------------------


class _reading:
    """Any failure while reading ``name`` becomes the one 'damaged checkpoint' line."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name

    def __enter__(self):
        return self

    def __exit__(self, kind, err, _traceback):
        if err is None or isinstance(err, EmoSetError):
            return False
        if isinstance(err, Exception):
            raise _damaged(self.path, self.name, f"cannot be loaded ({err})") from None
        return False


def _verified_files(path: Path, accelerator) -> dict:
    if not STEP_NAME.match(path.name):
        raise _damaged(path, "", "does not name a checkpoint folder (step_N)")
    if not path.is_dir():
        raise _damaged(path, "", "is named by 'latest' but does not exist")
    if not (path / MANIFEST).exists() and (path / TRAINER_STATE).exists():
        raise EmoSetError(
            f"checkpoint {path} was written by an older emoset-peft (accelerate "
            "pickles, which are no longer loaded since loading them can run code); "
            "pass overwrite=true to start the run again"
        )
    with _reading(path, MANIFEST):
        manifest = json.loads((path / MANIFEST).read_text())
        files, world = manifest["files"], manifest["world_size"]
        if manifest["format"] != FORMAT:
            raise ValueError(f"format {manifest['format']}, this version reads {FORMAT}")
    if world != accelerator.num_processes:
        raise EmoSetError(
            f"checkpoint {path} was written by {world} process(es), this run has "
            f"{accelerator.num_processes}; resume with {world}, or pass "
            "overwrite=true to start again"
        )
    needed = [
        WEIGHTS,
        OPTIMIZER_TENSORS,
        OPTIMIZER_META,
        SCHEDULER,
        TRAINER_STATE,
        rng_file(accelerator.process_index),
    ]
    for name in needed:
        if name not in files:
            raise _damaged(path, name, f"is not listed in {MANIFEST}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise _damaged(path, name, "is missing")
        if file.stat().st_size != expected["bytes"]:
            raise _damaged(
                path,
                name,
                f"has {file.stat().st_size} bytes, {expected['bytes']} "
                "were written (truncated or replaced)",
            )
        if _sha256(file) != expected["sha256"]:
            raise _damaged(path, name, "does not match the checksum written with it")
    return files


def _optimizer_state(path: Path, optimizer) -> dict:
    meta = json.loads((path / OPTIMIZER_META).read_text())
    state: dict[int, dict] = {}
    for key, tensor in load_file(str(path / OPTIMIZER_TENSORS)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = meta["param_groups"]
    for saved, current in zip(groups, optimizer.param_groups):
        for key, value in saved.items():  # JSON has no tuples: betas=(0.9, 0.999) and the like
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _load_rng(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (no __iter__)
    version, internal, gauss = json.loads(metadata["python"])
    name, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _damaged(checkpoint: Path, name: str, problem: str) -> EmoSetError:
    """``checkpoint/name`` is unusable: name it and the checkpoints that could be used instead.

    ``name`` is "" for the checkpoint folder itself (or the ``latest`` pointer)."""
    folder = checkpoint.parent
    others = sorted(p.name for p in folder.glob("step_*") if p != checkpoint and p.is_dir())
    if others:
        fix = (
            f"resume from an older checkpoint (write '{others[-1]}' into "
            f"{folder / 'latest'}) or pass overwrite=true to start again"
        )
    else:
        fix = "pass overwrite=true to start the run again"
    what = f"checkpoint file {checkpoint / name}" if name else f"{checkpoint}"
    return EmoSetError(f"{what} {problem}; {fix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
