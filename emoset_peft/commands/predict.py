"""``emoset-peft predict RUN_OR_ADAPTER PATHS...``: emotions of new images, with the run's own
preprocessing, written to a CSV (emoset_peft/deploy/predict.py)."""

from __future__ import annotations

import os
import sys

from emoset_peft.commands.intermixed import intermixed

# Written without --out: an earlier predict's results there are kept unless --overwrite says so
# (running predict twice in one folder must not silently lose the first run's rows).
DEFAULT_OUT = "predictions.csv"


def register(subparsers) -> None:
    parser = intermixed(
        subparsers.add_parser(
            "predict",
            help="predict the emotion of new images with a trained run or adapter",
            description="Score image files with a trained model exactly as its run scored the test "
            "split, and write one CSV row per image: path, predicted emotion, its probability, its "
            "valence, the probability of a positive valence, the top-k emotions and one probability "
            "per emotion. Unreadable images are named on stderr and skipped.",
        )
    )
    parser.add_argument(
        "model",
        metavar="RUN_OR_ADAPTER",
        help="a run folder (holding adapter/) or an adapter folder (holding emoset_peft.json)",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively for image files) or globs "
        "(quote them; ** recurses)",
    )
    parser.add_argument(
        "--out",
        help=f"the CSV to write (default: {DEFAULT_OUT}, which must not exist unless --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {DEFAULT_OUT} when no --out is given",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="top-k emotions per row (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emoset_peft.deploy.predict import (
        adapter_folder,
        find_images,
        load_scoring_model,
        score_images,
        write_prediction_csv,
    )
    from emoset_peft.engine.rescore import refuse_training_output
    from emoset_peft.errors import EmoSetError
    from emoset_peft.utils.outputs import check_output_file, output_errors

    if args.top_k < 1 or args.batch_size < 1:
        raise EmoSetError("--top-k and --batch-size must be at least 1")
    folder = adapter_folder(args.model)  # bad model folder: one line before any image is read
    if args.out is None:
        args.out = DEFAULT_OUT
        if os.path.lexists(DEFAULT_OUT) and not args.overwrite:
            raise EmoSetError(
                f"{os.path.abspath(DEFAULT_OUT)} already exists and is kept; pass --out PATH to "
                "write the predictions elsewhere, or --overwrite to replace it"
            )
    images = find_images(args.paths)
    refuse_training_output(args.out, "--out")
    check_output_file(
        args.out,
        "--out",
        ours=is_predictions_csv,
        kind="a predictions CSV",
        example="predictions.csv",
    )
    model, scoring = load_scoring_model(folder, "cpu" if args.cpu else None)  # as its run did

    def warn(name: str, reason: str) -> None:
        print(f"emoset-peft predict: warning: skipped {name}: {reason}", file=sys.stderr)

    scored = score_images(
        model,
        images,
        batch_size=args.batch_size,
        skip_unreadable=True,
        on_unreadable=warn,
        show_progress=not args.no_progress,
        scoring=scoring,
    )
    skipped = len(scored.unreadable)
    if not scored.indices:
        raise EmoSetError(f"none of the {len(images)} images could be read (listed above)")
    with output_errors(args.out, "--out"):
        out = write_prediction_csv(
            args.out,
            [images[index] for index in scored.indices],
            scored.probs,
            scored.class_names,
            args.top_k,
        )
    listed = " (listed above)" if skipped else ""
    print(f"{out}: {len(scored.indices)} images, {skipped} unreadable{listed}")
    return 0


def is_predictions_csv(path) -> bool:
    """True for a CSV an earlier predict wrote (its header), which --out may replace."""
    import csv

    from emoset_peft.deploy.predict import prediction_columns

    try:
        with open(path, newline="", encoding="utf-8") as stream:
            header = next(csv.reader(stream), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:3] == prediction_columns(["x"], 1)[:3]
