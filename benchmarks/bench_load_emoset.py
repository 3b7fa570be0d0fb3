"""How long load_emoset takes on a tree of EmoSet-118K's size, cold and warm, and its peak memory.

    python benchmarks/bench_load_emoset.py [--records 118102] [--workdir DIR] [--threads 0,4]

Builds a tree with the real split sizes (train 94,481 / val 5,905 / test 17,716; scaled down
with --records), one tiny JPEG's bytes reused for every image and real-looking annotation JSONs,
then runs load_emoset in fresh subprocesses: once with an empty cache (cold: reads every
annotation file and writes the index) and once more (warm: memory-maps the index). The times
include Python start-up and ``import datasets``, as a user would see them. Peak RSS is
``ru_maxrss`` of the child processes. The files were just written, so the OS page cache holds
them: a first load straight after a download from a slow disk will take longer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from emoset_peft.data.synthetic import (
    FACIAL_EXPRESSIONS,
    HUMAN_ACTIONS,
    OBJECTS,
    SCENES,
    compact_info_json,
)
from emoset_peft.labels import EMOTIONS

REAL_SPLITS = {"train.json": 94_481, "val.json": 5_905, "test.json": 17_716}  # 118,102 in all
# Class shares roughly like EmoSet's (imbalanced: val has 518 anger .. 994 amusement).
CLASS_WEIGHTS = np.array([994, 780, 720, 760, 518, 560, 640, 930], dtype=np.float64)
TARGETS = {"cold": 60.0, "warm": 3.0, "rss_mib": 1024.0}

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
import emoset_peft.data.emoset as emoset
threads = {} if sys.argv[3] == "default" else {"read_threads": int(sys.argv[3])}
dataset = emoset.load_emoset(sys.argv[1], cache_dir=sys.argv[2], **threads)
rows = {split: len(part) for split, part in dataset.items()}
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_tree(root: Path, records: int, seed: int = 0) -> dict[str, int]:
    """Write an EmoSet-shaped tree of ``records`` records; returns records per split file."""
    rng = np.random.default_rng(seed)
    scale = records / sum(REAL_SPLITS.values())
    sizes = _apportion(np.array(list(REAL_SPLITS.values())) * scale, records)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()  # one tiny JPEG, reused: the loader never decodes images

    root.mkdir(parents=True, exist_ok=True)
    (root / "info.json").write_text(json.dumps(compact_info_json()))
    for emotion in EMOTIONS:
        (root / "image" / emotion).mkdir(parents=True)
        (root / "annotation" / emotion).mkdir(parents=True)
    per_class = _apportion(CLASS_WEIGHTS / CLASS_WEIGHTS.sum() * records, records)
    split_of = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(split_of)
    splits: list[list[list[str]]] = [[] for _ in sizes]
    row = 0
    for c, emotion in enumerate(EMOTIONS):
        numbers = np.sort(rng.choice(100_000, size=per_class[c], replace=False))
        for number in numbers.tolist():
            image_id = f"{emotion}_{number:05d}"
            image_rel = f"image/{emotion}/{image_id}.jpg"
            annotation_rel = f"annotation/{emotion}/{image_id}.json"
            (root / image_rel).write_bytes(jpeg)
            (root / annotation_rel).write_text(json.dumps(_annotation(rng, image_id, emotion)))
            splits[split_of[row]].append([emotion, image_rel, annotation_rel])
            row += 1
    for name, rows in zip(REAL_SPLITS, splits):
        (root / name).write_text(json.dumps(rows))
    return {name: len(rows) for name, rows in zip(REAL_SPLITS, splits)}


def _annotation(rng, image_id: str, emotion: str) -> dict:
    annotation = {
        "image_id": image_id,
        "emotion": emotion,
        "brightness": round(float(rng.random()), 1),
        "colorfulness": round(float(rng.random()), 1),
        "scene": SCENES[int(rng.integers(len(SCENES)))],
        "object": [OBJECTS[int(i)] for i in rng.integers(len(OBJECTS), size=3)],
    }
    if rng.random() < 0.3:
        annotation["facial_expression"] = FACIAL_EXPRESSIONS[int(rng.integers(6))]
    if rng.random() < 0.35:
        annotation["human_action"] = HUMAN_ACTIONS[int(rng.integers(len(HUMAN_ACTIONS)))]
    return annotation


def _apportion(shares: np.ndarray, total: int) -> list[int]:
    """Integers proportional to ``shares`` that sum to ``total`` (largest remainder)."""
    counts = np.floor(shares).astype(int)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts.tolist()


def load_in_child(root: Path, cache: Path, threads: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(cache), threads],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=sum(REAL_SPLITS.values()))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to build the tree (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--threads",
        default="default",
        help="comma-separated load_emoset(read_threads=) settings to compare on cold loads "
        "(0 = plain loop; default: the library's setting)",
    )
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_emoset_"))
    root = workdir / "EmoSet"
    try:
        if (root / "train.json").is_file():
            print(f"reusing the tree in {root}")
        else:
            started = time.perf_counter()
            sizes = build_tree(root, args.records)
            print(
                f"built {sum(sizes.values()):,} records {sizes} in {root} "
                f"({time.perf_counter() - started:.0f} s)"
            )
        results = []
        for threads in args.threads.split(","):
            cache = workdir / f"cache-{threads}"
            shutil.rmtree(cache, ignore_errors=True)
            cold = load_in_child(root, cache, threads)
            warm = load_in_child(root, cache, threads)
            results.append((threads, cold, warm))
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
        _report(results, peak)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _report(results, peak_mib: float) -> None:
    print(
        f"\nload_emoset, {os.cpu_count()} CPUs, {sum(results[0][1]['rows'].values()):,} records "
        "(times include interpreter start and imports)"
    )
    print(f"{'read_threads':>12}  {'measure':<16}{'value':>10}  {'target':>10}  ok")
    for threads, cold, warm in results:
        rows = [
            (
                "cold load",
                f"{cold['seconds']:.1f} s",
                f"<= {TARGETS['cold']:.0f} s",
                cold["seconds"] <= TARGETS["cold"],
            ),
            (
                "warm load",
                f"{warm['seconds']:.2f} s",
                f"<= {TARGETS['warm']:.0f} s",
                warm["seconds"] <= TARGETS["warm"],
            ),
            (
                "peak RSS cold",
                f"{cold['maxrss_mib']:.0f} MiB",
                "<= 1 GiB",
                cold["maxrss_mib"] <= TARGETS["rss_mib"],
            ),
            (
                "peak RSS warm",
                f"{warm['maxrss_mib']:.0f} MiB",
                "<= 1 GiB",
                warm["maxrss_mib"] <= TARGETS["rss_mib"],
            ),
        ]
        for name, value, target, ok in rows:
            print(f"{threads:>12}  {name:<16}{value:>10}  {target:>10}  {'yes' if ok else 'NO'}")
    print(
        f"{'all':>12}  {'peak RSS (any)':<16}{peak_mib:>6.0f} MiB  {'<= 1 GiB':>10}  "
        f"{'yes' if peak_mib <= TARGETS['rss_mib'] else 'NO'}"
    )


if __name__ == "__main__":
    sys.exit(main())
