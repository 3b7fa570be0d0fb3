"""Evaluation across processes: every image is scored exactly once, results are in split order."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from emoset_peft.data.pipeline import DecodedImages, Normalizer, eval_batches
from emoset_peft.models.merging import merged_for_inference

SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")  # accelerate DistributedType values


@torch.inference_mode()
def predict_probs(
    model,
    images: DecodedImages,
    accelerator,
    normalizer: Normalizer,
    image_size: int,
    batch_size: int,
    *,
    merge_adapters: bool = True,
) -> np.ndarray:
    """Softmax probabilities [N, C] for the whole split, identical on every process.

    Each process scores a contiguous shard; shards are padded to equal length (index -1),
    gathered, and put back in split order, so N processes give the 1-process result.
    ``merge_adapters``: fold PEFT adapters into the base weights while scoring (models/merging.py;
    the weights are restored exactly afterwards; the scores agree with unmerged ones to float
    rounding). Pass False for a model compiled with ``torch.compile`` (its graphs were traced
    unmerged: the training loop does so under ``train.compile=true``). Never done where
    accelerate shards the weights (FSDP, DeepSpeed).
    """
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    if accelerator.device.type == "cpu":
        batch_size = cpu_forward_batch(model, batch_size)
    merge = merge_adapters and accelerator.distributed_type not in SHARDED
    indices, logits = [], []
    with merged_for_inference(model, enabled=merge):
        for index, pixels in eval_batches(
            images,
            batch_size,
            normalizer,
            image_size,
            accelerator.process_index,
            accelerator.num_processes,
        ):
            with accelerator.autocast():
                out = model(pixel_values=pixels).logits
            indices.append(index.to(accelerator.device))
            logits.append(out.float())
    model.train(was_training)
    num_classes = _num_classes(model)
    local_index = (
        torch.cat(indices)
        if indices
        else torch.empty(0, dtype=torch.long, device=accelerator.device)
    )
    local_logits = (
        torch.cat(logits) if logits else torch.empty(0, num_classes, device=accelerator.device)
    )
    if accelerator.num_processes > 1:
        local_index = accelerator.pad_across_processes(local_index, pad_index=-1)
        local_logits = accelerator.pad_across_processes(local_logits, pad_index=0)
        local_index = accelerator.gather(local_index)
        local_logits = accelerator.gather(local_logits)
    keep = local_index >= 0
    order = torch.argsort(local_index[keep])
    probs = torch.softmax(local_logits[keep][order], dim=-1).cpu().numpy()
    if len(probs) != len(images):
        raise RuntimeError(f"evaluation scored {len(probs)} images, expected {len(images)}")
    return probs


CACHE_SHARE_CAP = 32 << 20  # bytes of last-level cache one process can count on


def cpu_forward_batch(model, batch_size: int) -> int:
    """Images per forward pass on a CPU: at most ``batch_size``, and few enough that the widest
    activation (tokens x MLP width, fp32) stays within the last-level cache.

    Past the cache a CPU forward slows down: ViT-S/16 at 224 px on a 32 MiB-L3 EPYC ran 14.5
    images/s at 16 per forward, 11.2 at 32 and 10.7 at 128; in bf16 on a 2-core AMX Xeon, 91
    images/s at 16 and 69 at 128. A tiny model keeps the full batch. The cache counted is at
    most ``CACHE_SHARE_CAP``: a virtual machine reports its host's whole L3 (480 MiB on that
    Xeon), which its few cores share with every other tenant.
    """
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config
    try:
        tokens = (int(config.image_size) // int(config.patch_size)) ** 2 + 1
        width = int(getattr(config, "intermediate_size", 0) or 4 * int(config.hidden_size))
    except (AttributeError, TypeError, ValueError):
        return batch_size
    per_image = tokens * width * 4  # bytes of the MLP's hidden activation
    fit = max(1, int(0.75 * min(last_level_cache_bytes(), CACHE_SHARE_CAP) // per_image))
    fit = 1 << (fit.bit_length() - 1)  # a power of two: 19 -> 16
    return max(1, min(batch_size, fit))


@functools.lru_cache(maxsize=1)
def last_level_cache_bytes(default: int = 16 << 20) -> int:
    """The largest CPU cache Linux reports (sysfs), else 16 MiB."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text.rstrip("KM")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=default)


def _num_classes(model) -> int:
    config = getattr(model, "config", None)
    labels = getattr(config, "id2label", None) if config is not None else None
    return len(labels) if labels else 8


def evaluate(
    model,
    images: DecodedImages,
    class_names,
    accelerator,
    normalizer,
    image_size,
    batch_size,
    *,
    merge_adapters: bool = True,
) -> tuple[dict, np.ndarray]:
    """(metrics dict, probabilities) for one split; ``merge_adapters`` as in predict_probs."""
    from emoset_peft.engine.metrics import classification_metrics

    probs = predict_probs(
        model,
        images,
        accelerator,
        normalizer,
        image_size,
        batch_size,
        merge_adapters=merge_adapters,
    )
    metrics = classification_metrics(
        probs,
        images.labels,
        class_names,
        attributes=images.attributes or None,
        attribute_labels=images.attribute_labels or None,
    )
    # Cross-entropy of the predictions, for selection by loss and for the log.
    picked = probs[np.arange(len(probs)), images.labels]
    metrics["loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(probs) else 0.0
    return metrics, probs
