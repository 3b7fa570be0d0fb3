"""Command line: ``emoset-peft {demo,data,train,eval,study,report,cache} ...``.

Each sub-command lives in ``emoset_peft/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit status). Command modules import heavy libraries (torch,
transformers) inside ``func`` so that ``--help`` stays instant.

``main(argv)`` is what the console script calls; tests call it in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from emoset_peft.errors import EmoSetError

# Order here is the order in ``--help``. Every module must import: a missing or broken one is a
# packaging error and raises, rather than a command silently missing from ``--help``.
COMMAND_MODULES = (
    "demo",
    "data",
    "train",
    "eval",
    "predict",
    "export",
    "push",
    "study",
    "report",
    "cache",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoset-peft",
        description="Parameter-efficient fine-tuning of ViT/CLIP models on EmoSet, "
        "and low-data scaling studies.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"emoset_peft.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EmoSetError as err:
        # A user mistake: one clear line, no traceback.
        print(f"emoset-peft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emoset-peft {args.command}: interrupted", file=sys.stderr)
        return 130
