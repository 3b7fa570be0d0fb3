"""``emoset-peft data {inspect,subset,synth}``: look at a dataset, pin a subset, make demo data.

emoset-peft data inspect ROOT                   images per split and class, attribute coverage
emoset-peft data subset ROOT --per-class 16 --seed 0 --split train --out manifest.json
emoset-peft data synth OUT [--seed 0]           a small learnable EmoSet-shaped tree
"""

from __future__ import annotations

import argparse
from pathlib import Path

SPLIT_CHOICES = {"train": "train", "validation": "validation", "val": "validation"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect EmoSet, write low-data subset manifests, make synthetic data",
        description="Inspect an EmoSet tree, write a low-data subset manifest, or write a "
        "synthetic EmoSet-shaped tree.",
    )
    parser.set_defaults(func=lambda args: _print_help(parser))
    commands = parser.add_subparsers(dest="data_command", metavar="{inspect,subset,synth}")

    inspect = commands.add_parser(
        "inspect",
        help="images per split and class, attribute coverage",
        description="Load ROOT (building the index cache on first use) and print images per "
        "split and class and the share of images that have each attribute.",
    )
    inspect.add_argument("root", type=Path, help="EmoSet folder (holds train.json, image/, ...)")
    _add_load_options(inspect)
    inspect.set_defaults(func=run_inspect)

    subset = commands.add_parser(
        "subset",
        help="write a manifest of a stratified low-data subset",
        description="Choose a nested, stratified subset (the same ids in every process and "
        "machine for a given seed) and write its image ids to a JSON manifest.",
    )
    subset.add_argument("root", type=Path, help="EmoSet folder")
    size = subset.add_mutually_exclusive_group(required=True)
    size.add_argument("--per-class", type=int, metavar="K", help="images per class")
    size.add_argument("--fraction", type=float, metavar="F", help="share of each class, in (0, 1]")
    subset.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    subset.add_argument(
        "--split",
        choices=sorted(SPLIT_CHOICES),
        default="train",
        help="split to choose from (default train)",
    )
    subset.add_argument(
        "--allow-fewer",
        action="store_true",
        help="take all images of a class that has fewer than K (with a warning)",
    )
    subset.add_argument("--out", type=Path, required=True, help="manifest file to write (JSON)")
    _add_load_options(subset)
    subset.set_defaults(func=run_subset)

    synth = commands.add_parser(
        "synth",
        help="write a small synthetic EmoSet-shaped tree",
        description="Write a learnable synthetic dataset in the layout of EmoSet-118K. OUT "
        "must be new, empty, or an earlier synthetic tree.",
    )
    synth.add_argument("out", type=Path, help="folder to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-per-class", type=int, default=60, metavar="N")
    synth.add_argument("--val-per-class", type=int, default=12, metavar="N")
    synth.add_argument("--test-per-class", type=int, default=12, metavar="N")
    synth.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(40, 72),
        metavar=("MIN", "MAX"),
        help="image side range in pixels (default 40 72)",
    )
    synth.set_defaults(func=run_synth)


def run_inspect(args) -> int:
    from emoset_peft.data.emoset import SPLIT_FILES, load_emoset, read_label_map
    from emoset_peft.data.hygiene import find_duplicates

    dataset = load_emoset(
        args.root,
        cache_dir=args.cache_dir,
        skip_missing=args.skip_missing,
        follow_symlinks=args.follow_symlinks,
    )
    splits = list(dataset)
    label = dataset[splits[0]].features["label"]
    print(
        f"EmoSet at {Path(args.root).resolve()} (label order: {read_label_map(args.root).source})"
    )
    counts = {split: _class_counts(dataset[split], len(label.names)) for split in splits}
    rows = [
        [name, _valence(name), *(f"{counts[s][i]:,}" for s in splits)]
        for i, name in enumerate(label.names)
    ]
    rows.append(["total", "", *(f"{len(dataset[s]):,}" for s in splits)])
    _print_table(["class", "valence", *splits], rows)

    print("\nattribute coverage (% of images that have it)")
    attributes = [
        c
        for c in dataset[splits[0]].column_names
        if c not in ("image", "label", "valence", "image_id")
    ]
    rows = [[name, *(_coverage(dataset[s], name) for s in splits)] for name in attributes]
    _print_table(["attribute", *splits], rows)

    duplicates = find_duplicates(dataset, SPLIT_FILES)
    print(f"\nduplicates: {len(duplicates) or 'none'}")
    for found in duplicates:
        print(f"  {found.message()}")
    return 0


def run_subset(args) -> int:
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.subsets import low_data_subset, write_manifest
    from emoset_peft.utils.outputs import check_output_file, output_errors

    check_output_file(
        args.out, "--out", ours=_is_manifest, kind="a subset manifest", example="manifest.json"
    )
    split_name = SPLIT_CHOICES[args.split]
    split = load_emoset(
        args.root,
        cache_dir=args.cache_dir,
        skip_missing=args.skip_missing,
        follow_symlinks=args.follow_symlinks,
    )[split_name]
    subset = low_data_subset(
        split,
        per_class=args.per_class,
        fraction=args.fraction,
        seed=args.seed,
        allow_fewer=args.allow_fewer,
    )
    with output_errors(args.out, "--out"):
        manifest = write_manifest(
            args.out,
            subset,
            split_size=len(split),
            root=str(Path(args.root).resolve()),
            split=split_name,
            per_class=args.per_class,
            fraction=args.fraction,
            seed=args.seed,
            allow_fewer=args.allow_fewer,
        )
    how = f"{args.per_class} per class" if args.per_class else f"fraction {args.fraction}"
    print(
        f"wrote {args.out}: {manifest['num_images']:,} images ({how}, seed {args.seed}) from "
        f"{split_name} ({len(split):,} images); sha256 {manifest['sha256'][:16]}"
    )
    return 0


def run_synth(args) -> int:
    from emoset_peft.data.synthetic import make_synthetic_emoset

    root = make_synthetic_emoset(
        args.out,
        seed=args.seed,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        size_range=tuple(args.size),
    )
    per_class = args.train_per_class + args.val_per_class + args.test_per_class
    print(
        f"wrote a synthetic EmoSet tree to {root}: {8 * per_class:,} images "
        f"(per class: train {args.train_per_class}, val {args.val_per_class}, "
        f"test {args.test_per_class}); load it with emoset_peft.load_emoset('{root}')"
    )
    return 0


# ---------------------------------------------------------------------------------------------


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="index cache folder (default $EMOSET_PEFT_CACHE or ~/.cache/emoset_peft)",
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out records whose image or annotation file is missing",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symlinks whose target lies outside ROOT (refused otherwise)",
    )


def _is_manifest(path: Path) -> bool:
    """True for a file an earlier ``data subset`` wrote, which --out may replace."""
    from emoset_peft.data.subsets import read_manifest
    from emoset_peft.errors import EmoSetError

    try:
        read_manifest(path)
    except (EmoSetError, OSError):
        return False
    return True


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _valence(emotion: str) -> str:
    from emoset_peft.labels import VALENCES, valence_of

    return VALENCES[valence_of(emotion)]


def _class_counts(split, num_classes: int) -> list[int]:
    import numpy as np

    labels = split.with_format("arrow")["label"].to_numpy()
    return np.bincount(labels, minlength=num_classes).tolist()


def _coverage(split, column: str) -> str:
    """Share of rows where the attribute is present (-1, null and [] count as missing)."""
    import datasets
    import pyarrow.compute as pc

    if len(split) == 0:
        return "-"
    values = split.with_format("arrow")[column]
    if column == "object":
        present = pc.sum(pc.greater(pc.list_value_length(values), 0)).as_py() or 0
    elif isinstance(split.features[column], datasets.ClassLabel):  # -1 = missing
        present = pc.sum(pc.not_equal(values, -1)).as_py() or 0
    else:
        present = len(values) - values.null_count
    return f"{100 * present / len(values):.1f}%"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        print("  ".join(cells).rstrip())
