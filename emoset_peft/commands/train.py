"""``emoset-peft train --config RECIPE.yaml [key=value ...]``: one training run.

Runs the same code under ``accelerate launch -m emoset_peft train ...`` on many processes.
"""

from __future__ import annotations

import argparse
import shlex
import sys

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
    try:
        metrics = train(config, show_progress=not args.no_progress)  # -q/--no-progress: cli.py
    except KeyboardInterrupt:
        if is_main_process():
            print(
                f"emoset-peft train: interrupted; {how_to_continue(args, config)}", file=sys.stderr
            )
        return 130
    if not is_main_process():
        return 0
    test = metrics["test"]
    print(
        f"test {summary_line(test)}  "
        f"({metrics['trainable_params']:,} trainable parameters) -> {config.output_dir}"
    )
    return 0


def how_to_continue(args, config) -> str:
    """What an interrupted run can do next: the exact command that resumes its latest checkpoint,
    or that there is none to resume."""
    from pathlib import Path

    from emoset_peft.engine.checkpoint import latest_checkpoint

    out = Path(config.output_dir)
    checkpoint = latest_checkpoint(out / "checkpoints")
    if checkpoint is None:
        every = config.train.checkpoint_every
        saved = (
            f"it had not reached its first checkpoint (train.checkpoint_every={every})"
            if every
            else "it saves none without train.checkpoint_every=N"
        )
        return (
            f"no checkpoint in {out} to continue from ({saved}); run the same command to start over"
        )
    # overwrite=true would remove the checkpoint that resume=true continues from
    kept = [o for o in args.overrides if o.split("=", 1)[0] not in ("resume", "overwrite")]
    command = ["emoset-peft", "train", *(["--config", args.config] if args.config else [])]
    return (
        f"{out} holds checkpoint {checkpoint.name}; continue it with: "
        f"{shlex.join([*command, *kept, 'resume=true'])} (under accelerate launch: the same "
        "launch command with resume=true)"
    )
