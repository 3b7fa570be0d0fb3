"""Command line: ``emoset-peft {demo,data,train,eval,predict,export,push,study,report,cache,recipes} ...``.

Each sub-command lives in ``emoset_peft/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit status). Command modules import heavy libraries (torch,
transformers) inside ``func`` so that ``--help`` stays instant.

Every command takes ``-q/--quiet``, ``--no-progress`` and ``-v`` before or after its name;
``--version`` prints the installed version. ``main(argv)`` is what the console script calls;
tests call it in-process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
    "recipes",
)

# Flags every command takes, before or after its name (``emoset-peft -q train ...`` and
# ``emoset-peft train ... -q``): (option strings, dest, help).
COMMON_FLAGS = (
    (("-q", "--quiet"), "quiet", "warnings and errors only (no INFO lines, no progress bars)"),
    (("--no-progress",), "no_progress", "no progress bars"),
    (("-v", "--verbose"), "verbose", "debug logging"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoset-peft",
        description="Parameter-efficient fine-tuning of ViT/CLIP models on EmoSet, "
        "and low-data scaling studies.",
    )
    parser.add_argument("--version", action="version", version=f"emoset-peft {package_version()}")
    for flags, dest, help_text in COMMON_FLAGS:
        # A separate dest: a sub-command's own default must not reset what was given before it.
        parser.add_argument(*flags, dest=f"top_{dest}", action="store_true", help=help_text)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"emoset_peft.commands.{name}").register(subparsers)
    _add_common_flags(subparsers)
    return parser


def package_version() -> str:
    """The installed distribution's version (a source tree on PYTHONPATH: the package's own)."""
    from importlib import metadata

    try:
        return metadata.version("emoset-peft")
    except metadata.PackageNotFoundError:
        from emoset_peft import __version__

        return f"{__version__} (not installed)"


def main(argv: list[str] | None = None) -> int:
    from emoset_peft.utils.warnings import install

    install()
    parser = build_parser()
    args = parse_args(parser, argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # -q holds even where the root logger was configured before (research code, pytest)
    logging.getLogger("emoset_peft").setLevel(logging.WARNING if args.quiet else logging.NOTSET)
    if args.no_progress:
        _no_library_progress_bars()
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
    except BrokenPipeError:
        # The reader closed the pipe (`emoset-peft recipes | head -3`): stop quietly, as a Unix
        # tool does, with SIGPIPE's status. stdout points at /dev/null so that Python's own
        # flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments with COMMON_FLAGS set from either place; -q implies --no-progress."""
    args = parser.parse_args(argv)
    for _, dest, _ in COMMON_FLAGS:
        setattr(args, dest, getattr(args, f"top_{dest}") or getattr(args, dest, False))
    args.no_progress = args.no_progress or args.quiet
    return args


def _add_common_flags(subparsers: argparse._SubParsersAction) -> None:
    """COMMON_FLAGS on every sub-command (and theirs, e.g. ``data inspect``), unless it has its
    own option of that name."""
    for sub in set(subparsers.choices.values()):
        for flags, dest, help_text in COMMON_FLAGS:
            free = [flag for flag in flags if flag not in sub._option_string_actions]
            if free == list(flags):
                sub.add_argument(*flags, dest=dest, action="store_true", help=help_text)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_common_flags(action)


def _no_library_progress_bars() -> None:
    """Progress bars of datasets, huggingface_hub and transformers off (read at import, and
    switched off directly where they are already imported)."""
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
