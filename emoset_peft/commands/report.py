"""``emoset-peft report STUDY_DIR``: write report.md and its figures for a scaling study."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables, confidence intervals, fits and plots of a scaling study",
        description="Read STUDY_DIR/results.csv (and the runs' metrics.json) and write "
        "STUDY_DIR/report.md with its PNG figures beside it. Works on a study that is still "
        "running: what is missing is listed in the report.",
    )
    parser.add_argument("study_dir", metavar="STUDY_DIR", help="folder holding results.csv")
    parser.add_argument("--baseline", default=None,
                        help="method the paired differences compare against "
                        "(default: linear if present, else the first trained method)")
    parser.add_argument("--fraction", type=float, default=0.9,
                        help="share of full-data accuracy for the data-efficiency table "
                        "(default: 0.9)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoset_peft.errors import EmoSetError
    from emoset_peft.study.report import write_report  # matplotlib/scipy: imported on use

    if not 0 < args.fraction <= 1:
        raise EmoSetError(f"--fraction must be in (0, 1], got {args.fraction}")
    print(write_report(args.study_dir, baseline=args.baseline, fraction=args.fraction))
    return 0
