"""Experiment trackers (``train.report_to``): which ones a run asked for, and starting them.

The trackers are accelerate's own (``accelerate.tracking``: tensorboard, wandb, mlflow, ...).
A single run starts them through ``Accelerator.init_trackers``; a study cell trained by one
process of many runs on ``engine.solo.SoloAccelerator``, which starts the same tracker classes
with :func:`start_cell_trackers`. Each study cell is one tracker run named by the cell
(``<study>/logs/<cell name>/`` for trackers that write to a folder).

Hosted trackers: accelerate hands a tracker one name, which wandb and mlflow take as the
*project* (experiment), leaving the run's name to chance; a study would then be one project per
cell. :func:`log_with` gives them as objects told both names instead: a single run is run
``<run folder>`` in project ``emoset-peft``, a study is one project named by its folder with one
run per cell. Other trackers get accelerate's own handling.
"""

from __future__ import annotations

from pathlib import Path

from emoset_peft.errors import EmoSetError

RUN_PROJECT = "emoset-peft"  # the tracker project of a single run (its folder: run_dir/emoset-peft)
STUDY_LOGS = "logs"  # a study's tracker folder, one run per cell inside


def tracker_names(report_to: str) -> list[str]:
    """``"tensorboard, wandb"`` -> ``["tensorboard", "wandb"]``; ``"none"`` -> ``[]``."""
    return [name.strip() for name in report_to.split(",") if name.strip() not in ("", "none")]


def _wandb(project: str, run: str, folder: Path | None):
    from accelerate.tracking import WandBTracker

    options = {"name": run}
    if folder is not None:  # wandb's files (offline runs included) beside the run's own
        options["dir"] = str(folder)  # wandb creates it when the run starts
    return WandBTracker(project, **options)


def _mlflow(project: str, run: str, folder: Path | None):
    from accelerate.tracking import MLflowTracker

    return MLflowTracker(experiment_name=project, run_name=run)


# Trackers that accelerate would name by project alone: how to name the project and the run.
NAMED_TRACKERS = {"wandb": _wandb, "mlflow": _mlflow}


def log_with(report_to: str, project: str, run: str, folder: Path | None) -> list | None:
    """What the accelerator's ``log_with`` gets for ``train.report_to``: tracker names, except
    the hosted trackers of :data:`NAMED_TRACKERS`, which come as objects logging run ``run`` of
    project ``project`` (files, if any, under ``folder``)."""
    from accelerate.tracking import get_available_trackers

    names = tracker_names(report_to)
    if "all" in names:  # what accelerate would expand it to
        names = [str(kind.value) for kind in get_available_trackers()]
    trackers = [
        NAMED_TRACKERS[name](project, run, folder) if name in NAMED_TRACKERS else name
        for name in names
    ]
    return trackers or None


def check_trackers_available(report_to: str) -> None:
    """A tracker whose package is not installed would be dropped silently by accelerate: say so
    before any compute is spent. (Unknown names are refused earlier, by ``config.validate``.)"""
    from accelerate.tracking import get_available_trackers

    available = [str(kind.value) for kind in get_available_trackers()]
    for tracker in tracker_names(report_to):
        if tracker != "all" and tracker not in available:
            raise EmoSetError(
                f"train.report_to={report_to}: the {tracker} package is not installed (pip install "
                f"{tracker}); installed trackers: {', '.join(available) or 'none'}"
            )


def flat_config(tree: dict, prefix: str = "") -> dict:
    """The run's config as one level of ``section.key`` scalars (what trackers store)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (
                value if isinstance(value, (int, float, str, bool)) else str(value)
            )
    return out


def start_trackers(accelerator, config, project_name: str = RUN_PROJECT) -> None:
    """Start the run's trackers (if any) with its config; ``accelerator.end_training()`` ends them."""
    if accelerator.log_with:
        accelerator.init_trackers(project_name, config=flat_config(config.to_dict()))


def end_trackers(accelerator) -> None:
    """Finish the trackers of one study cell. Not ``Accelerator.end_training()``: that also
    destroys the process group, which the study's next cells and processes still use."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def start_cell_trackers(
    names: list[str], logging_dir: Path | None, project_name: str, config: dict | None
) -> list:
    """Accelerate's trackers for one study cell trained by this process alone, started, with
    ``config`` stored: as ``Accelerator.init_trackers`` does, except that they log on every
    process (accelerate's trackers log on the main process only, and a cell trained on rank 1
    would log nothing)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, filter_trackers

    trackers = []
    for kind in filter_trackers(names, logging_dir):
        if isinstance(kind, GeneralTracker):
            tracker = kind
        else:
            cls = LOGGER_TYPE_TO_CLASS[str(kind)]
            if cls.requires_logging_directory:
                tracker = cls(project_name, logging_dir)
            else:
                tracker = cls(project_name)
        tracker.main_process_only = False  # this process is the cell's only writer
        tracker.start()
        if config is not None:
            tracker.store_init_configuration(config)
        trackers.append(tracker)
    return trackers
