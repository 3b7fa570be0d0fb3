"""The run folder: what is in it, and the rules that protect it.

Layout of ``output_dir``:
    .emoset-peft-run       marker, written first: the run's fingerprint and the names below
    .emoset-peft.lock      held (flock) by the process running in the folder
    config.yaml            resolved config (with its fingerprint)
    provenance.json        versions, git commit, host, command line
    train_manifest.json    the image ids this run trained on
    checkpoints/           resumable states (``latest`` names the newest complete one)
    adapter/               the trained adapter + head (a peft folder, or this toolkit's format)
    metrics.json           written last (the run is finished once it exists): validation
                           (selected checkpoint) and test metrics, parameter counts, "selection"
                           (mode, images, best step, evaluations), test_evaluations (1)
    predictions_test.csv   image_id, label, predicted, one probability per emotion
    selection/step_<N>.csv the selection set's predictions at each evaluation (step N, zero-padded
                           to 6 digits; same columns as predictions_test.csv), so another selection
                           rule can be applied later without retraining; absent with
                           data.selection=none
    log.jsonl              one line per evaluation, and the mean training loss per log interval
    eval/                  what `emoset-peft eval` wrote (metrics_<split>.json, predictions_<split>.csv)
    emoset-peft/           tracker logs (train.report_to=tensorboard)

Rules: an existing run is never overwritten silently, and the toolkit removes only what it can
prove it wrote: a folder without the marker, or holding any name not listed above, is never
cleaned, not even with overwrite=true.

A study cell (``<study>/cells/<name>/``) keeps the same files, checkpoints/ aside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from emoset_peft.config import RunConfig
from emoset_peft.engine.checkpoint import latest_checkpoint
from emoset_peft.errors import EmoSetError
from emoset_peft.utils.io import atomic_write_json
from emoset_peft.utils.locks import LOCK_NAME, check_not_busy, folder_lock
from emoset_peft.utils.outputs import refuse_dataset_output

MARKER = ".emoset-peft-run"
WRITTEN = frozenset(
    {
        MARKER,
        LOCK_NAME,
        "config.yaml",
        "provenance.json",
        "train_manifest.json",
        "checkpoints",
        "adapter",
        "metrics.json",
        "predictions_test.csv",
        "log.jsonl",
        "selection",
        "emoset-peft",
        "eval",  # emoset-peft eval's outputs (engine/rescore.py)
        ".aim",  # accelerate's tensorboard run folder / aim repository
    }
)


def check_run_dir(config: RunConfig) -> str:
    """The refusals of ``prepare_run_dir``, read-only: call before any slow setup. Returns the
    plan: "finish" (resume=true on a finished run: only its finishing steps are redone, see
    ``engine.recipe.finish_run``), else what ``prepare_run_dir`` will do."""
    return _plan(config)


@contextlib.contextmanager
def locked_run_dir(config: RunConfig):
    """Create ``output_dir`` if needed and hold its lock for the ``with`` block."""
    out = Path(config.output_dir)
    make_output_dir(out, "output_dir")
    with folder_lock(out, "run"):
        yield out


def prepare_run_dir(config: RunConfig) -> tuple[Path, Path | None]:
    """Under the folder's lock: start, clean or reuse it. Returns (folder, checkpoint or None)."""
    out = Path(config.output_dir)
    plan = _plan(config, locked=True)
    if plan == "finish":
        return out, None
    if plan == "resume":
        return out, latest_checkpoint(out / "checkpoints")
    if plan in ("clean", "overwrite"):
        _remove_written(out)
    try:
        atomic_write_json(
            out / MARKER,
            {
                "fingerprint": config.fingerprint(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "writes": sorted(WRITTEN),
            },
        )
    except OSError as err:
        raise EmoSetError(
            f"cannot write into output_dir {out}: {err.strerror}; pick a writable output_dir"
        ) from None
    return out, None


def discard_run_dir(out: Path, *, created: bool) -> None:
    """Remove what a run that failed before its first checkpoint wrote (the lock is held)."""
    if latest_checkpoint(out / "checkpoints") is not None:
        return
    _remove_written(out)
    with contextlib.suppress(OSError):
        (out / LOCK_NAME).unlink()
        if created:
            out.rmdir()  # only when empty: nothing of anyone else's goes


def make_output_dir(out: Path, key: str) -> None:
    """mkdir -p with a one-line error (read-only disk, permissions, a file in the way)."""
    # ``key`` is an option (output_dir) or a noun phrase (the eval output folder): the wording
    # reads right with either.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EmoSetError(
            f"{key} {out} is a file, not a folder; pick another folder as {key}"
        ) from None
    except OSError as err:
        raise EmoSetError(
            f"cannot create {key} {out}: {err.strerror}; pick a writable folder as {key}"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise EmoSetError(f"{key} {out} is not writable; pick a writable folder as {key}")


def _plan(config: RunConfig, locked: bool = False) -> str:
    """'new', 'clean' (an attempt that never reached a checkpoint), 'overwrite' or 'resume';
    EmoSetError for every folder the run must not touch."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise EmoSetError(f"output_dir {out} is a file, not a folder; pick another output_dir")
    refuse_dataset_output(out, "output_dir")
    if not out.exists():
        return "new"
    if not locked:  # (a second open file of the lock would conflict with our own hold)
        check_not_busy(out, "run")
    names = {path.name for path in out.iterdir()} - {LOCK_NAME}
    if not names:
        return "new"
    foreign = sorted(name for name in names if not _written_by_us(name))
    checkpoint = latest_checkpoint(out / "checkpoints")
    finished = (out / "metrics.json").exists()
    # Resuming removes nothing, so a run from before the marker existed may still be resumed.
    if (foreign or MARKER not in names) and not (config.resume and checkpoint is not None):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        why = (
            f"holds files emoset-peft did not write ({shown})"
            if foreign
            else f"holds no {MARKER} marker, so emoset-peft cannot prove it wrote its files"
        )
        raise EmoSetError(
            f"{out} {why}; nothing in it is touched, not even with "
            "overwrite=true: pick another output_dir, or move those files away"
        )
    if not finished and checkpoint is None:
        return "clean"  # an earlier attempt stopped before its first checkpoint: nothing to lose
    if config.overwrite:
        return "overwrite"
    if not config.resume and finished:
        raise EmoSetError(
            f"{out} already holds a finished run (metrics.json); pick another output_dir, "
            f"pass overwrite=true to train it again over it, or score it again with "
            f"emoset-peft eval {out}"
        )
    if not config.resume:
        raise EmoSetError(
            f"{out} already holds an unfinished run (checkpoint {checkpoint.name}); pass "
            "resume=true to continue it, overwrite=true to replace it, or another output_dir"
        )
    saved = out / "config.yaml"
    first_line = saved.read_text().splitlines()[0] if saved.exists() else ""
    if config.fingerprint() not in first_line:
        from emoset_peft.config_help import config_differences

        differs = config_differences(saved, config) if saved.exists() else ""
        raise EmoSetError(
            f"{saved} was written by a different config{f' ({differs})' if differs else ''}; "
            "resume needs the same recipe and overrides (or pass overwrite=true)"
        )
    # metrics.json is written last; what a run wrote after it in older versions (the model
    # card) may be missing, and is redone from it without training
    return "finish" if finished else "resume"


def _written_by_us(name: str) -> bool:
    if name in WRITTEN:
        return True
    # Temporary files and folders of a killed run: atomic_write_text's ".config.yaml.abc123.tmp",
    # utils.storage's ".adapter.<host>.<pid>.tmp"
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return any(name.startswith((f".{written}.", f"{written}.")) for written in WRITTEN)


def _remove_written(out: Path) -> None:
    """Remove the names in WRITTEN (and their temporary files), never the lock file or others."""
    for path in out.iterdir():
        if path.name == LOCK_NAME or not _written_by_us(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
