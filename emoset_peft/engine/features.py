"""Frozen-feature cells: the backbone runs once per image, the head trains on cached features.

A method whose backbone is entirely frozen and whose only trainable part is the head on the
pooled feature (the registry's ``head_on_pooled_feature``: ``linear``, with or without
``head_init=text``, and ``zeroshot``) gets the same feature for an image in every cell, seed and
k. With ``train.frozen_features=auto`` such a run:

1. computes each split's pooled features once (the input of the model's ``classifier``, captured
   by a forward pre-hook during an ordinary eval-mode forward under the run's autocast), or reads
   them from the feature cache (data/feature_cache.py); inside a study, rows already computed by an
   earlier cell (same image id and pixels) are reused, so nested subsets are paid for once;
2. trains and selects with the unchanged loop (``trainer.fit``: step budget, early stopping,
   selection), whose model is the head alone (``HeadOnFeatures``, which shares the classifier
   module with the full model) and whose batches are rows of the feature array;
3. saves the full model, whose head now holds the trained weights: the adapter folder is the one
   the image path writes and ``load_adapter`` scores images with it.

The training images are the same per step as on the image path (``TrainStream``'s indices), but
without augmentation: every step sees the eval view (resize + centre crop), and the backbone runs
in eval mode (no dropout). The study report states this for these cells.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import zlib
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from emoset_peft.data.feature_cache import feature_key, load_features, save_features
from emoset_peft.data.pipeline import DecodedImages, TrainStream, eval_batches
from emoset_peft.data.run_data import RunData

FEATURE_IMAGE_SIZE = 1  # features travel as [B, D, 1, 1] "images" through eval_batches
SPLITS = ("train", "selection", "test")


@dataclass
class Route:
    """What fit and evaluate run on: the model and images, or the head and cached features."""

    model: nn.Module
    data: RunData
    normalizer: object
    image_size: int
    stream_class: type = TrainStream
    seconds: float = 0.0  # computing or reading the features
    record: dict | None = None  # metrics.json "frozen_features"

    def running(self):
        """The context fit and evaluate run in: on the CPU, the head on features runs with one
        intra-op thread. Its matrix products ([16, D] x [D, 8]) are far smaller than what a
        parallel region costs to start: a 16-step linear probe on 2 cores took 0.62 s of
        training and 0.39 s of selection evaluations with 2 threads, 0.07 s and 0.12 s with 1."""
        if self.record is None or self.normalizer.device.type != "cpu":
            return contextlib.nullcontext()
        return _threads(1)


def uses_frozen_features(config) -> bool:
    from emoset_peft.models import methods

    return methods.frozen_feature_path(config.model.method, config.train.frozen_features)


def route(model, data: RunData, config, accelerator, normalizer, image_size: int) -> Route:
    """The image path, or (``uses_frozen_features``) the head on the splits' cached features."""
    if not uses_frozen_features(config):
        return Route(model, data, normalizer, image_size)
    started = time.perf_counter()
    head = model.classifier_model.classifier
    precision = str(accelerator.mixed_precision)
    model_key = backbone_fingerprint(model, config, precision)
    counts = {"computed": 0, "from_cache": 0, "from_earlier_cells": 0}

    def features_of(images: DecodedImages | None, name: str) -> DecodedImages | None:
        if images is None:
            return None
        key = feature_key(model_key, split_identity(images), image_size, precision)
        with _main_first(accelerator):
            found = load_features(config.data.cache_dir, key, len(images))
            if found is not None:
                counts["from_cache"] += len(images)
            else:
                pool = _pool((model_key, image_size, precision))
                found = _compute(
                    model, images, accelerator, normalizer, image_size, config, pool, counts
                )
                if accelerator.is_main_process:
                    save_features(config.data.cache_dir, key, found, label=name)
        return replace(images, pixels=found)

    features = RunData(
        data.class_names,
        features_of(data.train, "train"),
        features_of(data.selection, "selection"),
        features_of(data.test, "test"),
        data.train_manifest,
    )
    record = {
        "augmentation": False,  # every training step sees the eval view of its images
        "feature_dim": int(head.in_features),
        "images_computed": counts["computed"],
        "images_from_cache": counts["from_cache"],
        "images_from_earlier_cells": counts["from_earlier_cells"],
        "backbone_fingerprint": model_key,
    }
    return Route(
        HeadOnFeatures(model),
        features,
        FeatureNormalizer(accelerator.device),
        FEATURE_IMAGE_SIZE,
        FeatureStream,
        time.perf_counter() - started,
        record,
    )


def _compute(model, images, accelerator, normalizer, image_size, config, pool, counts):
    """The split's features: rows an earlier cell of this process computed (``pool``), the
    rest now."""
    rows = [_row_id(images, i) for i in range(len(images))] if pool is not None else None
    missing = (
        [i for i, row in enumerate(rows) if row not in pool]
        if pool is not None
        else list(range(len(images)))
    )
    dim = model.classifier_model.classifier.in_features
    out = np.empty((len(images), dim), dtype=np.float32)
    if missing:
        todo = images if len(missing) == len(images) else _rows(images, missing)
        out[missing] = extract_features(
            model, todo, accelerator, normalizer, image_size, config.train.eval_batch_size
        )
    if pool is not None:
        done = set(missing)
        for index, row in enumerate(rows):
            if index in done:
                pool[row] = out[index]
            else:
                out[index] = pool[row]
    counts["computed"] += len(missing)
    counts["from_earlier_cells"] += len(images) - len(missing)
    return out


@torch.inference_mode()
def extract_features(
    model, images: DecodedImages, accelerator, normalizer, image_size: int, batch_size: int
) -> np.ndarray:
    """float32 [N, D]: what the model's ``classifier`` reads for each image (eval mode, the
    run's autocast), in split order."""
    from emoset_peft.engine.evaluate import cpu_forward_batch

    model = accelerator.unwrap_model(model)
    head = model.classifier_model.classifier
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().float().cpu())
    )
    was_training = model.training
    model.eval()
    if accelerator.device.type == "cpu":
        batch_size = cpu_forward_batch(model, batch_size)
    try:
        for _, pixels in eval_batches(images, batch_size, normalizer, image_size):
            count = len(pixels)
            with accelerator.autocast():
                model(pixel_values=_padded(pixels, batch_size))
            captured[-1] = captured[-1][:count]
    finally:
        hook.remove()
        model.train(was_training)
    if not captured:
        return np.zeros((0, head.in_features), dtype=np.float32)
    return torch.cat(captured).numpy()


def _padded(pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The batch padded (with copies of its last image) to the next power of two, at most
    ``batch_size``. A study's splits and subsets come in many sizes, and on the CPU the first
    forward at each new batch size builds its kernels anew (a 96 px, 6-layer CLIP in bf16 on
    2 cores: 0.54 s for 18 images the first time, 0.07 s after): with power-of-two sizes a
    process builds at most a handful, once. Each image's feature does not depend on the
    others in its batch (eval mode)."""
    count = len(pixels)
    target = min(batch_size, 1 << max(count - 1, 0).bit_length())
    if target <= count:
        return pixels
    return torch.cat([pixels, pixels[-1:].expand(target - count, *pixels.shape[1:])])


class HeadOnFeatures(nn.Module):
    """The classifier head of a built model as a model of its own: ``pixel_values`` are pooled
    features [B, D]. The head module is shared, so training this trains the model's head; its
    parameter names (``network.classifier.*``) are the model's, so checkpoints match."""

    def __init__(self, model):
        super().__init__()
        self.network = nn.Module()
        self.network.classifier = model.classifier_model.classifier
        # predict_probs reads the label count here; no image geometry (features need no cap)
        self.config = SimpleNamespace(id2label=dict(model.config.id2label))

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.network.classifier(pixel_values))


class FeatureNormalizer:
    """``Normalizer``'s interface for feature rows: [B, D] -> [B, D, 1, 1] on the device
    (``to_nchw``; the centre crop of 1 leaves it as is) -> [B, D] float (``__call__``)."""

    def __init__(self, device: torch.device):
        self.device = device

    def to_nchw(self, features: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(features))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :, None, None]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1).float()


class FeatureStream(TrainStream):
    """``TrainStream``'s images for each step (the same indices as the image path), as feature
    rows without augmentation."""

    def batch(self, step: int, normalizer, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.sort(self.indices(step))  # sorted, as the image path reads them
        rows = normalizer(normalizer.to_nchw(self.images.pixels[index]))
        labels = torch.from_numpy(self.images.labels[index]).to(normalizer.device)
        return rows, labels


# -- identities -------------------------------------------------------------------------------


def backbone_fingerprint(model, config, precision: str) -> str:
    """Hash of every frozen tensor of the model as it runs (dtype, shape, bytes), the head left
    out: two builds of one checkpoint with the same frozen dtype / quantization share it. Inside
    ``reuse_loaded_backbones()`` (a study) it is computed once per backbone and setting."""
    from emoset_peft.models.backbones import loaded_cache

    cache = loaded_cache()
    m = config.model
    memo = ("frozen-fingerprint", m.backbone, m.quantize, m.frozen_dtype, precision)
    if cache is not None and memo in cache:
        return cache[memo]
    head = {id(p) for p in model.classifier_model.classifier.parameters()}
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        if id(tensor) in head:
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().data)
    key = digest.hexdigest()[:24]
    if cache is not None:
        cache[memo] = key
    return key


def split_identity(images: DecodedImages) -> str:
    """The decode cache's key of the split, or (images built by hand) a hash of ids and pixels."""
    if images.cache_key:
        return images.cache_key
    digest = hashlib.sha256(repr(list(images.image_ids)).encode())
    digest.update(np.ascontiguousarray(images.pixels).data)
    return "pixels-" + digest.hexdigest()[:24]


def _row_id(images: DecodedImages, index: int) -> tuple[str, int, int]:
    """An image's identity across splits: its id, pixel side and the CRC-32 of its pixels."""
    pixels = images.pixels[index]
    return images.image_ids[index], pixels.shape[0], zlib.crc32(np.ascontiguousarray(pixels).data)


def _rows(images: DecodedImages, index: list[int]) -> DecodedImages:
    return DecodedImages(
        pixels=images.pixels[np.asarray(index)],
        labels=images.labels[np.asarray(index)],
        image_ids=[images.image_ids[i] for i in index],
    )


def _pool(key: tuple) -> dict | None:
    """Feature rows computed so far in this study process, by ``_row_id``, for one backbone,
    geometry and precision; None outside ``reuse_loaded_backbones()`` (a single run)."""
    from emoset_peft.models.backbones import loaded_cache

    cache = loaded_cache()
    return None if cache is None else cache.setdefault(("frozen-feature rows", *key), {})


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _main_first(accelerator):
    """Rank 0 computes and writes the entry; the other processes then read it."""
    if accelerator.num_processes > 1:
        with accelerator.main_process_first():
            yield
    else:
        yield
