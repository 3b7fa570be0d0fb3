"""One markdown table of this machine's speed figures: the benchmarks of issue 15 in one go.

    python benchmarks/issue15_table.py [--workdir DIR] [--demo-study DIR] [--out FILE]
        [--skip train_eval study frozen decode] [--dry-run]

Runs, one after another, each in its own process with ``--json``:

- ``bench_train_eval.py --quick``: the precision each side ran and why; training and evaluation
  images/s, toolkit vs the plain Trainer + PEFT path (guards: >= 1.5x and >= 1.3x);
- ``bench_study.py``: the reference study's 18 cells, toolkit vs plain path (guard: >= 10x,
  defined on the whole grid); in a new ``--workdir`` it first
  pretrains its tiny backbone (2-4 min, once: keep the folder for later runs);
- ``bench_frozen.py``: linear + zeroshot x 4 k x 3 seeds with ``train.frozen_features=off``
  vs ``auto``: the speedup (target >= 10x) and the accuracy of both against the seed noise
  (its backbone: ViT-S-shaped CLIP where bf16 runs natively, a 96 px one elsewhere);
- ``bench_decode.py``: cold-decode images/s of 300-640 px JPEGs vs PIL + torchvision;
- with ``--demo-study DIR`` (a finished study folder, e.g. the demo's), the mean seconds per
  cell by part from its results.csv (the report's "Where the time goes").

About 10-12 minutes on 2 quiet cores; every step's wall time is in the table. Run it on a quiet
machine: co-tenants on the same cores slow the 2-thread PyTorch sides unevenly.
``--dry-run``: every benchmark in its ``--tiny`` mode (a minute or two; checks the plumbing,
measures nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

HERE = Path(__file__).resolve().parent

STEPS = {  # name -> (script, arguments, dry-run arguments)
    "train_eval": ("bench_train_eval.py", ["--quick"], ["--tiny"]),
    # the whole reference grid (18 cells): its >= 10x guard is defined on it; one seed (9 cells)
    # amortises the toolkit's one-time start-up over half the cells and reads ~7x
    "study": ("bench_study.py", [], ["--tiny"]),
    "frozen": ("bench_frozen.py", [], ["--tiny"]),
    "decode": ("bench_decode.py", [], ["--images", "16", "--rounds", "1"]),
}


def run_step(name: str, workdir: Path, dry_run: bool, full: bool = False) -> dict:
    """Run one benchmark; its --json figures plus ``wall_seconds`` (or ``error``)."""
    script, arguments, dry = STEPS[name]
    if full:
        arguments = []
    out = workdir / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(HERE / script),
        "--workdir",
        str(workdir / "data"),
        *(dry if dry_run else arguments),
        "--json",
        str(out),
    ]
    print(f"== {' '.join(command[1:])}", flush=True)
    tick = time.perf_counter()
    log = workdir / f"{name}.log"
    with open(log, "w") as stream:
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - tick
    if code != 0 or not out.exists():
        return {"error": f"exit {code}, see {log}", "wall_seconds": wall}
    return {**json.loads(out.read_text()), "wall_seconds": wall}


def demo_breakdown(study_dir: Path) -> dict:
    """Mean seconds per cell by part over all finished cells of a study folder."""
    sys.path.insert(0, str(HERE.parent))
    from emoset_peft.study.plots_time import PART_LABELS, time_breakdown
    from emoset_peft.study.results import read_results_table

    table_ = read_results_table(study_dir / "results.csv", study_dir)
    entries, missing = time_breakdown(table_.rows)
    cells = sum(e["seeds"] for e in entries)
    parts = {
        PART_LABELS[p]: sum(e[p] * e["seeds"] for e in entries) / max(cells, 1) for p in PART_LABELS
    }
    return {"cells": cells, "seconds_per_cell": parts, "missing": missing, "study": str(study_dir)}


def _x(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render(results: dict, host: dict) -> str:
    """The markdown table from the steps' figures (a step that failed or was skipped: n/a)."""
    rows = [["machine", f"{host['cpu']}, {host['cores']} cores ({host['isa']})", ""]]
    te = results.get("train_eval") or {}
    if "train" in te:
        ran, why = te.get("ran", {}), te.get("why") or te.get("precision", {}).get("reason", "")
        if isinstance(why, dict):  # per side
            why = "; ".join(f"{side}: {text}" for side, text in why.items())
        rows += [
            [
                "precision (toolkit / plain)",
                f"{ran.get('toolkit')} / {ran.get('plain')}",
                str(why),
            ],
            [
                "training img/s, toolkit vs plain",
                f"{te['train']['toolkit']:.1f} vs {te['train']['plain']:.1f}: "
                f"**{_x(te['train']['ratio'])}**",
                "guard >= 1.5x",
            ],
            [
                "evaluation img/s, toolkit vs plain",
                f"{te['eval']['toolkit']:.1f} vs {te['eval']['plain']:.1f}: "
                f"**{_x(te['eval']['ratio'])}**",
                "guard >= 1.3x",
            ],
        ]
    study = results.get("study") or {}
    if "toolkit_wall_seconds" in study:
        accuracy = study.get("mean_test_accuracy") or {}
        rows.append(
            [
                f"reference study ({study['cells']} cells), plain / toolkit wall",
                f"{study['plain_wall_seconds'] or 0:.0f} s / {study['toolkit_wall_seconds']:.0f} s:"
                f" **{_x(study['ratio'])}**",
                "guard >= 10x; mean test accuracy "
                + ", ".join(f"{side} {value:.3f}" for side, value in accuracy.items()),
            ]
        )
    frozen = results.get("frozen") or {}
    if "speedup" in frozen:
        seconds = frozen["study_seconds"]
        agreement = "; ".join(
            f"{method} off {e['off']:.3f} / auto {e['auto']:.3f} (abs diff {e['abs_diff']:.3f}, "
            f"seed SE {'n/a' if e['seed_se'] is None else format(e['seed_se'], '.3f')})"
            for method, e in frozen["accuracy"].items()
        )
        rows.append(
            [
                f"frozen-feature study ({frozen['cells']} cells, CLIP {frozen['grid']['size']}),"
                " off / auto",
                f"{seconds['off']:.1f} s / {seconds['auto']:.1f} s: **{_x(frozen['speedup'])}**",
                f"target >= 10x; {agreement}",
            ]
        )
    decode = results.get("decode") or {}
    if "ratio" in decode:
        rows.append(
            [
                "cold decode img/s (300-640 px JPEGs)",
                f"{decode['toolkit_default_threads']:.0f} ({decode['threads_default']} threads), "
                f"{decode['toolkit_1_thread']:.0f} (1 thread) vs PIL + torchvision "
                f"{decode['pil_torchvision']:.0f}: **{_x(decode['ratio'])}**",
                f"{decode['images']} images, {decode['size']} px model",
            ]
        )
    demo = results.get("demo") or {}
    if "seconds_per_cell" in demo:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in demo["seconds_per_cell"].items() if v > 0)
        rows.append(
            [
                f"demo: mean seconds per cell ({demo['cells']} cells)",
                parts,
                "not recorded: " + ", ".join(demo["missing"]) if demo["missing"] else "",
            ]
        )
    for name in STEPS:
        step = results.get(name)
        if step and "error" in step:
            rows.append([f"{name} benchmark", "**failed**", step["error"]])
    steps = ", ".join(
        f"{name} {results[name]['wall_seconds'] / 60:.1f} min"
        for name in STEPS
        if results.get(name) and "wall_seconds" in results[name]
    )
    rows.append(["benchmark wall time", steps, ""])
    return table(["measure", "result", "notes"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="data, logs and JSON files (default: a temp folder)")
    parser.add_argument("--demo-study", help="a finished study folder: its per-cell breakdown")
    parser.add_argument("--skip", nargs="+", choices=sorted(STEPS), default=[])
    parser.add_argument("--dry-run", action="store_true", help="every benchmark in --tiny mode")
    parser.add_argument(
        "--full", action="store_true", help="every benchmark at its full size (~20 min)"
    )
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)

    from _common import machine

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emoset-issue15-"))
    workdir.mkdir(parents=True, exist_ok=True)
    host = machine()
    results = {}
    for name in STEPS:
        if name not in args.skip:
            results[name] = run_step(name, workdir, args.dry_run, args.full)
    if args.demo_study:
        results["demo"] = demo_breakdown(Path(args.demo_study))
    text = render(results, host)
    (workdir / "results.json").write_text(json.dumps({"machine": host, **results}, indent=2))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
