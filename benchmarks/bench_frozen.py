"""Frozen-feature cells: a linear-probe + zero-shot study with ``train.frozen_features=off``
(every step runs the backbone on augmented images) vs ``auto`` (each image's pooled feature
computed once, the head trained on the cached features).

    python benchmarks/bench_frozen.py [--workdir DIR] [--size auto|tiny|small|base] [--seeds 0 1 2]
        [--per-class 1 2 4 8] [--quick] [--tiny] [--json PATH]

The grid: linear (lr 1e-2) x k in {1, 2, 4, 8} images per class x seeds {0, 1, 2} = 12 cells,
plus one zero-shot cell; batch 16, 4 epochs within 12..48 steps, selection on the 64 validation
images about every 10% of the steps, then the 256 test images once. Data: the same 300-640 px
synthetic JPEGs as the other benchmarks. Backbone: a random-init CLIP (``models/tiny.py``; it
has the text tower the zero-shot head needs) of ``--size``: ``base`` (224 px, ViT-S/16's shape),
``small`` (96 px, 16 px patches, 6 layers of width 192), ``tiny`` (32 px, 2 layers of width 32);
the default ``auto`` takes base where the run resolves to bf16 (AMX, a GPU: ~5 min on 2 AMX
cores, most of it the off side) and small elsewhere (fp32 ViT-S would take ~20 min). Each side runs in its own process with its own
empty cache folder, so each pays its decoding (and the auto side its feature computation); the
study time is measured inside the child around ``emoset-peft study`` (the process time adds the
interpreter start and imports). Accuracy: the mean test accuracy per method and k on both sides,
the difference against the standard error of that difference from the across-seed spread (the
auto side trains without augmentation, so "agree" means within about 2 standard errors).
``--quick``: the tiny backbone (for benchmarks/issue15_table.py's time budget); ``--tiny``: a
seconds-long dry run (tiny tree, k=1, one seed, in this process).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STUDY_TRAIN as TRAIN
from _common import machine, run_child, run_inline, synthetic_tree, table

SIZES = {  # save_tiny_backbone("clip", ...) arguments
    "tiny": dict(image_size=32, patch_size=8, hidden_size=32, layers=2, heads=2),
    "small": dict(image_size=96, patch_size=16, hidden_size=192, layers=6, heads=3),
    "base": dict(image_size=224, patch_size=16, hidden_size=384, layers=12, heads=6),
}
PER_CLASS = [1, 2, 4, 8]
SEEDS = [0, 1, 2]
SELECTION = 8  # validation images per class
SIDES = ("off", "auto")


def child_study(o: dict) -> dict:
    from emoset_peft.cli import main as cli_main

    tick = time.perf_counter()
    code = cli_main(["study", "--config", o["config"], "--no-progress"])
    return {"exit_code": code, "study_seconds": time.perf_counter() - tick}


def study_config(
    workdir: Path, side: str, root: Path, backbone: Path, precision: str, grid
) -> Path:
    recipe = {
        "output_dir": str(workdir / f"study_{side}"),
        "base": {
            "cpu": grid["device"] == "cpu",
            "data": {
                "root": str(root),
                "selection_per_class": grid["selection"],
                "cache_dir": str(workdir / f"cache_{side}"),
            },
            "model": {"backbone": str(backbone)},
            "train": {**grid["train"], "mixed_precision": precision, "frozen_features": side},
        },
        "methods": {"linear": {"train": {"lr": 1e-2}}, "zeroshot": {}},
        "per_class": grid["per_class"],
        "seeds": grid["seeds"],
        "report": False,
    }
    path = workdir / f"study_{side}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def accuracy_rows(off_rows, auto_rows) -> list[dict]:
    """Per (method, k): mean test accuracy on both sides, |difference|, its standard error."""
    out = []
    keys = dict.fromkeys((r["method"], r["per_class"]) for r in off_rows)
    for method, k in keys:
        a = [
            float(r["test_accuracy"])
            for r in off_rows
            if (r["method"], r["per_class"]) == (method, k)
        ]
        b = [
            float(r["test_accuracy"])
            for r in auto_rows
            if (r["method"], r["per_class"]) == (method, k)
        ]
        if not a or not b:
            continue
        se = (
            math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
            if len(a) > 1 and len(b) > 1
            else None
        )
        out.append(
            {
                "method": method,
                "per_class": k,
                "seeds": len(a),
                "off": statistics.mean(a),
                "auto": statistics.mean(b),
                "abs_diff": abs(statistics.mean(a) - statistics.mean(b)),
                "seed_se": se,
            }
        )
    return out


def summary(rows_by_side: dict, agreement: list[dict]) -> dict:
    """Mean accuracy per method on each side, and the linear probe's pooled comparison."""
    methods = dict.fromkeys(r["method"] for r in rows_by_side["off"])
    result = {}
    for method in methods:
        entry = {
            side: statistics.mean(
                float(r["test_accuracy"]) for r in rows_by_side[side] if r["method"] == method
            )
            for side in SIDES
        }
        cells = [a for a in agreement if a["method"] == method]
        ses = [a["seed_se"] for a in cells if a["seed_se"] is not None]
        entry["abs_diff"] = abs(entry["off"] - entry["auto"])
        # SE of a mean over k of per-k differences: sqrt(sum se^2) / number of k
        entry["seed_se"] = math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else None
        result[method] = entry
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep data and backbone here (default: a temp folder)")
    parser.add_argument(
        "--size",
        choices=["auto", *sorted(SIZES)],
        default="auto",
        help="auto: base where the run resolves to bf16 (AMX, GPU), else small",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--per-class", type=int, nargs="+", default=PER_CLASS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="the tiny backbone")
    parser.add_argument("--tiny", action="store_true", help="dry run: tiny tree, k=1, one seed")
    parser.add_argument("--json", help="also write the headline figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_study(json.loads(args.options))))
        return 0

    import shutil

    import torch

    from emoset_peft.engine.precision import decide_precision
    from emoset_peft.models.tiny import save_tiny_backbone

    started = time.perf_counter()
    host = machine()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emoset-bench-frozen-"))
    workdir.mkdir(parents=True, exist_ok=True)
    decision = decide_precision("bf16", torch.device(args.device))
    precision = "bf16!" if decision.resolved == "bf16" else "no"
    size = "tiny" if (args.quick or args.tiny) else args.size
    if size == "auto":  # what 2 cores can afford in a few minutes: the off side runs ~20k images
        size = "base" if decision.resolved == "bf16" else "small"
    grid = {
        "size": size,
        "per_class": [1] if args.tiny else args.per_class,
        "seeds": [0] if args.tiny else args.seeds,
        "selection": 2 if args.tiny else SELECTION,
        "train": {**TRAIN, "min_steps": 2, "max_steps": 4} if args.tiny else TRAIN,
        "device": args.device,
    }
    root = synthetic_tree(workdir, tiny=args.tiny)
    backbone = workdir / f"clip-{size}"
    if not (backbone / "config.json").exists():
        save_tiny_backbone("clip", backbone, **SIZES[size])
    print(f"machine: {host}\nprecision: {decision.resolved} ({decision.reason})", flush=True)
    results, rows = {}, {}
    for side in SIDES:
        for stale in (f"study_{side}", f"cache_{side}"):  # a cold start for each side
            shutil.rmtree(workdir / stale, ignore_errors=True)
        config = study_config(workdir, side, root, backbone, precision, grid)
        print(f"running the study with train.frozen_features={side}", flush=True)
        options = {"config": str(config)}
        if args.tiny:
            results[side] = run_inline(child_study, options)
        else:
            results[side] = run_child([__file__, "--child", "--options", json.dumps(options)])
        rows[side] = read_rows(workdir / f"study_{side}")
    agreement = accuracy_rows(rows["off"], rows["auto"])
    methods = summary(rows, agreement)
    speedup = results["off"]["study_seconds"] / results["auto"]["study_seconds"]
    process_speedup = results["off"]["wall_seconds"] / results["auto"]["wall_seconds"]
    print(report(grid, results, rows, agreement, methods, speedup, process_speedup))
    print(f"\nbenchmark wall time {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "grid": grid,
                    "cells": len(rows["auto"]),
                    "precision": decision.as_dict(),
                    "study_seconds": {s: results[s]["study_seconds"] for s in SIDES},
                    "process_seconds": {s: results[s]["wall_seconds"] for s in SIDES},
                    "speedup": speedup,
                    "process_speedup": process_speedup,
                    "accuracy": methods,
                    "per_cell": agreement,
                },
                indent=2,
            )
        )
    return 0


def report(grid, results, rows, agreement, methods, speedup, process_speedup) -> str:
    def seconds(side, column):
        return sum(float(r.get(column) or 0) for r in rows[side])

    side_rows = [
        [
            side,
            f"{results[side]['study_seconds']:.1f}",
            f"{results[side]['wall_seconds']:.1f}",
            f"{seconds(side, 'feature_seconds'):.1f}",
            f"{seconds(side, 'train_seconds'):.1f}",
            f"{seconds(side, 'selection_eval_seconds'):.1f}",
            f"{seconds(side, 'test_eval_seconds'):.1f}",
        ]
        for side in SIDES
    ]

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    cell_rows = [
        [
            a["method"],
            a["per_class"],
            a["seeds"],
            f"{a['off']:.3f}",
            f"{a['auto']:.3f}",
            f"{a['abs_diff']:.3f}",
            fmt(a["seed_se"]),
        ]
        for a in agreement
    ]
    method_rows = [
        [m, f"{e['off']:.3f}", f"{e['auto']:.3f}", f"{e['abs_diff']:.3f}", fmt(e["seed_se"])]
        for m, e in methods.items()
    ]
    cells = len(rows["auto"])
    return "\n".join(
        [
            "",
            f"## Frozen-feature study: linear + zeroshot, k {grid['per_class']} x seeds "
            f"{grid['seeds']} ({cells} cells), CLIP {grid['size']}",
            "",
            table(
                [
                    "frozen_features",
                    "study s",
                    "process s",
                    "features s",
                    "train s",
                    "selection eval s",
                    "test eval s",
                ],
                side_rows,
            ),
            "",
            f"speedup (study time off / auto): **{speedup:.1f}x** (process time: "
            f"{process_speedup:.1f}x)",
            "",
            table(
                ["method", "k", "seeds", "off acc", "auto acc", "abs diff", "seed SE"], cell_rows
            ),
            "",
            table(["method", "off acc", "auto acc", "abs diff", "seed SE of diff"], method_rows),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
