"""The run folder: what is in it, and the rule that an existing run is never overwritten silently.

Layout of ``output_dir``:
    config.yaml            resolved config (with its fingerprint)
    provenance.json        versions, git commit, host, command line
    train_manifest.json    the image ids this run trained on
    checkpoints/           resumable states (``latest`` names the newest complete one)
    adapter/               the trained adapter + head (a peft folder, or this toolkit's format)
    metrics.json           validation (selected checkpoint) and test metrics, parameter counts,
                           "selection" (mode, images, best step, evaluations), test_evaluations (1)
    predictions_test.csv   image_id, label, predicted, one probability per emotion
    selection/step_<N>.csv the selection set's predictions at each evaluation (step N, zero-padded
                           to 6 digits; same columns as predictions_test.csv), so another selection
                           rule can be applied later without retraining; absent with
                           data.selection=none
    log.jsonl              one line per evaluation

A study cell (``<study>/cells/<name>/``) keeps the same files, checkpoints/ aside.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from emoset_peft.config import RunConfig
from emoset_peft.engine.checkpoint import latest_checkpoint
from emoset_peft.errors import EmoSetError


def prepare_run_dir(config: RunConfig) -> tuple[Path, Path | None]:
    """Create or reuse the output folder. Returns (folder, checkpoint to resume from or None)."""
    out = Path(config.output_dir)
    occupied = out.exists() and any(out.iterdir())
    if occupied and _never_got_going(out):
        # An earlier attempt stopped before its first checkpoint: nothing in it can be lost.
        shutil.rmtree(out)
        occupied = False
    if not occupied:
        out.mkdir(parents=True, exist_ok=True)
        return out, None
    if config.overwrite:
        if not (out / "config.yaml").exists():
            raise EmoSetError(f"{out} is not empty and holds no emoset-peft run; refusing to delete "
                              "it even with overwrite=true: pick another output_dir")
        shutil.rmtree(out)
        out.mkdir(parents=True)
        return out, None
    if not config.resume:
        state = "a finished run" if (out / "metrics.json").exists() else "a run"
        raise EmoSetError(f"{out} already holds {state}; pass resume=true to continue it, "
                          "overwrite=true to replace it, or another output_dir")
    if (out / "metrics.json").exists():
        raise EmoSetError(f"{out} holds a finished run (metrics.json exists); nothing to resume. "
                          "Pass overwrite=true to run it again")
    saved = out / "config.yaml"
    if saved.exists():
        first_line = saved.read_text().splitlines()[0]
        if config.fingerprint() not in first_line:
            raise EmoSetError(f"{saved} was written by a different config; resume needs the same "
                              "recipe and overrides (or pass overwrite=true)")
    return out, latest_checkpoint(out / "checkpoints")


def _never_got_going(out: Path) -> bool:
    names = {path.name for path in out.iterdir()}
    return bool(names) and names <= {"config.yaml", "provenance.json", "train_manifest.json",
                                     "log.jsonl", "selection", "checkpoints"} and \
        latest_checkpoint(out / "checkpoints") is None and (out / "config.yaml").exists()


def read_saved_config(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())
