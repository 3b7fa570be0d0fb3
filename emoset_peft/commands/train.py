"""``emoset-peft train --config RECIPE.yaml [key=value ...]``: one training run.

Runs the same code under ``accelerate launch -m emoset_peft train ...`` on many processes.
"""

from __future__ import annotations

import argparse

from emoset_peft.commands.intermixed import intermixed


def register(subparsers) -> None:
    parser = intermixed(
        subparsers.add_parser(
            "train",
            help="train one adapter from a recipe",
            description="Train one adapter. Example: emoset-peft train --config vit_lora "
            "data.root=/data/EmoSet-118K output_dir=runs/vit_lora train.lr=1e-3",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    parser.add_argument(
        "--config", help="YAML recipe: a file, or a packaged recipe's name (emoset-peft recipes)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.lr=3e-4 model.options.r=16",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from emoset_peft.config import load_config
    from emoset_peft.engine.recipe import train
    from emoset_peft.metrics import summary_line
    from emoset_peft.utils.dist import is_main_process

    config = load_config(args.config, args.overrides)
    metrics = train(config, show_progress=not args.no_progress)  # -q/--no-progress: cli.py
    if not is_main_process():
        return 0
    test = metrics["test"]
    print(
        f"test {summary_line(test)}  "
        f"({metrics['trainable_params']:,} trainable parameters) -> {config.output_dir}"
    )
    return 0
