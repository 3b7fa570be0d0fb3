"""Options and positional arguments in any order within one sub-command.

argparse fills a ``nargs="*"`` positional at its first chance: in ``eval RUN --split train
data.root=X`` the overrides are taken (empty) with RUN, and ``data.root=X`` after the option is
rejected. ``intermixed(parser)`` makes a sub-command's parser read its options first and its
positionals after (``ArgumentParser.parse_intermixed_args``, which the top-level parser cannot
use because it has sub-commands).
"""

from __future__ import annotations

import argparse


class _IntermixedParser(argparse.ArgumentParser):
    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back in, twice
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` (a sub-command's, from ``subparsers.add_parser``), now accepting options
    between its positionals."""
    parser.__class__ = _IntermixedParser
    return parser
