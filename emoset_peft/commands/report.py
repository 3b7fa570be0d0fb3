"""``emoset-peft report STUDY_DIR``: write report.md, its figures and summary.json/.csv."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables, bootstrap intervals, paired tests, learning-curve summaries and plots of "
        "a scaling study",
        description="Read STUDY_DIR/results.csv (and each cell's metrics.json and "
        "predictions_test.csv) and write STUDY_DIR/report.md with its PNG figures, "
        "summary.json and summary.csv beside it. Works on a study that is still running: what "
        "is missing is listed in the report.",
    )
    parser.add_argument("study_dir", metavar="STUDY_DIR", help="folder holding results.csv")
    parser.add_argument(
        "--baseline",
        default=None,
        help="method the paired differences compare against "
        "(default: linear if present, else the first trained method)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap draws for every interval (default: 2000)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="RNG seed of the bootstrap (default: 0); recorded in summary.json",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # matplotlib and scipy are imported on use, so `emoset-peft --help` stays fast.
    from emoset_peft.errors import EmoSetError
    from emoset_peft.study.report import write_report
    from emoset_peft.study.summary import N_BOOT, SEED

    n_boot = N_BOOT if args.bootstrap is None else args.bootstrap
    if n_boot < 100:
        raise EmoSetError(f"--bootstrap must be at least 100 draws, got {n_boot}")
    print(
        write_report(
            args.study_dir,
            baseline=args.baseline,
            n_boot=n_boot,
            seed=SEED if args.seed is None else args.seed,
        )
    )
    return 0
