"""``emoset-peft eval RUN_DIR``: score a finished run's saved adapter again, on any split of its
data or of another tree (on any number of processes: ``accelerate launch -m emoset_peft eval
RUN_DIR``). What is scored and where results go: engine/rescore.py."""

from __future__ import annotations

from emoset_peft.commands.intermixed import intermixed


def register(subparsers) -> None:
    parser = intermixed(
        subparsers.add_parser(
            "eval",
            help="evaluate a trained run's adapter on its train, validation or test images",
            description="Reload RUN_DIR/adapter and its recipe (RUN_DIR/config.yaml) and score a "
            "split: train = the images the run trained on, validation = its selection set, test = "
            "the test split. Writes metrics_<split>.json and predictions_<split>.csv (the columns "
            "of the run's predictions_test.csv) into RUN_DIR/eval/, or RUN_DIR/eval/<tree>/ for "
            "another data tree (data.root=...); files the run wrote while training are never "
            "overwritten.",
        )
    )
    parser.add_argument("run_dir", help="a folder written by emoset-peft train")
    parser.add_argument("--split", choices=("train", "validation", "test"), default="test")
    parser.add_argument(
        "--out-dir", help="write metrics_<split>.json and predictions_<split>.csv here instead"
    )
    parser.add_argument("--out", help="also write the metrics JSON to this file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="data.* (e.g. data.root=/elsewhere/EmoSet-118K to score another tree or a moved "
        "one), model.backbone=FOLDER (a moved backbone), train.eval_batch_size, "
        "train.mixed_precision, cpu; a relative path in the run's config.yaml is resolved "
        "where the run was trained",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    from emoset_peft.data.pipeline import Normalizer
    from emoset_peft.engine.evaluate import evaluate
    from emoset_peft.engine.metrics import write_predictions
    from emoset_peft.engine.recipe import make_accelerator
    from emoset_peft.engine.rescore import (
        differences_line,
        differing_metrics,
        eval_configs,
        load_for_scoring,
        load_split,
        output_paths,
        refuse_training_output,
        run_scoring,
        warn_if_slow,
    )
    from emoset_peft.engine.run_dir import make_output_dir
    from emoset_peft.errors import EmoSetError
    from emoset_peft.metrics.registry import summary_line
    from emoset_peft.models import input_spec
    from emoset_peft.models.wrapper import check_adapter_folder
    from emoset_peft.utils.io import atomic_write_json
    from emoset_peft.utils.outputs import check_output_file, output_errors
    from emoset_peft.utils.provenance import provenance

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "adapter").is_dir():
        raise EmoSetError(f"{run_dir} is not a finished run (no config.yaml or adapter/)")
    check_adapter_folder(run_dir / "adapter")  # before any data is loaded or decoded
    trained, config = eval_configs(run_dir, args.overrides)
    metrics_path, predictions_path = output_paths(
        run_dir, args.split, config.data.root, trained.data.root, args.out_dir
    )
    if args.out:
        refuse_training_output(args.out, "--out")
        check_output_file(
            args.out, "--out", ours=_is_metrics_json, kind="eval metrics", example="metrics.json"
        )
    make_output_dir(metrics_path.parent, "the eval output folder")  # unwritable: fail now
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    recorded = run_scoring(run_dir, trained)
    # The run's own precision unless one is asked for: the rule may pick another one here.
    keep = None if "train.mixed_precision" in given else recorded.precision
    accelerator = make_accelerator(config, track=False, mixed_precision=keep)  # no tracker
    precision = str(accelerator.mixed_precision)
    if keep is not None:
        warn_if_slow(precision, accelerator.device, "scoring")
    # model.backbone= for a moved backbone; by default the one the adapter records
    backbone = config.model.backbone if "model.backbone" in given else None
    try:
        model = load_for_scoring(run_dir / "adapter", recorded, precision, backbone)
    except EmoSetError as err:  # its hint names the Python argument; here it is an override
        hint = "load_adapter(..., backbone="
        raise EmoSetError(str(err).replace(hint, "model.backbone=")) from None
    model.to(accelerator.device)
    spec = input_spec(model)
    with accelerator.main_process_first():
        images, class_names = load_split(
            config.data,
            args.split,
            spec,
            run_dir,
            show_progress=accelerator.is_main_process and not args.no_progress,
        )
    metrics, probs = evaluate(
        model,
        images,
        class_names,
        accelerator,
        Normalizer(spec.mean, spec.std, accelerator.device),
        spec.image_size,
        config.train.eval_batch_size,
        merge_adapters=recorded.merge_adapters,
    )
    metrics["num_processes"] = accelerator.num_processes
    here = provenance()
    now = dataclasses.replace(
        recorded,
        precision=precision,
        batch_size=config.train.eval_batch_size,
        num_processes=accelerator.num_processes,
        device=accelerator.device.type,
        setup={"device": here["device"], "torch": here["versions"].get("torch")},
    )
    same_images = args.split == "test" and config.data == trained.data
    differing = differing_metrics(metrics, recorded.test) if same_images and recorded.test else []
    if accelerator.is_main_process:
        write_predictions(predictions_path, images.image_ids, images.labels, probs, class_names)
        atomic_write_json(
            metrics_path,
            {**metrics, "split": args.split, "data_root": str(config.data.root)},
        )
        if args.out:
            with output_errors(args.out, "--out"):
                atomic_write_json(args.out, metrics)
        print(f"{args.split} ({len(images)} images of {config.data.root}): {summary_line(metrics)}")
        print(f"wrote {metrics_path} and {predictions_path}")
        if differing:
            print(differences_line(differing, recorded, now))
        if images.skipped:
            print(f"{len(images.skipped)} unreadable image(s) left out, e.g. {images.skipped[0]}")
    return 0


def _is_metrics_json(path) -> bool:
    """An earlier ``eval --out`` file (a JSON object with an accuracy): --out may replace it."""
    import json

    try:
        return "accuracy" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False
