"""``emoset-peft eval RUN_DIR``: score a finished run's saved adapter again (on any number of
processes: ``accelerate launch -m emoset_peft eval RUN_DIR``)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained run's adapter on the test or validation split",
        description="Reload RUN_DIR/adapter and its recipe (RUN_DIR/config.yaml) and score a "
        "split. The metrics are printed as JSON, or written to --out.",
    )
    parser.add_argument("run_dir", help="a folder written by emoset-peft train")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--out", help="write the metrics JSON here instead of printing it")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. data.root=/elsewhere/EmoSet-118K if the data moved",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from emoset_peft.config import load_config
    from emoset_peft.data.pipeline import Normalizer
    from emoset_peft.data.run_data import load_run_data
    from emoset_peft.engine.evaluate import evaluate
    from emoset_peft.engine.recipe import make_accelerator
    from emoset_peft.errors import EmoSetError
    from emoset_peft.models import input_spec, load_adapter
    from emoset_peft.models.wrapper import check_adapter_folder
    from emoset_peft.utils.io import atomic_write_json

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "adapter").is_dir():
        raise EmoSetError(f"{run_dir} is not a finished run (no config.yaml or adapter/)")
    check_adapter_folder(run_dir / "adapter")  # before any data is loaded or decoded
    config = load_config(run_dir / "config.yaml", args.overrides)
    accelerator = make_accelerator(config)
    model = load_adapter(run_dir / "adapter").to(accelerator.device)
    spec = input_spec(model)
    with accelerator.main_process_first():
        data = load_run_data(
            config.data,
            spec.image_size,
            crop_ratio=spec.crop_ratio,
            show_progress=accelerator.is_main_process,
        )
    images = data.test if args.split == "test" else data.selection
    if images is None:
        raise EmoSetError(
            f"{run_dir} was trained with data.selection=none: it has no selection "
            "set; evaluate --split test, or pass data.selection=fixed"
        )
    metrics, _ = evaluate(
        model,
        images,
        data.class_names,
        accelerator,
        Normalizer(spec.mean, spec.std, accelerator.device),
        spec.image_size,
        config.train.eval_batch_size,
    )
    metrics["num_processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        if args.out:
            atomic_write_json(args.out, metrics)
        else:
            print(json.dumps(metrics, indent=2))
    return 0
