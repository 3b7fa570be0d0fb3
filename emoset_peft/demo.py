"""``emoset-peft demo``: a whole scaling study on built-in data, in about two minutes on a laptop CPU.

1. Write a synthetic EmoSet tree (the real layout; learnable emotion signatures).
2. Pretrain a tiny ViT for a few seconds on *separate* synthetic images (another seed), so that
   the adapters have features to adapt, as a real pretrained backbone offers. Only the encoder
   is kept: every study cell starts from a fresh, untrained head.
3. Run the study grid (lora, ia3, prefix x k in {2, 8, 32} x 2 seeds) and write the report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from emoset_peft.study.grid import StudyConfig

log = logging.getLogger(__name__)

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4,
                num_attention_heads=4, intermediate_size=128)  # ~0.2 M parameters
PRETRAIN_STEPS = 400  # batch 64 -> 25,600 images, ~10 s on 2 CPU cores


def demo_study(root: Path, backbone: Path, out: Path, cache: Path) -> StudyConfig:
    """The demo grid: small step budgets, the same recipe shape as recipes/study/*.yaml."""
    return StudyConfig(
        output_dir=str(out),
        base={
            "data": {"root": str(root), "selection_per_class": 12, "cache_dir": str(cache)},
            "model": {"backbone": str(backbone)},
            "train": {"batch_size": 32, "epochs": 8, "min_steps": 40, "max_steps": 150,
                      "warmup_ratio": 0.1, "label_smoothing": 0.0, "eval_batch_size": 256},
        },
        methods={
            "lora": {"model": {"options": {"r": 8, "alpha": 16}}, "train": {"lr": 5e-3}},
            "ia3": {"train": {"lr": 2e-2}},
            "prefix": {"model": {"options": {"prefix_length": 8}}, "train": {"lr": 1e-2}},
        },
        per_class=[2, 8, 32],
        seeds=[0, 1],
    )


def pretrain_tiny_vit(folder: Path, data_root: Path, cache: Path, steps: int = PRETRAIN_STEPS,
                      seed: int = 0) -> Path:
    """Train a tiny ViT from scratch on ``data_root``'s train split; save the encoder only."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.pipeline import Normalizer, TrainStream, decode_split

    torch.manual_seed(seed)
    config = ViTConfig(**TINY_VIT, num_labels=8)
    model = ViTForImageClassification(config)
    mean = std = (0.5, 0.5, 0.5)
    images = decode_split(load_emoset(data_root, cache_dir=cache)["train"], TINY_VIT["image_size"],
                          cache_dir=cache, show_progress=False)
    stream = TrainStream(images, batch_size=64, seed=seed)
    normalizer = Normalizer(mean, std, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for step in tqdm(range(steps), desc="pretraining the tiny backbone", unit="step", leave=False):
        pixels, labels = stream.batch(step, normalizer, TINY_VIT["image_size"])
        loss = F.cross_entropy(model(pixel_values=pixels).logits, labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.vit.save_pretrained(folder)  # encoder only: heads are trained per cell
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(mean),
                      image_std=list(std)).save_pretrained(folder)
    return folder


def run_demo(workdir: str | Path = "emoset_demo", *, show_progress: bool = True) -> Path:
    """Build the demo data and backbone (once), run the study (resumable); returns report.md."""
    from emoset_peft.data.synthetic import make_synthetic_emoset
    from emoset_peft.study.runner import run_study

    started = time.perf_counter()
    workdir = Path(workdir)
    cache = workdir / "cache"
    data_root, pretrain_root = workdir / "data", workdir / "pretrain_data"
    backbone = workdir / "tiny-vit-pretrained"
    if not (data_root / "test.json").exists():
        print(f"writing synthetic EmoSet to {data_root}")
        make_synthetic_emoset(data_root, seed=0, train_per_class=40, val_per_class=12,
                              test_per_class=40)
    if not (backbone / "config.json").exists():
        if not (pretrain_root / "test.json").exists():
            make_synthetic_emoset(pretrain_root, seed=1234, train_per_class=150, val_per_class=1,
                                  test_per_class=1)
        print(f"pretraining a tiny ViT backbone -> {backbone}")
        pretrain_tiny_vit(backbone, pretrain_root, cache)
    study = demo_study(data_root, backbone, workdir / "study", cache)
    out = run_study(study, show_progress=show_progress)
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    return out / "report.md"
