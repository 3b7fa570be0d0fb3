"""``emoset-peft demo``: a whole scaling study on built-in data, in about two minutes on a laptop CPU.

1. Write a synthetic EmoSet tree of the factor task (``data/synthetic_factors.py``): each emotion
   is a union of 8 of 64 visual factor combinations, 10% of the labels are wrong, a training pool
   of 256 images per class (so seeds draw mostly different images) and 250 test images per class.
2. Pretrain a tiny ViT for a few seconds on in-memory images labelled with the 64 combinations
   (another label space than the emotions). Only the encoder is kept: every study cell starts
   from a fresh head and has to learn which combinations make up which emotion, so the learning
   curve keeps rising with k instead of starting at its ceiling.
3. Run the study grid (lora, ia3, linear x k in {1, 2, 4, 8, 16, 32} x 3 seeds, k-tied selection)
   and write the report; print each method's accuracy at the smallest and the largest k and
   the area under its learning curve (with a two-level bootstrap interval).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from emoset_peft.study.grid import StudyConfig

log = logging.getLogger(__name__)

TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
)  # ~0.12 M parameters
PRETRAIN_STEPS = 500  # batch 64 over 6,400 in-memory images (64 combinations x 100)
PRETRAIN_IMAGES = 6400
DEMO_DATA = dict(
    task="factors",
    label_noise=0.1,
    train_per_class=256,
    val_per_class=16,
    test_per_class=250,
    size_range=(36, 48),
    grayscale_fraction=0.03,
    cmyk_fraction=0.03,
)


def demo_study(root: Path, backbone: Path, out: Path, cache: Path) -> StudyConfig:
    """The demo grid: small step budgets, the same recipe shape as the study recipes."""
    return StudyConfig(
        output_dir=str(out),
        base={
            "data": {"root": str(root), "selection": "k_tied", "cache_dir": str(cache)},
            "model": {"backbone": str(backbone)},
            "train": {
                "batch_size": 32,
                "epochs": 12,
                "min_steps": 40,
                "max_steps": 150,
                "warmup_ratio": 0.1,
                "label_smoothing": 0.0,
                "eval_batch_size": 500,
            },
        },
        methods={
            "lora": {"model": {"options": {"r": 8, "alpha": 16}}, "train": {"lr": 5e-3}},
            "ia3": {"train": {"lr": 2e-2}},
            "linear": {"train": {"lr": 2e-2}},
        },
        per_class=[1, 2, 4, 8, 16, 32],
        seeds=[0, 1, 2],
    )


def pretrain_tiny_vit(
    folder: Path,
    steps: int = PRETRAIN_STEPS,
    seed: int = 0,
    images: int = PRETRAIN_IMAGES,
    *,
    show_progress: bool = True,
) -> Path:
    """Train a tiny ViT from scratch to tell the 64 factor combinations apart (in-memory
    images, not the demo's data); save the encoder only."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from emoset_peft.data.pipeline import DecodedImages, Normalizer, TrainStream, cache_resolution
    from emoset_peft.data.synthetic_factors import NUM_COMBINATIONS, factor_images

    torch.manual_seed(seed)
    config = ViTConfig(**TINY_VIT, num_labels=NUM_COMBINATIONS)
    model = ViTForImageClassification(config)
    mean = std = (0.5, 0.5, 0.5)
    size = TINY_VIT["image_size"]
    # Squares at the decode cache's resolution, so training sees the crops a study cell sees.
    pixels, labels = factor_images(images, cache_resolution(size), seed=seed + 1234)
    stream = TrainStream(
        DecodedImages(pixels, labels, [str(i) for i in range(len(labels))]),
        batch_size=64,
        seed=seed,
    )
    normalizer = Normalizer(mean, std, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for step in tqdm(
        range(steps),
        desc="pretraining the tiny backbone",
        unit="step",
        leave=False,
        disable=not show_progress,
    ):
        batch, targets = stream.batch(step, normalizer, size)
        loss = F.cross_entropy(model(pixel_values=batch).logits, targets)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    log.info("pretraining: last loss %.3f (chance %.2f)", loss.item(), np.log(NUM_COMBINATIONS))
    model.vit.save_pretrained(folder)  # encoder only: heads are trained per cell
    ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)
    ).save_pretrained(folder)
    return folder


def accuracy_by_k(rows: list[dict]) -> dict[str, dict]:
    """method -> {k: mean test accuracy over the cell's seeds} from results.csv rows."""
    from emoset_peft.study.per_class import parse_per_class, per_class_sort_key

    sums: dict[str, dict] = {}
    for row in rows:
        if row.get("status", "ok") not in ("", "ok"):
            continue
        k = parse_per_class(row["per_class"])
        sums.setdefault(row["method"], {}).setdefault(k, []).append(float(row["test_accuracy"]))
    return {
        method: {
            k: sum(v) / len(v)
            for k, v in sorted(ks.items(), key=lambda kv: per_class_sort_key(kv[0]))
        }
        for method, ks in sums.items()
    }


def summary_lines(rows: list[dict]) -> list[str]:
    """Each method's mean test accuracy at the smallest and the largest k, and the rise."""
    lines = []
    for method, by_k in accuracy_by_k(rows).items():
        ks = [k for k in by_k if isinstance(k, int)]
        if not ks:
            continue
        low, high = min(ks), max(ks)
        lines.append(
            f"{method:>8}: k={low} {100 * by_k[low]:5.1f}%  ->  k={high} "
            f"{100 * by_k[high]:5.1f}%  ({100 * (by_k[high] - by_k[low]):+.1f} pp)"
        )
    return lines


def aulc_lines(study_dir: Path) -> list[str]:
    """The area under each method's learning curve with its 95% interval and the pairwise
    differences, as the report computed them (``summary.json``: one source for both)."""
    summary_path = study_dir / "summary.json"
    if not summary_path.exists():
        return ["AULC: n/a (no summary.json: the study wrote no report)"]
    result = json.loads(summary_path.read_text()).get("aulc", {}).get("accuracy")
    if not result:
        return ["AULC: n/a (no prediction files to compute it from)"]
    if result["reason"]:
        return [f"AULC: n/a ({result['reason']})"]

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        f"area under the learning curve (test accuracy over log2 k, k = "
        f"{', '.join(map(str, result['ks_used']))}; 95% interval over seeds and test images):"
    ]
    for method, entry in result["methods"].items():
        note = f"  ({entry['reason']})" if entry.get("reason") else ""
        lines.append(
            f"{method:>8}: {pct(entry['aulc'])}%  [{pct(entry['ci_low'])}, "
            f"{pct(entry['ci_high'])}]  over {entry['n_replicates']} seeds{note}"
        )
    for pair in result["pairs"]:
        if pair["difference"] is None:
            continue
        p_value = "n/a" if pair["p_value"] is None else f"{pair['p_value']:.3g}"
        lines.append(
            f"{pair['a']:>8} - {pair['b']}: {100 * pair['difference']:+.1f} pp  "
            f"[{100 * pair['ci_low']:+.1f}, {100 * pair['ci_high']:+.1f}], p = {p_value}"
        )
    return lines


def run_demo(workdir: str | Path = "emoset_demo", *, show_progress: bool = True) -> Path:
    """Build the demo data and backbone (once), run the study (resumable); returns report.md."""
    from emoset_peft.data.synthetic import make_synthetic_emoset
    from emoset_peft.study.runner import read_results, run_study

    started = time.perf_counter()
    workdir = Path(workdir)
    cache = workdir / "cache"
    data_root = workdir / "data"
    backbone = workdir / "tiny-vit-pretrained"
    if not (data_root / "test.json").exists():
        print(f"writing synthetic EmoSet (factor task, 10% label noise) to {data_root}")
        make_synthetic_emoset(data_root, seed=0, **DEMO_DATA)
    if not (backbone / "config.json").exists():
        print(f"pretraining a tiny ViT on 64 factor combinations -> {backbone}")
        pretrain_tiny_vit(backbone, show_progress=show_progress)
    study = demo_study(data_root, backbone, workdir / "study", cache)
    out = run_study(study, show_progress=show_progress)
    rows = read_results(out / "results.csv")
    print("mean test accuracy over seeds, smallest and largest k:")
    for line in summary_lines(rows) + aulc_lines(out):
        print(line)
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    return out / "report.md"
