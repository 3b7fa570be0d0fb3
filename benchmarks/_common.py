"""What both benchmarks share: data, the ViT-S backbone, child processes, the machine, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAIN = HERE / "plain_path.py"

# EmoSet-shaped synthetic JPEGs of web-photo sizes; one tree serves both benchmarks.
DATA = dict(seed=0, train_per_class=32, val_per_class=8, test_per_class=32, size_range=(300, 640))
# A tree small enough for a dry run of the scripts (``--tiny``): seconds, not minutes.
TINY_DATA = dict(seed=0, train_per_class=4, val_per_class=2, test_per_class=4, size_range=(40, 64))
# ViT-S/16 at 224 px (22 M parameters), random init.
VIT_S = dict(
    image_size=224,
    patch_size=16,
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
)
VIT_SIZES = {
    "base": dict(
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),  # ViT-B/16, 86 M
    "small": VIT_S,
    # For dry runs only: 32 px, 8 px patches, 2 layers of width 64.
    "tiny": dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    ),
}


def synthetic_tree(workdir: Path, tiny: bool = False) -> Path:
    from emoset_peft.data.synthetic import make_synthetic_emoset

    root = workdir / ("emoset-tiny" if tiny else "emoset")
    if not (root / "test.json").exists():
        make_synthetic_emoset(root, **(TINY_DATA if tiny else DATA))
    return root


def save_vit(folder: Path, size: str = "small", seed: int = 0) -> Path:
    """A random-init ViT of ``VIT_SIZES[size]`` saved like a Hub checkpoint (config, weights,
    preprocessor)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = VIT_SIZES[size]
    torch.manual_seed(seed)
    ViTModel(ViTConfig(**config), add_pooling_layer=False).save_pretrained(folder)
    side = config["image_size"]
    ViTImageProcessor(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def save_vit_s(folder: Path, seed: int = 0) -> Path:
    return save_vit(folder, "small", seed)


def write_records(path: Path, class_names, splits: dict) -> Path:
    """The plain path's input: {split: [[image path, label], ...]} from ``datasets`` splits."""
    import datasets

    out = {"class_names": list(class_names), "splits": {}}
    for name, split in splits.items():
        paths = split.cast_column("image", datasets.Image(decode=False))["image"]
        out["splits"][name] = [[p["path"], int(y)] for p, y in zip(paths, split["label"])]
    path.write_text(json.dumps(out))
    return path


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or 0 off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_child(args: list[str], env: dict | None = None, timeout: float = 1200) -> dict:
    """Run ``python args...`` in a fresh process; its last stdout line is a JSON object.

    Adds ``wall_seconds`` (including interpreter start and imports) and ``others_cpu``: the
    share of the machine's cores that *other* processes kept busy meanwhile (0 = the child had
    the machine to itself; a co-tenant's 2-thread job on 2 cores is ~0.5 and slows a
    2-thread PyTorch process several-fold).
    """
    full_env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        **(env or {}),
    }
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = _busy_cpu_seconds()
    tick = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    others = max(0.0, _busy_cpu_seconds() - busy - own) / (wall * (os.cpu_count() or 1))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {' '.join(map(str, args[:2]))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    result = json.loads(lines[-1])
    result["wall_seconds"] = wall
    result["others_cpu"] = others
    return result


def run_inline(function, options: dict) -> dict:
    """``function(options)`` in this process, with ``run_child``'s extra keys: for dry runs
    (``--tiny``), where a fresh interpreter per side would cost more than the work itself."""
    import resource

    tick = time.perf_counter()
    result = function(options)
    result["wall_seconds"] = time.perf_counter() - tick
    result["others_cpu"] = 0.0  # not measured in-process
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def steady_images_per_second(step_seconds: list[float], batch: int, warmup: int) -> float:
    """Images/s from the median step time after ``warmup`` steps (robust to a co-tenant's burst)."""
    timed = step_seconds[warmup:] or step_seconds
    return batch / statistics.median(timed)


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": ",".join(isa) or "?",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "gpu": gpu_name(),
    }


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# The training settings of the study benchmarks (bench_study.py, bench_frozen.py): the same
# optimizer steps per cell on both sides of each comparison.
STUDY_TRAIN = {
    "batch_size": 16,
    "epochs": 4,
    "min_steps": 12,
    "max_steps": 48,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "label_smoothing": 0.0,
    "max_grad_norm": 1.0,
}
