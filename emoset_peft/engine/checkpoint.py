"""Resumable checkpoints that a kill can never leave half-written.

A checkpoint is written into ``checkpoints/.tmp-step_N`` and renamed to ``step_N`` only when
complete; then ``checkpoints/latest`` (a one-line text file) is replaced atomically. A reader
follows ``latest`` only, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from emoset_peft.utils.io import atomic_write_text

TRAINER_STATE = "trainer_state.json"
BEST_WEIGHTS = "best_trainable.safetensors"


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "latest"
    if not pointer.exists():
        return None
    path = folder / pointer.read_text().strip()
    return path if (path / TRAINER_STATE).exists() else None


def save_checkpoint(accelerator, folder: Path, step: int, trainer_state: dict,
                    best_state: dict[str, torch.Tensor] | None, keep: int = 2) -> Path:
    """Save model/optimizer/scheduler/RNG (every rank's) plus the loop's own state."""
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / BEST_WEIGHTS))
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(folder / "latest", final.name + "\n")
        for old in sorted(folder.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[dict, dict[str, torch.Tensor] | None]:
    accelerator.load_state(str(path))
    state = json.loads((path / TRAINER_STATE).read_text())
    best = path / BEST_WEIGHTS
    return state, (load_file(str(best)) if best.exists() else None)
