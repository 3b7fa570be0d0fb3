"""Run a study's grid: every cell exactly once across processes, resumable, one CSV row per cell.

- Under ``accelerate launch --num_processes N`` the small cells are dealt round-robin to the
  processes, each training its cells alone; cells marked large (``large_per_class``) are trained
  by all processes together with DDP, before the small ones, each process taking its share of
  ``train.batch_size``: every cell trains on the same global batch and step budget whatever the
  number of processes.
- Per process, EmoSet's index, the decoded images (via the on-disk cache) and the backbone are
  loaded once and reused: every cell builds its adapter on a fresh copy of the loaded backbone,
  so no cell can see another's weights.
- A finished cell appends its row to ``results.csv`` (read, append, write a temp file, rename,
  under a file lock); a rerun skips cells whose (name, config hash) is already there, so a kill
  loses at most the cells in flight.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from emoset_peft.engine.tracking import STUDY_LOGS, end_trackers
from emoset_peft.errors import EmoSetError
from emoset_peft.metrics.registry import prefixed, result_columns
from emoset_peft.study.grid import Cell, StudyConfig, expand, grid_fingerprint, shard
from emoset_peft.study.result_rows import TIME_COLUMNS, time_columns
from emoset_peft.utils.io import atomic_write_text
from emoset_peft.utils.locks import LOCK_NAME, file_lock, folder_lock

log = logging.getLogger(__name__)

# The test_<metric> columns come from the metric registry, in its order (an old results.csv
# without a newer metric's column still reads: its rows get "" there when a cell is appended).
RESULT_COLUMNS = (
    "method",
    "per_class",
    "seed",
    "data_seed",
    "train_seed",
    *result_columns("test"),
    "val_accuracy",
    "trainable_params",
    "total_params",
    "train_images",
    "global_batch",  # images per optimizer step over all processes (the same for every cell)
    "steps",
    "best_step",
    # wall seconds per part of the cell (what cell_seconds is made of, beside building the model
    # and writing files); an older results.csv's eval_seconds reads as test_eval_seconds
    *TIME_COLUMNS,
    "cell_seconds",
    "num_processes",
    "process_index",
    "config_hash",
    "run_dir",
    "status",
    "error",  # "ok" | "failed" (training diverged: the one-line reason in error)
)


def read_results(path: Path) -> list[dict]:
    """Whole rows of results.csv (see study/results.py); EmoSetError when it is not a table."""
    from emoset_peft.study.results import read_result_rows

    return read_result_rows(path)


def append_result(path: Path, row: dict) -> None:
    """Append one row so that a kill at any moment leaves the previous complete file."""
    with file_lock(path.with_name(".results.lock")):
        rows = read_results(path)
        rows.append({key: row.get(key, "") for key in RESULT_COLUMNS})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())


class CellContext:
    """What a process loads once and every cell reuses: EmoSet's index (the decoded images come
    from the on-disk cache, the backbone weights from the models' in-process cache)."""

    def __init__(self):
        self._emoset = {}

    def emoset(self, data_cfg):
        key = (data_cfg.root, data_cfg.cache_dir, data_cfg.skip_missing, data_cfg.follow_symlinks)
        if key not in self._emoset:
            from emoset_peft.data.emoset import load_emoset

            self._emoset[key] = load_emoset(
                data_cfg.root,
                cache_dir=data_cfg.cache_dir,
                skip_missing=data_cfg.skip_missing,
                follow_symlinks=data_cfg.follow_symlinks,
            )
        return self._emoset[key]


def run_cell(
    cell: Cell,
    accelerator,
    context: CellContext,
    study_dir: Path,
    show_progress: bool,
    process_index: int = 0,
) -> dict | None:
    """Train and test one cell; returns its results row (on the process that writes it).

    A cell whose training diverges (non-finite loss) gets a row with status=failed and the
    reason, and the grid goes on; a rerun skips it like a finished cell unless its config changed.
    """
    from emoset_peft.data.run_data import load_run_data
    from emoset_peft.engine.recipe import run_training, write_run_record
    from emoset_peft.engine.trainer import TrainingDiverged
    from emoset_peft.models import input_spec_for

    started = time.perf_counter()
    config = cell.config
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        shutil.rmtree(out, ignore_errors=True)  # a half-written cell from a killed run
        out.mkdir(parents=True)
        write_run_record(out, config)  # config.yaml, provenance.json: as a single run has
    accelerator.wait_for_everyone()
    emoset = context.emoset(config.data)
    spec = input_spec_for(config.model.backbone)
    decode_started = time.perf_counter()
    data = load_run_data(
        config.data, spec.image_size, crop_ratio=spec.crop_ratio, emoset=emoset, show_progress=False
    )
    decode_seconds = time.perf_counter() - decode_started
    if accelerator.is_main_process:
        write_run_record(out, data=data)  # train_manifest.json
    identity = {
        "method": cell.method,
        "per_class": cell.per_class,
        "seed": cell.seed,
        "data_seed": config.data.data_seed,
        "train_seed": config.train.seed,
        "process_index": process_index,
        "config_hash": cell.config_hash,
        "run_dir": str(out.relative_to(study_dir)),
    }
    try:
        metrics = run_training(
            config,
            data,
            accelerator,
            out_dir=out,
            show_progress=show_progress,
            decode_seconds=decode_seconds,
        )
    except TrainingDiverged as err:
        if not accelerator.is_main_process:
            return None
        log.warning("cell %s failed: %s", cell.name, err)
        return {
            **identity,
            "cell_seconds": round(time.perf_counter() - started, 3),
            "status": "failed",
            "error": str(err),
        }
    if not accelerator.is_main_process:
        return None
    test, validation = metrics["test"], metrics["validation"]
    return {
        **identity,
        **prefixed(test, "test"),
        "val_accuracy": (validation or {}).get("accuracy", ""),
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_images": metrics["train_images"],
        "global_batch": metrics["global_batch"],
        "steps": metrics["steps"],
        "best_step": metrics["best_step"],
        **time_columns(metrics["seconds"]),
        "cell_seconds": round(time.perf_counter() - started, 3),
        "num_processes": metrics["num_processes"],
        "status": "ok",
        "error": "",
    }


def check_study_dir(study: StudyConfig, cells: list[Cell]) -> Path:
    """Create the study folder, or check that an existing one holds this same grid."""
    out = Path(study.output_dir)
    marker = out / "study.yaml"
    fingerprint = grid_fingerprint(cells)
    if marker.exists():
        saved = yaml.safe_load(marker.read_text()) or {}
        if saved.get("grid_fingerprint") != fingerprint and not study.allow_grid_change:
            raise EmoSetError(
                f"{out} holds a study with a different grid (fingerprint "
                f"{saved.get('grid_fingerprint')} != {fingerprint}); use another output_dir, or "
                "pass allow_grid_change=true to keep its finished cells and run the rest"
            )
    _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    content = {
        "grid_fingerprint": fingerprint,
        "cells": len(cells),
        "study": {k: v for k, v in vars(study).items()},
    }
    atomic_write_text(marker, yaml.safe_dump(content, sort_keys=False))
    return out


def _refuse_foreign(out: Path) -> None:
    if (
        out.is_dir()
        and not (out / "study.yaml").exists()
        and any(path.name != LOCK_NAME for path in out.iterdir())
    ):
        raise EmoSetError(f"{out} is not empty and holds no study; pick another output_dir")


def run_study(study: StudyConfig, *, show_progress: bool = True) -> Path:
    """Run every unfinished cell of the grid; returns the study folder."""
    from accelerate import PartialState

    from emoset_peft.study.validate import check_grid, validate_grid

    cells = expand(study)
    # cpu=true in the recipe must reach the process group too (gloo instead of NCCL).
    state = PartialState(cpu=any(cell.config.cpu for cell in cells))
    check_launch(state.num_processes)
    out = Path(study.output_dir)
    context = CellContext()
    for warning in check_grid(study, cells, state.num_processes):
        if state.is_main_process:
            log.warning(warning)
    validate_grid(cells, context)  # every process: the whole grid, before any folder or cell
    with contextlib.ExitStack() as hold:
        if state.is_main_process:  # N processes under accelerate launch are one study: one lock
            hold.enter_context(_locked_study_dir(study, cells))
        state.wait_for_everyone()
        _run_grid(study, cells, state, out, show_progress, context)
    return out


def check_launch(num_processes: int) -> None:
    """A launcher that started N processes which each see one (CPU processes without cpu=true
    join no process group) would run N independent copies of the study: refuse it."""
    launched = os.environ.get("WORLD_SIZE", "1")
    if num_processes == 1 and launched.isdigit() and int(launched) > 1:
        raise EmoSetError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but they formed "
            "no process group, so each would run the whole study alone; on CPUs pass cpu=true "
            "(ACCELERATE_USE_CPU=true accelerate launch --config_file cpu_2proc.yaml -m "
            "emoset_peft study ... cpu=true)"
        )


@contextlib.contextmanager
def _locked_study_dir(study: StudyConfig, cells: list[Cell]):
    """Hold the study folder's lock for the whole study (a second process gets one line)."""
    from emoset_peft.engine.run_dir import make_output_dir

    out = Path(study.output_dir)
    _refuse_foreign(out)  # before a lock file lands in someone else's folder
    make_output_dir(out, "output_dir")
    with folder_lock(out, "study"):
        check_study_dir(study, cells)
        yield


def _run_grid(
    study: StudyConfig,
    cells: list[Cell],
    state,
    out: Path,
    show_progress: bool,
    context: CellContext | None = None,
):
    from emoset_peft.models.backbones import reuse_loaded_backbones

    results_path = out / "results.csv"
    done = {
        (row["method"], str(row["per_class"]), str(row["seed"]), row["config_hash"])
        for row in read_results(results_path)
    }
    todo = [
        c for c in cells if (c.method, str(c.per_class), str(c.seed), c.config_hash) not in done
    ]
    mine = [c for c in todo if c.large] + shard(
        [c for c in todo if not c.large], state.process_index, state.num_processes
    )
    if state.is_main_process:
        log.info(
            "study %s: %d cells, %d finished, %d to run on %d process(es)",
            out,
            len(cells),
            len(cells) - len(todo),
            len(todo),
            state.num_processes,
        )
    bar = tqdm(
        total=len(mine),
        desc=f"study (rank {state.process_index})" if state.num_processes > 1 else "study",
        unit="cell",
        disable=not (show_progress and state.is_main_process),
        position=0,
    )
    with reuse_loaded_backbones():  # each backbone is read once per process, copied per cell
        _run_cells(mine, state, out, results_path, bar, show_progress, context or CellContext())
    bar.close()
    state.wait_for_everyone()
    if study.report and state.is_main_process:
        from emoset_peft.study.report import write_report

        write_report(out)


def _run_cells(
    cells: list[Cell],
    state,
    out: Path,
    results_path: Path,
    bar,
    show_progress: bool,
    context: CellContext,
) -> None:
    for cell in cells:
        bar.set_postfix_str(cell.name)
        accelerator = _cell_accelerator(cell, state, out / STUDY_LOGS)
        try:
            row = run_cell(
                cell,
                accelerator,
                context,
                out,
                show_progress and state.is_main_process,
                state.process_index,
            )
        finally:
            end_trackers(accelerator)  # closes the cell's tracker run
        accelerator.free_memory()
        if row is not None:
            append_result(results_path, row)
        bar.update(1)


def _cell_accelerator(cell: Cell, state, logs: Path):
    """The cell's accelerator, with its own tracker run ``logs/<cell name>`` started (when
    ``train.report_to`` names trackers) by the process that writes the cell."""
    from emoset_peft.engine.precision import resolve_mixed_precision
    from emoset_peft.engine.recipe import make_accelerator
    from emoset_peft.engine.solo import SoloAccelerator
    from emoset_peft.engine.tracking import log_with, start_trackers, tracker_names

    names = tracker_names(cell.config.train.report_to)
    study_name = logs.parent.name  # hosted trackers: one project per study, one run per cell
    if cell.large:  # all processes train it together (DDP); rank 0 logs
        accelerator = make_accelerator(cell.config, project_dir=logs, tracker_project=study_name)
    else:
        device = _cpu_device() if cell.config.cpu else state.device
        precision = resolve_mixed_precision(cell.config.train.mixed_precision, device)
        trackers = log_with(cell.config.train.report_to, study_name, cell.name, logs)
        accelerator = SoloAccelerator(device, precision, log_with=trackers, logging_dir=logs)
    if names and accelerator.is_main_process:
        shutil.rmtree(logs / cell.name, ignore_errors=True)  # a killed attempt's events
    start_trackers(accelerator, cell.config, cell.name)
    return accelerator


def _cpu_device():
    import torch

    return torch.device("cpu")
