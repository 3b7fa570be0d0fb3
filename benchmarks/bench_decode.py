"""Cold-decode images/s: the toolkit's decode cache vs PIL + torchvision per image.

    python benchmarks/bench_decode.py [--workdir DIR] [--images 256] [--rounds 2] [--size 224]
        [--json PATH]

The images: the synthetic EmoSet tree of the other benchmarks (web-photo sizes 300-640 px, some
grayscale and CMYK JPEGs), its test split. All files are read once first, so both sides find
them in the page cache and neither pays for the disk.

- **toolkit**: ``decode_split`` into an empty cache folder (JPEG draft decoding, one uint8
  square of ``size / 0.875`` px per image, written to a memory-mapped file), with the default
  decode threads (``utils.cpus.default_decode_workers``: the CPUs this process may use) and
  with 1 thread.
- **PIL + torchvision**: what a plain ``set_transform`` does per image: ``Image.open`` +
  ``convert("RGB")``, ``Resize(size / 0.875)``, ``CenterCrop(size)``, ``PILToTensor`` (uint8,
  like the cache), in one thread, as the default dataloader without workers runs it.

Each side runs ``--rounds`` times, alternating; the fastest run counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, synthetic_tree, table


def plain_decode(paths: list[str], size: int) -> float:
    """Seconds for PIL + torchvision's eval transform on every path, one image at a time."""
    from PIL import Image
    from torchvision import transforms as T

    from emoset_peft.data.pipeline import cache_resolution

    transform = T.Compose([T.Resize(cache_resolution(size)), T.CenterCrop(size), T.PILToTensor()])
    tick = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            transform(image.convert("RGB"))
    return time.perf_counter() - tick


def toolkit_decode(split, size: int, cache: Path, workers: int) -> float:
    from emoset_peft.data.pipeline import decode_split

    shutil.rmtree(cache, ignore_errors=True)  # cold: nothing decoded yet
    tick = time.perf_counter()
    decode_split(split, size, cache_dir=cache, workers=workers, show_progress=False)
    return time.perf_counter() - tick


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep data here (default: a temp folder)")
    parser.add_argument("--images", type=int, default=256, help="first N test images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="the model's image size")
    parser.add_argument("--json", help="also write the images/s of each side to this JSON file")
    args = parser.parse_args(argv)

    import datasets

    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.utils.cpus import default_decode_workers

    started = time.perf_counter()
    host = machine()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emoset-bench-"))
    root = synthetic_tree(workdir)
    split = load_emoset(root, cache_dir=workdir / "cache")["test"]
    split = split.select(range(min(args.images, len(split))))
    paths = [
        row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]
    ]
    for path in paths:  # page cache warm for both sides
        Path(path).read_bytes()
    workers = default_decode_workers()
    sides = {
        f"toolkit decode cache, {workers} threads (default)": lambda: toolkit_decode(
            split, args.size, workdir / "cold", workers
        ),
        "toolkit decode cache, 1 thread": lambda: toolkit_decode(
            split, args.size, workdir / "cold", 1
        ),
        "PIL + torchvision per image, 1 thread": lambda: plain_decode(paths, args.size),
    }
    runs: dict[str, list[float]] = {side: [] for side in sides}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
        for side in order:
            runs[side].append(len(paths) / sides[side]())
    plain = max(runs["PIL + torchvision per image, 1 thread"])
    rows = [
        [
            side,
            f"{max(speeds):.1f}",
            f"{max(speeds) / plain:.2f}x",
            ", ".join(f"{s:.1f}" for s in speeds),
        ]
        for side, speeds in runs.items()
    ]
    shutil.rmtree(workdir / "cold", ignore_errors=True)
    if args.json:
        best = {side: max(speeds) for side, speeds in runs.items()}
        Path(args.json).write_text(
            json.dumps(
                {
                    "images": len(paths),
                    "size": args.size,
                    "threads_default": workers,
                    "toolkit_default_threads": best[next(iter(sides))],
                    "toolkit_1_thread": best["toolkit decode cache, 1 thread"],
                    "pil_torchvision": plain,
                    "ratio": best[next(iter(sides))] / plain,
                },
                indent=2,
            )
        )
    print(
        "\n".join(
            [
                (
                    f"# bench_decode: cold decode of {len(paths)} JPEGs of 300-640 px for a {args.size} "
                    f"px model (cache square {round(args.size / 0.875)} px), page cache warm"
                ),
                (
                    f"machine: {host['cpu']}, {host['cores']} cores ({host['isa']}), decode threads "
                    f"default {workers} (CPUs this process may use), load average at start "
                    f"{host['load_avg']}"
                ),
                "",
                table(["side", "images/s", "vs PIL + torchvision", "all rounds img/s"], rows),
                f"\nbenchmark wall time {time.perf_counter() - started:.0f} s",
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
