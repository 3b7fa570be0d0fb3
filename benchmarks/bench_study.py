"""Wall time, peak memory and accuracy of a reference scaling study: emoset_peft's study runner
(one process) vs the plain Trainer + PEFT path run once per cell as separate processes.

    python benchmarks/bench_study.py [--workdir DIR] [--skip-plain] [--device cpu|cuda]
        [--methods lora ia3 loha] [--per-class 2 8 32] [--seeds 0 1] [--tiny] [--json PATH]

The grid: 3 methods (LoRA r=8 on q,v; IA3 on k,v,fc2; LoHa r=8 on q,v) x k in {2, 8, 32} images
per class x seeds {0, 1} = 18 cells, batch 16, 4 epochs within 12..48 steps, selection on the
64 validation images about every 10% of the steps, then the 256 test images once. The data are
the same 300-640 px synthetic JPEGs as bench_train_eval; the model is smaller so the suite stays
affordable: the demo's tiny ViT (32 px, 4 layers, hidden 64), pretrained for a few seconds on
separate synthetic images so that accuracy means something. Both sides get the same subsets
(the toolkit's nested subsets, passed to the plain path as file lists), the same step budget,
learning rate, cosine schedule with 10% warm-up, weight decay 0.01, no label smoothing,
clipping at 1.0, and select the best validation accuracy. The toolkit starts with an empty
decode cache, so its one-time decoding is in its wall time; report writing is off on both sides.
``--methods`` / ``--per-class`` / ``--seeds`` scale the grid down (``gpu_check.sh``); ``--tiny``
is a seconds-long dry run of the script (tiny tree, random-init tiny ViT, 2-4 steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PLAIN,
    machine,
    run_child,
    run_inline,
    save_vit,
    synthetic_tree,
    table,
    write_records,
)
from _common import (
    STUDY_TRAIN as TRAIN,
)

METHODS = {  # toolkit overrides and the plain path's flags for the same adapter
    "lora": (
        {"model": {"options": {"r": 8, "alpha": 16, "dropout": 0.1}}, "train": {"lr": 5e-3}},
        ["--r", 8, "--alpha", 16, "--dropout", 0.1, "--lr", 5e-3],
    ),
    "ia3": ({"train": {"lr": 2e-2}}, ["--lr", 2e-2]),
    "loha": (
        {"model": {"options": {"r": 8, "alpha": 16}}, "train": {"lr": 5e-3}},
        ["--r", 8, "--alpha", 16, "--lr", 5e-3],
    ),
}
PER_CLASS = [2, 8, 32]
SELECTION = 8  # validation images per class for checkpoint selection
TINY_TRAIN = {**TRAIN, "min_steps": 2, "max_steps": 4}


def child_toolkit_study(o: dict) -> dict:
    from emoset_peft.cli import main as cli_main

    code = cli_main(["study", "--config", o["config"], "--no-progress"])
    return {"exit_code": code}


def tiny_backbone(workdir: Path) -> Path:
    """The demo's tiny ViT, pretrained on in-memory synthetic images (another label space)."""
    from emoset_peft.demo import pretrain_tiny_vit

    folder = workdir / "tiny-vit-pretrained"
    if not (folder / "config.json").exists():
        pretrain_tiny_vit(folder)
    return folder


def study_config(workdir: Path, root: Path, backbone: Path, precision: str, grid: dict) -> Path:
    base = {
        "data": {
            "root": str(root),
            "selection_per_class": grid["selection"],
            "cache_dir": str(workdir / "study_cache"),
        },
        "model": {"backbone": str(backbone)},
        "cpu": grid["device"] == "cpu",
        "train": {**grid["train"], "mixed_precision": precision},
    }
    study = {
        "output_dir": str(workdir / "study"),
        "base": base,
        "report": False,
        "methods": {name: METHODS[name][0] for name in grid["methods"]},
        "per_class": grid["per_class"],
        "seeds": grid["seeds"],
    }
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def plain_cells(
    workdir: Path, root: Path, backbone: Path, precision: str, grid: dict
) -> list[dict]:
    """Every cell as its own `python plain_path.py cell ...` process, one after the other."""
    from emoset_peft.config import TrainConfig
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.subsets import low_data_subset, selection_subset
    from emoset_peft.engine.trainer import step_budget

    emoset = load_emoset(root, cache_dir=workdir / "plain_index")
    names = emoset["train"].features["label"].names
    cfg = TrainConfig(
        **{k: v for k, v in grid["train"].items() if k in TrainConfig.__dataclass_fields__}
    )
    rows = []
    for method in grid["methods"]:
        flags = METHODS[method][1]
        for k in grid["per_class"]:
            for seed in grid["seeds"]:
                train = low_data_subset(emoset["train"], per_class=k, seed=seed)
                selection = selection_subset(
                    emoset["validation"], per_class=grid["selection"], seed=seed, allow_fewer=True
                )
                records = write_records(
                    workdir / f"records_{method}_{k}_{seed}.json",
                    names,
                    {"train": train, "validation": selection, "test": emoset["test"]},
                )
                batch = min(grid["train"]["batch_size"], len(train))
                steps = step_budget(len(train), batch, 1, cfg)
                result = run_child(
                    [
                        PLAIN,
                        "cell",
                        "--backbone",
                        backbone,
                        "--records",
                        records,
                        "--method",
                        method,
                        *flags,
                        "--steps",
                        steps,
                        "--eval-every",
                        max(1, steps // 10),
                        "--batch-size",
                        batch,
                        "--eval-batch-size",
                        128,
                        "--seed",
                        seed,
                        "--precision",
                        precision,
                        "--device",
                        grid["device"],
                    ]
                )
                rows.append({"method": method, "per_class": k, "seed": seed, **result})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep data and backbone here (default: a temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--per-class", type=int, nargs="+", default=PER_CLASS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="dry run: tiny tree, random-init tiny ViT, lora, k=2, one seed",
    )
    parser.add_argument("--json", help="also write the headline figures to this JSON file")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child_toolkit_study(json.loads(args.options))
        result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    import shutil

    import torch

    from emoset_peft.engine.precision import decide_precision

    started = time.perf_counter()
    host = machine()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emoset-bench-study-"))
    workdir.mkdir(parents=True, exist_ok=True)
    grid = {
        "methods": args.methods,
        "per_class": args.per_class,
        "seeds": args.seeds,
        "selection": SELECTION,
        "train": TRAIN,
        "device": args.device,
    }
    if args.tiny:
        grid.update(methods=["lora"], per_class=[2], seeds=[0], selection=2, train=TINY_TRAIN)
    root = synthetic_tree(workdir, tiny=args.tiny)
    backbone = save_vit(workdir / "vit-tiny", "tiny") if args.tiny else tiny_backbone(workdir)
    decision = decide_precision("bf16", torch.device(args.device))
    # The study's cells run exactly this decision ("bf16!" is never changed).
    precision = "bf16!" if decision.resolved == "bf16" else "no"
    plain_precision = "bf16" if decision.resolved == "bf16" else "fp32"
    for stale in ("study", "study_cache"):  # cold start for the toolkit every time
        shutil.rmtree(workdir / stale, ignore_errors=True)
    config = study_config(workdir, root, backbone, precision, grid)
    print(
        f"machine: {host}\nprecision: {plain_precision} on both sides ({decision.reason}); "
        "running the toolkit study",
        flush=True,
    )
    if args.tiny:  # a dry run of the script, not a measurement: no interpreter for the toolkit
        toolkit = run_inline(child_toolkit_study, {"config": str(config)})
    else:
        toolkit = run_child(
            [__file__, "--child", "toolkit-study", "--options", json.dumps({"config": str(config)})]
        )
    with open(workdir / "study" / "results.csv", newline="") as handle:
        toolkit_rows = list(csv.DictReader(handle))
    plain_rows, plain_wall = [], None
    if not args.skip_plain:
        print("running the plain path, one process per cell", flush=True)
        tick = time.perf_counter()
        plain_rows = plain_cells(workdir, root, backbone, plain_precision, grid)
        plain_wall = time.perf_counter() - tick
    print(
        report(
            host,
            plain_precision,
            toolkit,
            toolkit_rows,
            plain_rows,
            plain_wall,
            grid,
            time.perf_counter() - started,
        )
    )
    if args.json:
        accuracy = {
            side: statistics.mean(float(r["test_accuracy"]) for r in rows)
            for side, rows in (("toolkit", toolkit_rows), ("plain", plain_rows))
            if rows
        }
        Path(args.json).write_text(
            json.dumps(
                {
                    "cells": len(toolkit_rows),
                    "grid": grid,
                    "device": args.device,
                    "precision": decision.as_dict(),
                    "toolkit_wall_seconds": toolkit["wall_seconds"],
                    "plain_wall_seconds": plain_wall,
                    "mean_test_accuracy": accuracy,
                    "ratio": plain_wall / toolkit["wall_seconds"] if plain_wall else None,
                },
                indent=2,
            )
        )
    return 0


def report(host, precision, toolkit, toolkit_rows, plain_rows, plain_wall, grid, seconds):
    cells = len(toolkit_rows)
    rows = [
        [
            "toolkit: emoset-peft study (1 process)",
            f"{toolkit['wall_seconds']:.0f}",
            f"{toolkit['wall_seconds'] / cells:.1f}",
            f"{toolkit['maxrss_mib']:.0f}",
            f"{100 * toolkit['others_cpu']:.0f}%",
            "1.00x",
        ]
    ]
    if plain_rows:
        others = statistics.mean(r["others_cpu"] for r in plain_rows)
        rows.append(
            [
                f"plain: Trainer+PEFT, {len(plain_rows)} processes",
                f"{plain_wall:.0f}",
                f"{plain_wall / len(plain_rows):.1f}",
                f"{max(r['maxrss_mib'] for r in plain_rows):.0f}",
                f"{100 * others:.0f}%",
                f"{plain_wall / toolkit['wall_seconds']:.2f}x",
            ]
        )
    lines = [
        "",
        (
            f"# bench_study: {cells} cells ({', '.join(grid['methods'])} x k {grid['per_class']} x "
            f"{len(grid['seeds'])} seeds), tiny ViT 32 px, {precision}, {grid['device']}"
        ),
        (
            f"machine: {host['cpu']}, {host['cores']} cores ({host['isa']}), torch {host['torch']}, "
            f"load average at start {host['load_avg']}"
        ),
        "",
        table(
            [
                "side",
                "wall s",
                "s/cell",
                "peak RSS MiB (max over processes)",
                "co-tenant CPU",
                "wall time / toolkit",
            ],
            rows,
        ),
    ]
    lines.append(time_line(toolkit_rows))
    if plain_rows:
        lines += ["", accuracy_table(toolkit_rows, plain_rows)]
    lines.append(f"\nbenchmark wall time {seconds / 60:.1f} min")
    return "\n".join(lines)


def time_line(rows) -> str:
    """The toolkit cells' seconds by part (results.csv time columns), summed over cells."""
    from emoset_peft.study.plots_time import PART_LABELS
    from emoset_peft.study.result_rows import TIME_COLUMNS

    def total(column):
        return sum(float(r.get(column) or 0) for r in rows)

    parts = ", ".join(f"{total(c):.1f} s {PART_LABELS[c]}" for c in TIME_COLUMNS)
    return (
        f"toolkit cells: {parts} (of {total('cell_seconds'):.1f} s in cells); the rest "
        "is start-up and model loading"
    )


def accuracy_table(toolkit_rows, plain_rows) -> str:
    """Mean test accuracy per (method, k) on both sides, against the seed-to-seed spread."""

    def by_cell(rows, key):
        out = {}
        for r in rows:
            out.setdefault((r["method"], int(r["per_class"])), []).append(float(r[key]))
        return out

    tool, plain = by_cell(toolkit_rows, "test_accuracy"), by_cell(plain_rows, "test_accuracy")
    rows, diffs, spreads = [], [], []
    for key in sorted(tool, key=lambda k: (list(METHODS).index(k[0]), k[1])):
        t, p = tool[key], plain.get(key, [])
        if not p:
            continue
        sd = [statistics.stdev(v) for v in (t, p) if len(v) > 1]
        spread = statistics.mean(sd) if sd else float("nan")
        diffs.append(statistics.mean(t) - statistics.mean(p))
        spreads.append(spread)
        rows.append(
            [
                key[0],
                key[1],
                f"{statistics.mean(t):.3f}",
                f"{statistics.mean(p):.3f}",
                f"{diffs[-1]:+.3f}",
                f"{spread:.3f}",
            ]
        )
    mean_diff = statistics.mean(diffs)
    noise = statistics.mean(spreads)
    verdict = "within" if abs(mean_diff) <= noise else "outside"
    return "\n".join(
        [
            table(["method", "k", "toolkit acc", "plain acc", "diff", "seed sd"], rows),
            (
                f"mean difference {mean_diff:+.3f} over {len(rows)} (method, k) points; mean seed sd "
                f"{noise:.3f}: {verdict} seed noise"
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
