"""One training run, start to finish: setup -> fit on the subset -> select on val -> test once -> save.

``train(config)`` is what ``emoset-peft train`` and ``accelerate launch -m emoset_peft train``
run, and what research code calls. It returns the metrics dict it writes to metrics.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import torch

from emoset_peft.config import RunConfig, save_config, validate
from emoset_peft.data.emoset import check_emoset_root
from emoset_peft.data.pipeline import Normalizer
from emoset_peft.data.run_data import RunData, load_run_data, selection_record
from emoset_peft.deploy.card import write_model_card
from emoset_peft.engine import features
from emoset_peft.engine.evaluate import evaluate
from emoset_peft.engine.precision import (
    precision_record,
    resolve_mixed_precision,
    store_frozen_weights,
)
from emoset_peft.engine.run_dir import (
    check_run_dir,
    discard_run_dir,
    locked_run_dir,
    prepare_run_dir,
)
from emoset_peft.engine.tracking import (
    RUN_PROJECT,
    check_trackers_available,
    log_with,
    start_trackers,
)
from emoset_peft.engine.trainer import FitResult, fit, step_budget
from emoset_peft.errors import EmoSetError
from emoset_peft.metrics.registry import summary_line
from emoset_peft.utils.dist import decide_on_main, fresh_accelerator_state
from emoset_peft.utils.io import atomic_write_json
from emoset_peft.utils.provenance import provenance

log = logging.getLogger(__name__)


def make_accelerator(
    config: RunConfig,
    project_dir: Path | None = None,
    tracker_project: str = RUN_PROJECT,
    *,
    track: bool = True,
    mixed_precision: str | None = None,
):
    """The run's Accelerator. Hosted trackers log run ``<output_dir name>`` of project
    ``tracker_project`` (engine/tracking.py); folder trackers write under ``project_dir``.
    ``track=False`` (scoring a finished run): no trackers, whatever the run trained with.
    ``mixed_precision``: what to run, kept as given (scoring a run in its recorded precision);
    None: the precision rule's decision for ``train.mixed_precision``."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState

    fresh_accelerator_state()  # each run in one process gets its own settings
    report_to = config.train.report_to if track else "none"
    trackers = log_with(report_to, tracker_project, Path(config.output_dir).name, project_dir)
    device = PartialState(cpu=config.cpu).device  # what the Accelerator below will use
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=mixed_precision
        or resolve_mixed_precision(config.train.mixed_precision, device),
        log_with=trackers,
        project_dir=str(project_dir) if project_dir else None,
        # A CLIP model keeps parameters that a vision-only loss never reaches (text tower,
        # zero-shot scale); DDP must not wait for their gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def per_process_batch(batch_size: int, processes: int, who: str = "") -> int:
    """Each process's share of ``train.batch_size``, the global batch of one optimizer step
    (before grad_accum) on any number of processes, so that a run on N processes trains what
    it trains on one. ``who`` names the processes in the refusal (default: "N processes")."""
    if batch_size % processes:
        raise EmoSetError(
            f"train.batch_size={batch_size} (the global batch of one optimizer step) cannot be "
            f"split evenly by {who or f'{processes} processes'}; set train.batch_size to a "
            f"multiple of {processes}, e.g. {batch_size // processes * processes or processes}"
        )
    return batch_size // processes


def build_run_model(
    config: RunConfig, class_names, total_steps: int | None = None, *, precision: str = "no"
):
    """The run's model: ``config.model`` built, frozen weights stored for ``precision`` (the
    resolved mixed precision: ``accelerator.mixed_precision``), fast CPU kernels unless
    ``train.fast_kernels=false``."""
    from emoset_peft.models import build_model, enable_fast_kernels

    m = config.model
    model = build_model(
        m.backbone,
        m.method,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        targets=m.targets,
        layers=m.layers,
        quantize=m.quantize,
        gradient_checkpointing=m.gradient_checkpointing,
        total_steps=total_steps,
        head_init=m.head_init,
        **m.options,
    )
    store_frozen_weights(model, m, precision)
    if config.train.fast_kernels:  # every forward of a run is under its accelerator's autocast
        enable_fast_kernels(model, autocast=precision in ("bf16", "fp16"))
    return model


def run_training(
    config: RunConfig,
    data: RunData,
    accelerator,
    *,
    out_dir: Path | None,
    resume_from: Path | None = None,
    show_progress: bool = True,
    decode_seconds: float = 0.0,
) -> dict:
    """Build the model, fit, select, test once; save into ``out_dir``. Returns the metrics.
    ``decode_seconds``: what loading ``data`` took, recorded beside the other parts.
    ``train.batch_size`` is the global batch, split over the processes (``per_process_batch``)."""
    from emoset_peft.models import count_parameters, input_spec

    torch.manual_seed(config.train.seed)  # head init and dropout; the data seed is separate
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    processes = accelerator.num_processes
    train_cfg = dataclasses.replace(
        config.train, batch_size=per_process_batch(config.train.batch_size, processes)
    )
    total_steps, global_batch, batch = None, 0, 0
    if data.train is not None:
        batch = max(1, min(train_cfg.batch_size, len(data.train) // processes or 1))
        total_steps = step_budget(len(data.train), batch, processes, train_cfg)
        global_batch = batch * processes * train_cfg.grad_accum  # images per optimizer step
    precision = str(accelerator.mixed_precision)
    model = build_run_model(config, data.class_names, total_steps, precision=precision)
    spec = input_spec(model)
    model.to(accelerator.device)
    normalizer = Normalizer(spec.mean, spec.std, accelerator.device)
    trainable, total = count_parameters(model)

    from emoset_peft.models import methods

    if data.train is None and methods.trains(config.model.method):
        raise EmoSetError(
            "data.per_class=0 trains on no images: only a method that does not "
            f"train fits: model.method={'|'.join(methods.named(lambda s: not s.trains))}"
        )
    # the model on images, or its head on cached frozen features (engine/features.py)
    path = features.route(model, data, config, accelerator, normalizer, spec.image_size)
    with path.running():  # one thread for the tiny head ops (engine/features.py)
        if data.train is None or not methods.trains(config.model.method):
            started = time.perf_counter()
            validation = (
                None
                if data.selection is None
                else evaluate(
                    path.model,
                    path.data.selection,
                    data.class_names,
                    accelerator,
                    path.normalizer,
                    path.image_size,
                    config.train.eval_batch_size,
                )[0]
            )
            result = FitResult(
                steps=0,
                best_step=0,
                best_validation=validation,
                train_seconds=0.0,
                stopped_early=False,
                selection_seconds=time.perf_counter() - started,
            )
        else:
            result = fit(
                path.model,
                path.data,
                train_cfg,
                accelerator,
                path.normalizer,
                path.image_size,
                out_dir=out_dir,
                resume_from=resume_from,
                show_progress=show_progress,
                stream_class=path.stream_class,
            )

        started = time.perf_counter()
        test, test_probs = evaluate(
            path.model,
            path.data.test,
            data.class_names,
            accelerator,
            path.normalizer,
            path.image_size,
            config.train.eval_batch_size,
            merge_adapters=not config.train.compile,
        )
        eval_seconds = time.perf_counter() - started
    metrics = {
        "test": test,
        "validation": result.best_validation,
        "trainable_params": trainable,
        "total_params": total,
        "train_images": len(data.train) if data.train is not None else 0,
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "selection": selection_record(
            config.data, data.selection, result.best_step, len(result.history)
        ),
        "test_evaluations": 1,  # the test split is scored once, after selection
        "train_seconds": round(result.train_seconds, 3),  # optimizer steps, no selection evals
        "test_eval_seconds": round(eval_seconds, 3),
        # wall seconds per part of the run (the study's "where the time goes" figure)
        "seconds": {
            "decode": round(decode_seconds, 3),
            "features": round(path.seconds, 3),
            "train": round(result.train_seconds, 3),
            "selection_eval": round(result.selection_seconds, 3),
            "test_eval": round(eval_seconds, 3),
        },
        "skipped_images": {
            name: len(images.skipped)
            for name, images in (
                ("train", data.train),
                ("validation", data.selection),
                ("test", data.test),
            )
            if images is not None
        },
        "num_processes": accelerator.num_processes,
        "global_batch": global_batch,
        "per_process_batch": batch,  # images per process per micro-batch (0: no training)
        "mixed_precision": precision,  # as run: bf16 in the recipe becomes "no" where emulated
        # what was asked for, what ran and why (the CPU's measured bf16 vs fp32 GEMM rates)
        "precision": precision_record(
            config.train.mixed_precision, accelerator.device, ran=precision
        ),
        "config_fingerprint": config.fingerprint(),
    }
    if path.record is not None:
        metrics["frozen_features"] = path.record
    if out_dir is not None and accelerator.is_main_process:
        from emoset_peft.engine.metrics import write_predictions
        from emoset_peft.utils.storage import atomic_folder

        with atomic_folder(
            out_dir / "adapter", "the adapter", "free space and pass resume=true to train it again"
        ) as adapter:
            accelerator.unwrap_model(model).save_pretrained(str(adapter))
        write_predictions(
            out_dir / "predictions_test.csv",
            data.test.image_ids,
            data.test.labels,
            test_probs,
            data.class_names,
        )
        write_model_card(out_dir, config, metrics)  # adapter/README.md with the results
        atomic_write_json(out_dir / "metrics.json", metrics)  # last: its presence means "done"
    accelerator.wait_for_everyone()
    return metrics


def train(config: RunConfig, *, show_progress: bool = True) -> dict:
    """Run one training job as configured; returns the metrics written to metrics.json.

    Everything that can be checked before training (config, method and options, backbone, data,
    the output folder's state) is checked before the output folder is created; a user error
    before the first checkpoint removes what this run wrote.
    """
    validate(config)
    check_emoset_root(config.data.root)  # a look at the disk: before the model is built
    spec = preflight(config)
    accelerator = make_accelerator(config, Path(config.output_dir))
    per_process_batch(config.train.batch_size, accelerator.num_processes)  # before any decoding
    main = accelerator.is_main_process
    # Under accelerate launch / torchrun the N processes are one run: rank 0 checks, locks and
    # prepares the folder and picks the checkpoint; the others receive its decision.
    plan = decide_on_main(accelerator, lambda: check_run_dir(config))  # refuse before decoding
    if plan == "finish":
        return finish_run(config, accelerator)
    decode_started = time.perf_counter()
    with accelerator.main_process_first():  # rank 0 decodes; the others read its cache
        data = load_run_data(
            config.data,
            spec.image_size,
            crop_ratio=spec.crop_ratio,
            show_progress=show_progress and main,
        )
    decode_seconds = time.perf_counter() - decode_started
    _check_same_subset(accelerator, data)

    created = not Path(config.output_dir).exists()
    with contextlib.ExitStack() as hold:

        def prepare() -> tuple[Path, Path | None]:
            hold.enter_context(locked_run_dir(config))  # held by rank 0 until the run ends
            return prepare_run_dir(config)

        out_dir, resume_from = decide_on_main(accelerator, prepare)
        try:
            metrics = _train_in(
                out_dir, config, data, accelerator, resume_from, show_progress, decode_seconds
            )
        except EmoSetError:
            accelerator.end_training()
            if main and resume_from is None:
                discard_run_dir(out_dir, created=created)
            raise
    if main:
        log.info("test %s -> %s", summary_line(metrics["test"]), out_dir / "metrics.json")
    return metrics


def finish_run(config: RunConfig, accelerator) -> dict:
    """resume=true on a finished run: redo, without training, what only follows from its
    metrics.json (the model card, which a kill or a full disk may have left without results);
    returns the metrics."""
    from emoset_peft.deploy.card import run_info

    def finish() -> dict:
        with locked_run_dir(config) as out:
            info = run_info(out / "adapter")
            if info is None:
                raise EmoSetError(
                    f"{out} lost its metrics.json or config.yaml while it was checked; "
                    "pass overwrite=true to train it again"
                )
            write_model_card(out, config, info["metrics"])
        log.info("%s was finished: its model card was written again; nothing was trained", out)
        return info["metrics"]

    metrics = decide_on_main(accelerator, finish)
    accelerator.end_training()
    return metrics


def write_run_record(
    out_dir: Path, config: RunConfig | None = None, data: RunData | None = None
) -> None:
    """What a run folder keeps besides results: config.yaml and provenance.json (given the
    config), train_manifest.json (given the data, when it trains on images). Used by
    ``train`` and by every study cell."""
    if config is not None:
        save_config(config, out_dir / "config.yaml")
        atomic_write_json(out_dir / "provenance.json", provenance())
    if data is not None and data.train_manifest:
        atomic_write_json(out_dir / "train_manifest.json", data.train_manifest)


def _train_in(
    out_dir: Path,
    config: RunConfig,
    data: RunData,
    accelerator,
    resume_from: Path | None,
    show_progress: bool,
    decode_seconds: float = 0.0,
) -> dict:
    if accelerator.is_main_process:
        write_run_record(out_dir, config, data)
    start_trackers(accelerator, config)
    metrics = run_training(
        config,
        data,
        accelerator,
        out_dir=out_dir,
        resume_from=resume_from,
        show_progress=show_progress,
        decode_seconds=decode_seconds,
    )
    accelerator.end_training()
    return metrics


# preflight's model build when the step budget is not known yet (it needs the subset size):
# what AdaLoRA's schedule is checked against; the real budget is checked again at build time.
PREFLIGHT_STEPS = 1000


def preflight(config: RunConfig):
    """The checks that need no output folder and no image: trackers, then the whole model build
    (method, options, targets, layers, quantization, head) on the backbone's config alone.
    Returns the backbone's ``InputSpec``: the data is decoded with it before the model is built
    (AdaLoRA's schedule needs the subset size), and the model records the same spec."""
    from emoset_peft.models import check_build, input_spec_for

    check_trackers_available(config.train.report_to)
    m = config.model
    check_build(
        m.backbone,
        m.method,
        targets=m.targets,
        layers=m.layers,
        quantize=m.quantize,
        total_steps=config.train.max_steps or PREFLIGHT_STEPS,
        head_init=m.head_init,
        **m.options,
    )
    return input_spec_for(m.backbone)


def _check_same_subset(accelerator, data: RunData) -> None:
    if accelerator.num_processes == 1 or data.train_manifest is None:
        return
    from accelerate.utils import gather_object

    digests = gather_object([data.train_manifest["sha256"]])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes chose different training subsets: {digests}")
